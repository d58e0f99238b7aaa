"""``orchard hunt`` per-trial overhead beyond the script's own run time, and ``import orchard`` cost.

The script only parses ``--x`` and reports it with the tool's own reporting
call. The overhead per trial is what the tool adds to a script that does the
same without any tool (parse ``--x``, write JSON)::

    (wall time of `<tool> hunt --max-trials N` - the hunt's own start-up) / N
    - the run time of the tool-free script

so importing the tool's reporting library counts as the tool's overhead.

Target (SPEC §9): at most 0.3 s per trial. ``orion hunt`` (Oríon 0.2.7, from
its own venv ``bench/.venvs/orion``, pickled database) is measured the same way
in the same run, alternated with Orchard pair by pair; its script reports with
``orion.client.report_objective``.

    python bench/hunt.py                # 30 trials, pickle storage, 3 pairs
    python bench/hunt.py --trials 100 --pairs 5
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
from dataclasses import dataclass

from _harness import machine_load, orion_python

SCRIPT = """\
import argparse
import orchard

parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
orchard.report_objective(parser.parse_args().x)
"""

BARE_SCRIPT = """\
import argparse, json, os

parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
with open(os.environ.get("ORCHARD_RESULTS_PATH", "bare.json"), "w") as out:
    json.dump({"objective": parser.parse_args().x}, out)
"""

ORION_SCRIPT = """\
import argparse
from orion.client import report_objective

parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
report_objective(parser.parse_args().x)
"""


def _env(bindir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "ORION_"))}
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _timed(argv: list[str], cwd: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


@dataclass
class Tool:
    """How to run one hyperparameter tool's ``hunt`` and its reporting script."""

    name: str
    python: str
    script: str
    hunt: list[str]          # the command before the user's script
    env: dict[str, str]

    def bare_run_time(self, folder: str, n: int) -> float:
        """Median wall time of the tool-free script run directly (what any runner pays at least)."""
        env = dict(self.env, ORCHARD_RESULTS_PATH=os.path.join(folder, "bare.json"))
        argv = [self.python, "bare.py", "--x=0.5"]
        for _ in range(3):  # warm the file cache
            _timed(argv, folder, env)
        return statistics.median(_timed(argv, folder, env) for _ in range(n))

    def hunt_time(self, folder: str, n: int, name: str) -> tuple[float, float]:
        """Wall time of one hunt of ``n`` trials, and of its start-up (a hunt with nothing left to do)."""
        argv = [*self.hunt, "-n", name, "--max-trials", str(n), self.python, self.script, "--x~uniform(0, 1)"]
        total = _timed(argv, folder, self.env)
        startup = statistics.median(_timed(argv, folder, self.env) for _ in range(3))  # budget met
        return total, startup

    def overhead(self, folder: str, n: int, name: str) -> tuple[float, float, float]:
        """Per-trial overhead beyond the bare script; also the bare time and the start-up."""
        before = self.bare_run_time(folder, n // 3 or 1)
        total, startup = self.hunt_time(folder, n, name)
        bare = (before + self.bare_run_time(folder, n // 3 or 1)) / 2  # load drifts: before and after
        return (total - startup) / n - bare, bare, startup


def tools(folder: str) -> tuple[Tool, Tool]:
    """Orchard from this interpreter, Oríon 0.2.7 from its venv, both on a pickle file in ``folder``."""
    for file, text in (("report.py", SCRIPT), ("report_orion.py", ORION_SCRIPT), ("bare.py", BARE_SCRIPT)):
        with open(os.path.join(folder, file), "w") as handle:
            handle.write(text)
    ours = Tool("orchard", sys.executable, "report.py",
                [sys.executable, "-m", "orchard.cli", "hunt", "--storage", "bench.pkl"],
                _env(os.path.dirname(sys.executable)))
    python = orion_python()
    orion_env = dict(_env(os.path.dirname(python)), ORION_DB_TYPE="pickleddb",
                     ORION_DB_ADDRESS=os.path.join(folder, "orion.pkl"))
    theirs = Tool("orion", python, "report_orion.py", [os.path.join(os.path.dirname(python), "orion"), "hunt"],
                  orion_env)
    return ours, theirs


def trial_timings(folder: str, names: list[str]) -> tuple[float, float]:
    """From Orchard's stored trials: mean reservation-to-completion time, mean gap between trials."""
    import orchard

    spans: list[float] = []
    gaps: list[float] = []
    for name in names:
        trials = sorted(orchard.get_experiment(name, storage=os.path.join(folder, "bench.pkl")).fetch_trials(),
                        key=lambda t: t.start_time or 0.0)
        spans += [t.end_time - t.start_time for t in trials if t.end_time and t.start_time]
        gaps += [b.start_time - a.end_time for a, b in itertools.pairwise(trials) if a.end_time and b.start_time]
    return statistics.mean(spans), statistics.mean(gaps)


def import_time() -> tuple[float, float]:
    """``import orchard``: cumulative microseconds from -X importtime, and wall ms beyond bare Python."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import orchard"],
                          capture_output=True, text=True, check=True)
    lines = re.finditer(r"\|\s*(\d+) \| orchard$", proc.stderr, re.MULTILINE)
    cumulative = max(int(m.group(1)) for m in lines)
    env = _env(os.path.dirname(sys.executable))
    base = statistics.median(_timed([sys.executable, "-c", "pass"], ".", env) for _ in range(10))
    full = statistics.median(_timed([sys.executable, "-c", "import orchard"], ".", env) for _ in range(10))
    return cumulative / 1000, (full - base) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    n = args.trials
    print(f"python {sys.version.split()[0]}, pickle storage, random search, {n} trials per hunt, "
          f"{args.pairs} alternated pairs; {machine_load()}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        ours, theirs = tools(folder)
        rows: dict[str, list[tuple[float, float, float]]] = {"orchard": [], "orion": []}
        names: list[str] = []
        for index in range(args.pairs):
            order = (ours, theirs) if index % 2 == 0 else (theirs, ours)
            for tool in order:
                name = f"bench{index}"
                rows[tool.name].append(tool.overhead(folder, n, name))
            names.append(f"bench{index}")
        span, gap = trial_timings(folder, names)
    for label, measured in rows.items():
        overheads = [o for o, _, _ in measured]
        print(f"{label:>8} hunt: overhead per trial beyond the script median "
              f"{statistics.median(overheads) * 1000:7.1f} ms [{min(overheads) * 1000:.1f}..."
              f"{max(overheads) * 1000:.1f}]; tool-free script {statistics.median(b for _, b, _ in measured) * 1000:.0f} ms; "
              f"start-up {statistics.median(s for _, _, s in measured) * 1000:.0f} ms")
    print("target: Orchard <= 300 ms per trial")
    print(f"orchard, from the storage: reserve->complete {span * 1000:.1f} ms per trial, "
          f"gap between trials {gap * 1000:.1f} ms")
    imported, wall = import_time()
    print(f"import orchard (-X importtime) {imported:.1f} ms cumulative; {wall:.1f} ms wall beyond bare python")
    print(f"after: {machine_load()}")


if __name__ == "__main__":
    main()
