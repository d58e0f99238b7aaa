"""Orchard: masterless, database-coordinated hyperparameter optimization.

``import orchard`` stays cheap (scripts evaluated by ``orchard hunt`` import it
to report results): the client, storages and algorithms load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchard.errors import *
from orchard.errors import __all__ as _errors_all
from orchard.report import TrialPruned, report, report_objective, report_results, should_prune
from orchard.trial import Trial, TrialStatus

if TYPE_CHECKING:  # pragma: no cover
    from orchard.current import CurrentTrial, current_trial
    from orchard.experiment import Experiment, build_experiment, get_experiment
    from orchard.storages import get_storage

__version__ = "0.1.0"

_LAZY = {
    "CurrentTrial": "orchard.current",
    "current_trial": "orchard.current",
    "Experiment": "orchard.experiment",
    "build_experiment": "orchard.experiment",
    "get_experiment": "orchard.experiment",
    "get_storage": "orchard.storages",
}

__all__ = [
    "CurrentTrial",
    "Experiment",
    "Trial",
    "TrialPruned",
    "TrialStatus",
    "__version__",
    "build_experiment",
    "current_trial",
    "get_experiment",
    "get_storage",
    "report",
    "report_objective",
    "report_results",
    "should_prune",
    *_errors_all,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orchard' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
