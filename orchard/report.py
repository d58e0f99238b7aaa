"""Reporting results from inside an evaluated script (imported by user code: keep it light).

``orchard hunt`` sets ``ORCHARD_RESULTS_PATH`` for each trial; the script calls
:func:`report_objective` or :func:`report_results`, which write JSON there.
Scripts in other languages may write the same JSON themselves::

    {"objective": 0.123, "accuracy": 0.97}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["RESULTS_ENV", "report_objective", "report_results"]

RESULTS_ENV = "ORCHARD_RESULTS_PATH"


def report_results(results: Mapping[str, Any]) -> None:
    """Write ``results`` (must hold a finite numeric ``"objective"``) for the running trial.

    Raises:
        ValueError: ``"objective"`` is missing or not a finite number.
        RuntimeError: not running under ``orchard hunt`` (``ORCHARD_RESULTS_PATH`` unset).
    """
    _write(results, "report_results")


def report_objective(value: float, **extra: Any) -> None:
    """Report the trial's objective (minimized), plus optional extra metrics.

    Raises:
        ValueError: ``value`` is not a finite number.
        RuntimeError: not running under ``orchard hunt`` (``ORCHARD_RESULTS_PATH`` unset).
    """
    _write({"objective": _plain(value), **extra}, "report_objective")


def _write(results: Mapping[str, Any], caller: str) -> None:
    """Check and write ``results``; errors name ``caller``, the function the user called."""
    objective = results.get("objective")
    if isinstance(objective, bool) or not isinstance(objective, (int, float)) or not math.isfinite(objective):
        wanted = "a finite number" if caller == "report_objective" else "a finite numeric 'objective'"
        raise ValueError(f"{caller} needs {wanted}, got {objective!r}")
    path = os.environ.get(RESULTS_ENV)
    if not path:
        raise RuntimeError(
            f"{RESULTS_ENV} is not set: {caller} only works inside a trial started by "
            "'orchard hunt'; run your script through it"
        )
    text = json.dumps({str(k): _plain(v) for k, v in results.items()})  # fails before touching files
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars, without importing numpy
    return item() if callable(item) and not isinstance(value, (list, dict)) else value
