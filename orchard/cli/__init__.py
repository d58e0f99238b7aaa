"""The ``orchard`` command line: one module per command family.

=========================  ======================================================
module                     commands
=========================  ======================================================
:mod:`orchard.cli.hunt`    ``hunt``: run a script as trials of an experiment
:mod:`orchard.cli.status`  ``status``, ``list``, ``info``: look at experiments
:mod:`orchard.cli.insert`  ``insert``: add a point for the next worker
:mod:`orchard.cli.db`      ``db test|dump|load|rm|release``: storage tools
:mod:`orchard.cli.plot`    ``plot``: figures (registered only if importable)
:mod:`orchard.cli.serve`   ``serve``: the live, read-only dashboard
=========================  ======================================================

Each module has ``add_parser(subparsers)`` adding its parser(s); a parser's
``func`` default is its ``run(args) -> int``. The option tables of
``docs/cli.md`` are generated from these parsers by :mod:`orchard.cli._reference`. Failures print one line,
``orchard: error: …``, and exit 1 (2 for a bad command line or configuration, 130 on Ctrl-C, after
which the process dies of SIGINT: ``_orchard_launch``, 143 on SIGTERM, with what was released); ``--debug``
adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from orchard.cli._args import PROG, OneLineParser, UsageError, add_common
from orchard.cli._output import OutputError, checked_stdout
from orchard.terminal import PrintableFormatter, printable
from orchard.errors import Interrupted

__all__ = ["build_parser", "main"]

_COMMAND_MODULES = ("hunt", "status", "insert", "db", "serve")
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141
#: Commands that write (files, the storage) and that SIGTERM or SIGHUP stop as Ctrl-C does, cleaning up:
#: killed at once, db dump left its temporary file and insert --file said nothing of the rows it stored.
_SIGNALLED = ("insert", "db", "plot")


def build_parser() -> OneLineParser:
    """Build the ``orchard`` parser with every command registered."""
    from orchard import __version__

    parser = OneLineParser(prog=PROG, description="Masterless hyperparameter optimization.")
    parser.add_argument("--version", action="version", version=f"orchard {__version__}")
    add_common(parser, top=True)
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=OneLineParser)
    commands.required = True
    for name in _COMMAND_MODULES:
        module: Any = importlib.import_module(f"orchard.cli.{name}")
        module.add_parser(commands)
    _add_plot(commands)
    return parser


def _add_plot(commands: Any) -> None:
    """Register ``plot`` from :mod:`orchard.cli.plot`; a broken import becomes a one-line error."""
    try:
        module: Any = importlib.import_module("orchard.cli.plot")
        parser = module.add_parser(commands)
    except ImportError as err:
        if getattr(err, "name", None) == "orchard.cli.plot":
            return
        parser = commands.add_parser("plot", help="draw a figure (unavailable: see the error)")
        parser.add_argument("rest", nargs=argparse.REMAINDER)
        parser.set_defaults(func=lambda args, error=err: _unavailable(error))
    if isinstance(parser, argparse.ArgumentParser):
        add_common(parser)


def _unavailable(err: ImportError) -> int:
    from orchard.errors import ConfigurationError

    raise ConfigurationError(f"orchard plot is unavailable: {err}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    with checked_stdout() as output:
        code = _run(argv)
        if output.failure is None:  # what is still buffered (--help, a short listing) written now, or said
            code = _run(None, flush=code)
    if output.failure is None:
        return code
    _silence_stdout()  # what is left in its buffer cannot be written either: dropped, not said again at exit
    if code == 0 and isinstance(output.failure, OutputError):  # argparse ignores its write errors (--help)
        code = _report(output.failure, debug=False)
    return code


def _run(argv: Sequence[str] | None, flush: int | None = None) -> int:
    """Run the command line ``argv``, or flush stdout and return ``flush``, a command's exit code."""
    args: argparse.Namespace | None = None
    try:
        if flush is not None:
            if sys.stdout is not None:  # None: started with >&-
                sys.stdout.flush()
            return flush
        args = _parse(list(sys.argv[1:] if argv is None else argv))
        _configure_logging(args.debug)
        _check_current_directory()
        if getattr(args, "subcommand", None) not in _SIGNALLED:
            return int(args.func(args))
        from orchard.interruption import interruptible

        with interruptible():  # SIGTERM or SIGHUP end it as Ctrl-C does: its temporary files removed, said
            return int(args.func(args))
    except SystemExit as exit_:  # --help, --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except BrokenPipeError:  # the reader went away (orchard status | head): stop quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM during hunt (an Interrupted says what it released)
        terminated = isinstance(err, Interrupted) and err.terminated
        running = getattr(args, "subcommand", None) == "hunt"  # what hunt's workers released
        what = f"; {err}" if isinstance(err, Interrupted) and (running or err.args) else ""
        print(f"{PROG}: {'stopped by SIGTERM' if terminated else 'interrupted'}{what}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except BaseException as err:  # noqa: BLE001 - every other failure: one line, exit code by kind
        return _report(err, bool(args is not None and args.debug))


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; an unknown option points at the help of the command it was given to."""
    parser = build_parser()
    args: argparse.Namespace
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = _command_parser(parser, [name for name in (getattr(args, "subcommand", None),
                                                             getattr(args, "db_command", None)) if name])
        priors = [token for token in extra if _PRIOR_TOKEN.search(token)]
        hint = ""
        if priors and getattr(args, "subcommand", None) == "hunt":
            hint = (f"; a prior such as {priors[0]!r} goes after the program it is passed to, e.g. "
                    "orchard hunt -n exp python train.py --lr~'loguniform(1e-5, 1)'")
        raise UsageError(f"{command.unrecognized(extra)}{hint}; see '{command.prog} --help'")
    return args


def _command_parser(parser: OneLineParser, path: list[str]) -> OneLineParser:
    """The parser of the (sub-)command ``path`` (``["db", "dump"]``) of ``parser``."""
    for name in path:
        for action in parser._actions:  # noqa: SLF001 - argparse keeps its sub-parsers nowhere else
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:  # noqa: SLF001
                parser = action.choices[name]
                break
    return parser


#: A token that defines a dimension (``--lr~loguniform(...)``), found among hunt's own options.
_PRIOR_TOKEN = re.compile(r"~\s*[A-Za-z_]\w*\s*\(")


def _report(err: BaseException, debug: bool) -> int:
    """Print the one-line error (and the traceback with --debug); return the exit code."""
    from orchard.errors import ConfigurationError, OrchardError

    if debug:
        traceback.print_exception(type(err), err, err.__traceback__)
    message = _shortened(printable(" ".join(str(err).split()))) or type(err).__name__
    if isinstance(err, (UsageError, ConfigurationError)):
        code = 2
    elif isinstance(err, (OrchardError, OutputError)):  # OutputError names standard output itself
        code = 1
    elif isinstance(err, OSError):
        code, message = 1, f"{message} ({type(err).__name__})"
    else:
        code = 1
        message = f"unexpected {type(err).__name__}: {message}"
        if not debug:
            message += "; run again with --debug for the traceback"
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


#: Characters of an error message kept from its start and from its end (what to do is said last).
_HEAD, _TAIL = 1000, 600


def _shortened(message: str) -> str:
    """``message`` cut in its middle if it is long: a value it quotes (5,000 digits) made a line of 5 KB."""
    if len(message) <= _HEAD + _TAIL + 100:
        return message
    cut = len(message) - _HEAD - _TAIL
    return f"{message[:_HEAD]} …[{cut} characters; --debug shows them]… {message[-_TAIL:]}"


def _check_current_directory() -> None:
    """Refuse to run in a directory deleted since the shell entered it: every command (``list --storage
    /abs/path`` too) said only "[Errno 2] No such file or directory (FileNotFoundError)"."""
    import os

    from orchard.errors import ConfigurationError

    try:
        os.getcwd()
    except FileNotFoundError:
        shell = os.environ.get("PWD", "")  # the shell's name for it, unless it is another directory's
        named = f" ({printable(shell)}, as the shell names it)" if shell and not os.path.exists(shell) else ""
        raise ConfigurationError(f"the current directory{named} no longer exists: it was deleted or moved "
                                 "away; cd to an existing directory and run the command again") from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so flushing it at exit does not raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # a library that sets its own loggers' level (Dask's: INFO) printed 30 lines through this handler
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    handler.setFormatter(PrintableFormatter(
        f"{PROG}: %(levelname)s: " + ("%(name)s: %(message)s" if debug else "%(message)s")))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
