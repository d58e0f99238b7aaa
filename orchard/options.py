"""Plug-in options: a class declares its options with their defaults; one check fills and refuses.

Algorithms (:mod:`orchard.algorithms`) and pruners (:mod:`orchard.pruners`) are
both configured as ``{name: {option: value}}``; both subclass :class:`Configurable`,
so an unknown option is refused with the same one-line message naming the plug-in
and listing the valid options, and the stored form always spells every option out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from orchard.errors import ConfigurationError, did_you_mean

__all__ = ["Configurable"]


class Configurable:
    """A plug-in with named options (:attr:`OPTIONS`, with their defaults) checked by :meth:`check_options`."""

    #: What the plug-in is, in messages ("algorithm", "pruner").
    KIND: ClassVar[str] = "plug-in"
    #: The registry name of the plug-in.
    name: ClassVar[str] = ""
    #: Every option the plug-in accepts, with its default.
    OPTIONS: ClassVar[dict[str, Any]] = {}
    #: Optuna's names of options that have another name here, for the message refusing one.
    OPTUNA_NAMES: ClassVar[dict[str, str]] = {}

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``options`` with defaults filled in, after checking names and values.

        Raises:
            ConfigurationError: an unknown option or an invalid value.
        """
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            valid = ", ".join(sorted(cls.OPTIONS)) or "(none)"
            ours = cls.OPTUNA_NAMES.get(unknown[0])
            hint = (f" (Optuna's {unknown[0]} is {ours} here)" if ours
                    else did_you_mean(unknown[0], cls.OPTIONS))
            raise ConfigurationError(f"{cls.KIND} {cls.name!r} has no option {', '.join(map(repr, unknown))}"
                                     f"{hint}; valid options: {valid}")
        merged = {**cls.OPTIONS, **options}
        cls._check_values(merged)
        return merged

    @classmethod
    def _check_values(cls, options: dict[str, Any]) -> None:
        """Validate option values (subclasses override); raise ``ConfigurationError``."""
