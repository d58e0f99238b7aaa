"""Checks on stored verdicts shared by the pruning tests (tests/test_pruning.py, tests/test_chaos.py)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from orchard.pruners import Verdict, make_pruner
from orchard.trial import Trial, TrialStatus

PrunerConfig = str | Mapping[str, Any] | None


def unrecomputed(trials: Sequence[Trial], pruner: PrunerConfig) -> list[tuple[Trial, Verdict]]:
    """The pruned trials whose stored verdict is not reached again from the stored reports, with what is."""
    stored = {t.id: t.reports for t in trials if t.reports}
    judge = make_pruner(pruner)
    found = []
    for trial in trials:
        if trial.status is TrialStatus.PRUNED and trial.verdict is not None:
            again = judge.recompute(trial.id, Verdict.from_dict(trial.verdict), stored)
            if not again.prune:
                found.append((trial, again))
    return found


def assert_verdicts_recompute(trials: Sequence[Trial], pruner: PrunerConfig,
                              retaken: Collection[str] = ()) -> list[Trial]:
    """Every pruned trial's stored verdict is reached again from the stored history; the pruned trials.

    Args:
        trials: every trial of the experiment, as stored.
        pruner: the experiment's pruner configuration (``exp.settings.pruner``).
        retaken: trials that may have been taken over after a verdict compared with them: their
            reports started over (docs/pruning.md), so a verdict that compared with one of them
            may recompute to "go on".
    """
    pruned = [t for t in trials if t.status is TrialStatus.PRUNED]
    for trial in pruned:
        assert trial.verdict is not None and trial.reports, f"pruned {trial.id}: no verdict or no report"
        assert Verdict.from_dict(trial.verdict).prune, f"pruned trial {trial.id} holds a verdict to go on"
        assert trial.objective == trial.reports[-1][1]
    reports = {t.id: t.reports for t in trials}
    for trial, again in unrecomputed(trials, pruner):
        verdict = Verdict.from_dict(trial.verdict or {})
        assert set(verdict.compared) & set(retaken), (
            f"the verdict of pruned trial {trial.id} is not reached again from the stored reports: stored "
            f"{verdict}, recomputed {again}; its reports {trial.reports}; compared "
            f"{[(tid, reports.get(tid)) for tid in verdict.compared]}")
    return pruned
