"""The JSON the API serves, built from folded views (plain data in, plain data out).

Every payload holds only builtins that ``json.dumps`` accepts with
``allow_nan=False``: non-finite floats become ``None``. The storage appears
only as its redacted URI, and so does every URI in a configuration (a warm-start source's).
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Iterable
from typing import Any

from orchard.constraints import feasibility
from orchard.dashboard._views import ExperimentView
from orchard.experiment_config import applied_max_broken
from orchard.fidelity import fidelity_param, rung_label
from orchard.objectives import Shown, dominates
from orchard.pareto import scored
from orchard.plotting.curves import sampled
from orchard.report import finite_only
from orchard.stopping import LEDGER_KEY, Ledger, broken_stop, stop_summary
from orchard.storages._uri import redact_all
from orchard.trial import Trial, TrialStatus, first_value

__all__ = ["RowCache", "devices_of", "experiment_detail", "experiment_summary", "fidelity_param", "pareto_front",
           "to_json", "trial_rows"]

#: Points of the front's scatter at most (the front's own points always included).
MAX_FRONT_POINTS = 5_000
#: Reports of one trial sent in its row at most (evenly spaced; first, last and lowest kept).
MAX_ROW_REPORTS = 50


def devices_of(trial: Trial) -> list[str]:
    """The devices (GPUs) given to the worker evaluating ``trial``, or ``[]``.

    Hook for the GPU assignment (SPEC §7 ``gpus``): workers that were given
    devices carry them in their name (``host:pid:uuid/gpus=0,1``), read by
    ``orchard.resources.devices_of``. Where that module is not installed yet,
    no devices are shown. Change only this function if devices get another home.
    """
    try:
        from orchard.resources import devices_of as recorded_devices
    except ImportError:
        return []
    devices = recorded_devices(trial.worker)
    return [d for d in str(devices).split(",") if d] if devices else []


def algorithm_name(config: dict[str, Any]) -> str:
    """``"bayes"`` for ``"bayes"`` or ``{"bayes": {...}}``; ``"-"`` when none is stored."""
    algorithm = config.get("algorithm")
    if isinstance(algorithm, dict) and algorithm:
        return str(next(iter(algorithm)))
    return str(algorithm) if algorithm else "-"


def experiment_summary(view: ExperimentView) -> dict[str, Any]:
    """One line of the experiments list: counts by status, progress, best objective, live workers."""
    counts = {status.value: view.counts[status] for status in TrialStatus}
    best = view.best
    max_trials = view.config.get("max_trials")
    return {
        "name": view.record.name,
        "algorithm": algorithm_name(view.config),
        "created": view.record.created,
        "max_trials": max_trials,
        "counts": counts,
        "total": len(view.trials),
        "done": view.done,
        "progress": view.done / max_trials if max_trials else None,
        "best_objective": None if best is None else _finite(best.objective),
        "best_trial": None if best is None else best.id,
        "broken": counts["broken"],
        "live_workers": len({w["worker"] for w in live_workers(view) if not w["stale"]}),
        "fidelity": fidelity_param(view.config),
        "problem": view.problem,
        "stopped": _stopped_by(view.config),
        "broken_stop": broken_stop(counts["broken"], applied_max_broken(view.config)),
        "shown": _shown_objective(view.config),
    }


def _shown_objective(config: dict[str, Any]) -> dict[str, Any]:
    """How pages show the stored (minimised) objective: the first declared objective's name, and the sign
    that gives its value as returned (``-1`` for a ``"max"`` one: an accuracy of 0.97, not -0.97).

    Every ``objective``, ``best_objective`` and report value the API sends is as stored: a page
    multiplies it by ``sign``, and ranks by the stored value (lower is better).
    """
    shown = Shown.stored(config.get("objectives"))
    return {"name": shown.name, "label": shown.label, "sign": shown.sign}


def _stopped_by(config: dict[str, Any]) -> str | None:
    """The stopping rule that stopped the experiment (no worker starts it again), or ``None``."""
    fired = Ledger.from_dict(config.get(LEDGER_KEY)).fired
    return None if fired is None else _text(fired.get("rule"), 40)


def experiment_detail(view: ExperimentView, storage_uri: str, since: int = 0) -> dict[str, Any]:
    """The experiment page's header data: summary, space, settings, workers, rungs, front, version.

    With ``since`` equal to the view's version (nothing changed since), the front (up to
    :data:`MAX_FRONT_POINTS` points) is left out: the page asking already shows it.
    """
    config = view.config
    best = view.best
    detail: dict[str, Any] = {
        **experiment_summary(view),
        "storage": storage_uri,
        "space": dict(config.get("space") or {}),
        "settings": {k: redact_all(v) for k, v in config.items() if k not in ("space", "algorithm", LEDGER_KEY)},
        "stopping": stop_summary(config),
        "best_params": None if best is None else best.params,
        "stale_after": view.stale_after,
        "workers": live_workers(view),
        "rungs": rungs(view),
        "front": pareto_front(view),
        "version": view.version,
        "rebuilt_at": view.rebuilt_at,
    }
    if since and since == view.version:
        del detail["front"]
    return detail


def live_workers(view: ExperimentView) -> list[dict[str, Any]]:
    """One row per reserved trial: its worker, heartbeat age (this server's clock), devices, staleness."""
    rows = []
    for trial in view.reserved.values():
        age, lower_bound = view.heartbeat_age(trial)
        rows.append({
            "worker": trial.worker, "trial": trial.id, "params": trial.params,
            "heartbeat_age": age, "heartbeat_age_is_lower_bound": lower_bound,
            "stale": age is not None and age > view.stale_after, "devices": devices_of(trial),
            "attempts": trial.attempts,
        })
    return rows


def rungs(view: ExperimentView) -> list[dict[str, Any]] | None:
    """Trials grouped by their fidelity value (lowest rung first; ``label``: as shown), or ``None`` without one."""
    name = fidelity_param(view.config)
    if name is None:
        return None
    groups: dict[Any, list[Trial]] = {}
    for trial in view.trials.values():
        groups.setdefault(trial.params.get(name), []).append(trial)
    result = []
    for value in sorted(groups, key=_sort_key):
        members = groups[value]
        best = _best(members, view.config.get("constraints"))
        result.append({
            "fidelity": value, "label": rung_label(value),
            "completed": sum(t.status is TrialStatus.COMPLETED for t in members),
            "running": sum(t.status is TrialStatus.RESERVED for t in members),
            "pruned": sum(t.status is TrialStatus.PRUNED for t in members),
            "broken": sum(t.status is TrialStatus.BROKEN for t in members),
            "promoted": sum(t.parent is not None for t in members),
            "best_objective": None if best is None else _finite(best.objective),
        })
    return result


def pareto_front(view: ExperimentView) -> dict[str, Any] | None:
    """The feasible Pareto front of an experiment with several objectives, and the points of its scatter.

    ``None`` for a single objective. Otherwise ``objectives`` (name -> direction),
    ``constraints``, ``trials`` (the front's rows: number, id, params, each
    objective's value in its own direction; ordered by the first objective) and
    ``points`` (``[number, feasible, on the front, value, value, ...]`` for each
    completed trial, at most :data:`MAX_FRONT_POINTS` of the ``scored`` ones: the front's, then the
    latest). Computed once per version of the view, and kept on the view (:attr:`ExperimentView.front`):
    it goes with the view of a deleted experiment.
    """
    objectives = view.config.get("objectives")
    if not isinstance(objectives, dict) or len(objectives) < 2:
        return None
    if view.front is not None and view.front[0] == view.version:
        return view.front[1]
    constraints = view.config.get("constraints")
    rows = scored(view.trials.values(), objectives, constraints)
    ordered = sorted((vector, trial.id) for trial, vector, violation in rows if violation <= 0)
    front: list[tuple[float, ...]] = []
    on_front: set[str] = set()
    for vector, trial_id in ordered:  # a dominating point sorts before the points it dominates
        if not any(dominates(w, vector) for w in front):
            front.append(vector)
            on_front.add(trial_id)
    signs = [-1.0 if d == "max" else 1.0 for d in objectives.values()]

    def shown(vector: tuple[float, ...]) -> list[float | None]:
        return [_finite(sign * v) for sign, v in zip(signs, vector, strict=True)]

    members = [(t, v) for t, v, _ in rows if t.id in on_front]
    others = [(t, v, violation) for t, v, violation in rows if t.id not in on_front]
    others = others[max(0, len(others) + len(members) - MAX_FRONT_POINTS):]  # the latest ones
    payload = {
        "objectives": dict(objectives),
        "constraints": list(constraints or []),
        "trials": [{"number": view.numbers[t.id], "id": t.id, "params": {k: _plain(x) for k, x in t.params.items()},
                    "values": shown(v)} for t, v in sorted(members, key=lambda m: m[1])],
        "scored": len(rows),
        "points": [[view.numbers[t.id], True, True, *shown(v)] for t, v in members]
        + [[view.numbers[t.id], violation <= 0, False, *shown(v)] for t, v, violation in others],
    }
    view.front = (view.version, payload)
    return payload


def trial_rows(view: ExperimentView, since: int = 0, rows: bool = True) -> dict[str, Any]:
    """The trials changed after version ``since`` (all for 0) as table rows, and the current version.

    All in one page (``more`` is false, ``after`` the last row's number); :class:`RowCache`
    serves the same in pages. With ``rows=False`` only the header fields (version, total,
    params) are built.
    """
    payload: dict[str, Any] = {
        "version": view.version,
        "rebuilt_at": view.rebuilt_at,
        "since": since,
        "total": len(view.trials),
        "params": list((view.config.get("space") or {}).keys()),
    }
    if rows:
        changed = view.changed_since(since)
        payload["after"] = view.numbers[changed[-1].id] if changed else 0
        payload["more"] = False
        constraints = view.config.get("constraints")
        payload["trials"] = [_row(trial, view.numbers[trial.id], constraints) for trial in changed]
    return payload


def to_json(payload: Any) -> str:
    """Compact, strict JSON (no NaN): what every API response body is.

    A NaN or infinity left anywhere in ``payload`` (a best trial's or a running trial's
    param, a setting another program stored) is sent as ``null``, as in a trial's row:
    it made the whole answer a 500 before.
    """
    try:
        return json.dumps(payload, allow_nan=False, default=str, separators=(",", ":"))
    except ValueError:  # the rare payload holding a non-finite float: walked once more, only then
        return json.dumps(finite_only(payload), allow_nan=False, default=str, separators=(",", ":"))


class RowCache:
    """The JSON text of each trial's table row, encoded once per version of the trial.

    Serving 10,000 rows then costs a join, not 10,000 encodings: a row is
    re-encoded only when a fold replaced its trial. The rows are kept by view, and go with
    it: a dashboard kept every row of the experiments deleted while it ran, for its life.
    """

    def __init__(self) -> None:
        self._rows: weakref.WeakKeyDictionary[ExperimentView, dict[str, tuple[Trial, str]]] = (
            weakref.WeakKeyDictionary())

    def trial_rows(self, view: ExperimentView, since: int = 0, after: int = 0, limit: int | None = None) -> str:
        """The JSON text of one page of :func:`trial_rows` ``(view, since)``.

        A page holds the rows, in trial-number order, of the trials changed after
        version ``since`` whose number is above ``after``: at most ``limit`` of
        them (``None``: all). ``more`` says whether rows remain; ask again with
        ``after`` set to the page's ``after``. Numbers never change, so pages
        asked while the view folds miss nothing: a trial changed meanwhile is
        sent again by the next ``since`` query (from the first page's version).
        """
        head = to_json({**trial_rows(view, since=-1, rows=False), "since": since})
        encoded = self._rows.setdefault(view, {})
        parts: list[str] = []
        last, more = after, False
        for trial in view.changed_since(since):
            number = view.numbers[trial.id]
            if number <= after:
                continue
            if limit is not None and len(parts) >= limit:
                more = True
                break
            cached = encoded.get(trial.id)
            if cached is None or cached[0] is not trial:
                cached = (trial, to_json(_row(trial, number, view.config.get("constraints"))))
                encoded[trial.id] = cached
            parts.append(cached[1])
            last = number
        page = f',"after":{last},"more":{"true" if more else "false"}'
        return head[:-1] + page + ',"trials":[' + ",".join(parts) + "]}"


def _row(trial: Trial, number: int, constraints: Any = None) -> dict[str, Any]:
    """A trial as a table row; ``infeasible``: it completed breaking ``constraints`` (never best so far)."""
    error = trial.error or None
    return {
        "number": number, "id": trial.id, "status": trial.status.value, "params": {k: _plain(v) for k, v in trial.params.items()},
        "objective": _finite(trial.objective), "worker": trial.worker,
        "submit_time": trial.submit_time, "start_time": trial.start_time, "end_time": trial.end_time,
        "heartbeat": trial.heartbeat, "duration": trial.duration, "attempts": trial.attempts, "parent": trial.parent,
        "error": None if error is None else _error_row(error),
        "reports": [[step, _short(first_value(v))] for step, v in sampled(trial.reports, MAX_ROW_REPORTS)],
        "reported": len(trial.reports),
        "verdict": _verdict_row(trial.verdict),
        "infeasible": (trial.status is TrialStatus.COMPLETED
                       and not feasibility(trial.results, constraints).feasible),
    }


def _error_row(error: Any) -> dict[str, str]:
    """A trial error's type, reason and message as text, whatever another program stored (a list, a number)."""
    if not isinstance(error, dict):
        return {"type": type(error).__name__, "reason": "", "message": _text(error)}
    return {k: _text(error.get(k, "")) for k in ("type", "reason", "message")}


def _verdict_row(verdict: Any) -> str | None:
    """Why a trial was pruned, as text (``None``: not pruned), whatever another program stored (a list, a text)."""
    if not verdict:
        return None
    return _text(verdict.get("reason", "") if isinstance(verdict, dict) else verdict)


def _text(value: Any, limit: int = 2_000) -> str:
    """``str(value)`` cut to ``limit`` characters; a value that cannot be printed is named, not raised."""
    try:
        return str(value)[:limit]
    except ValueError:  # an int too long to convert to text
        return f"<unprintable {type(value).__name__}>"


def _best(trials: Iterable[Trial], constraints: Any) -> Trial | None:
    """The completed trial of the lowest finite objective meeting ``constraints`` (as ``best_trial``)."""
    scored = [t for t in trials if t.status is TrialStatus.COMPLETED and _finite(t.objective) is not None
              and feasibility(t.results, constraints).feasible]
    return min(scored, key=lambda t: t.objective, default=None)  # type: ignore[arg-type, return-value]


def _finite(value: float | None) -> float | None:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _short(value: float) -> float | None:
    """A reported value to 6 significant digits (as the page shows numbers), half the JSON of its repr."""
    finite = _finite(value)
    return None if finite is None else float(f"{finite:.6g}")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))
