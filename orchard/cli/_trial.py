"""``orchard info --trial``: one trial of an experiment, and for a pruned one the verdict recomputed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchard.cli._args import format_params, format_value, strict_json
from orchard.terminal import printable

if TYPE_CHECKING:  # pragma: no cover
    from orchard.experiment import Experiment

__all__ = ["trial_info"]


def trial_info(experiment: Experiment, prefix: str, as_json: bool) -> int:
    """Print one trial of ``experiment``; for a pruned one, the verdict and how it is reached again."""
    from orchard.errors import ConfigurationError, TrialNotFoundError, shown as cut
    from orchard.objectives import shown_value
    from orchard.pruners import Verdict, make_pruner

    if not prefix.strip():
        raise ConfigurationError(f"--trial is empty (an unset shell variable?); give the id of a trial of "
                                 f"experiment {experiment.name!r}, or a unique prefix of it")
    trials = experiment.fetch_trials()
    matches = [t for t in trials if t.id.startswith(prefix)]
    if len(matches) != 1:
        found, remedy = (f"no trial of experiment {experiment.name!r} has", "check it") if not matches else \
            (f"{len(matches)} trials of experiment {experiment.name!r} have", "give more of the id")
        raise TrialNotFoundError(f"{found} an id starting with {cut(prefix)}; {remedy} "
                                 "(orchard db dump lists them)")
    (trial,) = matches
    data = trial.to_dict()
    recomputed, unrecomputed = None, None
    if trial.verdict is not None and trial.verdict.get("pruner") not in (None, "objective"):
        stored = {t.id: t.reports for t in trials if t.reports}
        settings = experiment.settings
        pruner = make_pruner(settings.pruner, settings.objectives, settings.space)
        try:  # a verdict another program (or another pruner) wrote is shown, not recomputed
            again = pruner.recompute(trial.id, Verdict.from_dict(trial.verdict), stored)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            unrecomputed = (f"not recomputed: the stored verdict is not one {pruner.name!r} writes "
                            f"({cut(err, 120)})")
        else:
            recomputed = again.to_dict()
    if as_json:
        print(strict_json({"trial": data, "recomputed_verdict": recomputed}))
        return 0
    lines = [f"trial {trial.id} of {experiment.name!r}: {trial.status.value}",
             f"  params:    {format_params(trial.params)}"]
    objectives = experiment.settings.objectives  # values are shown in their own directions, not minimised
    if trial.objective is not None:
        lines.append(f"  objective: {shown_value(trial.objective, objectives)}")
    if trial.results:  # as stored: a NaN a script reported is nan here, null in --json
        lines.append("  results:   " + ", ".join(f"{name}={_shown_result(value)}"
                                                 for name, value in trial.results.items()))
    if trial.reports:
        last_step, last_value = trial.reports[-1]
        last = shown_value(last_value, objectives)
        lines.append(f"  reports:   {len(trial.reports)}, last {last} at step {last_step}")
    if trial.verdict is not None:
        verdict = trial.verdict
        lines.append(f"  pruned by: {verdict.get('pruner')} at step {verdict.get('step')}"
                     + (f" (rung {verdict['rung']})" if verdict.get("rung") is not None else ""))
        lines.append(f"  why:       {verdict.get('reason', '')}")
        cutoff, compared = verdict.get("cutoff"), verdict.get("compared", ())
        if isinstance(cutoff, (int, float)) and isinstance(compared, list):
            lines.append(f"  cut-off:   {shown_value(cutoff, objectives)}, compared with {len(compared)} "
                         "trials")
        elif cutoff is not None:
            lines.append(f"  cut-off:   {cut(cutoff, 60)}")
        if recomputed is not None:
            verdict_now = "prune" if recomputed["prune"] else "go on"
            lines.append(f"  recomputed from the stored history: {verdict_now}")
        elif unrecomputed is not None:
            lines.append(f"  {unrecomputed}")
    if trial.error is not None:
        lines.append(f"  error:     {trial.error.get('type')}: {trial.error.get('message')}")
    print(printable("\n".join(lines)))
    return 0


def _shown_result(value: object) -> str:
    """A float in 6 digits (``nan``, ``inf`` as such), anything else cut to 60 characters: a result may
    be a list of a thousand numbers."""
    from orchard.errors import shown as cut

    if isinstance(value, (float, int)):
        return format_value(value)
    text = cut(value, 61)
    return text if len(text) <= 60 else text[:59] + "…"
