"""Storage cost per worker cycle as the history grows, for every backend.

One cycle is what a worker asks of the storage per trial: ``register_trial``
(claiming a unit of budget), ``reserve_trial`` and ``complete_trial``. It is
timed with 100, 1,000 and 10,000 completed trials already in the experiment
(filled in bulk with ``restore_trials``). For MongoDB the number of database
round trips per cycle is counted with a ``pymongo.monitoring.CommandListener``
registered globally before the client exists. The wire server (SecantusDB,
started here unless ``$ORCHARD_TEST_MONGODB_URI`` is set) is slow, so it stops
at 1,000 trials unless ``--mongo-max`` says otherwise.

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
    """One register + reserve + complete; returns seconds per verb."""
    spent: dict[str, float] = {}
    t0 = time.perf_counter()
    trial = storage.register_trial(experiment_id, {"i": -1 - i}, budget=10**9)
    t1 = time.perf_counter()
    reserved = storage.reserve_trial(experiment_id, WORKER)
    t2 = time.perf_counter()
    assert reserved is not None and reserved.id == trial.id, "bench cycle reserved the wrong trial"
    storage.complete_trial(reserved.id, WORKER, 0.0, {"m": i})
    t3 = time.perf_counter()
    spent.update(register=t1 - t0, reserve=t2 - t1, complete=t3 - t2)
    return spent


def measure(storage: BaseStorage, sizes: list[int], cycles: int) -> list[dict[str, Any]]:
    """Time ``cycles`` cycles at each history size; return one row per size."""
    experiment_id = storage.create_experiment(f"bench-{uuid.uuid4().hex[:6]}", {"algorithm": "random"})
    rows, done = [], 0
    for size in sizes:
        _fill(storage, experiment_id, size)
        _cycle(storage, experiment_id, done)  # warm-up (connections, caches)
        done += 1
        spans, before = [], COUNTER.count
        for _ in range(cycles):
            spans.append(_cycle(storage, experiment_id, done))
            done += 1
        trips = (COUNTER.count - before) / cycles
        row = {verb: statistics.median(s[verb] for s in spans) for verb in VERBS}
        row.update(size=size, total=statistics.median(sum(s.values()) for s in spans), trips=trips)
        rows.append(row)
        _print_row(storage, row)
    return rows


def _print_row(storage: BaseStorage, row: dict[str, Any]) -> None:
    name = type(storage).__name__
    trips = f"{row['trips']:>6.1f}" if "Mongo" in name and row["trips"] else "     -"
    verbs = " ".join(f"{row[v] * 1e3:>9.3f}" for v in VERBS)
    print(f"{name:<15} {row['size']:>7,} {row['total'] * 1e3:>10.3f} {verbs} {trips}", flush=True)


# -- opening each backend ------------------------------------------------------------


@contextlib.contextmanager
def _mongodb_uri(tmp: str) -> Iterator[str]:
    from orchard.testing import mongo_server

    uri = mongo_server.test_mongodb_uri()
    if uri:
        yield uri
        return
    with mongo_server.running_mongo_server(tmp) as started:
        yield started


@contextlib.contextmanager
def open_backend(backend: str, tmp: str) -> Iterator[BaseStorage]:
    """Open a fresh storage of ``backend`` (a throw-away database for MongoDB)."""
    if backend == "mongodb":
        with _mongodb_uri(os.path.join(tmp, "mongo")) as uri:
            database = f"orchard_bench_{uuid.uuid4().hex[:8]}"
            with get_storage(with_database(uri, database)) as storage:
                yield storage
            import pymongo

            with pymongo.MongoClient(uri) as client:
                client.drop_database(database)
        return
    uri = {"pickle": os.path.join(tmp, "bench.pkl"), "memory": "memory://",
           "mongomock": f"mongomock://bench-{uuid.uuid4().hex[:6]}"}[backend]
    with get_storage(uri) as storage:
        yield storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=BACKENDS)
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 trials, fewer cycles")
    parser.add_argument("--cycles", type=int, default=None, help="cycles timed per size (default 200; 30 for mongodb)")
    parser.add_argument("--mongo-max", type=int, default=1000, help="largest history for the wire server")
    args = parser.parse_args()
    sizes = [100, 1000] if args.quick else [100, 1000, 10_000]
    print(f"median ms per cycle (register + reserve + complete); {os.cpu_count()} cores, "
          f"python {sys.version.split()[0]}")
    print(f"{'backend':<15} {'trials':>7} {'cycle ms':>10} {'register':>9} {'reserve':>9} "
          f"{'complete':>9} {'trips':>6}")
    results: dict[str, list[dict[str, Any]]] = {}
    for backend in args.backends:
        mine = [s for s in sizes if backend != "mongodb" or s <= args.mongo_max]
        cycles = args.cycles or (30 if backend == "mongodb" else 200) // (2 if args.quick else 1)
        with tempfile.TemporaryDirectory() as tmp, open_backend(backend, tmp) as storage:
            results[backend] = measure(storage, mine, cycles)
        if len(mine) < len(sizes):
            print(f"{'':<15} (stopped at {mine[-1]:,} trials: the wire server is slow; --mongo-max raises it)")
    _print_ratios(results)


def _print_ratios(results: dict[str, list[dict[str, Any]]]) -> None:
    for backend, rows in results.items():
        if len(rows) > 1:
            ratio = rows[-1]["total"] / rows[0]["total"]
            target = " (target <= 1.5)" if backend == "pickle" else ""
            print(f"{backend}: cost@{rows[-1]['size']:,} / cost@{rows[0]['size']:,} = {ratio:.2f}{target}")


if __name__ == "__main__":
    main()
