"""The ``fidelity(low, high, base=3)`` prior: the training budget multi-fidelity algorithms vary.

Its rungs are ``low·base^k`` for ``k = 0, 1, …``, capped at ``high`` (so
``fidelity(1, 81, base=3)`` has the rungs 1, 3, 9, 27, 81 and ``fidelity(1,
100)`` the rungs 1, 3, 9, 27, 81, 100). A space has at most one. ``asha`` and
``hyperband`` (:mod:`orchard.algorithms`) evaluate trials at every rung;
``random``, ``grid`` and ``bayes`` see a single value, ``high``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from orchard.priors import Fail, Prior, Scalar, bounds, is_integral, is_number
from orchard.trial import Trial, TrialStatus, finite_number

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MAX_RUNGS", "Fidelity", "best_by_fidelity", "best_key", "fidelity_param", "format_rungs",
           "rung_counts", "rung_label"]

#: The most rungs a fidelity may have (``low·base^k`` up to ``high``).
MAX_RUNGS = 1000


@dataclasses.dataclass(frozen=True)
class Fidelity(Prior):
    """The training budget of multi-fidelity algorithms (epochs, samples, …).

    Its rungs are ``low·base^k`` for ``k = 0, 1, …``, capped at ``high`` (so
    ``high`` is always the last rung); ints when ``low`` and ``high`` are ints.
    Algorithms that are not multi-fidelity see a single value, ``high``: they
    sample it, grid it and fit it as a constant.
    """

    NAME: ClassVar[str] = "fidelity"
    KEYWORDS: ClassVar[tuple[str, ...]] = ("base",)

    low: float
    high: float
    base: float = 3

    @classmethod
    def parse(cls, fail: Fail, args: list[Any], kwargs: dict[str, Any]) -> Prior:
        low, high = args
        bounds(fail, low, high)
        base = kwargs.get("base", 3)
        if low <= 0:
            raise fail("fidelity needs 0 < low")
        if not is_number(base) or base <= 1:
            raise fail(f"base ({base!r}) must be a number > 1")
        powers = math.ceil((math.log(high) - math.log(low)) / math.log(base))
        if powers >= MAX_RUNGS:  # each worker computes and ranks them: 27 million took 1.7 GB and 80 s for 5 trials
            raise fail(f"base {base!r} makes {powers + 1:,} rungs from {low} to {high}, more than "
                       f"{MAX_RUNGS:,}; raise base (3 is usual: each rung keeps 1/base of the trials)")
        if isinstance(low, int) and isinstance(high, int):
            return cls(low, high, base)
        return cls(float(low), float(high), base)

    @property
    def integral(self) -> bool:
        """Whether the fidelity's values are ints (``low`` and ``high`` were written as ints)."""
        return isinstance(self.low, int) and isinstance(self.high, int)

    def rungs(self) -> tuple[Scalar, ...]:
        """The fidelity of each rung, lowest first: ``low·base^k`` capped at ``high``.

        Integer fidelities are rounded, float ones to 12 significant digits (``fidelity(0.1, 0.9)``: 0.1,
        0.3, 0.9, not 0.30000000000000004), and a power that rounds to the previous rung
        (``fidelity(1, 10, base=1.5)``: 1, 2, 2, …) is skipped, so rungs strictly increase.
        """
        return _rungs(self.low, self.high, self.base, self.integral)

    def rung_of(self, value: Any) -> int | None:
        """The index of the rung whose fidelity is ``value``, or ``None``."""
        for index, rung in enumerate(self.rungs()):
            if is_number(value) and math.isclose(float(rung), float(value), rel_tol=1e-9):
                return index
        return None

    def sample(self, rng: np.random.Generator) -> Scalar:
        return self.high

    def to_skopt(self, name: str) -> Any:
        from skopt.space import Categorical

        return Categorical([self.high], name=name, transform="onehot")

    def contains(self, value: Any) -> bool:
        if not is_number(value) or (self.integral and not is_integral(value)):
            return False
        return bool(self.low <= value <= self.high)

    def cast(self, value: Any) -> Scalar:
        return int(value) if self.integral else float(value)

    def size(self) -> int | None:
        return 1

    def encode(self, value: Any) -> Any:
        return self.high

    def decode(self, value: Any) -> Scalar:
        return self.high

    def grid(self, n: int) -> list[Scalar]:
        return [self.high]

    def log_range(self) -> tuple[float, float] | None:
        return float(self.low), float(self.high)

    def __str__(self) -> str:
        return f"fidelity({self.low!r}, {self.high!r}, base={self.base!r})"


def rung_counts(prior: Fidelity, name: str, trials: Iterable[Trial]) -> list[dict[str, Any]]:
    """Trials per rung of a fidelity dimension, for ``orchard status``/``info``.

    Args:
        prior: the space's fidelity prior.
        name: its dimension's name.
        trials: the experiment's trials.

    Returns:
        One dict per rung, lowest first: ``fidelity``, ``completed``, ``pruned``, ``pending``
        (new, reserved or interrupted), ``broken``, and ``promoted`` (trials that
        reached the rung by promotion). Trials at a fidelity that is no rung
        (inserted by hand) are not counted.
    """
    rows: list[dict[str, Any]] = [{"fidelity": rung, "completed": 0, "pruned": 0, "pending": 0, "broken": 0,
                                   "promoted": 0} for rung in prior.rungs()]
    for trial in trials:
        index = prior.rung_of(trial.params.get(name))
        if index is None:
            continue
        row = rows[index]
        if trial.status is TrialStatus.COMPLETED:
            row["completed"] += 1
        elif trial.status in (TrialStatus.BROKEN, TrialStatus.PRUNED):  # finished: never pending
            row[trial.status.value] += 1
        else:
            row["pending"] += 1
        row["promoted"] += trial.parent is not None
    return rows


def best_by_fidelity(trials: Iterable[Trial], fidelity: tuple[str, Fidelity] | None,
                     best: Callable[[list[Trial]], Trial | None]) -> Trial | None:
    """``best`` of the trials at the highest fidelity where it finds one (of all of them without ``fidelity``,
    the space's ``(name, prior)``).

    A result at a higher fidelity wins over any at a lower one, as Optuna's ``best_trial`` never
    is a pruned trial: under ``asha`` a constant objective made a one-epoch trial the best (the
    oldest of the ties). A trial whose fidelity is not a number (another program's write) ranks lowest.
    """
    if fidelity is None:
        return best(list(trials))
    groups: dict[float, list[Trial]] = {}
    for trial in trials:
        value = finite_number(trial.params.get(fidelity[0]))
        groups.setdefault(-math.inf if value is None else value, []).append(trial)
    for value in sorted(groups, reverse=True):
        found = best(groups[value])
        if found is not None:
            return found
    return None


def best_key(trial: Trial, fidelity: str | None) -> tuple[float, float]:
    """A completed trial's key (finite objective) in :func:`best_by_fidelity`'s order (lowest: best).

    For views that keep their best incrementally (the dashboard, the progress bar): the highest
    fidelity first (``fidelity``: the dimension's name, or ``None``), then the lowest objective.
    """
    value = None if fidelity is None else finite_number(trial.params.get(fidelity))
    return math.inf if value is None else -value, trial.objective  # type: ignore[return-value]


def fidelity_param(config: Mapping[str, Any]) -> str | None:
    """The name of a stored configuration's ``fidelity(...)`` dimension (``None``: single-fidelity)."""
    space = config.get("space") or {}
    for name, prior in space.items():
        if isinstance(prior, str) and prior.replace(" ", "").startswith("fidelity("):
            return str(name)
    return None


def rung_label(rung: Any) -> str:
    """A rung's fidelity as shown (status, info, the dashboard, ``plot rungs``): a float to 12 significant
    digits (rungs are rounded so, but trials stored before they were hold ``0.1 * 3``, the float
    ``0.30000000000000004``); ``1234567.0`` is ``1234567``, not ``1.23457e+06``."""
    return f"{rung:.12g}" if isinstance(rung, float) else str(rung)


def format_rungs(rows: list[dict[str, Any]]) -> str:
    """One line: ``1: 27 completed, 2 pending | 3: 9 completed (9 promoted) | …`` (rungs by :func:`rung_label`)."""
    parts = []
    for row in rows:
        text = f"{rung_label(row['fidelity'])}: {row['completed']} completed"
        text += "".join(f", {row[key]} {key}" for key in ("pruned", "pending", "broken") if row.get(key))
        parts.append(text + (f" ({row['promoted']} promoted)" if row["promoted"] else ""))
    return " | ".join(parts)


@functools.cache
def _rungs(low: float, high: float, base: float, integral: bool) -> tuple[Scalar, ...]:
    """:meth:`Fidelity.rungs`, computed once per prior (a worker asks for them for every trial)."""
    values: list[Scalar] = []
    k = 0
    while True:
        try:
            value = low * base**k
        except OverflowError:  # past any float, so past high
            value = math.inf
        if value >= high * (1 - 1e-9):
            return (*values, high) if not values or values[-1] != high else tuple(values)
        tidy = float(f"{value:.12g}")  # 0.1 * 3 is 0.3, not 0.30000000000000004; low stays as given
        rung = round(value) if integral else tidy if k and low < tidy else float(value)
        if not values or rung != values[-1]:
            values.append(rung)
        k += 1
