"""Orchard: masterless, database-coordinated hyperparameter optimization."""

from __future__ import annotations

from orchard.errors import *  # noqa: F403
from orchard.errors import __all__ as _errors_all
from orchard.trial import Trial, TrialStatus

__version__ = "0.1.0"

__all__ = ["Trial", "TrialStatus", "__version__", *_errors_all]
