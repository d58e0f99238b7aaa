"""Figures of an experiment: regret, parallel coordinates and the worker timeline.

Each builder (:func:`regret`, :func:`parallel`, :func:`timeline`) is a pure
function of a list of trials that returns a small, backend-neutral figure
record. :func:`save` draws the record with the library its file suffix asks
for:

========  ==========================================================
suffix    output
========  ==========================================================
``.html`` interactive plotly page, plotly.js inlined (works offline)
``.png``  static matplotlib image (Agg canvas, no display needed)
========  ==========================================================

Both libraries are optional (``pip install 'orchard-hpo[plot]'``) and are
imported only when a figure is saved, so building figures and importing this
module stay cheap. An experiment without results still gives a figure: an
empty one carrying a note that says why.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from orchard.errors import ConfigurationError
from orchard.space import Prior, Space
from orchard.trial import Trial, TrialStatus

__all__ = [
    "FIGURES",
    "FORMATS",
    "Axis",
    "Bar",
    "ParallelFigure",
    "RegretFigure",
    "TimelineFigure",
    "check_output",
    "make_figure",
    "parallel",
    "regret",
    "save",
    "timeline",
]

INSTALL_HINT = "pip install 'orchard-hpo[plot]'"

#: Colour of each status in the timeline (and of broken trials in the regret plot).
STATUS_COLORS: dict[TrialStatus, str] = {
    TrialStatus.COMPLETED: "#2ca02c",
    TrialStatus.BROKEN: "#d62728",
    TrialStatus.RESERVED: "#1f77b4",
    TrialStatus.INTERRUPTED: "#ff7f0e",
    TrialStatus.NEW: "#7f7f7f",
}


# -- figure records ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegretFigure:
    """Objective of each completed trial in completion order, and the best so far.

    ``x`` values are 1-based ranks among finished (completed or broken) trials,
    so broken trials take their place on the same axis.
    """

    title: str
    note: str | None
    x: list[int]
    objectives: list[float]
    labels: list[str]
    best: list[float]
    broken_x: list[int]
    broken_y: list[float]
    broken_labels: list[str]


@dataclasses.dataclass(frozen=True)
class Axis:
    """One vertical axis of a parallel-coordinates plot.

    ``values`` are positions on the axis: the value itself, its ``log10`` for
    log-uniform dimensions, or the category index. ``ticks``/``ticktext`` are
    set for categorical and log axes and ``None`` for plain numeric ones.
    """

    label: str
    values: list[float]
    ticks: list[float] | None = None
    ticktext: list[str] | None = None


@dataclasses.dataclass(frozen=True)
class ParallelFigure:
    """Completed trials as lines across one axis per parameter, plus the objective."""

    title: str
    note: str | None
    axes: list[Axis]
    objectives: list[float]


@dataclasses.dataclass(frozen=True)
class Bar:
    """One trial on the timeline; times are seconds since the first trial started."""

    row: int
    start: float
    end: float
    status: TrialStatus
    label: str


@dataclasses.dataclass(frozen=True)
class TimelineFigure:
    """One row per worker (label includes its busy fraction), one bar per trial."""

    title: str
    note: str | None
    rows: list[str]
    bars: list[Bar]


Figure = RegretFigure | ParallelFigure | TimelineFigure


# -- builders ------------------------------------------------------------------------


def regret(trials: Iterable[Trial], name: str) -> RegretFigure:
    """Build the regret figure: objectives in completion order and the best so far.

    Args:
        trials: the experiment's trials (any statuses; unfinished ones are ignored).
        name: the experiment's name, used in the title.

    Returns:
        The figure record; empty, with a note, when no trial has completed.
    """
    finished = sorted((t for t in trials if _scored(t) or t.status is TrialStatus.BROKEN), key=_end_key)
    x: list[int] = []
    objectives: list[float] = []
    best: list[float] = []
    broken_x: list[int] = []
    broken_at: list[float | None] = []
    for rank, trial in enumerate(finished, start=1):
        if trial.status is TrialStatus.BROKEN:
            broken_x.append(rank)
            broken_at.append(best[-1] if best else None)
            continue
        x.append(rank)
        objectives.append(float(trial.objective))  # type: ignore[arg-type]
        best.append(min(objectives[-1], best[-1]) if best else objectives[-1])
    # Broken trials sit on the best-so-far line; those before any result on the first one.
    broken_y = [objectives[0] if y is None else y for y in broken_at] if objectives else [0.0] * len(broken_x)
    labels = [_describe(t) for t in finished if t.status is not TrialStatus.BROKEN]
    broken_labels = [_describe(t) for t in finished if t.status is TrialStatus.BROKEN]
    title = f"{name}: regret"
    if best:
        title += f" (best {best[-1]:.4g} after {len(x)} completed, {len(broken_x)} broken)"
    note = None if x else _no_results_note(len(broken_x))
    return RegretFigure(title, note, x, objectives, labels, best, broken_x, broken_y, broken_labels)


def parallel(trials: Iterable[Trial], name: str, space: Space | None = None) -> ParallelFigure:
    """Build a parallel-coordinates figure of the completed trials, coloured by objective.

    Args:
        trials: the experiment's trials; only completed ones are drawn.
        name: the experiment's name, used in the title.
        space: the experiment's space, if known: it orders the axes, keeps the
            order of ``choices`` and puts ``loguniform`` dimensions on a log axis.
            Without it, dimensions with any non-numeric value are categorical.

    Returns:
        The figure record; empty, with a note, when no trial has completed.
    """
    all_trials = list(trials)
    # Worst first, so the best lines are drawn last, on top.
    done = sorted(filter(_scored, all_trials), key=lambda t: -float(t.objective))  # type: ignore[arg-type]
    names = list(space) if space is not None else _param_names(done)
    done = [t for t in done if all(n in t.params for n in names)]
    objectives = [float(t.objective) for t in done]  # type: ignore[arg-type]
    axes = [_axis(n, [t.params[n] for t in done], space.get(n) if space else None) for n in names]
    axes.append(Axis("objective", objectives))
    broken = sum(t.status is TrialStatus.BROKEN for t in all_trials)
    note = None if done else _no_results_note(broken)
    title = f"{name}: parallel coordinates of {len(done)} completed trials (darker = lower objective)"
    return ParallelFigure(title, note, axes, objectives)


def timeline(trials: Iterable[Trial], name: str) -> TimelineFigure:
    """Build the per-worker timeline: a row per worker, a bar per trial it ran.

    A worker's busy fraction is the time its trials ran over the time from its
    first start to its last end; the title gives the fraction over all workers
    and the whole span. Running trials end at their last heartbeat. Trials
    never started, or released (unowned), are not drawn.

    Args:
        trials: the experiment's trials.
        name: the experiment's name, used in the title.

    Returns:
        The figure record; empty, with a note, when no trial has started.
    """
    runs: dict[str, list[tuple[float, float, Trial]]] = {}
    for trial in trials:
        if trial.worker and trial.start_time is not None:
            runs.setdefault(trial.worker, []).append((trial.start_time, _end_time(trial), trial))
    if not runs:
        return TimelineFigure(f"{name}: worker timeline", "no trial has started yet", [], [])
    workers = sorted(runs, key=lambda w: (min(s for s, _, _ in runs[w]), w))
    t0 = min(start for w in workers for start, _, _ in runs[w])
    t1 = max(end for w in workers for _, end, _ in runs[w])
    bars = [Bar(row, s - t0, e - t0, t.status, _describe(t))
            for row, w in enumerate(workers) for s, e, t in sorted(runs[w], key=lambda r: r[:2])]
    busy = {w: _busy_seconds([(s, e) for s, e, _ in runs[w]]) for w in workers}
    labels = _short_names(workers)
    rows = [f"{label}  busy {_fraction(busy[w], runs[w]):.0%}" for w, label in zip(workers, labels)]
    total = sum(busy.values()) / (len(workers) * (t1 - t0)) if t1 > t0 else 1.0
    count = f"{len(workers)} worker" + ("s" if len(workers) > 1 else "")
    title = f"{name}: {count} over {t1 - t0:.4g} s, busy {total:.0%} of the time"
    return TimelineFigure(title, None, rows, bars)


#: Figure kind -> builder taking ``(trials, name, space)``.
FIGURES: dict[str, Callable[[Sequence[Trial], str, Space | None], Figure]] = {
    "regret": lambda trials, name, space: regret(trials, name),
    "parallel": parallel,
    "timeline": lambda trials, name, space: timeline(trials, name),
}


def make_figure(kind: str, trials: Sequence[Trial], name: str, space: Space | None = None) -> Figure:
    """Build the figure called ``kind`` (a key of :data:`FIGURES`).

    Raises:
        ConfigurationError: ``kind`` is not a known figure; the message lists them.
    """
    try:
        builder = FIGURES[kind]
    except KeyError:
        raise ConfigurationError(f"unknown plot {kind!r}; choose one of {', '.join(FIGURES)}") from None
    return builder(trials, name, space)


# -- builder helpers -----------------------------------------------------------------


def _scored(trial: Trial) -> bool:
    return trial.status is TrialStatus.COMPLETED and trial.objective is not None


def _end_key(trial: Trial) -> tuple[float, float]:
    end = trial.end_time if trial.end_time is not None else math.inf
    return end, trial.submit_time or 0.0


def _end_time(trial: Trial) -> float:
    """When a bar ends: the trial's end, else (still running) its last heartbeat."""
    start = trial.start_time or 0.0
    return max(start, trial.end_time or trial.heartbeat or start)


def _describe(trial: Trial) -> str:
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    result = f"objective {trial.objective:.6g}" if trial.objective is not None else trial.status.value
    if trial.status is TrialStatus.BROKEN and trial.error:
        result += f": {trial.error.get('type', 'error')}"
    return f"trial {trial.id[:8]} ({result}) {params}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _no_results_note(broken: int) -> str:
    return "no completed trials yet" + (f" ({broken} broken)" if broken else "")


def _param_names(trials: Iterable[Trial]) -> list[str]:
    names: dict[str, None] = {}
    for trial in trials:
        names.update(dict.fromkeys(trial.params))
    return list(names)


def _axis(name: str, values: list[Any], prior: Prior | None) -> Axis:
    """Place one parameter's values on an axis (category index, log10, or as is)."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    categories = prior.categories() if prior is not None else None
    if categories is not None or not numeric:
        return _categorical_axis(name, values, categories or [])
    log_range = prior.log_range() if prior is not None else None
    if log_range is not None and all(v > 0 for v in values):
        low, high = math.floor(math.log10(log_range[0])), math.ceil(math.log10(log_range[1]))
        ticks = [float(p) for p in range(low, high + 1)]
        return Axis(f"{name} (log)", [math.log10(v) for v in values], ticks, [_decade(p) for p in ticks])
    return Axis(name, [float(v) for v in values])


def _categorical_axis(name: str, values: list[Any], choices: list[Any]) -> Axis:
    """Categories in the space's order, then any others sorted; keyed by repr so 1 != '1' != True."""
    text = {repr(v): str(v) for v in [*choices, *values]}
    order = [repr(c) for c in choices] + sorted(set(text) - {repr(c) for c in choices})
    index = {key: float(i) for i, key in enumerate(order)}
    return Axis(name, [index[repr(v)] for v in values], list(index.values()), [text[k] for k in order])


def _decade(power: float) -> str:
    return f"{10.0 ** power:g}" if -3 <= power <= 3 else f"1e{power:.0f}"


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of intervals (overlaps counted once)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _fraction(busy: float, runs: list[tuple[float, float, Trial]]) -> float:
    """Busy seconds over the worker's own span, first start to last end."""
    span = max(e for _, e, _ in runs) - min(s for s, _, _ in runs)
    return busy / span if span > 0 else 1.0


def _short_names(workers: list[str]) -> list[str]:
    """``host:pid`` for ``host:pid:uuid`` worker ids, unless that makes two rows look alike."""
    short = [":".join(w.split(":")[:2]) if w.count(":") >= 2 else w for w in workers]
    return short if len(set(short)) == len(short) else list(workers)


# -- saving --------------------------------------------------------------------------


def check_output(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` if a plot can be written there.

    Raises:
        ConfigurationError: unknown suffix (the message lists ``.html`` and
            ``.png``), or the folder does not exist.
    """
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise ConfigurationError(
            f"cannot tell how to write plot {str(out)!r}: unknown suffix {out.suffix or '(none)'!r}; "
            f"use {' or '.join(FORMATS)}"
        )
    if not out.parent.is_dir():
        raise ConfigurationError(
            f"cannot write plot {str(out)!r}: folder {str(out.parent)!r} does not exist; create it first"
        )
    return out


def save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Draw ``figure`` into ``path``: ``.html`` with plotly, ``.png`` with matplotlib.

    The file is written to a temporary name next to ``path`` and then renamed,
    so a reader never sees half a plot.

    Args:
        figure: a record built by :func:`regret`, :func:`parallel` or :func:`timeline`.
        path: the output file.

    Returns:
        The path written.

    Raises:
        ConfigurationError: unknown suffix, plotting library missing (with the
            install hint), or the file cannot be written.
    """
    out = check_output(path)
    render = FORMATS[out.suffix.lower()]
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        render(figure, tmp)
        os.replace(tmp, out)
    except OSError as err:
        raise ConfigurationError(
            f"cannot write plot {str(out)!r}: {err.strerror or err}; check that the folder is writable"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise ConfigurationError(f"plotting needs {top}, which is not installed: {INSTALL_HINT}") from None


# -- plotly (.html) ------------------------------------------------------------------


def _write_html(figure: Figure, path: Path) -> None:
    go = _require("plotly.graph_objects")
    draw = {RegretFigure: _regret_plotly, ParallelFigure: _parallel_plotly, TimelineFigure: _timeline_plotly}
    fig = go.Figure()
    draw[type(figure)](figure, fig, go)
    fig.update_layout(title={"text": figure.title}, template="plotly_white")
    if figure.note:
        fig.add_annotation(text=figure.note, x=0.5, y=0.75, xref="paper", yref="paper",
                           showarrow=False, font={"size": 18, "color": "gray"})
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def _regret_plotly(figure: Any, fig: Any, go: Any) -> None:
    hover = "%{text}<extra></extra>"
    if figure.x:
        fig.add_trace(go.Scatter(x=figure.x, y=figure.objectives, mode="markers", name="objective",
                                 text=figure.labels, hovertemplate=hover, marker={"color": "#1f77b4"}))
        fig.add_trace(go.Scatter(x=figure.x, y=figure.best, mode="lines", line_shape="hv", name="best so far",
                                 line={"color": "#ff7f0e", "width": 2}, hoverinfo="skip"))
    if figure.broken_x:
        marker = {"symbol": "x", "size": 10, "color": STATUS_COLORS[TrialStatus.BROKEN]}
        fig.add_trace(go.Scatter(x=figure.broken_x, y=figure.broken_y, mode="markers", name="broken",
                                 text=figure.broken_labels, hovertemplate=hover, marker=marker))
    fig.update_layout(xaxis_title="trial (completion order)", yaxis_title="objective", showlegend=True)
    fig.update_xaxes(tickformat="d")


def _parallel_plotly(figure: Any, fig: Any, go: Any) -> None:
    if not figure.objectives:
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return
    dims = []
    for axis in figure.axes:
        dim: dict[str, Any] = {"label": axis.label, "values": axis.values}
        if axis.ticks is not None:
            dim.update(tickvals=axis.ticks, ticktext=axis.ticktext, range=_padded(axis.ticks))
        dims.append(dim)
    line = {"color": figure.objectives, "colorscale": "Viridis", "showscale": True,
            "colorbar": {"title": {"text": "objective"}}}
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


# -- matplotlib (.png) ---------------------------------------------------------------


def _write_png(figure: Figure, path: Path) -> None:
    mpl_figure = _require("matplotlib.figure")
    agg = _require("matplotlib.backends.backend_agg")
    height = max(4.5, 1.5 + 0.35 * len(figure.rows)) if isinstance(figure, TimelineFigure) else 5.5
    fig = mpl_figure.Figure(figsize=(11, height), layout="constrained")
    agg.FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw = {RegretFigure: _regret_mpl, ParallelFigure: _parallel_mpl, TimelineFigure: _timeline_mpl}
    draw[type(figure)](figure, fig, ax)
    fig.suptitle(figure.title, fontsize=12)
    if figure.note:
        ax.text(0.5, 0.75, figure.note, transform=ax.transAxes, ha="center", va="center",
                fontsize=16, color="gray")
    fig.savefig(path, format="png", dpi=110)


def _regret_mpl(figure: Any, fig: Any, ax: Any) -> None:
    if figure.x:
        ax.plot(figure.x, figure.objectives, "o", color="#1f77b4", alpha=0.7, label="objective")
        ax.step(figure.x, figure.best, where="post", color="#ff7f0e", linewidth=2, label="best so far")
    else:
        ax.set_yticks([])
    if figure.broken_x:
        ax.plot(figure.broken_x, figure.broken_y, "x", color=STATUS_COLORS[TrialStatus.BROKEN],
                markersize=10, markeredgewidth=2, label="broken")
    if figure.x or figure.broken_x:
        ax.xaxis.set_major_locator(_require("matplotlib.ticker").MaxNLocator(integer=True))
        ax.legend(loc="upper right")
    else:
        ax.set_xticks([])
    ax.set_xlabel("trial (completion order)")
    ax.set_ylabel("objective")
    ax.grid(alpha=0.3)


def _parallel_mpl(figure: Any, fig: Any, ax: Any) -> None:
    ax.set_yticks([])
    for side in ("left", "right", "top", "bottom"):
        ax.spines[side].set_visible(False)
    if not figure.objectives:
        ax.set_xticks([])
        return
    collections = _require("matplotlib.collections")
    colors = _require("matplotlib.colors")
    scaled = [_unit_scale(axis) for axis in figure.axes]
    lines = [list(enumerate(point)) for point in zip(*(s for s, _ in scaled))]
    norm = colors.Normalize(min(figure.objectives), max(figure.objectives))
    paths = collections.LineCollection(lines, array=figure.objectives, cmap="viridis", norm=norm,
                                       linewidths=1.2, alpha=0.8)
    ax.add_collection(paths)
    for i, (axis, (_, to_unit)) in enumerate(zip(figure.axes, scaled)):
        _draw_axis(ax, i, axis, to_unit)
    ax.set_xlim(-0.3, len(figure.axes) - 0.7)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(range(len(figure.axes)), [a.label for a in figure.axes])
    ax.tick_params(axis="x", length=0, pad=8)
    fig.colorbar(paths, ax=ax, label="objective", pad=0.01)


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
    patches = _require("matplotlib.patches")
    bars = figure.bars
    ax.barh([b.row for b in bars], [b.end - b.start for b in bars], left=[b.start for b in bars], height=0.7,
            color=[STATUS_COLORS[b.status] for b in bars], edgecolor="white", linewidth=0.5)
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
FORMATS: dict[str, Callable[[Figure, Path], None]] = {".html": _write_html, ".png": _write_png}
