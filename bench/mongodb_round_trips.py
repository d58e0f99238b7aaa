"""MongoDB round trips per trial at 8, 32 and 128 workers, against a SecantusDB server.

Every worker is a forked process that joins one experiment (random search, a
short sleep as objective) and counts, with a pymongo ``CommandListener``, each
command it sends: one command is one round trip. The table gives the totals
divided by the experiment's trials, split by command, and the share sent after
the worker's last trial ended (the wind-down: waiting for others' trials to
finish). The same number of trials at every worker count, so fixed per-worker
costs (joining, indexes) show as they grow.

    python bench/mongodb_round_trips.py                       # 8, 32, 128 workers, 256 trials
    python bench/mongodb_round_trips.py --workers 8 --trials 64
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import sys
import tempfile
import time
from typing import Any

from _harness import machine_load

SPACE = {"x": "uniform(0, 1)", "y": "uniform(0, 1)"}
_last_end = [0.0]  # when this process's last evaluation ended (read by the wind-down split)


def _objective(x: float, y: float) -> float:
    time.sleep(_objective.seconds)  # type: ignore[attr-defined]
    _last_end[0] = time.monotonic()
    return x + y


def _caller(command: str) -> str:
    """``command`` labelled with the innermost Orchard function and the worker step that sent it."""
    frame, verb, step = sys._getframe(2), "", ""
    while frame is not None and not step:
        where = frame.f_code.co_filename
        if not verb and "/orchard/storages/" in where:
            verb = frame.f_code.co_name
        elif "/orchard/worker.py" in where or "/orchard/experiment.py" in where:
            step = frame.f_code.co_name
        frame = frame.f_back
    return f"{command}:{verb}<{step}"


def _worker(uri: str, name: str, seconds: float, start: Any, results: Any, by_caller: bool) -> None:
    from pymongo import monitoring

    import orchard

    sent: list[tuple[float, str]] = []
    failures: collections.Counter[str] = collections.Counter()  # commands the server answered with an error

    class Counter(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            sent.append((time.monotonic(), _caller(event.command_name) if by_caller else event.command_name))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            failures[event.command_name] += 1

    monitoring.register(Counter())  # before this process opens its client
    _objective.seconds = seconds  # type: ignore[attr-defined]
    start.wait()
    exp = orchard.get_experiment(name, storage=uri)
    exp.workon(_objective, n_workers=1, executor="single", progress=False)
    winding = [c for t, c in sent if _last_end[0] and t > _last_end[0]]
    results.put((collections.Counter(c for _, c in sent), len(winding), failures))


def measure(uri: str, workers: int, trials: int, seconds: float, heartbeat: float,
            by_caller: bool = False) -> dict[str, Any]:
    import orchard

    name = f"rt-{workers}-{time.monotonic_ns()}"
    exp = orchard.build_experiment(name, space=SPACE, algorithm="random", storage=uri,
                                   max_trials=trials, heartbeat=heartbeat)
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(uri, name, seconds, start, results, by_caller)) for _ in range(workers)]
    for p in procs:
        p.start()
    start.wait()
    began = time.monotonic()
    total: collections.Counter[str] = collections.Counter()
    winding, failed = 0, collections.Counter[str]()
    for _ in procs:
        counts, late, failures = results.get(timeout=3600)
        total.update(counts)
        failed.update(failures)
        winding += late
    wall = time.monotonic() - began
    for p in procs:
        p.join()
    done = exp.storage.count_trials(exp.id)
    n = sum(done.values())
    return {"workers": workers, "trials": n, "commands": total,
            "winding": winding, "failed": failed, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=0.2, help="objective duration")
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--by-caller", action="store_true",
                        help="split commands by the storage function and worker step that sent them")
    parser.add_argument("--uri", help="a MongoDB server to use instead of a fresh SecantusDB")
    args = parser.parse_args()
    print(f"# load before: {machine_load()}; {args.trials} trials of {args.seconds} s; heartbeat {args.heartbeat} s")
    if args.uri:
        rows = [measure(args.uri, w, args.trials, args.seconds, args.heartbeat, args.by_caller) for w in args.workers]
    else:
        from orchard.testing.mongo_server import WireServer

        with tempfile.TemporaryDirectory() as tmp, WireServer(tmp, database="round_trips") as server:
            rows = [measure(server.uri, w, args.trials, args.seconds, args.heartbeat, args.by_caller) for w in args.workers]
    names = sorted({c for row in rows for c in row["commands"]})
    if args.by_caller:
        for row in rows:
            print(f"# {row['workers']} workers, round trips per trial by caller:")
            for label, n in row["commands"].most_common():
                print(f"#   {n / row['trials']:6.2f}  {label}")
        names = []
    print("| workers | trials | round trips / trial | wind-down / trial | "
          + " | ".join(names) + " | wall s |")
    print("|---:" * (5 + len(names)) + "|")
    for row in rows:
        n = row["trials"]
        per = " | ".join(f"{row['commands'][c] / n:.2f}" for c in names)
        print(f"| {row['workers']} | {n} | {sum(row['commands'].values()) / n:.2f} | "
              f"{row['winding'] / n:.2f} | {per} | {row['wall']:.0f} |")
    base = sum(rows[0]["commands"].values()) / rows[0]["trials"]
    for row in rows[1:]:
        ratio = sum(row["commands"].values()) / row["trials"] / base
        print(f"# {row['workers']} workers: {ratio:.2f}x the {rows[0]['workers']}-worker figure")
    for row in rows:
        if row["failed"]:
            print(f"# {row['workers']} workers: commands answered with an error: {dict(row['failed'])}")
    print(f"# load after: {machine_load()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
