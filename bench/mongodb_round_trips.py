"""MongoDB round trips per trial at 8, 32 and 128 workers, against a SecantusDB server.

Every worker is a forked process that joins one experiment (random search, a
short sleep as objective) and counts, with a pymongo ``CommandListener``, each
command it sends: one command is one round trip. The table gives the totals
divided by the experiment's trials; the part sent by the worker loop (reserving,
registering, results, heartbeats, refreshing its view, waiting for others' last
trials), of which the part sent after the worker's last trial ended (the
wind-down); and the round trips each worker pays once to join and leave
(reading the experiment, indexes, the final stats, closing). The same number of
trials at every worker count, so the join-and-leave cost weighs more per trial
at 128 workers (4 trials each by default) than at 8 (64 each); ``--trials-per-worker N``
gives every fleet N trials per worker instead (N x W trials), so that what grows with the
fleet is only what contention adds.

    python bench/mongodb_round_trips.py                       # 8, 32, 128 workers, 512 trials
    python bench/mongodb_round_trips.py --trials-per-worker 16   # 128, 512, 2048 trials
    python bench/mongodb_round_trips.py --workers 8 --trials 64 --by-caller
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import queue
import sys
import tempfile
import time
from types import FrameType
from typing import Any

from _harness import machine_load

SPACE = {"x": "uniform(0, 1)", "y": "uniform(0, 1)"}
_FIXED = "join/leave:"
_last_end = [0.0]  # when this process's last evaluation ended (read by the wind-down split)


def _objective(x: float, y: float) -> float:
    time.sleep(_objective.seconds)  # type: ignore[attr-defined]
    _last_end[0] = time.monotonic()
    return x + y


def _caller(command: str) -> str:
    """``command`` labelled with the innermost storage function and the step that sent it.

    Steps of the worker loop (orchard/worker.py, and the heartbeat thread) are per-trial
    costs; steps of orchard/experiment.py (joining, the final stats, closing) are paid
    once per worker, and their labels start with ``join/leave``.
    """
    frame: FrameType | None = sys._getframe(2)
    verb, step = "", ""
    while frame is not None and not step:
        where = frame.f_code.co_filename
        if not verb and "/orchard/storages/" in where:
            verb = frame.f_code.co_name
        elif "/orchard/worker.py" in where or "/orchard/pacemaker.py" in where:
            step = frame.f_code.co_name
        elif "/orchard/experiment.py" in where:
            step = f"{_FIXED}{frame.f_code.co_name}"
        frame = frame.f_back
    return f"{command}:{verb}<{step}"


def _worker(uri: str, name: str, seconds: float, start: Any, results: Any) -> None:
    from pymongo import monitoring

    import orchard

    sent: list[tuple[float, str]] = []
    failures: collections.Counter[str] = collections.Counter()  # commands the server answered with an error

    class Counter(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            sent.append((time.monotonic(), _caller(event.command_name)))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            failures[event.command_name] += 1

    monitoring.register(Counter())  # before this process opens its client
    _objective.seconds = seconds  # type: ignore[attr-defined]
    start.wait()
    exp = orchard.get_experiment(name, storage=uri)
    exp.workon(_objective, n_workers=1, executor="single", progress=False)
    exp.storage.close()  # as the process exit does (its sessions ended): workon leaves it open to the caller
    winding = [c for t, c in sent if _last_end[0] and t > _last_end[0] and f"<{_FIXED}" not in c]
    results.put((collections.Counter(c for _, c in sent), len(winding), failures))


def measure(uri: str, workers: int, trials: int, seconds: float, heartbeat: float) -> dict[str, Any]:
    import orchard

    name = f"rt-{workers}-{time.monotonic_ns()}"
    exp = orchard.build_experiment(name, space=SPACE, algorithm="random", storage=uri,
                                   max_trials=trials, heartbeat=heartbeat)
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(uri, name, seconds, start, results)) for _ in range(workers)]
    for p in procs:
        p.start()
    start.wait()
    began = time.monotonic()
    total: collections.Counter[str] = collections.Counter()
    winding, failed, reported = 0, collections.Counter[str](), 0
    while reported < workers:
        try:
            counts, late, failures = results.get(timeout=1.0)
        except queue.Empty:
            if any(p.is_alive() for p in procs):
                continue
            break  # the rest died: the row says how many
        total.update(counts)
        failed.update(failures)
        winding += late
        reported += 1
    wall = time.monotonic() - began
    for p in procs:
        p.join()
    done = exp.storage.count_trials(exp.id)
    n = sum(done.values())
    return {"workers": workers, "trials": n, "commands": total,
            "winding": winding, "failed": failed, "wall": wall,
            "died": workers - reported}


def _per_trial(row: dict[str, Any], loop_only: bool) -> float:
    counts = row["commands"]
    return float(sum(c for label, c in counts.items() if not (loop_only and f"<{_FIXED}" in label)) / row["trials"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--trials", type=int, default=512)
    parser.add_argument("--trials-per-worker", type=int, help="N x W trials at W workers (instead of --trials)")
    parser.add_argument("--seconds", type=float, default=0.2, help="objective duration")
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--by-caller", action="store_true",
                        help="list round trips per trial by command, storage function and step")
    parser.add_argument("--uri", help="a MongoDB server to use instead of a fresh SecantusDB")
    args = parser.parse_args()
    each = f"{args.trials_per_worker} trials per worker" if args.trials_per_worker else f"{args.trials} trials"
    print(f"# load before: {machine_load()}; {each} of {args.seconds} s; heartbeat {args.heartbeat} s")

    def trials(workers: int) -> int:
        return int(workers * args.trials_per_worker if args.trials_per_worker else args.trials)

    if args.uri:
        rows = [measure(args.uri, w, trials(w), args.seconds, args.heartbeat) for w in args.workers]
    else:
        from orchard.testing.mongo_server import WireServer

        with tempfile.TemporaryDirectory() as tmp, WireServer(tmp, database="round_trips") as server:
            uri = server.uri + "?serverSelectionTimeoutMS=60000"  # a loaded machine: let 128 workers connect
            rows = [measure(uri, w, trials(w), args.seconds, args.heartbeat) for w in args.workers]
    if args.by_caller:
        for row in rows:
            print(f"# {row['workers']} workers, round trips per trial by command:storage function<step:")
            for label, n in row["commands"].most_common():
                print(f"#   {n / row['trials']:6.2f}  {label}")
    print("| workers | trials | round trips / trial | in the worker loop / trial | of which after the "
          "worker's last trial | join and leave / worker | wall s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        n, w, total = row["trials"], row["workers"], sum(row["commands"].values())
        fixed = sum(c for label, c in row["commands"].items() if f"<{_FIXED}" in label)
        print(f"| {w} | {n} | {total / n:.2f} | {(total - fixed) / n:.2f} | {row['winding'] / n:.2f} | "
              f"{fixed / w:.1f} | {row['wall']:.0f} |")
    base = rows[0]
    for row in rows[1:]:
        ratios = [_per_trial(row, loop) / _per_trial(base, loop) for loop in (False, True)]
        print(f"# {row['workers']} workers: {ratios[0]:.2f}x the {base['workers']}-worker round trips per trial, "
              f"{ratios[1]:.2f}x in the worker loop")
    for row in rows:
        if row["died"]:
            print(f"# {row['workers']} workers: {row['died']} died before reporting (their commands are not counted)")
        if row["failed"]:
            print(f"# {row['workers']} workers: commands answered with an error: {dict(row['failed'])}")
    print(f"# load after: {machine_load()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
