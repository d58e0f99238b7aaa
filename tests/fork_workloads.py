"""Objectives that fork, run by tests/test_forking_objectives.py in a process of their own.

Run as ``python -m tests.fork_workloads STORAGE BEHAVIOUR EXECUTOR N_WORKERS`` from the
repository root: it runs ``workon`` on a new experiment of :data:`BUDGET` trials whose
objective forks as ``BEHAVIOUR`` says, then prints ``workon ended`` and the trials'
statuses as JSON on one stdout line (a forked copy that ran the rest of this script
would print it again).
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import sys
import threading
import time

import orchard

#: The experiment's max_trials.
BUDGET = 4


def _child_returns(x: float) -> float:
    os.fork()  # the child comes back out of the objective, into Orchard's code
    return x


def _child_raises(x: float) -> float:
    if os.fork() == 0:
        raise ValueError("the child failed")
    return x


def _child_never_joined(x: float) -> float:
    multiprocessing.get_context("fork").Process(target=time.sleep, args=(3600,)).start()  # a data loader left running
    return x


def _child_joined(x: float) -> float:
    child = multiprocessing.Process(target=time.sleep, args=(0.01,))  # the default context, as a data loader's
    child.start()
    child.join()
    return x


def _thread_left(x: float) -> float:
    threading.Thread(target=time.sleep, args=(3600,), name="left-behind").start()  # not daemon, never joined
    return x


BEHAVIOURS = {"returns": _child_returns, "raises": _child_raises, "never-joined": _child_never_joined,
              "joined": _child_joined, "thread-left": _thread_left}


def main(storage: str, behaviour: str, executor: str, n_workers: int) -> None:
    exp = orchard.build_experiment("forks", space={"x": "uniform(0, 1)"}, algorithm="random",
                                   max_trials=BUDGET, storage=storage)
    exp.workon(BEHAVIOURS[behaviour], n_workers=n_workers, executor=executor, progress=False)
    counts = collections.Counter(trial.status.value for trial in exp.fetch_trials())
    print("workon ended", json.dumps(counts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
