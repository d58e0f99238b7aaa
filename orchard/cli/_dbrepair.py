"""``orchard db check``, ``repair`` and ``compact``: find and salvage damage in a pickle file, shrink it.

``check`` reads the whole file and lists every damaged byte range (readers skip
those, keeping every other record); it exits 1 if there is any. ``repair``
rewrites the file with every readable record, under the lock, after copying
the damaged original beside it. ``compact`` rewrites a clean file as a snapshot
now, as workers do once its log has grown enough; ``db rm`` does so after
deleting an experiment that held at least :data:`RM_COMPACTS` of the file's trials.
"""

from __future__ import annotations

import argparse

from orchard.cli._output import print_stored
from orchard.errors import ConfigurationError, StorageError
from orchard.resources import format_bytes
from orchard.storages.base import BaseStorage

__all__ = ["RM_COMPACTS", "compact_after_rm", "run_check", "run_compact", "run_repair", "trials_in_file"]

#: The share of a pickle file's trials an experiment deleted by ``db rm`` held, from which ``db rm`` compacts.
RM_COMPACTS = 0.25


def _pickle_file(storage: BaseStorage, command: str = "check/repair") -> object:
    """The pickle storage to check or repair; a file that does not exist is refused (a mistyped
    path was reported as 'no damage', and repair made its folder and lock file)."""
    import os

    from orchard.storages.pickled import PickledStorage

    if not isinstance(storage, PickledStorage):
        raise ConfigurationError(
            f"orchard db {command} read pickle files, and {storage.redacted_uri} is not one; "
            "MongoDB checks its own data (use mongod's validate command), memory:// has no file"
        )
    if not os.path.exists(storage.path):
        raise StorageError(f"storage file {storage.path} does not exist, so there is nothing to "
                           f"{command.replace('/', ' or ')}; check --storage and the folder you run from")
    return storage


def _describe(health: object) -> list[str]:
    from orchard.storages.pickled.reader import Health

    assert isinstance(health, Health)
    frames, records = health.frames, health.records
    lines = [f"{health.size} bytes, {frames} good frame{'' if frames == 1 else 's'} holding {records} "
             f"record{'' if records == 1 else 's'}"]
    lines += [f"damaged: {damage}" for damage in health.damaged]
    if health.torn_tail:
        lines.append(f"torn tail: the last {health.torn_tail} bytes are an incomplete write "
                     "(a writer killed mid-write, or one in progress)")
    return lines


def run_check(storage: BaseStorage, args: argparse.Namespace) -> int:
    """Print what a full read of the file finds; return 1 if anything is damaged."""
    from orchard.storages.pickled import PickledStorage

    store = _pickle_file(storage)
    assert isinstance(store, PickledStorage)
    health = store.check()
    for line in _describe(health):
        print(f"{store.path}: {line}")
    if health.damaged:
        readers = ("workers wait while the file's header is damaged" if health.damaged[0].start == 0
                   else "readers skip the damaged bytes and keep every other record")
        print(f"{store.path}: {readers}; `orchard db repair --storage {store.path}` rewrites a clean file "
              "(keeping a backup)")
        return 1
    print(f"{store.path}: no damage" + (" (the torn tail is ignored by readers)" if health.torn_tail else ""))
    return 0


def run_repair(storage: BaseStorage, args: argparse.Namespace) -> int:
    """Rewrite a damaged file with every readable record; print what was done."""
    from orchard.storages.pickled import PickledStorage

    store = _pickle_file(storage)
    assert isinstance(store, PickledStorage)
    health, backup = store.repair()
    for line in _describe(health):
        print(f"{store.path}: {line}")
    if backup is None:
        print(f"{store.path}: nothing to repair")
        return 0
    after = store.check()
    print_stored(f"{store.path}: rewrote a clean file of {after.records} records ({after.size} bytes); "
                 f"the damaged original is kept as {backup}")
    return 0


def run_compact(storage: BaseStorage, args: argparse.Namespace) -> int:
    """Compact a pickle file now, printing its size before and after (MongoDB: nothing to compact)."""
    from orchard.storages.pickled import PickledStorage

    if isinstance(storage, PickledStorage):
        store = _pickle_file(storage, "compact")
        assert isinstance(store, PickledStorage)
        before, after = store.compact()
        print(f"{store.path}: compacted from {format_bytes(before, binary=True)} to "
              f"{format_bytes(after, binary=True)}")
        return 0
    from orchard.storages import MongoStorage  # imports pymongo: only when the storage is not a file

    if not isinstance(storage, MongoStorage):
        raise ConfigurationError(f"orchard db compact rewrites pickle files, and {storage.redacted_uri} "
                                 "has no file; give the pickle file with --storage")
    print(f"{storage.redacted_uri}: nothing to compact: MongoDB keeps no log that processes replay, and "
          "deletes a removed experiment's documents at once (its own `compact` command gives the freed "
          "disk space back to the system)")
    return 0


def trials_in_file(storage: BaseStorage) -> int:
    """The trials of every experiment in a pickle file (from its replay: no query); 0 for other storages."""
    from orchard.storages.pickled import PickledStorage

    if not isinstance(storage, PickledStorage):
        return 0
    return sum(sum(storage.count_trials(e.id).values()) for e in storage.list_experiments())


def compact_after_rm(storage: BaseStorage, deleted: int, total: int) -> None:
    """After ``db rm``, compact a pickle file if the experiment held a large share (:data:`RM_COMPACTS`).

    Otherwise its records stayed in the file until the log grew past the next threshold, and every process
    opening the file replayed them. A compaction that fails leaves the deletion done, and says so.
    """
    from orchard.errors import StorageUnavailableError
    from orchard.storages.pickled import PickledStorage

    if not isinstance(storage, PickledStorage) or deleted == 0:
        return
    if deleted < RM_COMPACTS * total:
        print(f"{storage.path}: its records stay in the file (every process opening it reads them) until the "
              f"next compaction; `orchard db compact --storage {storage.path}` compacts now")
        return
    try:
        before, after = storage.compact()
    except (StorageError, StorageUnavailableError) as err:
        print(f"{storage.path}: the experiment is deleted, but the file could not be compacted: {err}; "
              f"`orchard db compact --storage {storage.path}` tries again")
        return
    print(f"{storage.path}: compacted from {format_bytes(before, binary=True)} to "
          f"{format_bytes(after, binary=True)} (the experiment held {deleted} of its {total} trials)")
