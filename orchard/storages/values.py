"""The values a storage accepts in a trial, checked at every write (readers check the same on read).

Two values pass every type check and still break whoever reads them: an int
too large to print (Python refuses to turn a 5,000-digit int into text, so
``str``, JSON dumps and plots of its trial fail) and a trial error that is not
a dict of texts. Writes refuse them with one clear line; the pickle reader
(:mod:`orchard.storages.pickled.records`) skips records holding them, naming
them like damage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchard.errors import StorageError
from orchard.trial import INT_LIMIT, MAX_DEPTH  # defined with the trial, where cheap imports reach them

__all__ = ["ERROR_TEXTS", "INT_LIMIT", "MAX_DEPTH", "check_error", "check_params", "int_fits"]

ERROR_TEXTS = ("type", "message", "reason")  # fields of a trial error that, when present, are strings


def int_fits(value: int) -> bool:
    """Whether ``value`` is a 64-bit int (``-2**63 < value < 2**63``)."""
    return -INT_LIMIT < value < INT_LIMIT


def check_params(params: Mapping[str, Any]) -> None:
    """Refuse params holding an int beyond 64 bits.

    Raises:
        StorageError: one names the param and the bound.
    """
    for name, value in params.items():
        if type(value) is int and not int_fits(value):
            raise StorageError(f"param {name!r} is an int of {value.bit_length()} bits; a stored int must fit in "
                               "64 bits (-2**63 < n < 2**63): pass it as a str or a float")


def check_error(error: Any) -> None:
    """Refuse a trial error that is not a dict whose ``type``, ``message`` and ``reason`` are strings.

    Raises:
        StorageError: one says which field is wrong.
    """
    if not isinstance(error, Mapping):
        raise StorageError(f"a trial error must be a dict such as {{'type': ..., 'message': ...}}, "
                           f"not a {type(error).__name__}")
    for name in ERROR_TEXTS:
        if name in error and not isinstance(error[name], str):
            raise StorageError(f"a trial error's {name!r} must be a str, not a {type(error[name]).__name__}")
