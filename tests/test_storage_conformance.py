"""The storage conformance suite, run on every backend of the ``storage`` fixture (conftest.py)."""

from __future__ import annotations

from orchard.testing.conformance import StorageConformance


class TestStorageConformance(StorageConformance):
    """Every guarantee of ``BaseStorage`` on memory, pickle, mongomock and the MongoDB wire server."""
