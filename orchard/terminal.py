"""Text from a storage made safe to print on a terminal, log lines that print it so, and the check that
text from a command line is UTF-8."""

from __future__ import annotations

import logging

__all__ = ["PrintableFormatter", "escape_unconfigured_logs", "is_utf8", "one_line", "printable", "storable_text"]

#: Every control character but the line break and the tab, written as ``\xNN`` (C0, DEL, C1), and the
#: bidirectional controls as ``\uNNNN``: one reorders what the terminal shows after it on its line.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))
             if code not in (0x09, 0x0A)}
_CONTROLS.update({code: f"\\u{code:04x}" for code in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
                                                       *range(0x2066, 0x206A))})


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: its control characters (but line breaks and tabs) escaped.

    Stored strings (a ``choices`` value, a worker name, a script's error message) come from
    whoever can write to the storage: printed as they are, an escape sequence in one clears the
    screen, rewrites what was printed, sets the window title or, in some terminals, the
    clipboard, and a bidirectional control (U+202E) shows the rest of its line reversed.
    Escaping twice changes nothing.
    """
    return text.translate(_CONTROLS)


#: :data:`_CONTROLS` and the line breaks and tab that :func:`printable` keeps (Unicode's line and paragraph
#: separators too, which ``splitlines`` and some terminals break at).
_ONE_LINE = {**_CONTROLS, 0x09: "\\x09", 0x0A: "\\x0a", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(text: str) -> str:
    """``text`` as :func:`printable` writes it, its line breaks and tabs escaped too: one stored string (a
    name another program stored, a worker's, a ``choices`` value) shown in a row or a line of a report.

    A newline in an experiment's name split its row of ``orchard list`` in two, the second looking like
    another experiment's. Escaping twice changes nothing.
    """
    return text.translate(_ONE_LINE)


def is_utf8(text: str) -> bool:
    """Whether ``text`` is UTF-8 text: the bytes of a command line that are not (a Latin-1 ``\\xe9``) reach
    Python as lone surrogates, which MongoDB refuses (an ``unexpected UnicodeEncodeError``) and no script
    can report back in its results JSON."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_text(text: str) -> str:
    """``text`` with the bytes it holds that are no UTF-8 (a file named in Latin-1 reaches Python as
    ``'\\udcff'``) written as ``\\xff``: MongoDB stores UTF-8 only, and refused the whole command or result
    holding one, so every hunt of such a script stopped on an ``unexpected UnicodeEncodeError``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate no file name holds
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class PrintableFormatter(logging.Formatter):
    """Log lines with their control characters escaped: a message may quote a stored string."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def escape_unconfigured_logs() -> None:
    """Escape the log lines of a process without logging configuration (a pool's worker process).

    Python prints its warnings through :data:`logging.lastResort`, the message alone on stderr: a
    worker name or a source's name quoted in one reached the terminal raw. Only their control
    characters change.
    """
    if logging.lastResort is not None:
        logging.lastResort.setFormatter(PrintableFormatter())
