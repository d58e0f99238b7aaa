"""Trials as a ``pandas.DataFrame``: one row per trial, for analysis in a notebook."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from orchard.errors import ConfigurationError
from orchard.trial import Trial

__all__ = ["trials_frame"]

#: The columns holding epoch seconds, turned into timezone-aware UTC datetimes.
_TIME_COLUMNS = frozenset({"submit_time", "start_time", "end_time", "heartbeat"})
#: The columns of the Trial fields, in their order (``params`` and ``results`` are spread out after them).
_TRIAL_COLUMNS = tuple(f.name for f in dataclasses.fields(Trial) if f.name not in ("params", "results"))
#: Beyond this magnitude a float64 column no longer holds every int exactly.
_EXACT_IN_FLOAT = 2**53


def trials_frame(trials: Iterable[Trial], params: Iterable[str] = ()) -> Any:
    """A ``pandas.DataFrame`` with one row per trial (params prefixed ``params.``, results ``results.``).

    Every field of :class:`~orchard.trial.Trial` and every name of ``params`` (the space's
    dimensions) is a column, also without any trial: ``frame[["status", "objective", "params.x"]]``
    of an experiment that has not started yet is an empty selection, not a ``KeyError``.

    The times (``submit_time``, ``start_time``, ``end_time``, ``heartbeat``) are
    timezone-aware UTC datetimes (``NaT`` when unset). A column of ints that some rows lack, or
    mixed with floats, would be float64; one holding an int beyond ``2**53``, which float64
    would round, is kept exact instead: ``Int64`` (``<NA>`` when unset), or ``object`` with floats.

    Raises:
        ConfigurationError: pandas is not installed.
    """
    try:
        import pandas as pd
    except ImportError:
        raise ConfigurationError("to_pandas needs pandas: pip install 'orchard-hpo[pandas]'") from None
    rows = []
    for trial in trials:
        row = {k: v for k, v in trial.to_dict().items() if k not in ("params", "results")}
        row.update({f"params.{k}": v for k, v in trial.params.items()})
        row.update({f"results.{k}": v for k, v in trial.results.items()})
        rows.append(row)
    columns = dict.fromkeys([*_TRIAL_COLUMNS, *(f"params.{name}" for name in params)])
    columns.update(dict.fromkeys(key for row in rows for key in row))  # results (a param not in the space)
    frame = pd.DataFrame(rows, columns=list(columns))
    for column in _TIME_COLUMNS.intersection(frame.columns):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    for column in frame.columns[frame.dtypes == "float64"]:
        values: list[Any] = [row.get(column) for row in rows]
        if any(_integer(v) and abs(v) > _EXACT_IN_FLOAT for v in values):  # float64 rounds it
            exact = all(v is None or _integer(v) for v in values)
            frame[column] = pd.array(values, dtype="Int64") if exact else pd.Series(values, dtype=object)
    return frame


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
