"""The ``orchard`` command's entry point, a module of its own outside the ``orchard`` package.

Ctrl-C in the first tenth of a second of any ``orchard`` command, while Python imported the package,
printed a traceback and exited 1 or -2: an entry point inside the package runs only once the package is
imported, too late to catch it. Here the import is caught, and the command stops as it does on Ctrl-C
later: ``orchard: interrupted``, exit 130. (Before this module runs, Ctrl-C is the interpreter's own.)
"""

from __future__ import annotations

import sys

__all__ = ["main"]

EXIT_INTERRUPTED = 130  # as orchard.cli's


def main() -> int:
    """Import and run :func:`orchard.cli.main`; Ctrl-C during the import (or between the steps that
    main catches it in) exits 130 in one line."""
    try:
        from orchard.cli import main as run

        return run()
    except KeyboardInterrupt:
        print("orchard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
