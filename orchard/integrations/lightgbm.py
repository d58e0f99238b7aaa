"""LightGBM: report a validation metric each boosting round, stop the training when pruned.

::

    import lightgbm as lgb
    import orchard
    from orchard.integrations.lightgbm import pruning_callback

    def objective(num_leaves, learning_rate):
        booster = lgb.train({"objective": "binary", "metric": "binary_logloss", "num_leaves": num_leaves,
                             "learning_rate": learning_rate, "verbosity": -1},
                            train_set, valid_sets=[valid_set], valid_names=["valid"],
                            callbacks=[pruning_callback("binary_logloss")])
        return booster.best_score["valid"]["binary_logloss"]

Each round's value of ``metric`` on ``valid_name`` is reported with
:func:`orchard.report` at step = the round (1-based). A metric LightGBM says is
"higher is better" (AUC) is reported negated when the experiment declares no
objectives, because Orchard then minimizes; an experiment that declares its
objective (``objectives={"auc": "max"}``) takes the value as it is, in the
declared direction, so it is reported as LightGBM computes it. When
the experiment's pruner says stop, the callback raises
:class:`orchard.TrialPruned`, which ends ``lgb.train`` and the trial as pruned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orchard
from orchard.errors import ConfigurationError
from orchard.report import declared_objectives

__all__ = ["pruning_callback"]


def pruning_callback(metric: str, valid_name: str | None = None) -> Callable[[Any], None]:
    """A LightGBM callback reporting ``metric`` each round and raising ``TrialPruned`` when pruned.

    Args:
        metric: the evaluation metric's name as LightGBM prints it (``"binary_logloss"``, ``"auc"``).
        valid_name: the validation set's name (``valid_names``); ``None``: the last one LightGBM
            evaluates that is not the training set.

    Raises:
        ConfigurationError: (when called by LightGBM) no evaluation result has that metric.
    """

    def callback(env: Any) -> None:
        found = [item for item in env.evaluation_result_list
                 if item[1] == metric and (valid_name is None or item[0] == valid_name)
                 and (valid_name is not None or item[0] != "training")]
        if not found:
            seen = sorted({f"{item[0]}/{item[1]}" for item in env.evaluation_result_list})
            raise ConfigurationError(
                f"pruning_callback: LightGBM evaluated no {metric!r}"
                + (f" on {valid_name!r}" if valid_name else "")
                + f" (it evaluated: {', '.join(seen) or 'nothing'}); pass valid_sets and one of those metrics")
        _, _, value, higher_is_better = found[-1][:4]
        # a declared objective takes the value in its own direction; otherwise Orchard minimizes it
        negated = higher_is_better and declared_objectives() is None
        orchard.report(-float(value) if negated else float(value), env.iteration + 1)
        if orchard.should_prune():
            raise orchard.TrialPruned()

    callback.order = 40  # type: ignore[attr-defined]  # LightGBM runs callbacks by this order
    return callback
