"""Storage backends behind one contract, chosen by URI.

=========================================  ===========================================
URI                                        backend
=========================================  ===========================================
``PATH.pkl`` or ``pickle://PATH``          :class:`PickledStorage` (locked log file)
``mongodb://…``, ``mongodb+srv://…``       :class:`MongoStorage` (pymongo)
``mongomock://[NAME]``                     :class:`MongoStorage` on in-process mongomock
``memory://[NAME]``                        :class:`MemoryStorage` (threads of one process)
=========================================  ===========================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from orchard.errors import ConfigurationError
from orchard.storages._uri import pickle_path, redact
from orchard.storages.base import BaseStorage, ExperimentRecord

if TYPE_CHECKING:  # pragma: no cover
    from orchard.storages.memory import MemoryStorage
    from orchard.storages.mongodb import MongoStorage
    from orchard.storages.pickled import PickledStorage

__all__ = [
    "STORAGES",
    "BaseStorage",
    "ExperimentRecord",
    "MemoryStorage",
    "MongoStorage",
    "PickledStorage",
    "get_storage",
]

DEFAULT_STORAGE = "orchard.pkl"


def _memory(uri: str) -> BaseStorage:
    from orchard.storages.memory import MemoryStorage

    return MemoryStorage.open(uri)


def _pickled(uri: str) -> BaseStorage:
    from orchard.storages.pickled import PickledStorage

    return PickledStorage.from_uri(uri)


def _mongodb(uri: str) -> BaseStorage:
    from orchard.storages.mongodb import MongoStorage

    return MongoStorage.from_uri(uri)


#: URI scheme -> factory taking the full URI. Plain paths ending in ``.pkl`` use ``pickle``.
STORAGES: dict[str, Callable[[str], BaseStorage]] = {
    "pickle": _pickled,
    "mongodb": _mongodb,
    "mongodb+srv": _mongodb,
    "mongomock": _mongodb,
    "memory": _memory,
}


_LAZY_CLASSES = {
    "MemoryStorage": "orchard.storages.memory",
    "MongoStorage": "orchard.storages.mongodb",
    "PickledStorage": "orchard.storages.pickled",
}


def __getattr__(name: str) -> type[BaseStorage]:
    """Import backend classes on first use (pymongo and friends load only when needed)."""
    module = _LAZY_CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module 'orchard.storages' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def get_storage(uri: str | BaseStorage | None = None) -> BaseStorage:
    """Open the storage named by ``uri`` (see the module docstring for the forms).

    Args:
        uri: a storage URI, a path ending in ``.pkl``, an already open storage
            (returned as is), or ``None`` for ``./orchard.pkl``.

    Returns:
        The open storage.

    Raises:
        ConfigurationError: the URI has an unknown scheme or is malformed.
        StorageError: the backend could not open it.
    """
    if isinstance(uri, BaseStorage):
        return uri
    factory, uri = storage_opener(DEFAULT_STORAGE if uri is None else uri)
    return factory(uri)


def storage_opener(uri: object) -> tuple[Callable[[str], BaseStorage], str]:
    """The function that opens ``uri``, and the URI to give it: ``uri`` checked, nothing opened.

    Raises:
        ConfigurationError: the URI has an unknown scheme or is malformed.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigurationError(
            f"storage {uri!r} is not a URI; give a path ending in .pkl, pickle://PATH, "
            "mongodb://HOST/DB, mongomock:// or memory://"
        )
    uri = uri.strip()
    scheme, sep, _ = uri.partition("://")
    if not sep:
        if pickle_path(uri) is not None:
            return STORAGES["pickle"], uri
        raise ConfigurationError(
            f"storage {redact(uri)!r} is neither a URI nor a path ending in .pkl; "
            "use e.g. runs/orchard.pkl, pickle://runs/db, mongodb://host:27017/orchard"
        )
    factory = STORAGES.get(scheme.lower())
    if factory is None:
        known = ", ".join(f"{name}://" for name in STORAGES)
        raise ConfigurationError(
            f"storage {redact(uri)!r} has unknown scheme {scheme!r}; valid schemes: {known} "
            "(or a plain path ending in .pkl)"
        )
    return factory, uri
