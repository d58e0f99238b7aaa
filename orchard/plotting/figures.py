"""The figure records and their builders: pure functions of a list of trials.

Each builder (:func:`regret`, :func:`parallel`, :func:`timeline`) returns a
small, backend-neutral record that :func:`orchard.plotting.save` draws.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from orchard.constraints import feasibility
from orchard.fidelity import best_key, rung_label
from orchard.objectives import Shown
from orchard.space import Prior, Space
from orchard.trial import Trial, TrialStatus

__all__ = [
    "DRAWN_LIMIT",
    "MAX_PARALLEL_PARAMS",
    "MAX_TIMELINE_ROWS",
    "STATUS_COLORS",
    "Axis",
    "Bar",
    "ParallelFigure",
    "RegretFigure",
    "TimelineFigure",
    "describe",
    "drawable",
    "left_out",
    "no_results_note",
    "parallel",
    "regret",
    "scored",
    "timeline",
]

#: Colour of each status in the timeline (and of broken trials in the regret plot).
STATUS_COLORS: dict[TrialStatus, str] = {
    TrialStatus.COMPLETED: "#2ca02c",
    TrialStatus.PRUNED: "#9467bd",
    TrialStatus.BROKEN: "#d62728",
    TrialStatus.RESERVED: "#1f77b4",
    TrialStatus.INTERRUPTED: "#ff7f0e",
    TrialStatus.NEW: "#7f7f7f",
}


#: The largest magnitude of an objective drawn. Beyond it an axis from the lowest to the highest value
#: can span more than the largest float (1.8e308), which matplotlib fails on ("arange: cannot compute
#: length"). A trial with such a value (an overflow in the objective, most likely) is left out of every
#: figure, its ``.html`` too, and the title says so.
DRAWN_LIMIT = 1e300

#: Parameters drawn as axes of the parallel coordinates at most: plotly draws 60 axes and drops the others,
#: the objective's (the last) first. Beyond, the first ones in the space's order are drawn; the title says so.
MAX_PARALLEL_PARAMS = 59

#: Workers drawn as rows of the timeline at most (those that started last): a row each for 2,000 workers made
#: a .png 77,000 pixels tall in a minute, and 10,000 would need gigabytes. The title counts every worker.
MAX_TIMELINE_ROWS = 100

#: Characters of a line of a figure's note (drawn in large type across the middle) at most.
NOTE_WIDTH = 60

#: Characters of a line of a figure's title at most.
TITLE_WIDTH = 100

#: Labelled powers of ten of a log axis of parallel coordinates at most: ``loguniform(1e-300, 1e300)``
#: labelled all 601 of them, one black bar of overlapping text. Beyond, every 2nd, 5th, 10th, ... power.
MAX_DECADE_TICKS = 11

#: Categories labelled on an axis of parallel coordinates at most: choices of 200 models labelled all 200, one
#: black bar of overlapping text. Of more, those the trials took (an even sample of them, both ends kept).
MAX_CATEGORY_TICKS = 30

#: Characters of a category's tick label at most: a choice of 5,000 characters was drawn across the whole
#: figure. A longer one keeps its start and end (which tell paths apart) around an ellipsis.
MAX_TICK_TEXT = 60


# -- figure records ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegretFigure:
    """Objective of each completed trial in completion order, and the best so far.

    ``x`` values are 1-based ranks among finished (completed or broken) trials,
    so broken trials take their place on the same axis. ``best`` is what ``best_trial`` said then:
    under multi-fidelity, the best at the highest fidelity reached (``best_label`` says so).
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
    label: str = "objective"  # the y axis: what ``objectives`` are (see :class:`Shown`)
    best_label: str = "best so far"  # the legend of ``best``


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
    label: str = "objective"  # what the colour is (see :class:`Shown`)
    higher_is_better: bool = False  # the colour scale is reversed: darker is better either way


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




# -- builders ------------------------------------------------------------------------


def regret(trials: Iterable[Trial], name: str, shown: Shown = Shown(),
           constraints: Sequence[str] | None = None, fidelity: str | None = None) -> RegretFigure:
    """Build the regret figure: objectives in completion order and the best feasible one so far.

    Args:
        trials: the experiment's trials (any statuses; unfinished ones are ignored).
        name: the experiment's name, used in the title.
        shown: how the objective is shown (its name and direction).
        constraints: the experiment's constraints: a trial breaking them is drawn, but is never
            the best so far (as it is never ``best_trial``); before the first feasible trial the
            line has a gap (NaN).
        fidelity: the name of the space's fidelity dimension, if any: every trial is drawn, and the
            best so far is ``best_trial``'s rule at each point (the best at the highest fidelity
            completed so far, :func:`orchard.fidelity.best_key`), as Optuna's history plot draws
            the best of the trials that ran to the end, never a pruned one's value. A trial at a
            lower fidelity than the best's does not move the line, however low its objective.

    Returns:
        The figure record; empty, with a note, when no trial has completed.
    """
    trials = list(trials)
    drawn = [t for t in trials if scored(t) and drawable(t.objective) or t.status is TrialStatus.BROKEN]
    finished = sorted(drawn, key=_end_key)
    x: list[int] = []
    objectives: list[float] = []
    best: list[float] = []
    broken_x: list[int] = []
    broken_at: list[float | None] = []
    so_far, infeasible, leader = math.nan, 0, None
    for rank, trial in enumerate(finished, start=1):
        if trial.status is TrialStatus.BROKEN:
            broken_x.append(rank)
            broken_at.append(None if math.isnan(so_far) else so_far)
            continue
        x.append(rank)
        objectives.append(shown.value(float(trial.objective)))  # type: ignore[arg-type]
        if math.isnan(objectives[-1]):
            pass  # a gap, never the best (as best_trial): first, it held the line at NaN for good
        elif feasibility(trial.results, constraints).feasible:
            if leader is None or best_key(trial, fidelity) < best_key(leader, fidelity):
                leader, so_far = trial, objectives[-1]
        else:
            infeasible += 1
        best.append(so_far)
    # Broken trials sit on the best-so-far line; those before any result on the first one.
    broken_y = [objectives[0] if y is None else y for y in broken_at] if objectives else [0.0] * len(broken_x)
    labels = [describe(t, shown) for t in finished if t.status is not TrialStatus.BROKEN]
    broken_labels = [describe(t, shown) for t in finished if t.status is TrialStatus.BROKEN]
    title = f"{name}: regret"
    if best:
        named = "" if shown == Shown() else f"{shown.name} "
        found = f"best {named}{so_far:.4g}" if leader is not None else "no feasible trial"
        if leader is not None and fidelity is not None:
            found += f" at {fidelity}={rung_label(leader.params.get(fidelity))}"
        title += f" ({found} after {len(x)} completed, {len(broken_x)} broken"
        title += f", {infeasible} infeasible)" if constraints or infeasible else ")"
    title += (far := left_out(t for t in trials if scored(t) and not drawable(t.objective)))
    note = None if x else no_results_note(trials, far)
    best_label = "best so far" if fidelity is None else f"best so far (at the highest {fidelity} reached)"
    return RegretFigure(title, note, x, objectives, labels, best, broken_x, broken_y, broken_labels,
                        shown.label, best_label)


def parallel(trials: Iterable[Trial], name: str, space: Space | None = None,
             shown: Shown = Shown()) -> ParallelFigure:
    """Build a parallel-coordinates figure of the completed trials, coloured by objective.

    Args:
        trials: the experiment's trials; only completed ones are drawn.
        name: the experiment's name, used in the title.
        space: the experiment's space, if known: it orders the axes, keeps the
            order of ``choices`` and puts ``loguniform`` dimensions on a log axis.
            Without it, dimensions with any non-numeric value are categorical.
        shown: how the objective is shown (its name and direction).

    Returns:
        The figure record; empty, with a note, when no trial has completed.
    """
    all_trials = list(trials)
    # A NaN objective is no line, and sorted first it made the colour scale NaN: nothing was drawn at all.
    nan = sum(scored(t) and math.isnan(float(t.objective)) for t in all_trials)  # type: ignore[arg-type]
    # Worst first, so the best lines are drawn last, on top.
    done = sorted((t for t in all_trials if scored(t) and drawable(t.objective)
                   and not math.isnan(float(t.objective))),  # type: ignore[arg-type]
                  key=lambda t: -float(t.objective))  # type: ignore[arg-type]
    names = list(space) if space is not None else _param_names(done)
    done = [t for t in done if all(n in t.params for n in names)]
    many = len(names) > MAX_PARALLEL_PARAMS
    left = f"; the first {MAX_PARALLEL_PARAMS} of {len(names)} parameters" if many else ""
    names = names[:MAX_PARALLEL_PARAMS]
    objectives = [shown.value(float(t.objective)) for t in done]  # type: ignore[arg-type]
    axes = [_axis(n, [t.params[n] for t in done], space.get(n) if space else None) for n in names]
    axes.append(Axis(shown.name, objectives))
    far = left_out(t for t in all_trials if scored(t) and not drawable(t.objective))
    note = None if done else no_results_note(all_trials, far)
    darker = "higher" if shown.higher_is_better else "lower"
    title = f"{name}: parallel coordinates of {len(done)} completed trials (darker = {darker} {shown.name})"
    title += left + (f"; {nan} with a NaN objective not drawn" if nan else "") + far
    return ParallelFigure(title, note, axes, objectives, shown.label, shown.higher_is_better)


def timeline(trials: Iterable[Trial], name: str, shown: Shown = Shown()) -> TimelineFigure:
    """Build the per-worker timeline: a row per worker, a bar per trial it ran.

    A worker's busy fraction is the time its trials ran over the time from its
    first start to its last end; the title gives the fraction over all workers
    and the whole span. Running trials end at their last heartbeat. Trials
    never started, or released (unowned), are not drawn.

    Args:
        trials: the experiment's trials.
        name: the experiment's name, used in the title.
        shown: how a bar's label shows the objective (its first declared one, in its own direction).

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
    busy = {w: _busy_seconds([(s, e) for s, e, _ in runs[w]]) for w in workers}
    total = sum(busy.values()) / (len(workers) * (t1 - t0)) if t1 > t0 else 1.0
    count = f"{len(workers)} worker" + ("s" if len(workers) > 1 else "")
    title = f"{name}: {count} over {t1 - t0:.4g} s, busy {total:.0%} of the time"
    if len(workers) > MAX_TIMELINE_ROWS:
        title += f"; the {MAX_TIMELINE_ROWS} that started last drawn"
        workers = workers[-MAX_TIMELINE_ROWS:]
    bars = [Bar(row, s - t0, e - t0, t.status, describe(t, shown))
            for row, w in enumerate(workers) for s, e, t in sorted(runs[w], key=lambda r: r[:2])]
    labels = _short_names(workers)
    rows = [f"{label}  busy {_fraction(busy[w], runs[w]):.0%}" for w, label in zip(workers, labels)]
    return TimelineFigure(title, None, rows, bars)


# -- builder helpers -----------------------------------------------------------------


def scored(trial: Trial) -> bool:
    return trial.status is TrialStatus.COMPLETED and trial.objective is not None


def drawable(*values: float | None) -> bool:
    """Whether none of ``values`` is beyond :data:`DRAWN_LIMIT` (``None`` and NaN, drawn as gaps, are not)."""
    return not any(value is not None and abs(value) > DRAWN_LIMIT for value in values)


def left_out(trials: Iterable[Trial], what: str = "an objective") -> str:
    """The title's second line: the trials left out for ``what`` beyond :data:`DRAWN_LIMIT`, or ""."""
    ids = [t.id[:8] for t in trials]
    if not ids:
        return ""
    named = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    limit = f"{DRAWN_LIMIT:.0e}".replace("+", "")
    return f"\nnot drawn, {what} beyond ±{limit}: {len(ids)} trial{'s' * (len(ids) > 1)} ({named})"


def _end_key(trial: Trial) -> tuple[float, float]:
    end = trial.end_time if trial.end_time is not None else math.inf
    return end, trial.submit_time or 0.0


def _end_time(trial: Trial) -> float:
    """When a bar ends: the trial's end, else (still running) its last heartbeat."""
    start = trial.start_time or 0.0
    return max(start, trial.end_time or trial.heartbeat or start)


def describe(trial: Trial, shown: Shown = Shown(), values: str = "") -> str:
    """A trial's hover label: its id, its objective as ``shown`` (or several ``values``, by name, as
    :func:`orchard.objectives.named_values` gives them, or its status) and its params."""
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    objective = trial.objective
    result = (values if values else
              f"{shown.name} {shown.value(objective):.6g}" if objective is not None else trial.status.value)
    if trial.status is TrialStatus.BROKEN and trial.error:
        result += f": {trial.error.get('type', 'error')}"
    return f"trial {trial.id[:8]} ({result}) {params}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def note_lines(note: str) -> list[str]:
    """``note`` in lines of at most :data:`NOTE_WIDTH` characters (a longer word is cut).

    Both backends draw a note as one line otherwise, in large type: the reason a hypervolume cannot be
    drawn (200 characters) ran off both sides of the .png, and the reader saw its middle only.
    """
    return _wrapped(note, NOTE_WIDTH)


def title_lines(title: str) -> list[str]:
    """``title`` in lines of at most :data:`TITLE_WIDTH` characters, its own line breaks kept.

    The title of an experiment of a 128-character name ran off both sides of the .png.
    """
    return _wrapped(title, TITLE_WIDTH)


def _wrapped(text: str, width: int) -> list[str]:
    return [wrapped for line in text.split("\n")
            for wrapped in textwrap.wrap(line, width, break_on_hyphens=False) or [line]]


def no_results_note(trials: Iterable[Trial], far: str = "") -> str:
    """The note of a figure with nothing to draw (``far``: what :func:`left_out` said, if anything).

    It counts the pruned trials too: "no completed trials yet" alone, over 40 trials a pruner had
    stopped, read as if nothing had run.
    """
    if far:
        return "no completed trial can be drawn: see the title"
    statuses = [t.status for t in trials]
    counts = [f"{n} {status.value}" for status in (TrialStatus.PRUNED, TrialStatus.BROKEN)
              if (n := statuses.count(status))]
    return "no completed trials yet" + (f" ({', '.join(counts)})" if counts else "")


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
        ticks = _decades(math.log10(log_range[0]), math.log10(log_range[1]))
        return Axis(f"{name} (log)", [math.log10(v) for v in values], ticks, [_decade(p) for p in ticks])
    return Axis(name, [float(v) for v in values])


def _categorical_axis(name: str, values: list[Any], choices: list[Any]) -> Axis:
    """Categories in the space's order, then any others sorted; keyed by repr so 1 != '1' != True."""
    text = {repr(v): str(v) for v in [*choices, *values]}
    order = [repr(c) for c in choices] + sorted(set(text) - {repr(c) for c in choices})
    index = {key: float(i) for i, key in enumerate(order)}
    positions = [index[repr(v)] for v in values]
    labelled = list(range(len(order)))
    if len(order) > MAX_CATEGORY_TICKS:  # those the trials took, and of more, an even sample with both ends
        labelled = sorted({int(p) for p in positions}) or labelled
        if len(labelled) > MAX_CATEGORY_TICKS:
            last, most = len(labelled) - 1, MAX_CATEGORY_TICKS - 1
            labelled = [labelled[round(k * last / most)] for k in range(MAX_CATEGORY_TICKS)]
    return Axis(name, positions, [float(k) for k in labelled], [_short(text[order[k]]) for k in labelled])


def _short(text: str) -> str:
    if len(text) <= MAX_TICK_TEXT:
        return text
    half = (MAX_TICK_TEXT - 1) // 2
    return f"{text[:half]}\u2026{text[-(MAX_TICK_TEXT - 1 - half):]}"


def _decades(low: float, high: float) -> list[float]:
    """Powers of ten from ``low`` to ``high`` (log10): each, or both ends and every 2nd, 5th, 10th, ... one.

    The ends are kept, as the axis spans its ticks; a multiple of the step nearer an end than half a
    step is left out, so that no two labels overlap.
    """
    first, last = math.floor(low), math.ceil(high)
    step = 1
    while (last - first) / step > MAX_DECADE_TICKS - 1:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2  # 1, 2, 5, 10, 20, 50, ...
    inner = range(-(-first // step) * step, last + 1, step)
    kept = [p for p in inner if step == 1 or min(p - first, last - p) * 2 >= step]
    return [float(p) for p in sorted({first, *kept, last})]


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
