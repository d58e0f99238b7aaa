"""``memory://``: an in-process, thread-safe storage for notebooks and tests.

Opening the same ``memory://NAME`` twice in one process returns the same
storage, so threads share it. It cannot be shared with other processes:
pickling it for another process raises a clear error.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from orchard.errors import ConfigurationError
from orchard.storages._table import TrialTable
from orchard.storages.base import BaseStorage, ExperimentRecord
from orchard.trial import Trial, TrialStatus

__all__ = ["MemoryStorage"]


class MemoryStorage(BaseStorage):
    """Trials kept in this process's memory, guarded by one lock.

    Guarantees: every verb is atomic across the threads of this process.
    Nothing survives the process.
    """

    _instances: ClassVar[dict[str, MemoryStorage]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, uri: str = "memory://") -> None:
        self.uri = uri
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._table = TrialTable()

    @classmethod
    def open(cls, uri: str) -> MemoryStorage:
        """Return the process-wide storage for ``uri`` (``memory://`` alone is always new)."""
        if uri.rstrip("/") == "memory:":
            return cls(uri)
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

    # -- experiments -----------------------------------------------------------

    def create_experiment(self, name: str, config: Mapping[str, Any], created: float | None = None) -> str:
        with self._lock:
            self._table.create_experiment(name, config, self.now() if created is None else created)
            return self._table.names[name]

    def get_experiment(self, name: str) -> ExperimentRecord | None:
        with self._lock:
            exp_id = self._table.names.get(name)
            return None if exp_id is None else self._table.experiments[exp_id]

    def list_experiments(self) -> list[ExperimentRecord]:
        with self._lock:
            return sorted(self._table.experiments.values(), key=lambda e: e.created)

    def update_experiment(self, experiment_id: str, changes: Mapping[str, Any]) -> ExperimentRecord:
        with self._lock:
            self._table.update_experiment(experiment_id, changes)
            return self._table.experiments[experiment_id]

    def delete_experiment(self, experiment_id: str) -> int:
        with self._lock:
            return self._table.delete_experiment(experiment_id)[0]

    # -- trials ----------------------------------------------------------------

    def register_trial(
        self,
        experiment_id: str,
        params: Mapping[str, Any],
        *,
        worker: str | None = None,
        budget: int | None = None,
        parent: str | None = None,
    ) -> Trial:
        with self._lock:
            return self._table.register_trial(experiment_id, params, worker, budget, self.now(), parent)[0]

    def restore_trials(self, experiment_id: str, trials: Iterable[Trial]) -> int:
        with self._lock:
            return self._table.restore_trials(experiment_id, trials)[0]

    def reserve_trial(self, experiment_id: str, worker: str) -> Trial | None:
        with self._lock:
            return self._table.reserve_trial(experiment_id, worker, self.now())[0]

    def heartbeat_trial(self, trial_id: str, worker: str) -> None:
        with self._lock:
            self._table.heartbeat_trial(trial_id, worker, self.now())

    def complete_trial(
        self, trial_id: str, worker: str, objective: float, results: Mapping[str, Any] | None = None
    ) -> Trial:
        with self._lock:
            return self._table.complete_trial(trial_id, worker, objective, results, self.now())[0]

    def fail_trial(self, trial_id: str, worker: str, error: Mapping[str, Any]) -> Trial:
        with self._lock:
            return self._table.fail_trial(trial_id, worker, error, self.now())[0]

    def release_trial(self, trial_id: str, worker: str | None) -> Trial:
        with self._lock:
            return self._table.release_trial(trial_id, worker)[0]

    def release_stale(self, experiment_id: str, timeout: float, now: float | None = None) -> list[Trial]:
        cutoff = (self.now() if now is None else now) - timeout
        with self._lock:
            return self._table.release_stale(experiment_id, cutoff)[0]

    def get_trial(self, trial_id: str) -> Trial | None:
        with self._lock:
            trial = self._table.trial(trial_id)
            return None if trial is None else self._table._copy(trial)

    def fetch_trials(
        self, experiment_id: str, statuses: Iterable[TrialStatus | str] | None = None
    ) -> list[Trial]:
        with self._lock:
            return self._table.fetch_trials(experiment_id, statuses)

    def fetch_changes(self, experiment_id: str, cursor: Any = None) -> tuple[list[Trial], Any]:
        with self._lock:
            trials = self._table.changes_since(experiment_id, int(cursor or 0))
            return trials, self._table.seq

    def count_trials(self, experiment_id: str) -> dict[TrialStatus, int]:
        with self._lock:
            return self._table.count_trials(experiment_id)
