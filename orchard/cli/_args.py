"""What every command shares: the one-line argument parser, common options, output helpers.

Kept free of heavy imports: ``orchard --help`` must start fast.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import re
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from orchard.errors import meant
from orchard.report import each_key_once, finite_only
from orchard.terminal import one_line

if TYPE_CHECKING:  # pragma: no cover
    from orchard.experiment import Experiment
    from orchard.storages import BaseStorage

__all__ = [
    "GivenOnce",
    "OneLineParser",
    "UsageError",
    "add_common",
    "each_key_once",
    "format_age",
    "format_params",
    "missing_storage_file",
    "open_experiment",
    "open_storage",
    "parse_literal",
    "refuse_in_process",
    "storage_uri",
    "strict_json",
]

PROG = "orchard"


class UsageError(Exception):
    """A command line the parser rejected; exit code 2 with one line."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block) and raise :class:`UsageError`.

    An invalid choice (``orchard stauts``, ``orchard db dupm``) names the nearest valid one. Long
    options are never abbreviated: ``insert --objectiv 1`` was taken as ``--objective``, so a script's
    typo meant another option silently (and an option added later would change what it means);
    an unknown option is refused, naming the one meant. An unknown option is named before a missing one.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"allow_abbrev": False, **kwargs})
        self._given: list[str] = []  # the arguments being parsed, for error()

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._given = [str(arg) for arg in (sys.argv[1:] if args is None else args)]
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        found = re.match(r"argument [^:]+: invalid choice: (.+?) \(choose from (.+)\)$", message)
        if found:
            given = str(parse_literal(found.group(1)))
            before = self._given[:self._given.index(given)] if given in self._given else []
            unknown = self.unknown_options(before)  # `orchard --stoage x status`: x was taken for the command
            near = meant(given, [str(c) for c in re.findall(r"'([^']*)'", found.group(2))])
            if unknown:
                message = self.unrecognized(unknown)
            elif near:
                message += f"; did you mean {near!r}?"
        elif found := re.match(r"argument (\S+): expected one argument$", message):
            message += self._dash_value_hint(found.group(1).split("/"))
        elif message.startswith("the following arguments are required") and (
                unknown := self.unknown_options(self._given)):
            message = self.unrecognized(unknown)  # db dump --outptu: not just -o
        raise UsageError(f"{message}; see '{self.prog} --help'")

    def _dash_value_hint(self, options: list[str]) -> str:
        """How to give one of ``options`` its value that starts with '-': argparse takes ``--name -exp`` for
        two options and said only "expected one argument"."""
        for option, value in zip(self._given, self._given[1:]):
            known = value.split("=", 1)[0] in self._option_string_actions
            if option in options and value[:1] == "-" and not known:
                return f"; a value that starts with '-' is joined to its option by '=': {options[-1]}={value}"
        return ""

    def unknown_options(self, tokens: list[str]) -> list[str]:
        """The tokens of ``tokens`` that look like options and are none of this parser's."""
        known = self._option_string_actions
        tokens = tokens[:tokens.index("--")] if "--" in tokens else tokens
        return [token for token in tokens if token[:1] in self.prefix_chars and len(token) > 1
                and not self._negative_number_matcher.match(token) and token.split("=", 1)[0] not in known
                and token[:2] not in known]  # -n3: -n with its value

    def unrecognized(self, extra: list[str]) -> str:
        """``unrecognized arguments: --objectiv (--objectiv: did you mean --objective?)`` for ``extra``."""
        options = list(self._option_string_actions)
        for token in extra:
            given = token.split("=", 1)[0]
            near = meant(given, options) if token.startswith("-") else None
            if near is None and given.startswith("--"):  # an abbreviation, refused: the one it abbreviates
                starting = [option for option in options if option.startswith(given)]
                near = starting[0] if len(starting) == 1 else None
            if near:
                return f"unrecognized arguments: {' '.join(extra)} ({given}: did you mean {near}?)"
        return f"unrecognized arguments: {' '.join(extra)}"


class GivenOnce(argparse.Action):
    """An option given empty, or twice with two values, is refused: ``db rm -n keep … -n old`` took 'old'."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        before = getattr(namespace, self.dest, None)
        if isinstance(values, str) and not values.strip():  # `status -n "$EXP"` showed every experiment
            raise UsageError(f"{'/'.join(self.option_strings)} is empty (an unset shell variable?); give "
                             f"{self.option_strings[0]} {self.metavar}; see '{parser.prog} --help'")
        if before is not None and before != values:
            raise UsageError(f"{'/'.join(self.option_strings)} is given twice ({before!r}, then {values!r}); "
                             f"give it once; see '{parser.prog} --help'")
        setattr(namespace, self.dest, values)


def add_common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """Add the options every command takes: ``--storage`` and ``--debug``.

    They are accepted before the command (``top=True``: the main parser, with the
    defaults) and after it (the commands' parsers, with suppressed defaults so
    they do not reset a value given before the command). An option the parser
    already has is left as it is.
    """
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    options: list[tuple[str, dict[str, Any]]] = [
        ("--storage", {"metavar": "URI", "help": "path ending in .pkl, pickle://PATH, mongodb://HOST/DB, "
                       "mongodb+srv://HOST/DB, mongomock:// or memory:// (default: $ORCHARD_STORAGE, "
                       "then ./orchard.yaml, then ~/.config/orchard/config.yaml, then ./orchard.pkl)"}),
        ("--debug", {"action": "store_true",
                     "help": "log debug messages on stderr, and print the traceback of an error"}),
    ]
    for flag, settings in options:
        try:
            parser.add_argument(flag, **settings, **default)
        except argparse.ArgumentError:  # defined by the command itself (e.g. plot's --storage)
            pass


def add_name(parser: argparse.ArgumentParser, required: bool = True, meaning: str | None = None) -> None:
    """Add ``-n/--name``, the experiment's name (``meaning``: its help text for this command)."""
    parser.add_argument("-n", "--name", required=required, metavar="NAME", action=GivenOnce,
                        help=meaning or "the experiment's name: ASCII letters, digits and . _ - + = @ "
                                        "(at most 128)")


def open_storage(args: argparse.Namespace) -> BaseStorage:
    """Open the storage named by ``--storage`` (flag > ``ORCHARD_STORAGE`` > config file > default).

    Raises:
        ConfigurationError: unknown scheme or malformed URI.
        StorageError: the storage cannot be opened.
    """
    from orchard.storages import get_storage

    return get_storage(storage_uri(args))


def refuse_in_process(storage: BaseStorage, lost: str, undone: str) -> None:
    """Refuse, for a command that stores ``lost``, a storage in this command's memory (``memory://``,
    ``mongomock://``): the command said it stored them, and they were gone at its exit.

    Raises:
        ConfigurationError: ``storage`` lives in this process only; the message ends with ``undone``.
    """
    from orchard.errors import ConfigurationError

    if storage.process_local:
        raise ConfigurationError(f"{storage.redacted_uri} lives in the memory of this command only, so {lost} "
                                 "would be lost when it exits; give a pickle file (e.g. --storage "
                                 f"runs/orchard.pkl) or a MongoDB URI; {undone}")


def storage_uri(args: argparse.Namespace) -> str:
    """The storage URI the command uses: ``--storage`` > ``ORCHARD_STORAGE`` > config file > default."""
    from orchard import config
    from orchard.storages import DEFAULT_STORAGE

    return str(config.resolve("storage", flag=getattr(args, "storage", None)) or DEFAULT_STORAGE)


def missing_storage_file(args: argparse.Namespace) -> str | None:
    """The path of the pickle file the command would read, if it does not exist (else ``None``).

    Read-only commands stop there instead of opening the storage, which would create
    the file's folder and lock file.
    """
    from orchard.storages._uri import pickle_file, pickle_path

    uri = storage_uri(args).strip()
    if pickle_path(uri) is None:
        return None
    path = pickle_file(uri)[0]  # raises for a URI naming no file, or a folder
    return None if os.path.exists(os.path.expanduser(path)) else path


def open_experiment(args: argparse.Namespace) -> Experiment:
    """Open the existing experiment ``--name`` in the storage (never creating a missing pickle file).

    Raises:
        ExperimentNotFoundError: no such experiment (the message lists those that exist).
    """
    from orchard.errors import ExperimentNotFoundError
    from orchard.experiment import Experiment

    missing = missing_storage_file(args)
    if missing is not None:
        raise ExperimentNotFoundError(
            f"no experiment named {args.name!r}: storage file {missing} does not exist; "
            "check --storage and the folder you run from"
        )
    storage = open_storage(args)
    return Experiment(storage, storage.require_experiment(args.name))


def parse_literal(text: str) -> Any:
    """A Python literal (``1``, ``0.5``, ``True``, ``'a'``), or the text itself if it is none."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def format_params(params: dict[str, Any] | None) -> str:
    """``x=0.31, y=2`` (floats with 6 significant digits)."""
    if not params:
        return "-"
    return ", ".join(f"{one_line(k)}={format_value(v)}" for k, v in params.items())


def format_value(value: Any) -> str:
    """A compact rendering of one value (floats with 6 significant digits), on one line: control characters,
    line breaks and tabs escaped."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return one_line(str(value))


def strict_json(value: Any, indent: int | None = 2) -> str:
    """``value`` as standard JSON (``indent=None``: on one line); a non-finite float is ``null``
    (:func:`orchard.report.finite_only`)."""
    import json

    return json.dumps(finite_only(value), indent=indent, default=str, allow_nan=False)


def format_age(seconds: float | None) -> str:
    """``3.2 s``, ``4 min``, ``2.5 h`` (``-`` when unknown)."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_time(stamp: float | None) -> str:
    """A POSIX time as local ``YYYY-MM-DD HH:MM:SS`` (``-`` when unknown)."""
    if not stamp:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def confirm(question: str) -> bool:
    """Ask a yes/no question on the terminal; only ``y``/``yes`` is a yes."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")
