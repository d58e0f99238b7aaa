"""Optuna's ``study.trials_dataframe()``, saved as CSV or JSON Lines, read as rows of ``insert --file``.

Optuna's export names a trial's params ``params_NAME``, its value ``value`` (several objectives:
``values_0``, ``values_1``, … or ``values_NAME`` with metric names), its user attributes
``user_attrs_NAME``, its constraints ``system_attrs_constraints`` and its state ``state``; it adds
``number``, ``datetime_start``, ``datetime_complete``, ``duration`` and other ``system_attrs_*``.
Read as they were, the ``params_`` columns matched no dimension ("params {} do not match the space:
missing 'lr'"), and the rest would have been stored as results. A file is read so when it has a
``state`` column and a ``params_NAME`` column for a dimension the space does not name so. Only
``COMPLETE`` rows are evaluations; the others (``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING``) are
skipped, and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from orchard.cli._args import UsageError

__all__ = ["from_optuna", "is_optuna_export"]

_PARAMS, _ATTRS, _VALUES = "params_", "user_attrs_", "values_"


def is_optuna_export(rows: Sequence[Mapping[str, Any]], dimensions: Collection[str]) -> bool:
    """Whether ``rows`` are Optuna's ``trials_dataframe()`` of a study over (some of) ``dimensions``."""
    names = {key for row in rows for key in row}
    return "state" in names and any(key.startswith(_PARAMS) and key not in dimensions
                                    and key[len(_PARAMS):] in dimensions for key in names)


def from_optuna(rows: Sequence[Mapping[str, Any]], objectives: Mapping[str, str] | None,
                shown: str) -> tuple[list[dict[str, Any] | None], str]:
    """Each row as ``insert --file`` reads one (``None``: a row not ``COMPLETE``), and what was skipped.

    ``value`` is the objective; ``values_I`` (several objectives) is the ``I``-th declared objective,
    ``values_NAME`` the objective ``NAME``; ``user_attrs_NAME`` is the result ``NAME``;
    ``system_attrs_constraints`` is the ``constraints`` list (Optuna's ``constraints_func``).

    Raises:
        UsageError: the rows hold several objectives (``values_0``, …) and the experiment declares none.
    """
    converted: list[dict[str, Any] | None] = []
    states: Counter[str] = Counter()
    declared = list(objectives or {})
    for row in rows:
        state = str(row.get("state", ""))
        if state != "COMPLETE":
            states[state or "no state"] += 1
            converted.append(None)
            continue
        several = sorted(key for key in row if key.startswith(_VALUES))
        if several and not declared:
            raise UsageError(f"{shown} is Optuna's trials_dataframe() of several objectives "
                             f"({', '.join(several)}): declare the experiment's objectives "
                             "(objectives={'error': 'min', ...}) in that order")
        converted.append(_converted(row, declared))
    skipped = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    return converted, skipped and f"rows of Optuna's export not COMPLETE skipped: {skipped}"


def _converted(row: Mapping[str, Any], declared: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key.startswith(_PARAMS):
            out[key[len(_PARAMS):]] = value
        elif key.startswith(_ATTRS):
            out[key[len(_ATTRS):]] = value
        elif key == "value":
            out["objective"] = value
        elif key.startswith(_VALUES):
            name = key[len(_VALUES):]
            out[declared[int(name)] if name.isdigit() and int(name) < len(declared) else name] = value
        elif key == "system_attrs_constraints":
            out["constraints"] = value
    return out
