"""The learning-curves figure: each trial's reported values against the step, pruned trials marked.

One line per trial that reported (:func:`orchard.report`): completed trials in
blue, pruned ones in grey ending in a cross at the step they were stopped, the
running trials dashed, and the trial with the best objective drawn thick.
With several objectives a report holds one value per objective; the curve is
its first objective. Values are drawn as the objective returned them (a ``"max"``
objective's reports are stored negated, see :class:`~orchard.objectives.Shown`).

A curve longer than :data:`MAX_CURVE_POINTS` reports is drawn from that many of them
(:func:`sampled`): evenly spaced, its first, last and lowest reports always among them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from orchard.constraints import feasibility
from orchard.objectives import Shown
from orchard.plotting.figures import STATUS_COLORS, describe, drawable, left_out
from orchard.space import Space
from orchard.trial import ReportValue, Trial, TrialStatus, first_value

__all__ = ["Curve", "CurvesFigure", "curves", "curves_mpl", "curves_plotly", "sampled"]

#: More curves than this are thinned to the best ones and an even sample of the rest (pages stay fast).
MAX_CURVES = 300
#: Points of one curve at most: a trial with 100,000 reports is drawn from this many (:func:`sampled`).
MAX_CURVE_POINTS = 500


def sampled(reports: Sequence[tuple[int, ReportValue]], limit: int) -> list[tuple[int, ReportValue]]:
    """At most ``limit`` (>= 3) of ``reports``, in order: evenly spaced; the first, last and lowest kept.

    The lowest is the lowest finite first value (the trial's best report); a curve of
    ``limit`` reports or fewer comes back whole.
    """
    count = len(reports)
    if count <= limit:
        return list(reports)
    picked = {round(i * (count - 1) / (limit - 2)) for i in range(limit - 1)}
    picked.add(min(range(count), key=lambda i: _rank(reports[i][1])))
    return [reports[i] for i in sorted(picked)]


def _rank(value: ReportValue) -> float:
    """A report's first value for ranking: a NaN or infinite one (stored by another program) ranks last."""
    number = first_value(value)
    return number if math.isfinite(number) else math.inf


@dataclasses.dataclass(frozen=True)
class Curve:
    """One trial's reports."""

    steps: list[int]
    values: list[float]
    status: TrialStatus
    label: str
    best: bool


@dataclasses.dataclass(frozen=True)
class CurvesFigure:
    """Learning curves of an experiment's trials."""

    title: str
    note: str | None
    curves: list[Curve]
    label: str = "objective"  # what the values are (see :class:`~orchard.objectives.Shown`)


def curves(trials: Sequence[Trial], name: str, space: Space | None = None,
           shown: Shown = Shown(), constraints: Sequence[str] | None = None) -> CurvesFigure:
    """Build the curves figure from the trials' stored reports.

    Args:
        trials: the experiment's trials; those with reports are drawn.
        name: the experiment's name, used in the title.
        space: unused (the figure builders share one signature).
        shown: how the objective is shown (its name and direction).
        constraints: the experiment's constraints: the best trial drawn thick meets them (as ``best_trial``).
    """
    reported = [t for t in trials if t.reports]
    completed = [t for t in reported if t.status is TrialStatus.COMPLETED and t.objective is not None]
    scored = [t for t in completed if math.isfinite(float(t.objective))  # type: ignore[arg-type]
              and feasibility(t.results, constraints).feasible]
    best = min(scored, key=lambda t: float(t.objective), default=None)  # type: ignore[arg-type]
    if len(reported) > MAX_CURVES:
        ranked = sorted(reported, key=lambda t: _rank(t.reports[-1][1]))
        keep = ranked[:MAX_CURVES // 2]
        rest = ranked[MAX_CURVES // 2:]
        room = MAX_CURVES - len(keep)
        keep += [rest[i * len(rest) // room] for i in range(min(room, len(rest)))]  # an even sample
        kept = {id(t) for t in keep}
        reported = [t for t in reported if id(t) in kept or t is best]
    pruned = sum(t.status is TrialStatus.PRUNED for t in trials)
    title = f"{name}: learning curves ({len(completed)} completed, {pruned} pruned)"
    drawn, far = [], []
    for trial in reported:
        points = sampled(trial.reports, MAX_CURVE_POINTS)
        values = [shown.value(first_value(v)) for _, v in points]
        if not drawable(*values):
            far.append(trial)
            continue
        drawn.append(Curve([s for s, _ in points], values, trial.status, describe(trial, shown), trial is best))
    note = None if drawn else "no trial has reported an intermediate value (orchard.report) yet"
    if far and not drawn:
        note = "no curve can be drawn: see the title"
    return CurvesFigure(title + left_out(far, "a report"), note, drawn, shown.label)


def _color(curve: Curve) -> str:
    if curve.best:
        return "#d62728"
    return STATUS_COLORS.get(curve.status, "#1f77b4") if curve.status is not TrialStatus.COMPLETED else "#1f77b4"


def curves_plotly(figure: CurvesFigure, fig: Any, go: Any) -> None:
    """Draw the curves on a plotly figure (its texts arrive escaped, see :mod:`orchard.plotting._plotly`)."""
    for curve in sorted(figure.curves, key=lambda c: c.best):  # the best on top
        dash = "dash" if curve.status is TrialStatus.RESERVED else "solid"
        fig.add_trace(go.Scatter(
            x=curve.steps, y=curve.values, mode="lines", showlegend=False, name=curve.label,
            line={"color": _color(curve), "width": 3 if curve.best else 1, "dash": dash},
            opacity=1.0 if curve.best or curve.status is TrialStatus.COMPLETED else 0.5,
            hovertemplate="%{fullData.name}<br>step %{x}: %{y:.4g}<extra></extra>"))  # the label once
        if curve.status is TrialStatus.PRUNED:
            fig.add_trace(go.Scatter(x=curve.steps[-1:], y=curve.values[-1:], mode="markers", showlegend=False,
                                     marker={"symbol": "x", "size": 7, "color": _color(curve)}, hoverinfo="skip"))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title=f"reported {figure.label}")


def curves_mpl(figure: CurvesFigure, fig: Any, ax: Any) -> None:
    """Draw the curves on a matplotlib axes."""
    for curve in sorted(figure.curves, key=lambda c: c.best):
        style = "--" if curve.status is TrialStatus.RESERVED else "-"
        alpha = 1.0 if curve.best or curve.status is TrialStatus.COMPLETED else 0.5
        ax.plot(curve.steps, curve.values, style, color=_color(curve), linewidth=2.5 if curve.best else 0.9, alpha=alpha)
        if curve.status is TrialStatus.PRUNED:
            ax.plot(curve.steps[-1:], curve.values[-1:], "x", color=_color(curve), alpha=alpha)
    ax.set_xlabel("step")
    ax.set_ylabel(f"reported {figure.label}")
    ax.grid(alpha=0.3)
