"""``orchard hunt`` per-trial overhead beyond the script's own run time, and ``import orchard`` cost.

The script only parses ``--x`` and reports it, so its run time is Python's
start-up plus ``import orchard``. The overhead per trial is::

    (wall time of `orchard hunt --max-trials N` - the CLI's own start-up) / N
    - the bare run time of the same script (run N times without Orchard)

Target (SPEC §9): at most 0.3 s per trial. Oríon 0.2.7's ``orion hunt``
measured about 2.4 s per trial on the same kind of machine.

    python bench/hunt.py                # 30 trials, pickle storage
    python bench/hunt.py --trials 100
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

SCRIPT = """\
import argparse
import orchard

parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
orchard.report_objective(parser.parse_args().x)
"""

ORION_PER_TRIAL = 2.4  # seconds, orion hunt 0.2.7 (README of the issue)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _timed(argv: list[str], cwd: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bare_run_time(folder: str, n: int) -> float:
    """Median wall time of the script run directly (what any runner pays at least)."""
    env = dict(_env(), ORCHARD_RESULTS_PATH=os.path.join(folder, "bare.json"))
    for _ in range(3):  # warm the file cache
        _timed([sys.executable, "report.py", "--x=0.5"], folder, env)
    return statistics.median(_timed([sys.executable, "report.py", "--x=0.5"], folder, env) for _ in range(n))


def hunt_time(folder: str, n: int) -> tuple[float, float]:
    """Wall time of one hunt of ``n`` trials, and of the CLI's start-up (a hunt with nothing to do)."""
    argv = [sys.executable, "-m", "orchard.cli", "hunt", "-n", "bench", "--storage", "bench.pkl",
            "--max-trials", str(n), sys.executable, "report.py", "--x~uniform(0, 1)"]
    total = _timed(argv, folder, _env())
    startup = statistics.median(_timed(argv, folder, _env()) for _ in range(5))  # budget met: exits at once
    return total, startup


def trial_timings(folder: str) -> tuple[float, float]:
    """From the stored trials: mean reservation-to-completion time, and mean gap between trials."""
    import orchard

    trials = sorted(orchard.get_experiment("bench", storage=os.path.join(folder, "bench.pkl")).fetch_trials(),
                    key=lambda t: t.start_time or 0.0)
    spans = [t.end_time - t.start_time for t in trials if t.end_time and t.start_time]
    gaps = [b.start_time - a.end_time for a, b in itertools.pairwise(trials) if a.end_time and b.start_time]
    return statistics.mean(spans), statistics.mean(gaps)


def import_time() -> tuple[float, float]:
    """``import orchard``: cumulative microseconds from -X importtime, and wall ms beyond bare Python."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import orchard"],
                          capture_output=True, text=True, check=True)
    lines = re.finditer(r"\|\s*(\d+) \| orchard$", proc.stderr, re.MULTILINE)
    cumulative = max(int(m.group(1)) for m in lines)
    base = statistics.median(_timed([sys.executable, "-c", "pass"], ".", _env()) for _ in range(10))
    full = statistics.median(_timed([sys.executable, "-c", "import orchard"], ".", _env()) for _ in range(10))
    return cumulative / 1000, (full - base) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    n = parser.parse_args().trials
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "report.py"), "w") as handle:
            handle.write(SCRIPT)
        before = bare_run_time(folder, n)
        total, startup = hunt_time(folder, n)
        bare = (before + bare_run_time(folder, n)) / 2  # before and after: load on the machine drifts
        span, gap = trial_timings(folder)
    per_trial = (total - startup) / n
    overhead = per_trial - bare
    imported, wall = import_time()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pickle storage, random search, "
          f"{n} trials")
    print(f"script run directly (median)        {bare * 1000:8.1f} ms")
    print(f"orchard hunt start-up               {startup * 1000:8.1f} ms")
    print(f"orchard hunt, {n} trials             {total:8.2f} s")
    print(f"hunt time per trial                 {per_trial * 1000:8.1f} ms")
    print(f"overhead per trial beyond the script {overhead * 1000:7.1f} ms   (target <= 300 ms; "
          f"orion hunt 0.2.7: ~{ORION_PER_TRIAL * 1000:.0f} ms per trial)")
    print(f"from the storage: reserve->complete {span * 1000:.1f} ms per trial "
          f"({(span - bare) * 1000:+.1f} ms vs the bare script), gap between trials {gap * 1000:.1f} ms; "
          f"overhead {(span - bare + gap) * 1000:.1f} ms")
    print(f"import orchard (-X importtime)      {imported:8.1f} ms cumulative; "
          f"{wall:.1f} ms wall beyond bare python")


if __name__ == "__main__":
    main()
