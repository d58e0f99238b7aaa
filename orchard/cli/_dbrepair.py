"""``orchard db check`` and ``orchard db repair``: find and salvage damage in a pickle file.

``check`` reads the whole file and lists every damaged byte range (readers skip
those, keeping every other record); it exits 1 if there is any. ``repair``
rewrites the file with every readable record, under the lock, after copying
the damaged original beside it.
"""

from __future__ import annotations

import argparse

from orchard.errors import ConfigurationError, StorageError
from orchard.storages.base import BaseStorage

__all__ = ["run_check", "run_repair"]


def _pickle_file(storage: BaseStorage) -> object:
    """The pickle storage to check or repair; a file that does not exist is refused (a mistyped
    path was reported as 'no damage', and repair made its folder and lock file)."""
    import os

    from orchard.storages.pickled import PickledStorage

    if not isinstance(storage, PickledStorage):
        raise ConfigurationError(
            f"orchard db check/repair read pickle files, and {storage.redacted_uri} is not one; "
            "MongoDB checks its own data (use mongod's validate command), memory:// has no file"
        )
    if not os.path.exists(storage.path):
        raise StorageError(f"storage file {storage.path} does not exist, so there is nothing to check or "
                           "repair; check --storage and the folder you run from")
    return storage


def _describe(health: object) -> list[str]:
    from orchard.storages.pickled.reader import Health

    assert isinstance(health, Health)
    lines = [f"{health.size} bytes, {health.frames} good frames holding {health.records} records"]
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
    print(f"{store.path}: rewrote a clean file of {after.records} records ({after.size} bytes); "
          f"the damaged original is kept as {backup}")
    return 0
