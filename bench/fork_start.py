"""What starting ``executor="process"`` workers costs when the calling process is large.

The process executor forks its workers from the process that calls ``workon``.
A notebook that holds millions of Python objects hands each worker a copy-on-write
view of them: the fork copies page tables, and every later garbage collection in a
worker that walks those objects writes to their headers and copies their pages.

The caller here first builds ``--objects`` million small tracked objects (lists of
a float and a str, about 150 bytes each), then runs ``workon`` with ``--workers``
workers on a pickle file, a 1 s objective, two rounds. Each objective call records
its process's full collections (``gc.get_stats``) and private memory (USS, psutil).
Reported, per variant:

* **all busy**: wall seconds from the ``workon`` call until every worker has started a trial;
* **children CPU**: user + system CPU of all worker processes (``RUSAGE_CHILDREN``), which a
  loaded machine does not inflate as it does wall times;
* **USS max / sum**: the largest and the total private memory of the workers, read in their
  second trial (the pages each had to copy);

Variants: ``plain`` (workon as it is called), ``frozen`` (``gc.freeze()`` around the call:
the caller's objects move to the permanent generation, which collections skip, in the caller
and in every worker forked from it) and ``forkserver`` (``executor_config={"mp_context": ...}``,
workers forked from a small server that preloaded Orchard; the children's CPU then includes the
server's start).

Usage::

    python bench/fork_start.py --objects 2 --workers 16
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orchard
from bench._harness import machine_load

_MARKS = "FORK_START_MARKS"


def probe(x: float) -> dict[str, float]:
    """A 1 s trial that reports its process's full collections and private memory."""
    import psutil

    Path(os.environ[_MARKS], f"{os.getpid()}-{x}").write_text(str(time.time()))
    time.sleep(1.0)
    return {"objective": x, "pid": os.getpid(), "full_collections": gc.get_stats()[2]["collections"],
            "uss": psutil.Process().memory_full_info().uss}


def run(workers: int, variant: str, folder: str) -> dict[str, float]:
    marks = Path(folder, f"marks-{variant}")
    marks.mkdir()
    os.environ[_MARKS] = str(marks)
    exp = orchard.build_experiment(f"fork-{variant}", space={"x": "uniform(0, 1)"}, algorithm="random",
                                   storage=str(Path(folder, "o.pkl")), max_trials=2 * workers)
    config = None
    if variant == "forkserver":
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["orchard", "orchard.executors.task", "numpy", "psutil"])
        config = {"mp_context": context}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    if variant == "frozen":
        gc.freeze()
    try:
        exp.workon(probe, n_workers=workers, executor="process", executor_config=config, progress=False)
    finally:
        if variant == "frozen":
            gc.unfreeze()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    firsts: dict[str, float] = {}
    for mark in marks.iterdir():
        pid = mark.name.split("-")[0]
        firsts[pid] = min(firsts.get(pid, float("inf")), float(mark.read_text()))
    last_uss: dict[int, int] = {}
    collections = 0
    for trial in sorted(exp.fetch_trials(["completed"]), key=lambda t: t.end_time or 0):
        last_uss[trial.results["pid"]] = trial.results["uss"]
        collections = max(collections, trial.results["full_collections"])
    return {"all_busy_s": max(firsts.values()) - started, "workers_seen": len(firsts),
            "children_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "uss_max_mib": max(last_uss.values()) / 2**20, "uss_sum_mib": sum(last_uss.values()) / 2**20,
            "full_collections_max": collections}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=float, default=2.0, help="millions of objects the caller holds")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--variants", nargs="+", default=["plain", "frozen", "forkserver"],
                        choices=["plain", "frozen", "forkserver"])
    args = parser.parse_args()
    held = [[float(i), str(i)] for i in range(int(args.objects * 1e6))]  # noqa: F841 - the notebook's data
    print(f"caller holds {args.objects:g} M objects; {args.workers} workers; {machine_load()}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for variant in args.variants:
            row = run(args.workers, variant, folder)
            print(json.dumps({"variant": variant, **{k: round(v, 2) for k, v in row.items()}}), flush=True)
    print(machine_load())


if __name__ == "__main__":
    main()
