"""Standard output whose write errors name it: ``orchard info > /dev/full`` said only "No space left on
device (OSError)", as if the storage's disk were full, and ``orchard --help > /dev/full`` exited 0
having written nothing.

:func:`checked_stdout` puts a :class:`CheckedOutput` in place of ``sys.stdout`` while a command runs;
its write and flush errors (but a closed pipe's, which the command line ends quietly) are raised as
:class:`OutputError`, which :func:`orchard.cli.main` prints as one line naming standard output. Text
the stream cannot encode is written escaped (``\\udcff``), not raised.

A command that changes the storage calls :func:`print_stored` to say what it stored: should standard output
then fail (``orchard insert ... > /dev/full``), the error still exits 1 (what the command was to print is
lost) and says that the change was stored all the same, and what it was, so that no one runs the command
again to make it: it said only "cannot write to standard output", as if nothing had been done.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from typing import Any, TextIO, cast

__all__ = ["CheckedOutput", "OutputError", "checked_stdout", "print_stored"]


class OutputError(OSError):
    """Standard output could not be written (a full disk behind ``>``, a device error); ``errno`` and
    ``strerror`` are the system's."""

    #: What the command had stored when standard output failed (:func:`print_stored`), if anything.
    stored: str | None = None

    def __str__(self) -> str:
        said = f"cannot write to standard output: {self.strerror or 'write error'}"
        if self.stored is not None:
            said += f"; the change was stored all the same: {self.stored}"
        return said


class CheckedOutput(io.TextIOBase):
    """A text stream writing through ``stream``, its write errors raised as :class:`OutputError`."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.failure: OSError | None = None  # a write failed: what its buffer holds cannot be written either
        self.stored: str | None = None  # what the command has stored so far (print_stored)

    def write(self, text: str) -> int:
        with self._checked():
            return self.stream.write(text)

    def flush(self) -> None:
        with self._checked():
            self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self.stream.errors

    def close(self) -> None:
        """Leave the real stream open: it outlives the command (the interpreter flushes it at exit)."""

    def __getattr__(self, name: str) -> Any:  # buffer, line_buffering, ...
        return getattr(self.stream, name)

    @contextlib.contextmanager
    def _checked(self) -> Iterator[None]:
        try:
            yield
        except BrokenPipeError as err:  # the reader left (orchard list | head): the command stops quietly
            self.failure = err
            raise
        except OSError as err:
            failure = OutputError(err.errno, err.strerror)
            failure.stored = self.stored
            self.failure = failure
            raise failure from err


@contextlib.contextmanager
def checked_stdout() -> Iterator[CheckedOutput]:
    """``sys.stdout`` as a :class:`CheckedOutput` for the ``with`` block, then the stream it was."""
    real = sys.stdout
    if real is None:  # started with >&-: print() writes nothing, as Python's does
        yield CheckedOutput(cast(TextIO, io.StringIO()))
        return
    strict = getattr(real, "errors", None) == "strict" and hasattr(real, "reconfigure")
    if strict:  # PYTHONIOENCODING=utf-8, an ASCII locale: a path holding b"\xff" or a "…" ended a command in
        with contextlib.suppress(OSError, ValueError):  # an 'unexpected UnicodeEncodeError': written escaped
            real.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    checked = CheckedOutput(real)
    sys.stdout = cast(TextIO, checked)
    try:
        yield checked
    finally:
        sys.stdout = real
        if strict:
            with contextlib.suppress(OSError, ValueError):
                real.reconfigure(errors="strict")  # type: ignore[union-attr]


def print_stored(line: str) -> None:
    """Print ``line``, which says what the command stored, and remember it for an :class:`OutputError`.

    Said by the error if standard output fails from now on (the line itself may then be lost):
    several lines are said in order.
    """
    out = sys.stdout
    if isinstance(out, CheckedOutput):
        out.stored = line if out.stored is None else f"{out.stored}; {line}"
    print(line)
