"""Drawing figure records as static matplotlib images (``.png``, Agg canvas, no display)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchard.plotting._libs import require
from orchard.plotting.curves import CurvesFigure, curves_mpl
from orchard.plotting.figures import (
    STATUS_COLORS,
    Axis,
    ParallelFigure,
    RegretFigure,
    TimelineFigure,
    note_lines,
    title_lines,
)
from orchard.plotting.fronts import HypervolumeFigure, ParetoFigure, hypervolume_mpl, panel_grid, pareto_mpl
from orchard.plotting.rungs import RungsFigure, rungs_mpl
from orchard.trial import TrialStatus

__all__ = ["write_png"]


def write_png(figure: Any, path: Path) -> None:
    """Draw ``figure`` into ``path`` as a PNG image.

    Every text is drawn as written: matplotlib would read text between two ``$`` as a formula
    (a choice ``"$5-$10"`` lost its dollars, one such as ``"$\\frac{a}$"`` stopped the plot).
    """
    with require("matplotlib").rc_context({"text.parse_math": False}):
        _write_png(figure, path)


def _write_png(figure: Any, path: Path) -> None:
    mpl_figure = require("matplotlib.figure")
    agg = require("matplotlib.backends.backend_agg")
    height = max(4.5, 1.5 + 0.35 * len(figure.rows)) if isinstance(figure, TimelineFigure) else 5.5
    if isinstance(figure, ParetoFigure):  # a row of panels each, 3 at most in a row
        height = max(height, 1.0 + 4.0 * panel_grid(len(figure.panels))[0])
    fig = mpl_figure.Figure(figsize=(11, height), layout="constrained")
    agg.FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw = {RegretFigure: _regret_mpl, ParallelFigure: _parallel_mpl, TimelineFigure: _timeline_mpl,
            RungsFigure: rungs_mpl, CurvesFigure: curves_mpl, ParetoFigure: pareto_mpl,
            HypervolumeFigure: hypervolume_mpl}
    draw[type(figure)](figure, fig, ax)
    fig.suptitle("\n".join(title_lines(figure.title)), fontsize=12)
    if figure.note:
        note = "\n".join(note_lines(figure.note))
        ax.text(0.5, 0.75, note, transform=ax.transAxes, ha="center", va="center",
                fontsize=16, color="gray")
    fig.savefig(path, format="png", dpi=110)


def _regret_mpl(figure: Any, fig: Any, ax: Any) -> None:
    if figure.x:
        ax.plot(figure.x, figure.objectives, "o", color="#1f77b4", alpha=0.7, label=figure.label)
        ax.step(figure.x, figure.best, where="post", color="#ff7f0e", linewidth=2, label=figure.best_label)
    else:
        ax.set_yticks([])
    if figure.broken_x:
        ax.plot(figure.broken_x, figure.broken_y, "x", color=STATUS_COLORS[TrialStatus.BROKEN],
                markersize=10, markeredgewidth=2, label="broken")
    if figure.x or figure.broken_x:
        ax.xaxis.set_major_locator(require("matplotlib.ticker").MaxNLocator(integer=True))
        ax.legend(loc="upper right")
    else:
        ax.set_xticks([])
    ax.set_xlabel("trial (completion order)")
    ax.set_ylabel(figure.label)
    ax.grid(alpha=0.3)


def _parallel_mpl(figure: Any, fig: Any, ax: Any) -> None:
    ax.set_yticks([])
    for side in ("left", "right", "top", "bottom"):
        ax.spines[side].set_visible(False)
    if not figure.objectives:
        ax.set_xticks([])
        return
    collections = require("matplotlib.collections")
    colors = require("matplotlib.colors")
    scaled = [_unit_scale(axis) for axis in figure.axes]
    lines = [list(enumerate(point)) for point in zip(*(s for s, _ in scaled))]
    norm = colors.Normalize(min(figure.objectives), max(figure.objectives))
    cmap = "viridis_r" if figure.higher_is_better else "viridis"  # darker is better either way
    paths = collections.LineCollection(lines, array=figure.objectives, cmap=cmap, norm=norm,
                                       linewidths=1.2, alpha=0.8)
    ax.add_collection(paths)
    for i, (axis, (_, to_unit)) in enumerate(zip(figure.axes, scaled)):
        _draw_axis(ax, i, axis, to_unit)
    ax.set_xlim(-0.3, len(figure.axes) - 0.7)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(range(len(figure.axes)), [a.label for a in figure.axes])
    ax.tick_params(axis="x", length=0, pad=8)
    fig.colorbar(paths, ax=ax, label=figure.label, pad=0.01)


def _unit_scale(axis: Axis) -> tuple[list[float], Callable[[float], float]]:
    """Map an axis's values (and ticks) onto [0, 1]; a constant axis sits at 0.5."""
    points = axis.values + (axis.ticks or [])
    low, high = min(points), max(points)

    def to_unit(v: float) -> float:
        return 0.5 if high == low else (v - low) / (high - low)

    return [to_unit(v) for v in axis.values], to_unit


def _draw_axis(ax: Any, i: int, axis: Axis, to_unit: Callable[[float], float]) -> None:
    ax.axvline(i, color="black", linewidth=1)
    if axis.ticks is not None:
        ticks = list(zip(axis.ticks, axis.ticktext or []))
    else:
        low, high = min(axis.values), max(axis.values)
        ticks = [(low + (high - low) * k / 4, "") for k in range(5)] if high > low else [(low, "")]
        ticks = [(v, f"{v:.3g}") for v, _ in ticks]
    for value, text in ticks:
        y = to_unit(value)
        ax.plot([i - 0.03, i], [y, y], color="black", linewidth=1)
        ax.text(i - 0.05, y, text, ha="right", va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})


def _timeline_mpl(figure: Any, fig: Any, ax: Any) -> None:
    patches = require("matplotlib.patches")
    bars = figure.bars
    # one collection per row and status: a patch per bar (barh) took 96 s for 50,000 trials
    spans: dict[tuple[int, TrialStatus], list[tuple[float, float]]] = {}
    for b in bars:
        spans.setdefault((b.row, b.status), []).append((b.start, b.end - b.start))
    for (row, status), ranges in spans.items():
        ax.broken_barh(ranges, (row - 0.35, 0.7), facecolors=STATUS_COLORS[status], edgecolor="white",
                       linewidth=0.5)
    ax.set_yticks(range(len(figure.rows)), figure.rows)
    if figure.rows:
        ax.set_ylim(len(figure.rows) - 0.5, -0.5)
    else:
        ax.set_xticks([])
    ax.set_xlabel("seconds since the first trial started")
    ax.grid(axis="x", alpha=0.3)
    shown = [s for s in STATUS_COLORS if any(b.status is s for b in bars)]
    if shown:
        handles = [patches.Patch(color=STATUS_COLORS[s], label=s.value) for s in shown]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="status")


#: File suffix -> renderer writing a figure to a path.
