"""The ``orchard`` command's entry point, a module of its own outside the ``orchard`` package.

Ctrl-C in the first tenth of a second of any ``orchard`` command, while Python imported the package,
printed a traceback and exited 1 or -2: an entry point inside the package runs only once the package is
imported, too late to catch it. Here the import is caught, and the command stops as it does on Ctrl-C
later: ``orchard: interrupted``, then the end :func:`end_by_ctrl_c` gives it. (Before this module runs,
Ctrl-C is the interpreter's own.) ``python -m orchard`` and ``python -m orchard.cli`` run :func:`main` too.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: each import here is one Ctrl-C could land in before the try
if TYPE_CHECKING:
    from types import TracebackType
    from typing import NoReturn

__all__ = ["end_by_ctrl_c", "main"]

EXIT_INTERRUPTED = 130  # as orchard.cli's


def main() -> int:
    """Import and run :func:`orchard.cli.main` and return its exit code; an interruption (Ctrl-C, also
    during the import or between the steps that main catches it in) says so in one line and ends by
    :func:`end_by_ctrl_c`."""
    try:
        from orchard.cli import main as run

        code = run()
    except KeyboardInterrupt:
        print("orchard: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        end_by_ctrl_c()
    return code


def end_by_ctrl_c() -> NoReturn:
    """End this process as Python ends on an uncaught Ctrl-C: it shuts down as at any exit (``atexit``
    handlers run, files are flushed), then dies of SIGINT.

    A shell that got the Ctrl-C too (a loop, a script running ``orchard hunt`` again and again) stops
    only if its command died of it: one that exits 130 handled the Ctrl-C, and the loop went on to the
    next command. The shell's ``$?`` is 130 either way. The command said what it did: no traceback.
    """
    sys.excepthook = _told
    raise KeyboardInterrupt


def _told(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    """``sys.excepthook`` for the uncaught Ctrl-C :func:`end_by_ctrl_c` raises: prints nothing."""
