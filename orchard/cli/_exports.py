"""Tables of trials exported by Optuna or by Orchard, read as rows of ``insert --file``.

Read as they were, such a file's param columns matched no dimension ("params {} do not match the
space: missing 'lr'"), its other columns would have been stored as results, and its failed trials
as evaluations. A file is read as an export when it has a status column and a param column, named
the export's way, for a dimension of the space (and the space has no dimension of that name).

* **Optuna's** ``study.trials_dataframe()`` names a trial's params ``params_NAME``, its value
  ``value`` (several objectives: ``values_0``, ``values_1``, … or ``values_NAME`` with metric
  names), its user attributes ``user_attrs_NAME``, its constraints ``system_attrs_constraints``
  and its state ``state``; it adds ``number``, ``datetime_*``, ``duration`` and other
  ``system_attrs_*``. Only ``COMPLETE`` rows are evaluations.
* **Orchard's** ``exp.to_pandas()`` names them ``params.NAME`` and ``results.NAME`` and its status
  ``status``; its ``objective`` is the minimized form, so with declared objectives the results,
  which hold each by name in its own direction, are read instead. Only ``completed`` rows are.

The other rows (pruned, failed, running) are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from orchard.cli._args import UsageError

__all__ = ["exported"]

#: Each format: its status column, an evaluation's status, its params' and results' prefixes, its name.
_FORMATS = (("state", "COMPLETE", "params_", "user_attrs_", "Optuna's"),
            ("status", "completed", "params.", "results.", "Orchard's"))
_VALUES = "values_"

Rows = list[dict[str, Any] | None]


def exported(rows: Sequence[Mapping[str, Any]], dimensions: Collection[str],
             objectives: Mapping[str, str] | None, shown: str) -> tuple[Rows, str] | None:
    """``rows`` read as ``insert --file`` reads one each (``None``: a row skipped), and what was skipped; or
    ``None`` when they are no export of Optuna's or Orchard's (see the module docstring).

    Optuna's ``value`` is the objective; ``values_I`` (several objectives) is the ``I``-th declared
    objective, ``values_NAME`` the objective ``NAME``; ``system_attrs_constraints`` is the
    ``constraints`` list (Optuna's ``constraints_func``).

    Raises:
        UsageError: Optuna's rows hold several objectives (``values_0``, …); the experiment declares none.
    """
    names = {key for row in rows for key in row}
    for status, done, params, results, who in _FORMATS:
        if status in names and any(key.startswith(params) and key not in dimensions
                                   and key[len(params):] in dimensions for key in names):
            break
    else:
        return None
    declared = list(objectives or {})
    several = sorted(key for key in names if key.startswith(_VALUES)) if who == "Optuna's" else []
    if several and not declared:
        raise UsageError(f"{shown} is Optuna's trials_dataframe() of several objectives "
                         f"({', '.join(several)}): declare the experiment's objectives "
                         "(objectives={'error': 'min', ...}) in that order")
    converted: Rows = []
    skipped: Counter[str] = Counter()
    for row in rows:
        if str(row.get(status, "")) != done:
            skipped[str(row.get(status, "")) or f"no {status}"] += 1
            converted.append(None)
            continue
        row = {key: value for key, value in row.items() if value is not None}  # JSON's null for pandas' NaN
        out = {key[len(results):]: value for key, value in row.items() if key.startswith(results)}
        out.update({key[len(params):]: value for key, value in row.items() if key.startswith(params)})
        for key, value in row.items():
            if key == "value" and who == "Optuna's" or key == "objective" and not declared:
                out["objective"] = value
            elif key.startswith(_VALUES) and who == "Optuna's":
                name = key[len(_VALUES):]
                out[declared[int(name)] if name.isdigit() and int(name) < len(declared) else name] = value
            elif key == "system_attrs_constraints":
                out["constraints"] = value
        converted.append(out)
    counts = ", ".join(f"{count} {state}" for state, count in sorted(skipped.items()))
    return converted, counts and f"rows of {who} export not {done} skipped: {counts}"
