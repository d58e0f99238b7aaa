"""Where an ASHA worker's time goes on the multi-fidelity task, and what it trains.

Runs ``bench/multifidelity.py``'s Orchard ``asha`` setup with its four workers: three in a
child process, one in this process under ``cProfile``, for ``--wall`` seconds. Prints the
profiled worker's time in the objective (training, scoring, the checkpoint), in choosing its
next trial (reading the history, the algorithm's suggestion, registering it) and elsewhere;
then, over every completed trial of the run, the mean hidden-layer width weighted by epochs
trained, against the uniform prior's mean: an epoch of a wider network costs more, so a run
that trains promising wide networks trains fewer epochs in the same wall time.

    python bench/multifidelity_profile.py --wall 120 --sampler bayes

Not a timed test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent


class _WallReached(BaseException):
    """Raised by the alarm in the profiled worker when the wall budget is spent."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _WallReached


def _cumulative(stats: pstats.Stats, filename_end: str, function: str) -> float:
    """Total time (s) under ``function`` defined in a file whose path ends with ``filename_end``."""
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    return float(sum(row[3] for (name, _, func), row in table.items() if name.endswith(filename_end) and func == function))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wall", type=int, default=120, help="seconds to run (default 120)")
    parser.add_argument("--sampler", choices=("random", "bayes"), default="bayes")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="mf-profile-")
    sys.path.insert(0, str(HERE))
    import multifidelity as mf  # the bench's task, space, objective and Orchard setup

    mf.use_settings(mf.LOW, args.sampler, mf.RULE, int(mf.MIN_POINTS) if mf.MIN_POINTS else None,
                    mf.SAMPLER_FIT, float(mf.ETA) if mf.ETA else None)  # here and in the child
    os.environ.update(mf.SINGLE_THREAD, MF_LOG=os.path.join(workdir, "log.txt"))  # before numpy loads
    exp = mf.orchard_experiment("asha", args.seed, workdir)
    others = subprocess.Popen(
        [sys.executable, "-c", ("import sys; sys.path.insert(0, sys.argv[1]); import multifidelity as mf; "
                                "mf.orchard_workers('asha', int(sys.argv[2]), sys.argv[3], workers=3)"),
         str(HERE), str(args.seed), workdir],
        start_new_session=True)
    profile = cProfile.Profile()
    signal.signal(signal.SIGALRM, _stop)
    signal.alarm(args.wall)
    started = time.perf_counter()
    try:
        profile.enable()
        exp.workon(mf.orchard_objective, n_workers=1, executor="single", progress=False)
    except _WallReached:
        pass
    finally:
        profile.disable()
        os.killpg(others.pid, signal.SIGKILL)
        others.wait()
    elapsed = time.perf_counter() - started

    stats = pstats.Stats(profile)
    objective = _cumulative(stats, "multifidelity.py", "orchard_objective")
    choosing = _cumulative(stats, os.path.join("orchard", "worker.py"), "next_trial")
    suggesting = _cumulative(stats, os.path.join("orchard", "worker.py"), "_suggest")
    print(f"profiled worker, {elapsed:.0f} s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores:")
    for label, seconds in (("objective (train, score, checkpoint)", objective),
                           ("choosing the next trial", choosing),
                           ("  of which the algorithm's suggestion", suggesting),
                           ("everything else", elapsed - objective - choosing)):
        print(f"  {label:<40} {seconds:7.1f} s  {seconds / elapsed:6.1%}")

    trials = exp.fetch_trials(["completed"])
    by_id = {t.id: t for t in trials}

    def trained(trial: Any) -> int:  # a promotion resumes its parent's checkpoint
        parent = by_id.get(trial.parent) if trial.parent else None
        return int(trial.params["epochs"]) - (int(parent.params["epochs"]) if parent else 0)

    epochs = sum(trained(t) for t in trials)
    weighted = sum(t.params["hidden"] * trained(t) for t in trials) / max(epochs, 1)
    low, high = mf.HIDDEN
    print(f"{len(trials)} completed trials (all workers), {epochs} epochs trained; mean width weighted by "
          f"epochs trained {weighted:.0f}, the prior's mean {(low + high) / 2:.0f}")
    for rung in mf.RUNGS:
        widths = [t.params["hidden"] for t in trials if t.params["epochs"] == rung]
        if widths:
            print(f"  rung {rung:>2}: {len(widths):>4} trials, mean width {statistics.mean(widths):.0f}")


if __name__ == "__main__":
    main()
