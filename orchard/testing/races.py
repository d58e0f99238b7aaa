"""Helpers for race tests that use real, spawned processes on one storage.

Each worker function below is top-level (importable by a ``spawn`` child),
opens the storage from its URI, waits on ``start`` (a
:class:`multiprocessing.Barrier` shared by every racer, so they really start
together once connected), races, and returns plain data saying what it won.
:func:`run_racing` starts one spawned process per argument tuple with that
barrier, collects every result and turns a hang into a stack dump::

    from orchard.testing import races

    won = races.run_racing(races.reserve_and_complete_loop,
                           [(uri, exp_id, f"w{i}") for i in range(8)])
    ids = [tid for per_process in won for tid in per_process]
    assert len(ids) == len(set(ids))          # nobody completed a trial twice

The functions may also be called directly (``start=None``) for a baseline.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import queue
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from orchard.errors import BudgetExhaustedError, DuplicateTrialError
from orchard.storages import get_storage
from orchard.trial import Lease

__all__ = [
    "RaceError",
    "claim_budget",
    "create_same_experiment",
    "recover_lost",
    "register_same_params",
    "reserve_and_complete_loop",
    "reserve_and_hold",
    "run_racing",
]

SPAWN = multiprocessing.get_context("spawn")
_BARRIER_TIMEOUT = 120.0


class _Start(Protocol):
    def wait(self, timeout: float | None = None) -> Any: ...


class RaceError(AssertionError):
    """A racing process failed, died, or did not finish in time (details in the message)."""


def _worker_name(label: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{label}-{uuid.uuid4().hex[:6]}"


def _go(start: _Start | None) -> None:
    if start is not None:
        start.wait(_BARRIER_TIMEOUT)


# -- worker functions (each runs in its own process) -------------------------------


def reserve_and_complete_loop(uri: str, experiment_id: str, worker: str | None = None, *,
                              start: _Start | None = None) -> list[str]:
    """Reserve and complete trials until none is waiting.

    Args:
        uri: the storage URI.
        experiment_id: the experiment whose trials are raced for.
        worker: the worker name (default: a unique ``host:pid:label``).
        start: barrier passed by every racer before the first reservation.

    Returns:
        The ids this process completed, in order. Each completion records the
        worker name in ``results["worker"]``.
    """
    worker = worker or _worker_name("loop")
    with get_storage(uri) as storage:
        _go(start)
        done: list[str] = []
        while (trial := storage.reserve_trial(experiment_id, worker)) is not None:
            storage.complete_trial(trial.id, worker, float(len(done)), {"worker": worker})
            done.append(trial.id)
        return done


def register_same_params(uri: str, experiment_id: str, params_list: Sequence[Mapping[str, Any]], *,
                         start: _Start | None = None) -> tuple[int, int]:
    """Register every params dict of ``params_list``, in order.

    Returns:
        ``(stored, duplicates)``: how many registrations succeeded and how
        many raised :class:`~orchard.errors.DuplicateTrialError`.
    """
    stored = duplicates = 0
    with get_storage(uri) as storage:
        _go(start)
        for params in params_list:
            try:
                storage.register_trial(experiment_id, params)
                stored += 1
            except DuplicateTrialError:
                duplicates += 1
    return stored, duplicates


def claim_budget(uri: str, experiment_id: str, n_attempts: int, budget: int, tag: str, *,
                 start: _Start | None = None) -> tuple[int, int]:
    """Try ``n_attempts`` registrations of params unique to ``tag``, each claiming budget.

    Returns:
        ``(admitted, exhausted)``: successes and
        :class:`~orchard.errors.BudgetExhaustedError` refusals.
    """
    admitted = exhausted = 0
    with get_storage(uri) as storage:
        _go(start)
        for i in range(n_attempts):
            try:
                storage.register_trial(experiment_id, {"tag": tag, "i": i}, budget=budget)
                admitted += 1
            except BudgetExhaustedError:
                exhausted += 1
    return admitted, exhausted


def create_same_experiment(uri: str, name: str, config: Mapping[str, Any], *,
                           start: _Start | None = None) -> str:
    """Get-or-create the experiment ``name``; return the id received."""
    with get_storage(uri) as storage:
        _go(start)
        return storage.create_experiment(name, config)


def reserve_and_hold(uri: str, experiment_id: str, worker: str, *,
                     start: _Start | None = None) -> dict[str, Any] | None:
    """Reserve one trial and exit without heartbeating or completing it (a dead worker).

    Returns:
        The reserved trial as :meth:`~orchard.trial.Trial.to_dict`, or ``None``.
    """
    with get_storage(uri) as storage:
        _go(start)
        trial = storage.reserve_trial(experiment_id, worker)
        return None if trial is None else trial.to_dict()


def recover_lost(uri: str, experiment_id: str, leases: dict[str, tuple[str, float]], max_attempts: int, *,
                 start: _Start | None = None) -> dict[str, Any]:
    """Take back the lost ``leases`` (trial id -> (worker, heartbeat)), then reserve and complete one trial.

    Returns:
        ``{"worker": name, "released": [ids released by this call],
        "won": id reserved and completed, or None}``.
    """
    worker = _worker_name("recover")
    lost = {tid: Lease(*lease) for tid, lease in leases.items()}
    with get_storage(uri) as storage:
        _go(start)
        released = [t.id for t in storage.release_lost(experiment_id, lost, max_attempts)]
        trial = storage.reserve_trial(experiment_id, worker)
        if trial is not None:
            storage.complete_trial(trial.id, worker, 0.0, {"worker": worker})
        return {"worker": worker, "released": released, "won": None if trial is None else trial.id}


# -- the harness ------------------------------------------------------------------


def _entry(target: Callable[..., Any], args: tuple[Any, ...], start: Any, results: Any,
           index: int, timeout: float) -> None:
    """Child entry point: dump every stack if hung, run ``target``, report through the queue."""
    faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        results.put((index, True, target(*args, start=start)))
    except threading.BrokenBarrierError:
        results.put((index, False, "start barrier broken: another racer failed before the start"))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        start.abort()  # free the others from the barrier instead of letting them hang
        results.put((index, False, traceback.format_exc()))


def run_racing(target: Callable[..., Any], args_list: Sequence[tuple[Any, ...]],
               timeout: float = 120.0) -> list[Any]:
    """Run ``target(*args, start=barrier)`` in one spawned process per ``args`` tuple.

    Every process receives the same :class:`multiprocessing.Barrier` and
    passes it once connected to the storage, so the racing part starts at
    the same instant everywhere.

    Args:
        target: a top-level function taking a ``start`` keyword (e.g. those above).
        args_list: positional arguments, one tuple per process.
        timeout: seconds before a still-running child dumps its stacks and dies.

    Returns:
        The return values, in the order of ``args_list``.

    Raises:
        RaceError: a process raised (its traceback is included), died without
            a result, or did not finish within ``timeout``.
    """
    start = SPAWN.Barrier(len(args_list))
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=_entry, args=(target, args, start, results, i, timeout),
                           name=f"racer-{i}", daemon=True)
             for i, args in enumerate(args_list)]
    for proc in procs:
        proc.start()
    try:
        outcomes = _collect(results, procs, timeout + 15.0)
    finally:
        _reap(procs)
    failures = [f"racer-{i}: {value}" for i, (ok, value) in sorted(outcomes.items(), key=_root_causes_first)
                if not ok]
    if failures:
        raise RaceError(f"{len(failures)} of {len(procs)} racing processes failed:\n" + "\n".join(failures))
    return [outcomes[i][1] for i in range(len(procs))]


def _root_causes_first(item: tuple[int, tuple[bool, Any]]) -> tuple[bool, int]:
    index, (_, value) = item
    return str(value).startswith("start barrier broken"), index


def _collect(results: Any, procs: list[Any], timeout: float) -> dict[int, tuple[bool, Any]]:
    outcomes: dict[int, tuple[bool, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(outcomes) < len(procs):
        try:
            index, ok, value = results.get(timeout=0.5)
            outcomes[index] = (ok, value)
            continue
        except queue.Empty:
            pass
        if time.monotonic() > deadline or not any(p.is_alive() for p in procs):
            try:  # a result may have landed between the last get and the liveness check
                index, ok, value = results.get(timeout=1.0)
                outcomes[index] = (ok, value)
                continue
            except queue.Empty:
                missing = [f"racer-{i} (exit code {p.exitcode})" for i, p in enumerate(procs)
                           if i not in outcomes]
                raise RaceError(f"no result from {', '.join(missing)} (hung or died; a hung "
                                "child dumps its stacks to stderr before exiting)") from None
    return outcomes


def _reap(procs: list[Any]) -> None:
    for proc in procs:
        proc.join(timeout=10.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
