"""Storage cost per worker cycle as the history grows, for every backend.

One cycle is what a worker asks of the storage per trial: ``register_trial``
(claiming a unit of budget), ``reserve_trial`` and ``complete_trial``. It is
timed with 100, 1,000 and 10,000 completed trials already in the experiment
(filled in bulk with ``restore_trials``). For MongoDB the number of database
round trips per cycle is counted with a ``pymongo.monitoring.CommandListener``
registered globally before the client exists (``MongoStorage`` builds its
client from the URI alone and takes no listener). The wire server
(SecantusDB, started here unless ``$ORCHARD_TEST_MONGODB_URI`` is set) is
slow and mongomock scans whole collections, so both stop at 1,000 trials
unless ``--mongo-max`` says otherwise. Each size times up to ``--cycles``
cycles, stopping after ~10 s.

    python bench/storage.py                  # all backends, 100 / 1,000 / 10,000
    python bench/storage.py --quick          # 100 / 1,000, fewer cycles
    python bench/storage.py --backends pickle memory
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from pymongo import monitoring

import orchard
from orchard.storages import BaseStorage, get_storage
from orchard.testing._mongo_uri import with_database
from orchard.trial import Trial, TrialStatus

BACKENDS = ["pickle", "memory", "mongomock", "mongodb"]
VERBS = ("register", "reserve", "complete")
WORKER = "bench:1:cycle"


class CommandCounter(monitoring.CommandListener):
    """Counts every command a pymongo client sends (one per round trip)."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COUNTER = CommandCounter()
monitoring.register(COUNTER)  # before any client exists, so every client reports to it


# -- one backend ----------------------------------------------------------------------


def _completed(experiment_id: str, start: int, n: int) -> list[Trial]:
    now = time.time()
    return [Trial(id="", experiment=experiment_id, params={"i": i}, status=TrialStatus.COMPLETED,
                  objective=float(i), results={"m": i}, worker=WORKER, heartbeat=now,
                  submit_time=now, start_time=now, end_time=now, attempts=1)
            for i in range(start, start + n)]


def _fill(storage: BaseStorage, experiment_id: str, target: int) -> None:
    """Bring the experiment to ``target`` trials with completed ones, in chunks."""
    have = sum(storage.count_trials(experiment_id).values())
    while have < target:
        chunk = min(2000, target - have)
        storage.restore_trials(experiment_id, _completed(experiment_id, 10**8 + have, chunk))
        have += chunk


def _cycle(storage: BaseStorage, experiment_id: str, i: int) -> dict[str, float]:
    """One register + reserve + complete; returns seconds and MongoDB commands per verb."""
    marks = [(time.perf_counter(), COUNTER.count)]
    trial = storage.register_trial(experiment_id, {"i": -1 - i}, budget=10**9)
    marks.append((time.perf_counter(), COUNTER.count))
    reserved = storage.reserve_trial(experiment_id, WORKER)
    marks.append((time.perf_counter(), COUNTER.count))
    assert reserved is not None and reserved.id == trial.id, "bench cycle reserved the wrong trial"
    storage.complete_trial(reserved.id, WORKER, 0.0, {"m": i})
    marks.append((time.perf_counter(), COUNTER.count))
    spent: dict[str, float] = {}
    for verb, (t0, c0), (t1, c1) in zip(VERBS, marks, marks[1:]):
        spent[verb], spent[f"{verb}_trips"] = t1 - t0, c1 - c0
    return spent


def _timed_cycles(storage: BaseStorage, experiment_id: str, first: int, cycles: int) -> list[dict[str, float]]:
    """Run up to ``cycles`` cycles, stopping early (after at least 5) once 10 s have passed."""
    spans: list[dict[str, float]] = []
    deadline = time.perf_counter() + 10.0
    while len(spans) < cycles and (len(spans) < 5 or time.perf_counter() < deadline):
        spans.append(_cycle(storage, experiment_id, first + len(spans)))
    return spans


def measure(label: str, storage: BaseStorage, sizes: list[int], cycles: int) -> list[dict[str, Any]]:
    """Time cycles at each history size, printing and returning one row per size."""
    experiment_id = storage.create_experiment(f"bench-{uuid.uuid4().hex[:6]}", {"algorithm": "random"})
    rows, done = [], 0
    for size in sizes:
        _fill(storage, experiment_id, size)
        _cycle(storage, experiment_id, done)  # warm-up (connections, caches)
        before = COUNTER.count
        spans = _timed_cycles(storage, experiment_id, done + 1, cycles)
        done += 1 + len(spans)
        row = {verb: statistics.median(s[verb] for s in spans) for verb in VERBS}
        row["split"] = "+".join(f"{statistics.mean(s[f'{v}_trips'] for s in spans):g}" for v in VERBS)
        row.update(size=size, total=statistics.median(sum(s[v] for v in VERBS) for s in spans),
                   trips=(COUNTER.count - before) / len(spans), cycles=len(spans))
        rows.append(row)
        _print_row(label, row)
    return rows


def _print_row(label: str, row: dict[str, Any]) -> None:
    trips = f"{row['trips']:g} ({row['split']})" if label == "mongodb" else "-"
    verbs = " ".join(f"{row[v] * 1e3:>9.3f}" for v in VERBS)
    print(f"{label:<10} {row['size']:>7,} {row['total'] * 1e3:>10.3f} {verbs} {row['cycles']:>6}  {trips}",
          flush=True)


# -- opening each backend ------------------------------------------------------------


@contextlib.contextmanager
def open_backend(backend: str, tmp: str, pickle_options: str = "") -> Iterator[BaseStorage]:
    """Open a fresh storage of ``backend`` (a throw-away database for MongoDB)."""
    if backend == "mongodb":
        from orchard.testing.mongo_server import mongodb_for_tests

        with mongodb_for_tests(tmp) as uri:
            database = f"orchard_bench_{uuid.uuid4().hex[:8]}"
            with get_storage(with_database(uri, database)) as storage:
                yield storage
            import pymongo

            with pymongo.MongoClient(uri) as client:
                client.drop_database(database)
        return
    uri = {"pickle": "pickle://" + os.path.join(tmp, "bench.pkl") + pickle_options, "memory": "memory://",
           "mongomock": f"mongomock://bench-{uuid.uuid4().hex[:6]}"}[backend]
    with get_storage(uri) as storage:
        yield storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=BACKENDS)
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 trials, fewer cycles")
    parser.add_argument("--cycles", type=int, default=200, help="cycles timed per size (at most ~10 s)")
    parser.add_argument("--mongo-max", type=int, default=1000,
                        help="largest history for mongomock and the wire server (default 1,000)")
    parser.add_argument("--pickle-options", default="",
                        help="query of the pickle URI, e.g. '?fsync=0' (default: the storage's defaults)")
    args = parser.parse_args()
    sizes = [100, 1000] if args.quick else [100, 1000, 10_000]
    cycles = args.cycles // 4 if args.quick else args.cycles
    print(f"median ms per cycle (register + reserve + complete); {os.cpu_count()} cores, "
          f"python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.2f}; "
          f"pickle options {args.pickle_options or '(defaults)'}; orchard from {os.path.dirname(orchard.__file__)}")
    print(f"{'backend':<10} {'trials':>7} {'cycle ms':>10} {'register':>9} {'reserve':>9} "
          f"{'complete':>9} {'cycles':>6}  round trips/cycle (register+reserve+complete)")
    results: dict[str, list[dict[str, Any]]] = {}
    for backend in args.backends:
        mine = [s for s in sizes if not backend.startswith("mongo") or s <= args.mongo_max]
        with tempfile.TemporaryDirectory() as tmp, open_backend(backend, tmp, args.pickle_options) as storage:
            results[backend] = measure(backend, storage, mine, cycles)
        if len(mine) < len(sizes):
            print(f"{'':<10} (stopped at {mine[-1]:,} trials: {_WHY_STOPPED[backend]}; --mongo-max raises it)")
    _print_ratios(results)


_WHY_STOPPED = {
    "mongomock": "mongomock scans whole collections, so filling 10,000 takes minutes",
    "mongodb": "the SecantusDB wire server is slow",
}


def _print_ratios(results: dict[str, list[dict[str, Any]]]) -> None:
    for backend, rows in results.items():
        if len(rows) > 1:
            ratio = rows[-1]["total"] / rows[0]["total"]
            target = " (target <= 1.5)" if backend == "pickle" else ""
            print(f"{backend}: cost@{rows[-1]['size']:,} / cost@{rows[0]['size']:,} = {ratio:.2f}{target}")


if __name__ == "__main__":
    main()
