"""Checks on stored verdicts shared by the pruning tests (tests/test_pruning.py, tests/test_chaos.py)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from orchard.pruners import Verdict, make_pruner
from orchard.trial import Trial, TrialStatus


def assert_verdicts_recompute(trials: Sequence[Trial], pruner: str | Mapping[str, Any] | None,
                              retaken: Collection[str] = ()) -> list[Trial]:
    """Every pruned trial's stored verdict is reached again from the stored history; the pruned trials.

    Args:
        trials: every trial of the experiment, as stored.
        pruner: the experiment's pruner configuration (``exp.settings.pruner``).
        retaken: trials that may have been taken over after a verdict compared with them: their
            reports started over (docs/pruning.md), so a verdict that compared with one is not
            recomputed (it is still a pruned trial with a "prune" verdict and reports).
    """
    stored = {t.id: t.reports for t in trials if t.reports}
    judge = make_pruner(pruner)
    pruned = [t for t in trials if t.status is TrialStatus.PRUNED]
    for trial in pruned:
        assert trial.verdict is not None and trial.reports, f"pruned {trial.id}: no verdict or no report"
        verdict = Verdict.from_dict(trial.verdict)
        assert verdict.prune, f"pruned trial {trial.id} holds a verdict to go on: {verdict}"
        assert trial.objective == trial.reports[-1][1]
        if set(verdict.compared) & set(retaken):
            continue
        again = judge.recompute(trial.id, verdict, stored)
        assert again.prune, (f"the verdict of pruned trial {trial.id} is not reached again from the stored "
                             f"reports: stored {verdict}, recomputed {again}; its reports {trial.reports}; "
                             f"compared {[(tid, stored.get(tid)) for tid in verdict.compared]}")
    return pruned
