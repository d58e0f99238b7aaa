"""Stopping rules as settings: their parsing, their checks and their typed form.

``stop={"target": 0.1, "patience": 20, "min_delta": 1e-3, "max_cost": 10, "max_time": "2h"}``
(``--stop RULE=VALUE``) is checked by :func:`normalize_stop` before anything is
stored; :class:`StopRules` is what a worker judges with. What each rule means and how
it is judged exactly with N racers: :mod:`orchard.stopping`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from orchard.errors import ConfigurationError, did_you_mean
from orchard.trial import INT_LIMIT

if TYPE_CHECKING:  # pragma: no cover
    from orchard.space import Space

__all__ = ["RULES", "StopRules", "normalize_stop", "parse_duration"]

#: The rules, in the order they are checked when one fold makes several hold.
RULES = ("target", "patience", "max_cost", "max_time")
#: The options a rule takes besides its value.
_OPTIONS = ("min_delta", "cost_metric")

#: One example of each rule and option, for the errors.
_EXAMPLES = {"target": "target=0.1", "patience": "patience=20", "max_cost": "max_cost=10",
             "max_time": "max_time=2h", "min_delta": "min_delta=0.001",
             "cost_metric": "cost_metric=gpu_hours"}

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|min|m|h|d)\s*", re.IGNORECASE)


def parse_duration(value: Any) -> float:
    """Seconds from a number (``3600``) or a text such as ``"2h"``, ``"90m"``, ``"1h30m"``, ``"45s"``.

    Raises:
        ValueError: not a positive finite duration.
    """
    requirement = "a positive duration: seconds, or a text such as 2h, 90m, 1h30m, 45s"
    if isinstance(value, bool):
        raise ValueError(requirement)  # noqa: TRY004 -- rules report every misfit as ValueError
    if isinstance(value, str) and not re.fullmatch(r"\s*[-+]?[\d.eE+-]+\s*", value):
        parts = list(_PART.finditer(value))
        sizes = [_UNITS[p.group(2).lower()] for p in parts]
        whole = bool(parts) and "".join(p.group(0) for p in parts) == value
        if not whole or sorted(set(sizes), reverse=True) != sizes:
            raise ValueError(requirement + ", each unit once, largest first")  # "1h1h", "30m1h": a typo
        value = sum(float(p.group(1)) * size for p, size in zip(parts, sizes))
    return _positive(value, requirement)


def _positive(value: Any, requirement: str) -> float:
    number = _finite(value, requirement)
    if number <= 0:
        raise ValueError(requirement)
    return number


def _finite(value: Any, requirement: str) -> float:
    if isinstance(value, bool):
        raise ValueError(requirement)  # noqa: TRY004
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # an int beyond a float's range too
        raise ValueError(requirement) from None
    if not math.isfinite(number):
        raise ValueError(requirement)
    return number


def _whole(value: Any) -> int:
    requirement = "a positive number of trials"
    number = _positive(value, requirement)
    if not number.is_integer() or number >= INT_LIMIT:
        raise ValueError(requirement if number < INT_LIMIT else f"{requirement} below 2**63")
    return int(number)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a metric name")
    return value.strip()


def _non_negative(value: Any) -> float:
    number = _finite(value, "a number >= 0")
    if number < 0:
        raise ValueError("a number >= 0")
    return number


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "target": lambda v: _finite(v, "a finite number"),
    "patience": _whole,
    "min_delta": _non_negative,
    "max_cost": lambda v: _positive(v, "a positive number"),
    "cost_metric": _name,
    "max_time": parse_duration,
}


def _without_value(item: str) -> str:
    """The error for an item that is not ``RULE=VALUE``: a rule without its value, or not a rule at all."""
    name = item.strip().replace("-", "_")
    if name in RULES or name in _OPTIONS:
        return f"stop rule {item!r} has no value; give it as {name}=VALUE, e.g. {_EXAMPLES[name]}"
    said = "an empty stopping rule (an unset shell variable, a trailing comma?)" if not name else (
        f"{item!r} is not a stopping rule{did_you_mean(name, RULES)}")
    return (f"{said}; a rule is RULE=VALUE: "
            f"{', '.join(_EXAMPLES[rule] for rule in RULES)} (several: target=0.1,max_time=2h)")


def _items(value: Any) -> Mapping[str, Any]:
    """A mapping from a mapping, or ``RULE=VALUE`` items: comma-separated in one text or in each of several
    (``--stop target=0.05,patience=30`` is two rules, as ``ORCHARD_STOP`` is)."""
    if isinstance(value, Mapping):
        return value
    items = [value] if isinstance(value, str) else value
    if isinstance(items, (list, tuple)) and all(isinstance(item, str) for item in items):
        items = [part for item in items for part in item.split(",")]
    bare = next((i for i in items if isinstance(i, str) and "=" not in i), None) if isinstance(
        items, (list, tuple)) else None
    if bare is not None:  # named: "stop=['python'] is not a set of stopping rules" hid which word was wrong
        raise ConfigurationError(_without_value(bare))
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) and "=" in i for i in items):
        raise ConfigurationError(
            f"stop={value!r} is not a set of stopping rules; give a mapping such as "
            "{'target': 0.1, 'patience': 20} or RULE=VALUE items such as --stop target=0.1 --stop max_time=2h")
    pairs = [(key.strip().replace("-", "_"), text.strip()) for key, text in
             (item.split("=", 1) for item in items if item.strip())]
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:  # a mapping would keep the last one silently
        raise ConfigurationError(f"stop rule {', '.join(twice)} is given twice ({', '.join(items)}); give each once")
    return dict(pairs)


def normalize_stop(value: Any, objectives: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Check stopping rules; return their stored form (the rules given; options at their default left out)
    or ``None`` for none.

    Args:
        value: ``{"target": 0.1, "patience": 20, "min_delta": 1e-3, "max_cost": 10, "max_time": "2h"}``
            (``patience`` may also be ``{"trials": 20, "min_delta": 1e-3}``), ``RULE=VALUE`` items,
            or ``None``.
        objectives: the experiment's objectives (``target`` and ``patience`` need one objective).

    Raises:
        ConfigurationError: an unknown rule, a bad value, an option without its rule, or
            ``target``/``patience`` with several objectives.
    """
    if value is None:
        return None
    given = dict(_items(value))
    patience = given.get("patience")
    if isinstance(patience, Mapping):
        extra = sorted(set(patience) - {"trials", "min_delta"})
        if extra or "trials" not in patience:
            raise ConfigurationError(
                f"stop rule patience={dict(patience)!r} must be a number of trials or "
                "{'trials': N, 'min_delta': X}; correct it and try again")
        given["patience"] = patience["trials"]
        if "min_delta" in patience:
            if given.get("min_delta") is not None:  # one of the two was dropped without a word
                raise ConfigurationError(
                    f"stop rule patience={dict(patience)!r} and min_delta={given['min_delta']!r} give "
                    "min_delta twice; give it once")
            given["min_delta"] = patience["min_delta"]
    unknown = sorted(set(given) - set(RULES) - set(_OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"unknown stopping rule {', '.join(map(repr, unknown))}"
            f"{did_you_mean(unknown[0], [*RULES, *_OPTIONS])}; "
            f"the rules are {', '.join(RULES)} "
            f"(options: min_delta with patience, cost_metric with max_cost)")
    checked: dict[str, Any] = {}
    for key in (*RULES, *_OPTIONS):
        if given.get(key) is not None:
            try:
                checked[key] = _CHECKS[key](given[key])
            except ValueError as err:
                glued = isinstance(given[key], str) and re.search(r"\s(\w+)=", given[key])
                hint = (f" (rules are separated by commas: {key}={given[key].split()[0]},{glued[1]}=...)"
                        if glued and glued[1].replace("-", "_") in (*RULES, *_OPTIONS) else "")
                raise ConfigurationError(f"invalid stop rule {key}={given[key]!r}: it must be {err}{hint}; "
                                         "correct it and try again") from None
    for option, rule in (("min_delta", "patience"), ("cost_metric", "max_cost")):
        if option in checked and rule not in checked:
            raise ConfigurationError(f"stop option {option} needs the rule {rule}; give {rule} too, or drop {option}")
    for option, default in (("min_delta", 0.0), ("cost_metric", "cost")):
        if checked.get(option) == default:  # said once: a joiner spelling the default out joins
            del checked[option]
    several = objectives is not None and len(objectives) > 1
    if several and ("target" in checked or "patience" in checked):
        raise ConfigurationError(
            f"stop rules target and patience need one objective, and this experiment has "
            f"{len(objectives or {})} ({', '.join(objectives or {})}); use max_cost or max_time, or one objective")
    return checked or None


@dataclasses.dataclass(frozen=True)
class StopRules:
    """An experiment's stopping rules, typed (see :func:`normalize_stop` for what each means).

    ``target`` is in the objective's own direction (an objective declared ``"max"``
    reaches it from below); ``sign`` turns it into the stored, minimized form.
    """

    target: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    max_cost: float | None = None
    cost_metric: str = "cost"
    max_time: float | None = None
    sign: float = 1.0
    constraints: tuple[str, ...] = ()
    fidelity: str = ""

    @classmethod
    def of(cls, stop: Mapping[str, Any] | None, objectives: Mapping[str, str] | None,
           constraints: list[str] | None, space: Space | None = None) -> StopRules | None:
        """The rules of a normalized ``stop`` setting (``None``: none set) on an experiment of ``space``."""
        if not stop:
            return None
        maximized = objectives is not None and next(iter(objectives.values())) == "max"
        fidelity = None if space is None else space.fidelity
        return cls(**stop, sign=-1.0 if maximized else 1.0, constraints=tuple(constraints or ()),
                   fidelity="" if fidelity is None else fidelity[0])

    def level(self, params: Mapping[str, Any] | None) -> str:
        """The fidelity a trial of ``params`` ran at, as a ledger key (``""``: no fidelity dimension).

        ``2.5`` is ``"2_5"``: a field name with a dot is refused by MongoDB servers before 3.6.
        """
        if not self.fidelity or params is None or self.fidelity not in params:
            return ""
        return repr(params[self.fidelity]).replace(".", "_")

    def describe(self, rule: str) -> str:
        """``target 0.1``, ``patience 20 trials``, ... (for messages)."""
        if rule == "patience":
            delta = f" (min_delta {self.min_delta:g})" if self.min_delta else ""
            return f"patience {self.patience} trials{delta}"
        if rule == "max_cost":
            return f"max_cost {self.max_cost:g} ({self.cost_metric})"
        if rule == "max_time":
            return f"max_time {self.max_time:g} s"
        return f"target {self.target:g}"
