"""Text from a storage made safe to print on a terminal."""

from __future__ import annotations

__all__ = ["printable"]

#: Every control character but the line break and the tab, written as ``\xNN`` (C0, DEL, C1), and the
#: bidirectional controls as ``\uNNNN``: one reorders what the terminal shows after it on its line.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0)) if code not in (0x09, 0x0A)}
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
