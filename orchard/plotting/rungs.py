"""The rungs figure of a multi-fidelity experiment: objective per fidelity, promotions as lines.

Each completed trial is a point at (its fidelity, its objective); each
promotion whose parent and child both completed is a line from the parent's
point to the child's, so a glance shows which configurations climbed the
rungs and how their objective changed with more budget. The fidelity axis is
logarithmic (the rungs are powers of the fidelity's base).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from orchard.fidelity import rung_label
from orchard.objectives import Shown
from orchard.plotting._libs import require
from orchard.plotting.figures import describe, drawable, left_out, no_results_note, scored
from orchard.space import Space
from orchard.trial import Trial

__all__ = ["RungsFigure", "rungs", "rungs_mpl", "rungs_plotly"]

Point = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class RungsFigure:
    """Completed trials at (fidelity, objective), and a line per completed promotion."""

    title: str
    note: str | None
    dimension: str
    x: list[float]
    objectives: list[float]
    labels: list[str]
    promotions: list[tuple[Point, Point]]
    label: str = "objective"  # the y axis (see :class:`~orchard.objectives.Shown`)


def rungs(trials: Sequence[Trial], name: str, space: Space | None = None,
          shown: Shown = Shown()) -> RungsFigure:
    """Build the rungs figure.

    Args:
        trials: the experiment's trials; completed ones are drawn.
        name: the experiment's name, used in the title.
        space: the experiment's space; its ``fidelity`` dimension is the x axis.
        shown: how the objective is shown (its name and direction).

    Returns:
        The figure record; empty, with a note, when no trial has completed. Without
        a fidelity dimension every trial is drawn at budget 1 (the full budget).
    """
    found = space.fidelity if space is not None else None
    dimension = found[0] if found is not None else None
    done = {t.id: t for t in trials if scored(t) and (dimension is None or dimension in t.params)}
    far = left_out(t for t in done.values() if not drawable(t.objective))
    done = {tid: t for tid, t in done.items() if drawable(t.objective)}
    points = {tid: (_budget(t, dimension), shown.value(float(t.objective)))  # type: ignore[arg-type]
              for tid, t in done.items()}
    promotions = [(points[t.parent], points[tid]) for tid, t in done.items() if t.parent in points]
    label = dimension or "budget"
    title = f"{name}: {shown.name} per {label} ({len(done)} completed, {len(promotions)} promotions)"
    if dimension is None:
        title += "; no fidelity dimension, so every trial ran at full budget"
    return RungsFigure(
        title + far, None if done else no_results_note(trials, far), label,
        [p[0] for p in points.values()], [p[1] for p in points.values()],
        [describe(t, shown) for t in done.values()], promotions, shown.label,
    )


def _budget(trial: Trial, dimension: str | None) -> float:
    return 1.0 if dimension is None else float(trial.params[dimension])


def rungs_plotly(figure: RungsFigure, fig: Any, go: Any) -> None:
    """Draw the rungs figure on a plotly figure."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for (x0, y0), (x1, y1) in figure.promotions:
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="promotion", hoverinfo="skip",
                                 line={"color": "#ff7f0e", "width": 1}))
    if figure.x:
        fig.add_trace(go.Scatter(x=figure.x, y=figure.objectives, mode="markers", name="trial",
                                 text=figure.labels, hovertemplate="%{text}<extra></extra>",
                                 marker={"color": "#1f77b4", "opacity": 0.7}))
    ticks = sorted(set(figure.x))
    fig.update_xaxes(type="log", title=f"{figure.dimension} (log)", tickvals=ticks, ticktext=[rung_label(r) for r in ticks])
    fig.update_yaxes(title=figure.label)


def rungs_mpl(figure: RungsFigure, fig: Any, ax: Any) -> None:
    """Draw the rungs figure on a matplotlib axes."""
    if figure.promotions:
        collections = require("matplotlib.collections")
        lines = collections.LineCollection([list(pair) for pair in figure.promotions], colors="#ff7f0e",
                                           linewidths=1, alpha=0.8, label="promotion")
        ax.add_collection(lines)
    if figure.x:
        ax.plot(figure.x, figure.objectives, "o", color="#1f77b4", alpha=0.7, label="trial")
        ax.set_xscale("log")
        rungs_seen = sorted(set(figure.x))
        ax.set_xticks(rungs_seen, [rung_label(r) for r in rungs_seen])
        ax.minorticks_off()
        ax.legend(loc="upper right")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel(f"{figure.dimension} (log)")
    ax.set_ylabel(figure.label)
    ax.grid(alpha=0.3)
