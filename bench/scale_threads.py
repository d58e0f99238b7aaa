"""Many worker loops as threads of one process sharing one pickle file (``executor="thread"``).

The loops of one process share its storage object, so the file is replayed once
for all of them, not once per loop as with ``bench/scale.py``'s processes. Every
trial is a sleep of ``--seconds`` (5 s by default), random search, ``W × --rounds``
trials. Printed per W: the process's CPU (user + system) per trial, the busy share
over the window from the W-th trial start (every loop has started) to the last
start, and the wall time::

    python bench/scale_threads.py --workers 64 128 256 512 --rounds 6    # docs/scaling.md
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from typing import Any

from _harness import scale_options


def sleep_for(x: float, y: float, seconds: float) -> dict[str, Any]:
    """The objective: sleep, and say when (wall clock)."""
    start = time.time()
    time.sleep(seconds)
    return {"objective": x + y, "t0": start, "t1": time.time()}


def run(workers: int, rounds: int, seconds: float) -> str:
    import orchard

    with tempfile.TemporaryDirectory() as tmp:
        exp = orchard.build_experiment("threads", space={"x": "uniform(0, 1)", "y": "uniform(0, 1)"},
                                       storage=os.path.join(tmp, "o.pkl"), max_trials=workers * rounds)
        cpu, wall = time.process_time(), time.time()
        exp.workon(functools.partial(sleep_for, seconds=seconds), n_workers=workers, executor="thread",
                   progress=False)
        cpu, wall = time.process_time() - cpu, time.time() - wall
        done = [t.results for t in exp.fetch_trials() if t.status.value == "completed"]
    starts = sorted(r["t0"] for r in done)
    first, last = starts[workers - 1], starts[-1]
    busy = sum(max(0.0, min(r["t1"], last) - max(r["t0"], first)) for r in done)
    share = f"{100 * busy / (workers * (last - first)):5.1f} %" if last > first else "  none"
    return (f"{workers:5d} {len(done):6d} {cpu / len(done) * 1e3:8.1f} ms {share} {wall:7.1f} s")


def main() -> None:
    args = scale_options(__doc__, [64, 128, 256, 512])
    from orchard.executors import capacity

    capacity.THREAD_LOOPS = max(capacity.THREAD_LOOPS, *args.workers)  # measuring past the cap is the point
    load = os.getloadavg()
    print(f"{args.rounds} rounds of {args.seconds:g} s trials, loops as threads of one process, "
          f"{os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("    W trials  CPU/trial   busy    wall")
    for workers in args.workers:
        print(run(workers, args.rounds, args.seconds), flush=True)


if __name__ == "__main__":
    main()
