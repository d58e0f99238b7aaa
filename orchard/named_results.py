"""Reading an experiment's declared objectives by name from what its objective returned.

With ``objectives={"error": "min", "latency_ms": "min"}`` an objective returns each by name
(``{"error": 0.1, "latency_ms": 12}``); with one declared objective, a number returned whole
is its value. :func:`with_objectives` turns the :class:`~orchard.objective.Outcome` that
:func:`~orchard.objective.interpret_result` made of the returned value into the trial's
outcome, or into a failure naming the objective that is missing or not a finite number, or
saying that one value came where several are read by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchard.objective import Outcome, unstorable
from orchard.report import shown
from orchard.trial import finite_number

__all__ = ["with_objectives"]


def with_objectives(outcome: Outcome, objectives: Mapping[str, str]) -> Outcome:
    """The outcome of an experiment with several ``objectives``, read from the reported metrics.

    Every objective must be reported by name as a finite number; the first one, as
    minimized (negated for ``"max"``), becomes the trial's scalar ``objective``. A number
    returned whole (or a mapping's ``"objective"``) is the objective named ``"objective"``, or
    the one declared objective's value when it is not given by name; otherwise a mapping's
    ``"objective"`` is one more metric. A tuple, list or array returned whole holds the objectives'
    values in their declared order (Optuna's ``return loss, latency``). Pruned outcomes and
    failures of the evaluation itself
    are returned unchanged.

    Returns:
        A completed outcome, or a failure naming the objective that is missing or not finite, or
        saying that a sequence returned whole has not one value per objective.
    """
    given = outcome.given  # a value returned whole, or a mapping's "objective"
    read = given is not None
    if outcome.pruned is not None or (outcome.error is not None and not read
                                      and outcome.error.get("reason") != "no-objective"):
        return outcome
    results = dict(outcome.results)
    whole = outcome.returned is not None and given is not None and isinstance(given[0], list)
    if whole and not (outcome.ok and len(objectives) == 1):  # np.array([[x]]) for one: its number, read below
        assert given is not None
        if len(given[0]) != len(objectives):  # Optuna's `return loss, latency`: the values in declared order
            return _miscounted(outcome, given[0], objectives)
        return _read({**results, **dict(zip(objectives, given[0]))}, objectives)
    # a number returned whole is the objective named "objective" (taken apart from the results), or the
    # one declared objective's value in its own direction, as orchard.report() takes it
    named = ("objective" if "objective" in objectives else next(iter(objectives)) if len(objectives) == 1
             else None)
    if named is not None and named not in results and given is not None:
        if not outcome.ok and outcome.returned is None:
            return outcome  # a mapping's "objective" that is no number: interpret_result said why
        results[named] = outcome.objective if outcome.ok else given[0]  # a NaN returned whole: named below
    elif given is not None and outcome.returned is None:  # beside the objectives by name: a metric
        results["objective"] = given[0]
        why = unstorable(results)
        if why is not None:
            return Outcome.failure("InvalidResult", why, reason="unstorable")
    if read and named is None and not any(name in results for name in objectives):
        return _unread(outcome, objectives)
    return _read(results, objectives)


def _read(results: dict[str, Any], objectives: Mapping[str, str]) -> Outcome:
    """The completed outcome of ``results`` holding every objective, or the failure naming one not."""
    for name in objectives:
        value = results.get(name)
        if finite_number(value) is None:
            found = "missing" if value is None else f"{shown(value, 40)}, not a finite number"
            return Outcome.failure(
                "InvalidResult", f"objective {name!r} is {found}; report every objective by name as a "
                f"finite number ({', '.join(objectives)}), e.g. return {_example(objectives)}",
                reason="objective")
    first, direction = next(iter(objectives.items()))
    value = float(results[first])  # finite: checked above
    return Outcome(objective=-value if direction == "max" else value, results=results)


def _unread(outcome: Outcome, objectives: Mapping[str, str]) -> Outcome:
    """The failure of an outcome that gave one value (or a list) where ``objectives`` are read by name."""
    given = (f"is {outcome.returned}" if outcome.returned is not None
             else f"gives 'objective' {shown(outcome.given[0] if outcome.given else None, 60)}")
    failure = Outcome.failure(
        "InvalidResult", f"the result {given}, but the experiment has objectives {', '.join(objectives)}: "
        f"return each by name, e.g. return {_example(objectives)}", reason="objective")
    failure.error = {**(outcome.error or {}), **(failure.error or {})}  # a script's stderr stays
    return failure


def _miscounted(outcome: Outcome, values: list[Any], objectives: Mapping[str, str]) -> Outcome:
    """The failure of a sequence returned whole whose length is not the number of ``objectives``."""
    return Outcome.failure(
        "InvalidResult",
        f"the result is {outcome.returned}: {len(values)} value(s) for the {len(objectives)} "
        f"objectives {', '.join(objectives)}; return one value per objective in that order, or each by name, "
        f"e.g. return {_example(objectives)}", reason="objective")


def _example(objectives: Mapping[str, str]) -> str:
    """A dict returning ``objectives`` by name, for failure messages (built only for a failure)."""
    return f"{{{', '.join(f'{n!r}: ...' for n in objectives)}}}"
