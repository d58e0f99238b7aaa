"""Objectives and process entry points for the multi-fidelity race tests (importable by spawned processes)."""

from __future__ import annotations

import time
from typing import Any

import orchard

SPACE = {"x": "uniform(0, 1)", "y": "uniform(0, 1)", "epochs": "fidelity(1, 27, base=3)"}


def trained(x: float, y: float, epochs: int) -> float:
    """A "training run" whose cost grows with ``epochs`` and whose loss falls with it."""
    time.sleep(0.01 * epochs)
    return (x - 0.3) ** 2 + (y - 0.6) ** 2 + 1.0 / epochs


def race_process(storage: str, name: str, algorithm: Any, max_trials: int) -> dict[str, Any]:
    """One independent process joining the experiment and running workon with one worker."""
    exp = orchard.build_experiment(name, space=SPACE, algorithm=algorithm, storage=storage, max_trials=max_trials)
    return exp.workon(trained, n_workers=1, executor="single", progress=False)
