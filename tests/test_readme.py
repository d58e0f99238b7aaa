"""The README's commands run as written, in order, on the installed environment.

Its ``bash`` and ``python`` blocks run one after the other in an empty folder holding a copy of
``examples/`` (as from the root of a clone), with the harness of ``tests/test_quickstart.py``:
the venv first on ``PATH``, a scratch ``HOME``, no ``ORCHARD_*`` variables. What cannot run here
is skipped explicitly, each with its reason, and shows up as a SKIPPED test:

- inside ``&&`` chains, creating the venv, activating it and ``pip install`` (this suite already
  runs in the installed venv); the rest of the chain (the example run) does run;
- the test command itself (it would run this suite again);
- the cluster block (``srun`` needs SLURM and a MongoDB host).

Every skip rule must match something, so a rule cannot silently outlive the line it was for.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_quickstart import BLOCK_TIMEOUT, ROOT, RUNNABLE, Block, extract_blocks, run_block, scratch_env

README = ROOT / "README.md"

#: parts of an ``&&`` chain that are not run, and why
SKIPPED_PARTS = {
    "python3 -m venv .venv": "creates the venv this suite already runs in",
    ". .venv/bin/activate": "activates the venv this suite already runs in (it is first on PATH)",
    "pip install": "installs what this suite already runs with",
    "orchard serve": "serves until Ctrl-C; tests/test_dashboard_live.py starts it as a real process",
}
#: whole blocks that are not run (found by a line they contain), and why
SKIPPED_BLOCKS = {
    "# run the tests": "runs this test suite itself",
    "srun orchard hunt": "needs a SLURM cluster and a MongoDB host",
}


@dataclass(frozen=True)
class Step:
    """A README block as it is run: its code after skipping, and what was skipped with why."""

    block: Block
    code: str | None  # None: the whole block is skipped
    skipped: tuple[tuple[str, str], ...]  # (the text not run, the reason)


def _skipped_part(part: str) -> str | None:
    return next((reason for pattern, reason in SKIPPED_PARTS.items() if pattern in part), None)


def plan(markdown: str) -> list[Step]:
    """The README's runnable blocks in order, each with what is skipped from it."""
    steps = []
    for block in (b for b in extract_blocks(markdown) if b.lang in RUNNABLE):
        whole = next(((p, r) for p, r in SKIPPED_BLOCKS.items() if p in block.code), None)
        if whole is not None:
            steps.append(Step(block, None, ((block.code.strip(), whole[1]),)))
            continue
        if block.lang != "bash":
            steps.append(Step(block, block.code, ()))
            continue
        kept_lines, skipped = [], []
        for line in block.code.replace("\\\n", " ").splitlines():
            parts = re.split(r"\s+&&\s+", line.strip()) if line.strip() else []
            kept = []
            for part in parts:
                reason = None if part.startswith("#") else _skipped_part(part)
                if reason is None:
                    kept.append(part)
                else:
                    skipped.append((part, reason))
            kept_lines.append(" && ".join(kept))
        steps.append(Step(block, "\n".join(kept_lines) + "\n", tuple(skipped)))
    return steps


def _skips() -> list[tuple[int, str, str]]:
    return [(s.block.line, text, reason) for s in plan(README.read_text()) for text, reason in s.skipped]


def test_the_readme_first_screen_has_the_install_run_and_the_test_commands() -> None:
    text = README.read_text()
    first_two = [b for b in extract_blocks(text) if b.lang == "bash"][:2]
    assert "pip install" in first_two[0].code and "python examples/branin.py" in first_two[0].code
    lines = first_two[1].code.splitlines()
    assert lines[0] == "# run the tests" and "pytest" in lines[1], ".ci/run greps these two lines"


def test_every_skip_rule_matches_a_readme_line() -> None:
    skipped = " ".join(text for _, text, _ in _skips())
    for pattern in [*SKIPPED_PARTS, *SKIPPED_BLOCKS]:
        assert pattern in skipped, f"skip rule {pattern!r} matches nothing in README.md: remove it"


@pytest.mark.parametrize(("line", "text", "reason"), _skips(), ids=lambda v: str(v)[:40])
def test_readme_line_not_run(line: int, text: str, reason: str) -> None:
    """One SKIPPED entry per README command that is not run here, with its reason."""
    pytest.skip(f"README.md line {line}: {text.splitlines()[0]!r} is not run: {reason}")


@pytest.mark.slow
@pytest.mark.timeout(BLOCK_TIMEOUT * 4)  # three blocks that each run a whole experiment, then one again
def test_readme_runs_as_written(tmp_path: Path) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    home.mkdir()
    (work / "examples").mkdir(parents=True)
    for script in (ROOT / "examples").glob("*.py"):
        (work / "examples" / script.name).write_text(script.read_text())
    env = scratch_env(home)
    steps = [s for s in plan(README.read_text()) if s.code is not None and s.code.strip()]
    assert len(steps) >= 3, "the install-and-run line, the command-line block and the Python block"
    for index, step in enumerate(steps, start=1):
        proc = run_block(Block(step.block.lang, step.code or "", step.block.line), index, work, env)
        assert proc.returncode == 0, (
            f"README.md block at line {step.block.line} exited {proc.returncode}\n--- code as run\n{step.code}"
            f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
        )
    assert (work / "timeline.html").stat().st_size > 0
    # the Python block, run again, joins its finished experiment and says so instead of idling silently
    python_step = next(s for s in steps if s.block.lang == "python")
    again = subprocess.run([sys.executable, "-c", python_step.code or ""], cwd=work, env=env, text=True,
                           capture_output=True, timeout=BLOCK_TIMEOUT, check=False)
    assert again.returncode == 0, again.stderr
    assert "already completed its 30 trials" in again.stderr
