"""Stopping rules: an experiment stops handing out trials once its stored history says so.

(The rules' parsing and typed form are in :mod:`orchard.stop_rules`; they are re-exported here.)

Four rules, any combination, given as ``stop={...}`` (``--stop RULE=VALUE``)::

    target      a completed (feasible) trial reached this objective value (direction-aware)
    patience    the last N completed trials brought no improvement of at least ``min_delta``
    max_cost    the ``cost`` metric the trials reported (``cost_metric``) sums to this much
    max_time    the trials' own evaluation times sum to this many seconds ("2h", "90m", 3600)

**The history the rules are judged from** is the experiment's *stopping ledger*:
every trial a worker finishes (completed, pruned or broken) is folded into one
record stored with the experiment, by a compare-and-swap on that record
(:meth:`~orchard.storages.base.BaseStorage.swap_experiment`), *before* the
trial's result is written. The fold that makes a rule hold also marks the
ledger *fired* (which rule, which trial, after how many finished trials), in
the same atomic swap. A trial's evaluation time is measured by the worker that
evaluated it, on its own monotonic clock, from its reservation to its result:
no clock of one node is compared with another's (MongoDB's server clock is not
used either: a sum of durations needs no common clock).

The argument needs only that a read sees every write that took effect before
it started (a pickle file; MongoDB's primary, where every read goes by default).

**Exact with N racers.** A worker that reserves a trial reads the ledger
*after* the reservation is written; if it has fired, the reservation is given
back (the trial becomes ``interrupted``, its attempt not counted) and the worker
stops. Since the firing fold is stored before the firing trial's result, every
trial whose evaluation started was reserved before that result was stored: *no
trial is reserved after the rule fired*, whatever the interleaving. Trials
already running when it fires finish and are recorded (they are not folded).

**Inserted evaluations** (``exp.insert(params, objective=...)``, ``orchard insert
--objective``) are folded too, before they are stored, like a worker's result: one
that reaches ``target`` stops the experiment. Recorded in the budget
(``count_in_budget``) it counts as one of the experiment's trials for every rule;
apart from the budget it only reaches ``target`` or raises the bar ``patience``
measures from (see :meth:`Ledger.folded`).

Folded results count even if their write is then refused (the reservation was
lost meanwhile): they were evaluated. The trial's next evaluation, by the worker that
takes it up, is folded too. Trials broken because their worker died
are not folded (no worker finished them).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from orchard.constraints import feasibility
from orchard.errors import BudgetExhaustedError, ConfigurationError, StopReason, StorageError
from orchard.stop_rules import RULES, StopRules, normalize_stop, parse_duration
from orchard.trial import INT_LIMIT, finite_number

if TYPE_CHECKING:  # pragma: no cover
    from orchard.objective import Outcome
    from orchard.storages.base import BaseStorage

__all__ = [
    "LEDGER_KEY", "RULES", "SEARCH_ON", "Ledger", "StopGate", "StopRules", "broken_stop", "normalize_stop",
    "parse_duration", "stop_message", "stop_summary", "unreadable_ledger",
]

log = logging.getLogger(__name__)

#: The experiment config key the stopping ledger is stored under (not a setting: never compared on join).
LEDGER_KEY = "stop_state"
#: What to do to run more trials once a rule has fired (a stopped experiment stays stopped).
SEARCH_ON = "to search on, start an experiment with a new name (it can warm-start from this one)"
_RECENT = 8  # folded trial ids the ledger keeps, so a retried swap can tell it had landed
_MAX_SWAPS = 1000


@dataclasses.dataclass
class Ledger:
    """The stopping ledger: what the finished trials add up to, and whether a rule fired.

    Attributes:
        finished: trials folded (completed, pruned or broken by their worker), in fold order.
        completed: feasible completed trials folded (patience counts these).
        best: the best objective so far, minimized (improvements smaller than ``min_delta`` leave it).
        best_at: ``completed`` when ``patience`` last saw an improvement: ``best`` was set or, with a
            fidelity dimension, a trial beat the best at its own fidelity (see ``levels``).
        levels: with a fidelity dimension, the best objective at each fidelity (key: :meth:`StopRules.level`).
        cost: the ``cost_metric`` summed over folded completed trials.
        time: the folded trials' evaluation seconds, summed.
        recent: the ids of the last folded trials.
        fired: ``None``, or ``{"rule", "trial", "finished", "completed", "reason"}``.
    """

    finished: int = 0
    completed: int = 0
    best: float | None = None
    best_at: int = 0
    levels: dict[str, float] = dataclasses.field(default_factory=dict)
    cost: float = 0.0
    time: float = 0.0
    recent: list[str] = dataclasses.field(default_factory=list)
    fired: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Any, label: str = "") -> Ledger:
        """The ledger stored as ``data`` (``None``: an empty one).

        A stored value Orchard never writes (another program's, or a hand edit: a
        ledger that is not a mapping, a count in text) is named once per process and
        read as an empty ledger, so the rules count again from the next finished
        trial and the next fold replaces it; it never stops the workers.
        """
        if not data:
            return cls()
        why = unreadable_ledger(data)
        if why is not None:
            if (label, why) not in _NAMED:
                _NAMED.add((label, why))
                log.warning("the stopping ledger of experiment %r holds values Orchard never writes (%s); read as "
                            "empty: its rules count again from the next finished trial", label, why)
            return cls()
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def to_dict(self) -> dict[str, Any]:
        """The stored form (plain values)."""
        return dataclasses.asdict(self)

    def folded(self, rules: StopRules, trial_id: str, outcome: Outcome, seconds: float,
               origin: str = "evaluated", level: str = "", mark: str | None = None,
               warn: bool = True) -> Ledger:
        """This ledger with one more finished trial, fired if a rule holds now.

        ``mark`` is what ``recent`` keeps of this fold (default: the trial id): see :meth:`StopGate.fold`.
        ``warn``: log a trial's missing ``cost`` (once per fold: not again when a lost swap is retried).

        ``origin``: ``"evaluated"`` (a worker's trial), ``"inserted"`` (made elsewhere, in the
        budget: counted alike) or ``"apart"`` (apart from the budget: it can reach ``target``
        and sets the best ``patience`` measures from, but adds no trial, cost or time).
        With a fidelity dimension, ``patience`` compares a trial with the best at its
        fidelity (``level``): a low-budget trial cannot beat a full-budget one.
        """
        counted = origin != "apart"
        after = dataclasses.replace(self, finished=self.finished + counted, time=_sum(self.time, max(seconds, 0.0)),
                                    recent=[*self.recent, mark or trial_id][-_RECENT:])
        value: float | None = None  # the objective of a feasible completed trial
        if outcome.ok and outcome.objective is not None:
            if counted:
                wanted = warn and rules.max_cost is not None
                after.cost = _sum(after.cost, _cost(outcome.results, rules.cost_metric, trial_id, wanted))
            if feasibility(outcome.results, rules.constraints).feasible:
                value = float(outcome.objective)
                after.completed += counted
                if _improves(after.best, value, rules.min_delta):
                    after.best = value
                    after.best_at = after.completed if not rules.fidelity else after.best_at
                if rules.fidelity and _improves(after.levels.get(level), value, rules.min_delta):
                    after.levels = {**after.levels, level: value}
                    after.best_at = after.completed
        reason = after._reason(rules, value, "a trial" if origin == "evaluated" else "an inserted trial")
        if reason is not None:
            after.fired = {"rule": reason[0], "trial": trial_id, "finished": after.finished,
                           "completed": after.completed, "reason": reason[1]}
        return after

    def _reason(self, rules: StopRules, value: float | None, what: str) -> tuple[str, str] | None:
        """The rule that holds once a trial of objective ``value`` (minimized; ``None``: none) is folded."""
        if rules.target is not None and value is not None and value <= rules.target * rules.sign:
            return "target", f"{what} reached {value * rules.sign:.6g} (target {rules.target:g})"
        if rules.patience is not None and self.completed - self.best_at >= rules.patience:
            where = " at their fidelity" if rules.fidelity else ""
            return "patience", (f"no improvement of at least {rules.min_delta:g}{where} in the last "
                                f"{rules.patience} completed trials (best {self.best_value(rules):.6g})")
        if rules.max_cost is not None and self.cost >= rules.max_cost:
            return "max_cost", f"the trials' {rules.cost_metric} sums to {self.cost:.6g} (max_cost {rules.max_cost:g})"
        if rules.max_time is not None and self.time >= rules.max_time:
            return "max_time", f"the trials' evaluations sum to {self.time:.6g} s (max_time {rules.max_time:g} s)"
        return None

    def best_value(self, rules: StopRules) -> float:
        """The best objective in its own direction (``nan`` when none)."""
        return math.nan if self.best is None else self.best * rules.sign


def _sum(total: float, more: float) -> float:
    """``total + more``, kept finite: a stored sum past a float would be read as a ledger Orchard never writes."""
    return min(total + more, sys.float_info.max)


def _improves(best: float | None, value: float, min_delta: float) -> bool:
    """Whether ``value`` (minimized) improves on ``best`` by at least ``min_delta`` (the first value does)."""
    return best is None or (best - value >= min_delta and value < best)


def _cost(results: Mapping[str, Any], metric: str, trial_id: str, wanted: bool) -> float:
    value = results.get(metric)
    number = finite_number(value)
    if number is None or number < 0:
        if wanted:
            what = "no finite" if number is None else f"a negative ({number:g})"
            log.warning("trial %s reported %s %r metric; it adds nothing to max_cost", trial_id, what, metric)
        return 0.0
    return number


class StopGate:
    """One worker's side of the stopping rules: folds its finished trials, refuses reservations once fired.

    Args:
        storage: the shared storage.
        experiment_id: the experiment.
        rules: its rules.
        label: how messages name the experiment.
        clock: this worker's monotonic clock.
    """

    def __init__(self, storage: BaseStorage, experiment_id: str, rules: StopRules, label: str,
                 clock: Callable[[], float]) -> None:
        self.storage, self.experiment_id, self.rules, self.label = storage, experiment_id, rules, label
        self._clock = clock
        self._started: dict[str, float] = {}  # trial id -> when this worker's reservation of it was admitted

    def read(self) -> Ledger:
        """The stored ledger."""
        return Ledger.from_dict(self.storage.experiment(self.experiment_id).config.get(LEDGER_KEY), self.label)

    def check(self) -> None:
        """Raise the stop if a rule has fired.

        Raises:
            BudgetExhaustedError: reason ``STOPPED`` (nothing is left to run), saying which rule and when.
        """
        fired = self.read().fired
        if fired is not None:
            raise BudgetExhaustedError(f"{stop_message(self.label, fired)}; {SEARCH_ON}", StopReason.STOPPED)

    def admit(self, trial_id: str) -> bool:
        """Whether a reservation just written may run: ``False`` once a rule has fired (read after it).

        An admitted trial's evaluation time counts from now.
        """
        if self.read().fired is not None:
            return False
        self._started[trial_id] = self._clock()
        return True

    def fold(self, trial_id: str, outcome: Outcome, origin: str = "evaluated",
             params: Mapping[str, Any] | None = None, reserved_at: float | None = None) -> Ledger:
        """Fold a finished trial into the ledger (before its result is written); return the ledger.

        Its evaluation time runs from :meth:`admit` to now, on this worker's monotonic clock
        (none for a trial never admitted: an inserted one, whose ``origin`` :meth:`Ledger.folded` explains).
        ``params`` tell the fidelity the trial ran at (``patience`` compares it with the best there).
        ``reserved_at`` (the reservation's start time) tells this evaluation from another of the same
        trial: one whose reservation was lost after its fold, reserved again and evaluated again, is
        folded again (it was evaluated again, and may reach the target the first did not), while a
        retried swap of this fold that had landed is not.

        Raises:
            StorageError: the swap kept losing to other workers for 1000 rounds.
        """
        started = self._started.pop(trial_id, None)
        seconds = 0.0 if started is None else self._clock() - started
        mark = trial_id if reserved_at is None else f"{trial_id}@{reserved_at!r}"
        level = self.rules.level(params)
        for attempt in range(_MAX_SWAPS):
            stored = self.storage.experiment(self.experiment_id).config.get(LEDGER_KEY)
            ledger = Ledger.from_dict(stored, self.label)
            if ledger.fired is not None or mark in ledger.recent:
                return ledger  # fired before (running trials are not folded), or our retried swap landed
            # a missing cost is said on the first try only: a swap lost to another worker said it twice
            after = ledger.folded(self.rules, trial_id, outcome, seconds, origin, level, mark, warn=attempt == 0)
            if self.storage.swap_experiment(self.experiment_id, LEDGER_KEY, stored, after.to_dict()):
                if after.fired is not None:
                    log.info("%s", stop_message(self.label, after.fired))
                return after
        raise StorageError(f"could not fold trial {trial_id} into the stopping ledger of experiment "
                           f"{self.label!r} after {_MAX_SWAPS} tries; try again")


_NAMED: set[tuple[str, str]] = set()  # unreadable ledgers already named in this process
_NUMBER = (int, float)
#: The types of a stored ledger's fields (bools are not counts).
_LEDGER_TYPES: dict[str, tuple[type, ...]] = {
    "finished": (int,), "completed": (int,), "best_at": (int,), "best": (*_NUMBER, type(None)),
    "cost": _NUMBER, "time": _NUMBER, "recent": (list,), "fired": (dict, type(None)), "levels": (dict,),
}


def unreadable_ledger(data: Any) -> str | None:
    """Why ``data``, a stored ledger, is not one Orchard writes, or ``None``.

    Its types are not enough: a count past 64 bits (which cannot even be printed)
    crashed every worker's fold, and a NaN or infinite best or sum, or a best reached
    after more trials than completed, fired a rule at once.
    """
    if not isinstance(data, Mapping):
        return f"it is a {type(data).__name__}, not a mapping"
    for name, kinds in _LEDGER_TYPES.items():
        if name in data and type(data[name]) not in kinds:
            return f"field {name!r} is {type(data[name]).__name__}"
    counts = [data.get(name, 0) for name in ("best_at", "completed", "finished")]
    if not all(0 <= count < INT_LIMIT for count in counts) or counts != sorted(counts):
        return "its counts are not 0 <= best_at <= completed <= finished < 2**63"
    sums = [finite_number(data.get(name, 0.0)) for name in ("cost", "time")]
    if not all(number is not None and number >= 0 for number in sums):
        return "its cost or time is negative or not a finite number"
    if any(finite_number(best) is None for best in [*data.get("levels", {}).values(), data.get("best") or 0.0]):
        return "a best value is not a finite number"
    recent = data.get("recent", [])
    if len(recent) > _RECENT or not all(isinstance(item, str) for item in recent):
        return f"field 'recent' is not at most {_RECENT} trial ids"
    fired = data.get("fired")
    if fired is not None and not (fired.get("rule") in RULES and isinstance(fired.get("trial"), str)
                                  and isinstance(fired.get("reason"), str)
                                  and all(type(fired.get(key)) is int and 0 <= fired[key] < INT_LIMIT
                                          for key in ("finished", "completed"))):
        return "field 'fired' is not a rule, a trial, two counts and a reason"
    return None


def stop_message(label: str, fired: Mapping[str, Any]) -> str:
    """``experiment 'x' was stopped by rule target after 37 finished trials (trial …): …``."""
    return (f"experiment {label!r} was stopped by rule {fired.get('rule')} after {fired.get('finished')} "
            f"finished trials (trial {fired.get('trial')}): {fired.get('reason')}")


def stop_summary(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """What ``status``, ``info`` and the dashboard say of a stored config's rules (``None``: no rules).

    Returns:
        ``{"rules", "fired", "finished", "cost", "time", "line"}``, ``line`` a one-line account.
    """
    if not config.get("stop"):
        return None
    ledger = Ledger.from_dict(config.get(LEDGER_KEY))
    try:  # rules another program stored are named, never a failure of every page that shows them
        stop = normalize_stop(config["stop"]) or {}
    except ConfigurationError as err:
        stop, listed = {}, f"unusable stored rules ({err})"
    else:
        listed = ", ".join(StopRules(**stop).describe(rule) for rule in RULES if rule in stop)
    if ledger.fired is not None:
        fired = ledger.fired
        line = (f"stopped by {fired.get('rule')} after {fired.get('finished')} finished trials "
                f"(trial {str(fired.get('trial'))[:12]}): {fired.get('reason')}")
    else:
        line = (f"{listed}; not fired ({ledger.finished} trials finished, cost {ledger.cost:.6g}, "
                f"{ledger.time:.6g} s evaluated)")
    return {"rules": dict(stop), "fired": ledger.fired, "finished": ledger.finished, "cost": ledger.cost,
            "time": ledger.time, "line": line}


def broken_stop(broken: int, max_broken: int | None) -> dict[str, Any] | None:
    """What ``status`` and ``list`` say of an experiment ``max_broken`` broken trials stopped (``None``: not).

    Nothing is stored when they stop it: each worker reads the counts before a trial, so the counts say it.
    ``status`` and ``list`` showed such an experiment as one that merely had broken trials.
    """
    if max_broken is None or broken < max_broken:
        return None
    said = f"stopped: {broken} broken trials (max_broken={max_broken})"  # a list's row; line adds what to do
    return {"broken": broken, "max_broken": max_broken, "said": said,
            "line": f"{said}; no worker starts a trial until max_broken is raised (fix the objective, then "
                    f"e.g. orchard hunt --max-broken {broken + max_broken})"}
