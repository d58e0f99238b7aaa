"""The format of an experiment in MongoDB: a marker that lets a release refuse what a newer one wrote.

A release of Orchard that predates reports and pruning (format 1, no ``format`` field) reads a trial
whose status it does not know as an error, and ignores the configuration keys it does not know
(pruner, objectives, constraints, stop rules), so its workers run such an experiment as another
one. Nothing in its documents makes it refuse them: this release stamps the experiment documents it
creates with :data:`FORMAT`, and refuses one stamped with a higher format, so that a later release
that changes what an experiment means can keep this one from misreading or rewriting it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchard.errors import StorageCorruptedError
from orchard.storages._uri import redact

__all__ = ["FORMAT", "check_format", "format_fault", "newer_release"]

FORMAT = 2  # the format this release writes and reads (1: no ``format`` field, the releases before it)


def format_fault(doc: Mapping[str, Any]) -> str | None:
    """Why the ``format`` of the experiment document ``doc`` is none a release writes (``None``: absent or
    an int): text or a float is another program's edit, not a newer release, and reads skip it as such."""
    stamped = doc.get("format", 1)
    return None if type(stamped) is int else f"field 'format' is {type(stamped).__name__}"


def newer_release(doc: Mapping[str, Any]) -> str | None:
    """Why this release does not read the experiment document ``doc`` (a newer release wrote it, with a
    ``format`` above :data:`FORMAT`), or ``None``: the text says to upgrade."""
    stamped = doc.get("format", 1)
    if type(stamped) is not int or stamped <= FORMAT:
        return None
    return (f"it was written by a newer Orchard release (format {stamped!r}; this release reads formats 1 "
            f"to {FORMAT}): upgrade Orchard here to the release of the other workers; this release does not "
            "read or modify the experiment")


def check_format(doc: Mapping[str, Any], uri: str) -> None:
    """Raise unless this release reads the experiment document ``doc`` (``format`` at most :data:`FORMAT`).

    Raises:
        StorageCorruptedError: a newer release wrote it; the message says to upgrade.
    """
    why = newer_release(doc)
    if why is not None:
        raise StorageCorruptedError(f"experiment {doc.get('name')!r} in MongoDB at {redact(uri)}: {why}")
