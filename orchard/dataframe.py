"""Trials as a ``pandas.DataFrame``: one row per trial, for analysis in a notebook."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from orchard.errors import ConfigurationError
from orchard.trial import Trial

__all__ = ["trials_frame"]

#: The columns holding epoch seconds, turned into timezone-aware UTC datetimes.
_TIME_COLUMNS = frozenset({"submit_time", "start_time", "end_time", "heartbeat"})


def trials_frame(trials: Iterable[Trial]) -> Any:
    """A ``pandas.DataFrame`` with one row per trial (params prefixed ``params.``, results ``results.``).

    The times (``submit_time``, ``start_time``, ``end_time``, ``heartbeat``) are
    timezone-aware UTC datetimes (``NaT`` when unset).

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
    frame = pd.DataFrame(rows)
    for column in _TIME_COLUMNS.intersection(frame.columns):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    return frame
