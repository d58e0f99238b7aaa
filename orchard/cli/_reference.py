"""The option tables of ``docs/cli.md``, generated from the argparse parsers.

``docs/cli.md`` marks each generated table with a pair of HTML comments::

    <!-- options: db dump -->
    | option | meaning |
    ...
    <!-- /options -->

``python -m orchard.cli._reference docs/cli.md`` rewrites every marked table
from the parsers (``--check`` only reports drift and exits 1), and
``tests/test_cli.py`` fails when the page and ``--help`` disagree. ``orchard``
alone names the options every command takes (``--storage``, ``--debug``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

__all__ = ["command_parsers", "options_table", "render_page"]

_BLOCK = re.compile(r"(<!-- options: (?P<command>[a-z ]+) -->\n)(?P<table>.*?)(<!-- /options -->)", re.DOTALL)
_COMMON = ("--storage", "--debug")


def command_parsers(root: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every parser under ``root`` by its command (``"orchard"``, ``"hunt"``, ``"db dump"``, …)."""
    found = {"orchard": root}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:  # argparse keeps its sub-parsers here and nowhere public
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    command = f"{prefix} {name}".strip()
                    found[command] = child
                    walk(child, command)

    walk(root, "")
    return found


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    value = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
    return ", ".join(f"`{flag}`" for flag in action.option_strings[:-1]) + (
        ", " if len(action.option_strings) > 1 else "") + f"`{action.option_strings[-1]}{value}`"


def _meaning(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = parser._get_formatter()._expand_help(action) if action.help else ""  # %(default)s and co.
    return " ".join(text.split()).replace("|", "\\|")


def options_table(parser: argparse.ArgumentParser, common: bool = False) -> str:
    """The markdown table of ``parser``'s arguments (only ``--storage``/``--debug`` when ``common``)."""
    rows = ["| option | meaning |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if (action.dest in ("storage", "debug")) != common or action.help == argparse.SUPPRESS:
            continue
        rows.append(f"| {_flags(action)} | {_meaning(action, parser)} |")
    return "\n".join(rows) + "\n"


def render_page(markdown: str, root: argparse.ArgumentParser) -> str:
    """``markdown`` with every marked table regenerated from the parsers under ``root``.

    Raises:
        KeyError: a marker names a command that does not exist.
    """
    parsers = command_parsers(root)

    def table(match: re.Match[str]) -> str:
        command = match["command"].strip()
        if command not in parsers:
            raise KeyError(f"docs marker names unknown command {command!r}; known: {', '.join(parsers)}")
        body = options_table(parsers[command], common=command == "orchard")
        return f"{match.group(1)}{body}{match.group(4)}"

    return _BLOCK.sub(table, markdown)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with ``--check``, compare) the option tables of the given page."""
    from orchard.cli import build_parser

    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"] or ["docs/cli.md"]
    stale = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        fresh = render_page(text, build_parser())
        if fresh != text:
            stale.append(path)
            if not check:
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(fresh)
    verb = "differ from --help" if check else "regenerated"
    for path in stale:
        print(f"{path}: option tables {verb}", file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
