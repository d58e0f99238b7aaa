"""A worker's new points: asked of its algorithm and held to the algorithm contract.

Any installed package can provide an algorithm (see :mod:`orchard.algorithms`), so the
worker checks each answer of :meth:`~orchard.algorithms.base.BaseAlgorithm.suggest`
before it registers it. A broken promise becomes one
:class:`~orchard.errors.AlgorithmError` that names the algorithm and what it did,
and the worker stops before anything is stored, instead of:

* an exception from inside the algorithm, reported as if the objective had crashed;
* a point outside the space, or missing a dimension, registered and evaluated;
* a point registered with a parent that is no trial of the experiment (a warm start's trial
  promoted is registered with none);
* an empty answer, or points the experiment already holds suggested again and again,
  while the worker waits forever for something new.

The algorithm is given an overlay of the worker's set of the experiment's points: one that adds
its own suggestion to the set it is given (the contract says not to) changes nothing the worker
decides by; each point it added looked registered, and the worker stopped, blaming it for ignoring
the history.

Trials another program stored with params outside the space make every algorithm
that reads them fail: after a failure, the worker sets them aside
(:meth:`~orchard.history.History.set_aside`), names them, and asks once more.

``SpaceExhaustedError`` is the algorithm's honest "nothing new": the worker stops
with reason ``exhausted`` once the other workers' trials are done.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from typing import Any

from orchard.algorithms.base import BaseAlgorithm, SeenPoints
from orchard.errors import AlgorithmError, OrchardError, SpaceError, SpaceExhaustedError
from orchard.history import History
from orchard.report import shown
from orchard.space import Space, trial_id

__all__ = ["Suggester"]

log = logging.getLogger(__name__)

_CHECK_IT = ("fix the algorithm or choose another (a plugin can be checked with "
             "orchard.testing.algorithms.check_algorithm)")


class Suggester:
    """Asks one worker's algorithm for points and refuses answers that break the contract.

    Args:
        algorithm: the worker's algorithm.
        config: its configuration (its name is the first key), for messages.
        space: the experiment's space.
    """

    def __init__(self, algorithm: BaseAlgorithm, config: str | Mapping[str, Any], space: Space) -> None:
        self.algorithm, self.space = algorithm, space
        self.name = config if isinstance(config, str) else next(iter(config), "?")
        self._takes_seen = _takes_seen(algorithm)
        #: Whether the last answer was "nothing new" (``SpaceExhaustedError``).
        self.exhausted = False

    def next(self, history: History, collided: list[dict[str, Any]]) -> dict[str, Any] | None:
        """One new point inside the space, or ``None`` when the algorithm says the space is exhausted.

        Args:
            history: the worker's view (refreshed first when ``collided`` is not empty).
            collided: this worker's suggestions that other workers registered first: told as pending.

        Raises:
            AlgorithmError: the algorithm raised, answered something other than a list of points,
                or suggested a point outside the space; the message names it and the point.
        """
        if collided:
            history.refresh()
        try:
            return self._next(history, collided)
        except AlgorithmError:
            aside = history.set_aside(self.space)  # another program's trials, outside the space?
            if not aside:
                raise
            log.warning("%d trial(s) of the experiment hold params that are not a point of its space (%s%s), "
                        "written by another program: left out of what algorithm %r is told", len(aside),
                        ", ".join(aside[:3]), ", ..." if len(aside) > 3 else "", self.name)
            return self._next(history, collided)

    def _next(self, history: History, collided: list[dict[str, Any]]) -> dict[str, Any] | None:
        try:
            seen = SeenPoints(base=history.seen)  # the algorithm's to add to; history.seen stays as it is
            pending = history.pending(collided, seen)
            given = {"seen": seen} if self._takes_seen else {}
            answer = self.algorithm.suggest(history.observations, pending, n=1, **given)
        except SpaceExhaustedError:
            self.exhausted = True
            return None
        except OrchardError:
            raise
        except Exception as err:  # a plugin's own failure: name it, not the objective
            raise AlgorithmError(f"algorithm {self.name!r} failed to suggest a point: {shown(err, 200)}; "
                                 f"{_CHECK_IT}") from err
        except SystemExit as err:  # a plugin's sys.exit() ended workon with no word (Orchard's stops are not SystemExit)
            raise AlgorithmError(f"algorithm {self.name!r} failed to suggest a point: it called "
                                 f"sys.exit({shown(err.code, 60)}); {_CHECK_IT}") from None
        self.exhausted = False
        if not isinstance(answer, list) or not answer or not isinstance(answer[0], Mapping):
            raise AlgorithmError(f"algorithm {self.name!r} answered {shown(answer)} instead of a list of points "
                                 f"(params dicts), or SpaceExhaustedError when nothing new is left; {_CHECK_IT}")
        try:  # the point cast to the space's types: 3.0 suggested for a randint is run and stored as 3
            return self.space.validate(answer[0])
        except SpaceError as err:
            raise AlgorithmError(f"algorithm {self.name!r} suggested a point outside the space: {err}; "
                                 f"{_CHECK_IT}") from None

    def parent_id(self, params: Mapping[str, Any], history: History, experiment_id: str) -> str | None:
        """The id of the trial the algorithm names as the parent of ``params`` (a promotion), or ``None``.

        Raises:
            AlgorithmError: ``parent_of`` raised, or named something that is not the params of a
                trial the experiment holds (the point would be stored with a dangling parent).
        """
        try:
            parent = self.algorithm.parent_of(params)
        except (Exception, SystemExit) as err:  # a plugin's own failure: name it, not the objective
            raise AlgorithmError(f"algorithm {self.name!r} failed to name the parent of point "
                                 f"{shown(dict(params))}: {shown(err, 200)}; {_CHECK_IT}") from err
        if parent is None:
            return None
        try:
            parent_id = trial_id(experiment_id, parent) if isinstance(parent, Mapping) else None
        except OrchardError:  # params no trial can have
            parent_id = None
        if parent_id is not None and parent_id not in history.trials:
            if parent in history.seen:
                return None  # a warm start's trial promoted: its parent is another experiment's (evidence)
            parent_id = self._unrounded(parent, history) or parent_id
        if parent_id is None or parent_id not in history.trials:
            what = "which is no trial of the experiment" if parent_id else "not the params of a trial"
            raise AlgorithmError(f"algorithm {self.name!r} named {shown(parent)} as the parent of point "
                                 f"{shown(dict(params))}, {what}; {_CHECK_IT}")
        return parent_id

    def _unrounded(self, parent: Mapping[str, Any], history: History) -> str | None:
        """The id of the trial stored at ``parent`` with its fidelity unrounded, if there is one.

        Float rungs were stored as ``low·base^k`` (0.30000000000000004) before they were rounded (0.3): the
        first promotion from such a rung named a parent no trial had, and stopped the worker.
        """
        found = self.space.fidelity
        value = parent.get(found[0]) if found is not None else None
        if found is None or not isinstance(value, float):
            return None
        name = found[0]
        for trial in history.trials.values():
            stored = trial.params.get(name)
            if isinstance(stored, float) and math.isclose(stored, value, rel_tol=1e-9) \
                    and len(trial.params) == len(parent) \
                    and all(trial.params.get(k) == v for k, v in parent.items() if k != name):
                return trial.id
        return None

    def repeating(self, params: Mapping[str, Any], times: int) -> AlgorithmError:
        """The error for an algorithm that suggested ``times`` points in a row the experiment holds."""
        return AlgorithmError(
            f"algorithm {self.name!r} suggested {times} points in a row that the experiment already holds "
            f"(the last: {shown(dict(params))}): it ignores the completed and pending points it is given; "
            f"{_CHECK_IT}")


def _takes_seen(algorithm: BaseAlgorithm) -> bool:
    """Whether ``algorithm.suggest`` takes ``seen``, an optional argument a plugin written to the
    documented ``suggest(completed, pending, n)`` lacks (every worker failed with "unexpected keyword
    argument 'seen'", while the conformance kit, which never passes it, passed)."""
    try:
        parameters = inspect.signature(algorithm.suggest).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): pass it, as to any algorithm
        return True
    return any(p.name == "seen" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
