"""Drawing figure records as interactive plotly pages (``.html``, plotly.js inlined).

Plotly reads every text it draws (hover labels, tick and axis labels, titles) as
a subset of HTML: ``<a href>`` becomes a working link, ``<b>``/``<span style>``
style it. Parameter values, worker and experiment names come from users, so
every text of a figure record is escaped (:func:`plain`) before it is drawn;
except the tick labels of parallel coordinates, which plotly draws as plain text
(their axis titles it reads as HTML, like every other text).
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Any

from orchard.plotting._libs import require
from orchard.plotting.curves import CurvesFigure, curves_plotly
from orchard.plotting.figures import (
    STATUS_COLORS,
    ParallelFigure,
    RegretFigure,
    TimelineFigure,
    note_lines,
    title_lines,
)
from orchard.plotting.fronts import HypervolumeFigure, ParetoFigure, hypervolume_plotly, pareto_plotly
from orchard.plotting.rungs import RungsFigure, rungs_plotly
from orchard.trial import TrialStatus

__all__ = ["plain", "plotly_figure", "write_html"]


def write_html(figure: Any, path: Path) -> None:
    """Draw ``figure`` into ``path`` as a self-contained plotly page."""
    plotly_figure(figure).write_html(str(path), include_plotlyjs=True, full_html=True)


def plotly_figure(figure: Any) -> Any:
    """The ``plotly.graph_objects.Figure`` of a figure record, every text in it escaped."""
    go = require("plotly.graph_objects")
    # wrapped before escaping, so that no line ends inside an entity such as &lt;
    figure = dataclasses.replace(figure, title="\n".join(title_lines(figure.title)),
                                 note=figure.note and "\n".join(note_lines(figure.note)))
    if isinstance(figure, ParallelFigure):  # its axes' tick labels are drawn as plain text already
        axes = [dataclasses.replace(axis, label=plain(axis.label)) for axis in figure.axes]
        figure = dataclasses.replace(figure, title=plain(figure.title), note=plain(figure.note),
                                     label=plain(figure.label), axes=axes)
    else:
        figure = plain(figure)
    draw = {RegretFigure: _regret_plotly, ParallelFigure: _parallel_plotly, TimelineFigure: _timeline_plotly,
            RungsFigure: rungs_plotly, CurvesFigure: curves_plotly, ParetoFigure: pareto_plotly,
            HypervolumeFigure: hypervolume_plotly}
    fig = go.Figure()
    draw[type(figure)](figure, fig, go)
    fig.update_layout(title={"text": figure.title.replace("\n", "<br>")}, template="plotly_white")
    if figure.note:
        fig.add_annotation(text=figure.note.replace("\n", "<br>"), x=0.5, y=0.75, xref="paper", yref="paper",
                           showarrow=False, font={"size": 18, "color": "gray"})
    return fig


def plain(value: Any) -> Any:
    """``value`` with every ``str`` in it (in lists, tuples and dataclass records) escaped for plotly.

    ``&``, ``<`` and ``>`` become entities, which plotly shows as the characters
    themselves: a value ``<a href=...>`` is drawn as that text, not as a link.
    Other values (numbers, enums, ``None``) are returned unchanged.
    """
    if type(value) is str:
        return html.escape(value, quote=False)
    if isinstance(value, list):
        return [plain(item) for item in value]
    if type(value) is tuple:
        return tuple(plain(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: plain(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


def _regret_plotly(figure: Any, fig: Any, go: Any) -> None:
    hover = "%{text}<extra></extra>"
    if figure.x:
        fig.add_trace(go.Scatter(x=figure.x, y=figure.objectives, mode="markers", name=figure.label,
                                 text=figure.labels, hovertemplate=hover, marker={"color": "#1f77b4"}))
        fig.add_trace(go.Scatter(x=figure.x, y=figure.best, mode="lines", line_shape="hv",
                                 name=figure.best_label,
                                 line={"color": "#ff7f0e", "width": 2}, hoverinfo="skip"))
    if figure.broken_x:
        marker = {"symbol": "x", "size": 10, "color": STATUS_COLORS[TrialStatus.BROKEN]}
        fig.add_trace(go.Scatter(x=figure.broken_x, y=figure.broken_y, mode="markers", name="broken",
                                 text=figure.broken_labels, hovertemplate=hover, marker=marker))
    fig.update_layout(xaxis_title="trial (completion order)", yaxis_title=figure.label, showlegend=True)
    fig.update_xaxes(tickformat="d")


def _parallel_plotly(figure: Any, fig: Any, go: Any) -> None:
    if not figure.objectives:
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return
    dims = []
    for axis in figure.axes:
        # "~g": 2e+16, not plotly's own "2×10<sup>16</sup>", which parallel coordinates show as that text
        dim: dict[str, Any] = {"label": axis.label, "values": axis.values, "tickformat": "~g"}
        if axis.ticks is not None:
            dim.update(tickvals=axis.ticks, ticktext=axis.ticktext, range=_padded(axis.ticks))
        dims.append(dim)
    line = {"color": figure.objectives, "colorscale": "Viridis", "showscale": True,
            "reversescale": figure.higher_is_better,  # darker is better either way
            "colorbar": {"title": {"text": figure.label}}}
    fig.add_trace(go.Parcoords(dimensions=dims, line=line))


def _padded(ticks: list[float]) -> list[float]:
    low, high = min(ticks), max(ticks)
    return [low - 0.1, high + 0.1] if high - low < 1 else [low, high]


def _timeline_plotly(figure: Any, fig: Any, go: Any) -> None:
    for status, color in STATUS_COLORS.items():
        bars = [b for b in figure.bars if b.status is status]
        if bars:
            fig.add_trace(go.Bar(
                orientation="h", name=status.value, y=[figure.rows[b.row] for b in bars],
                base=[b.start for b in bars], x=[b.end - b.start for b in bars],
                text=[b.label for b in bars],
                hovertemplate="%{text}<br>from %{base:.3g} s for %{x:.3g} s<extra></extra>",
                textposition="none", marker={"color": color, "line": {"width": 0.5, "color": "white"}},
            ))
    fig.update_layout(barmode="overlay", xaxis_title="seconds since the first trial started",
                      height=max(400, 120 + 28 * len(figure.rows)))
    fig.update_yaxes(categoryorder="array", categoryarray=figure.rows, autorange="reversed", title="worker")
