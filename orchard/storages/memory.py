"""``memory://``: an in-process, thread-safe storage for notebooks and tests.

Opening the same ``memory://NAME`` twice in one process returns the same
storage, so threads share it. It cannot be shared with other processes:
pickling it for another process raises a clear error.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, ClassVar, TypeVar

from orchard.errors import ConfigurationError
from orchard.storages.table import TrialTable
from orchard.storages.table_storage import Query, TableStorage, Verb

__all__ = ["MemoryStorage"]

_T = TypeVar("_T")


class MemoryStorage(TableStorage):
    """Trials kept in this process's memory, guarded by one lock.

    Guarantees: every verb is atomic across the threads of this process, and
    every record returned is a copy. Nothing survives the process.
    """

    process_local = True
    _instances: ClassVar[dict[str, MemoryStorage]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, uri: str = "memory://") -> None:
        self.uri = uri
        self._lock = threading.RLock()
        self._table = TrialTable()
        self._token = uuid.uuid4().hex

    @classmethod
    def open(cls, uri: str) -> MemoryStorage:
        """Return the process-wide storage for ``uri`` (``memory://`` alone is always new).

        The name is read as mongomock reads its database's: the scheme in any case, slashes around
        the name left out, so ``memory://x``, ``memory://x/`` and ``MEMORY://x`` are one storage.

        Raises:
            ConfigurationError: ``uri`` carries options (``?…``), which no memory storage takes.
        """
        name = uri.partition("://")[2].strip("/")
        if "?" in name or "#" in name:
            raise ConfigurationError(f"storage {uri!r}: memory://NAME takes no options (?...); give "
                                     "memory://NAME alone")
        if not name:
            return cls("memory://")
        uri = f"memory://{name}"
        with cls._instances_lock:
            if uri not in cls._instances:
                cls._instances[uri] = cls(uri)
            return cls._instances[uri]

    def __reduce__(self) -> tuple[Any, ...]:
        raise ConfigurationError(
            f"storage {self.uri} lives in one process's memory and cannot be sent to other "
            "processes; use a pickle file (e.g. runs/orchard.pkl) or MongoDB for several "
            "workers, or executor='thread' / 'single'"
        )

    def __copy__(self) -> MemoryStorage:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> MemoryStorage:
        return self

    # -- the two hooks of TableStorage ------------------------------------------

    def _read(self, query: Query[_T]) -> _T:
        with self._lock:
            return query(self._table)

    def _write(self, verb: Verb[_T]) -> _T:
        with self._lock:
            return verb(self._table, self.now())[0]

    def _replay_token(self) -> str:
        return self._token
