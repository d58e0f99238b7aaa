"""Every ``bash`` and ``python`` block of ``docs/quickstart.md`` runs as written, in order.

The blocks run in an empty folder that holds a copy of ``examples/``, as a user runs them from
the root of a clone: ``bash`` blocks with ``bash -euo pipefail``, ``python`` blocks as scripts
run by this interpreter, each one after the other in the same folder. The venv's ``orchard`` and
``python`` come first on ``PATH``; ``HOME`` is a scratch folder and ``ORCHARD_*`` variables are
cleared, so no user config file or environment setting changes what the page does. Blocks
tagged anything else (``text``: install commands, output samples) are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "docs" / "quickstart.md"
RUNNABLE = ("bash", "python")
BLOCK_TIMEOUT = 300

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language tag, its code and the line it starts on."""

    lang: str
    code: str
    line: int


def extract_blocks(markdown: str) -> list[Block]:
    """Every fenced block of ``markdown``, in order, with its language tag."""
    blocks = []
    for match in _FENCE.finditer(markdown):
        lang = match["info"].strip().split(" ")[0] if match["info"].strip() else ""
        line = markdown.count("\n", 0, match.start()) + 1
        blocks.append(Block(lang, match["body"], line))
    return blocks


def scratch_env(home: Path) -> dict[str, str]:
    """The environment of the blocks: venv first on PATH, a clean HOME, no ORCHARD_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["HOME"] = str(home)
    env.pop("PYTHONPATH", None)
    return env


def run_block(block: Block, index: int, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one block in ``cwd`` and return the finished process (whatever its exit code)."""
    if block.lang == "bash":
        args = ["bash", "-euo", "pipefail", "-c", block.code]
    elif block.lang == "python":
        script = cwd / f"quickstart_block_{index}.py"
        script.write_text(block.code)
        args = [sys.executable, str(script)]
    else:
        raise ValueError(f"block at line {block.line} is tagged {block.lang!r}, not bash or python")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT, check=False, stdin=subprocess.DEVNULL)


def check_block(block: Block, index: int, cwd: Path, env: dict[str, str]) -> None:
    proc = run_block(block, index, cwd, env)
    assert proc.returncode == 0, (
        f"docs/quickstart.md block {index} ({block.lang}, line {block.line}) exited {proc.returncode}\n"
        f"--- code\n{block.code}--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    )


@pytest.fixture
def scratch(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An empty working folder with a copy of examples/, and the blocks' environment."""
    work, home = tmp_path / "work", tmp_path / "home"
    home.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "runs", "*.pkl", "*.lock"))
    return work, scratch_env(home)


def test_quickstart_blocks_are_all_tagged() -> None:
    blocks = extract_blocks(QUICKSTART.read_text())
    untagged = [b.line for b in blocks if not b.lang]
    assert not untagged, f"untagged code blocks in docs/quickstart.md at lines {untagged}: tag them bash, python or text"
    runnable = [b for b in blocks if b.lang in RUNNABLE]
    assert sum(b.lang == "bash" for b in runnable) >= 5 and sum(b.lang == "python" for b in runnable) >= 2


def test_extraction_keeps_order_and_tags() -> None:
    text = "intro\n```bash\necho one\n```\n\n```text\nout\n```\n    ```python\n    print(2)\n    ```\n"
    blocks = extract_blocks(text)
    assert [(b.lang, b.line) for b in blocks] == [("bash", 2), ("text", 6), ("python", 9)]
    assert blocks[0].code == "echo one\n"


def test_a_failing_block_fails_the_check(scratch: tuple[Path, dict[str, str]]) -> None:
    """The harness must catch a broken command, including one that fails mid-pipeline."""
    work, env = scratch
    for block in (Block("bash", "orchard no-such-command\n", 1), Block("bash", "false | cat\n", 2),
                  Block("python", "raise SystemExit(3)\n", 3)):
        with pytest.raises(AssertionError, match="exited"):
            check_block(block, 0, work, env)


@pytest.mark.slow
def test_quickstart_runs_as_written(scratch: tuple[Path, dict[str, str]]) -> None:
    work, env = scratch
    blocks = [b for b in extract_blocks(QUICKSTART.read_text()) if b.lang in RUNNABLE]
    for index, block in enumerate(blocks, start=1):
        check_block(block, index, work, env)
    # what the page promises at the end: the experiments it ran are in ./orchard.pkl
    listing = subprocess.run(["orchard", "list", "--json"], cwd=work, env=env, capture_output=True,
                             text=True, check=True).stdout
    assert '"quadratic-bo"' in listing and '"rosenbrock"' in listing
