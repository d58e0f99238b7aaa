"""What every benchmark here shares: the machine's load, peers run alternately, ratios, Oríon's venv.

A figure is only worth publishing if someone else can re-measure it, so each
comparison runs Orchard and the peer in the same invocation, alternated run by
run (A B A B ...), and reports the median of the pair ratios with their range,
next to the machine's load before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import venv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Where the bench scripts keep peers that cannot share Orchard's environment.
VENVS = Path(__file__).resolve().parent / ".venvs"
ORION_REQUIREMENTS = ["orion==0.2.7", "typing_extensions"]  # 0.2.7 imports it without declaring it


def machine_load() -> str:
    """The 1/5/15-minute load averages and the core count, for printing beside a table."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


@dataclass
class Pairs:
    """Alternated measurements of Orchard (``ours``) and a peer (``theirs``), higher is better."""

    ours: list[float]
    theirs: list[float]

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours, self.theirs)]

    def summary(self, unit: str = "") -> str:
        """``median ours, median theirs, median ratio [min-max]`` as one line."""
        ratios = self.ratios
        return (f"{statistics.median(self.ours):,.1f}{unit} vs {statistics.median(self.theirs):,.1f}{unit}: "
                f"ratio {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] "
                f"over {len(ratios)} pairs")


def alternate(ours: Callable[[], float], theirs: Callable[[], float], pairs: int) -> Pairs:
    """Run ``ours`` and ``theirs`` alternately ``pairs`` times (who goes first alternates too)."""
    result = Pairs([], [])
    for index in range(pairs):
        if index % 2 == 0:
            result.ours.append(ours())
            result.theirs.append(theirs())
        else:
            result.theirs.append(theirs())
            result.ours.append(ours())
    return result


def orion_python() -> str:
    """The interpreter of a venv holding Oríon 0.2.7, created on first use (needs PyPI)."""
    home = VENVS / "orion"
    python = home / "bin" / "python"
    if not python.exists():
        print(f"creating {home} with {' '.join(ORION_REQUIREMENTS)} (once)", file=sys.stderr, flush=True)
        venv.create(home, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *ORION_REQUIREMENTS], check=True)
    return str(python)


def run_python(python: str, code: str, args: Sequence[str], cwd: str) -> str:
    """Run ``code`` with another interpreter and return what it printed."""
    proc = subprocess.run([python, "-c", code, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def scale_options(doc: str | None, workers: list[int]) -> argparse.Namespace:
    """The options of the many-workers benchmarks (``scale_floor``, ``scale_threads``): the fleet sizes,
    the rounds of trials and a trial's seconds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=workers)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    return parser.parse_args()
