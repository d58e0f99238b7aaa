"""Figures of an experiment with several objectives: the Pareto front and its hypervolume over time.

:func:`pareto` draws every completed trial at its objective values, one panel
per pair of objectives (one panel for two objectives, three pairwise views for
three). The feasible non-dominated trials (the front, computed on *all*
objectives, so a front trial may look dominated in one pairwise view) are
highlighted (and joined by a line in a two-objective view); infeasible
trials, which break a constraint, are crosses. Values are shown in their own
direction (an accuracy to maximise stays positive).

:func:`hypervolume` follows the hypervolume of the feasible front trial by trial,
in completion order, against one reference point for the whole curve (derived
from every feasible completed trial, as :meth:`orchard.Experiment.hypervolume`
does), so the curve never falls.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from orchard.hypervolume import HYPERVOLUME_OBJECTIVES, GrowingHypervolume, reference_point
from orchard.objectives import first_front, named_values, returned
from orchard.pareto import scored
from orchard.plotting.figures import describe, drawable, left_out, no_results_note
from orchard.trial import Trial

__all__ = [
    "MAX_PANEL_OBJECTIVES",
    "PANEL_COLUMNS",
    "HypervolumeFigure",
    "ParetoFigure",
    "ParetoPanel",
    "hypervolume",
    "hypervolume_mpl",
    "hypervolume_plotly",
    "pareto",
    "pareto_mpl",
    "pareto_plotly",
    "panel_grid",
]

FRONT_COLOR = "#d62728"
OTHER_COLOR = "#1f77b4"
INFEASIBLE_COLOR = "#7f7f7f"
#: Objectives whose pairs get a panel at most (15 panels): the pairs of 13 objectives, 78 panels in a row,
#: stopped the .html with plotly's ValueError and squeezed the .png to nothing. The front is still computed
#: on every objective.
MAX_PANEL_OBJECTIVES = 6
#: Panels in a row; more go on further rows.
PANEL_COLUMNS = 3


@dataclasses.dataclass(frozen=True)
class Points:
    """Trials at ``(x, y)`` with a hover label each."""

    x: list[float]
    y: list[float]
    labels: list[str]


@dataclasses.dataclass(frozen=True)
class ParetoPanel:
    """One pairwise view: the front, the other feasible trials and the infeasible ones."""

    x_label: str
    y_label: str
    front: Points
    others: Points
    infeasible: Points
    joined: bool


@dataclasses.dataclass(frozen=True)
class ParetoFigure:
    """Completed trials at their objective values, one panel per pair of objectives."""

    title: str
    note: str | None
    panels: list[ParetoPanel]


@dataclasses.dataclass(frozen=True)
class HypervolumeFigure:
    """The hypervolume of the feasible front after each completed trial (completion order)."""

    title: str
    note: str | None
    x: list[int]
    seconds: list[float]
    volumes: list[float]


def _directions(objectives: Mapping[str, str] | None) -> dict[str, str]:
    return dict(objectives) if objectives else {"objective": "min"}


def pareto(trials: Sequence[Trial], name: str, objectives: Mapping[str, str] | None = None,
           constraints: Sequence[str] | None = None) -> ParetoFigure:
    """Build the Pareto figure.

    Args:
        trials: the experiment's trials; completed ones that reported every objective are drawn.
        name: the experiment's name, used in the title.
        objectives: the experiment's objectives (two or more give panels).
        constraints: the experiment's constraints (trials breaking them are drawn as crosses).

    Returns:
        The figure record; empty, with a note, without completed trials or with one objective.
    """
    directions = _directions(objectives)
    every = scored(trials, directions, constraints)
    rows = [row for row in every if drawable(*row[1])]
    far = left_out(trial for trial, vector, _ in every if not drawable(*vector))
    if not rows:
        return ParetoFigure(f"{name}: Pareto front{far}", no_results_note(trials, far), [])
    if len(directions) < 2:
        return ParetoFigure(f"{name}: Pareto front", "the experiment has one objective: its front is its best "
                            "trial (see 'orchard plot regret')", [])
    feasible = [(t, v) for t, v, violation in every if violation <= 0]  # the front of all, drawn or not
    front = {feasible[i][0].id for i in first_front([v for _, v in feasible])}
    names = list(directions)
    panels = []
    for i, j in itertools.combinations(range(min(len(names), MAX_PANEL_OBJECTIVES)), 2):
        groups: dict[str, tuple[list[float], list[float], list[str]]] = {k: ([], [], []) for k in ("f", "o", "i")}
        for trial, vector, violation in rows:
            shown = returned(vector, directions)
            key = "i" if violation > 0 else "f" if trial.id in front else "o"
            groups[key][0].append(shown[i])
            groups[key][1].append(shown[j])
            groups[key][2].append(describe(trial, values=named_values(vector, directions)))  # not minimised
        fx, fy, fl = groups["f"]
        order = sorted(range(len(fx)), key=lambda k: (fx[k], fy[k]))
        front_points = Points([fx[k] for k in order], [fy[k] for k in order], [fl[k] for k in order])
        panels.append(ParetoPanel(_label(names[i], directions), _label(names[j], directions), front_points,
                                  Points(*groups["o"]), Points(*groups["i"]), joined=len(names) == 2))
    infeasible = sum(violation > 0 for _, _, violation in every)
    title = f"{name}: Pareto front, {len(front)} of {len(every)} completed trials"
    if constraints or infeasible:
        title += f" ({infeasible} infeasible)"
    if len(names) > MAX_PANEL_OBJECTIVES:
        title += f"; the pairs of the first {MAX_PANEL_OBJECTIVES} of {len(names)} objectives drawn"
    return ParetoFigure(title + far, None, panels)


def panel_grid(count: int) -> tuple[int, int]:
    """The rows and columns of a grid holding ``count`` panels, :data:`PANEL_COLUMNS` at most in a row."""
    columns = max(1, min(count, PANEL_COLUMNS))
    return -(-count // columns), columns


def _label(name: str, directions: Mapping[str, str]) -> str:
    return f"{name} ({directions[name]})"


def hypervolume(trials: Sequence[Trial], name: str, objectives: Mapping[str, str] | None = None,
                constraints: Sequence[str] | None = None) -> HypervolumeFigure:
    """Build the hypervolume figure: the feasible front's hypervolume after each completed trial.

    Args:
        trials: the experiment's trials.
        name: the experiment's name, used in the title.
        objectives: the experiment's objectives (one to three; ``None``: one).
        constraints: the experiment's constraints (infeasible trials add nothing).

    Returns:
        The figure record; empty, with a note, without a feasible completed trial
        or with more than three objectives.
    """
    directions = _directions(objectives)
    title = f"{name}: hypervolume of the feasible front"
    if len(directions) > HYPERVOLUME_OBJECTIVES:
        return HypervolumeFigure(title, f"exact hypervolume is computed for up to 3 objectives, not "
                                 f"{len(directions)}", [], [], [])
    rows = sorted(scored(trials, directions, constraints), key=lambda r: (r[0].end_time or 0.0, r[0].id))
    feasible = [(t, v) for t, v, violation in rows if violation <= 0]
    if not feasible:
        note = no_results_note(trials) if not rows else "no feasible completed trial yet"
        return HypervolumeFigure(title, note, [], [], [])
    reference = reference_point([v for _, v in feasible])
    start = min((t.start_time for t in trials if t.start_time is not None), default=rows[0][0].end_time or 0.0)
    growing = GrowingHypervolume(reference)  # updated by what each trial adds: 3,000 on the front took 41 s
    x: list[int] = []
    seconds: list[float] = []
    volumes: list[float] = []
    current = 0.0
    for rank, (trial, vector, violation) in enumerate(rows, start=1):
        if violation <= 0:
            try:
                current = growing.add(vector)
            except ValueError:  # a volume beyond the largest float: say so instead of drawing infinity
                return HypervolumeFigure(title, _TOO_LARGE, [], [], [])
        x.append(rank)
        seconds.append((trial.end_time or start) - start)
        volumes.append(current)
    back = returned(reference, directions)
    shown = ", ".join(f"{n}={v:.4g}" for n, v in zip(directions, back, strict=True))
    return HypervolumeFigure(f"{title}: {current:.4g} after {len(rows)} completed trials (reference {shown})",
                             None, x, seconds, volumes)


#: The note of a hypervolume beyond the largest float (its error's advice, a reference point closer to the
#: front, is for exp.hypervolume: the figure derives its own).
_TOO_LARGE = ("the hypervolume is beyond the largest float (about 1.8e308): the objectives span too wide a "
              "range; report them on a smaller scale (a logarithm), or measure it with "
              "exp.hypervolume(reference=...) up to a point closer to the front")


# -- drawing ---------------------------------------------------------------------------


def pareto_plotly(figure: ParetoFigure, fig: Any, go: Any) -> None:
    """Draw the Pareto panels side by side on a plotly figure."""
    if not figure.panels:
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return
    rows, cols = panel_grid(len(figure.panels))
    fig.set_subplots(rows=rows, cols=cols, horizontal_spacing=0.08, vertical_spacing=0.3 / rows)
    fig.update_layout(height=max(450, 330 * rows))
    for index, panel in enumerate(figure.panels):
        row, col = divmod(index, cols)
        row, col, legend = row + 1, col + 1, index == 0
        for points, label, marker in ((panel.others, "dominated", {"color": OTHER_COLOR, "opacity": 0.6}),
                                      (panel.infeasible, "infeasible", {"color": INFEASIBLE_COLOR, "symbol": "x"}),
                                      (panel.front, "front", {"color": FRONT_COLOR, "size": 9})):
            if points.x:
                mode = "lines+markers" if label == "front" and panel.joined else "markers"
                fig.add_trace(go.Scatter(x=points.x, y=points.y, mode=mode, name=label, marker=marker,
                                         line={"color": FRONT_COLOR}, text=points.labels,
                                         hovertemplate="%{text}<extra></extra>", showlegend=legend,
                                         legendgroup=label), row=row, col=col)
        fig.update_xaxes(title=panel.x_label, row=row, col=col)
        fig.update_yaxes(title=panel.y_label, row=row, col=col)


def pareto_mpl(figure: ParetoFigure, fig: Any, ax: Any) -> None:
    """Draw the Pareto panels side by side on a matplotlib figure (replacing ``ax``)."""
    if not figure.panels:
        ax.set_xticks([])
        ax.set_yticks([])
        return
    fig.delaxes(ax)
    rows, cols = panel_grid(len(figure.panels))
    grid = list(fig.subplots(rows, cols, squeeze=False).flat)
    for spare in grid[len(figure.panels):]:
        fig.delaxes(spare)
    for panel, axis in zip(figure.panels, grid, strict=False):
        if panel.others.x:
            axis.plot(panel.others.x, panel.others.y, "o", color=OTHER_COLOR, alpha=0.6, label="dominated")
        if panel.infeasible.x:
            axis.plot(panel.infeasible.x, panel.infeasible.y, "x", color=INFEASIBLE_COLOR, label="infeasible")
        if panel.front.x:
            style = "o-" if panel.joined else "o"
            axis.plot(panel.front.x, panel.front.y, style, color=FRONT_COLOR, markersize=7, label="front")
        axis.set_xlabel(panel.x_label)
        axis.set_ylabel(panel.y_label)
        axis.grid(alpha=0.3)
        axis.legend(loc="best")


def hypervolume_plotly(figure: HypervolumeFigure, fig: Any, go: Any) -> None:
    """Draw the hypervolume curve on a plotly figure."""
    if figure.x:
        fig.add_trace(go.Scatter(x=figure.x, y=figure.volumes, mode="lines", line_shape="hv", name="hypervolume",
                                 customdata=figure.seconds, line={"color": FRONT_COLOR, "width": 2},
                                 hovertemplate="after %{x} trials (%{customdata:.4g} s): %{y:.4g}<extra></extra>"))
    fig.update_xaxes(title="completed trials (completion order)", tickformat="d")
    fig.update_yaxes(title="hypervolume")


def hypervolume_mpl(figure: HypervolumeFigure, fig: Any, ax: Any) -> None:
    """Draw the hypervolume curve on a matplotlib axes."""
    if figure.x:
        ax.step(figure.x, figure.volumes, where="post", color=FRONT_COLOR, linewidth=2)
    ax.set_xlabel("completed trials (completion order)")
    ax.set_ylabel("hypervolume")
    ax.grid(alpha=0.3)
