"""Priors: one class per prior string, each parsing its own arguments.

=====================================  =============================================
prior                                  values
=====================================  =============================================
``uniform(low, high)``                 float in [low, high]
``uniform(low, high, discrete=True)``  int in [low, high]
``loguniform(low, high)``              float, log-uniform, 0 < low < high
``randint(low, high)``                 int, low <= v < high (numpy convention)
``choices(['a', 'b', 3])``             one of the listed values
``normal(mu, sigma)``                  float, Gaussian; BO bounds it to mu ± 4 sigma
=====================================  =============================================

Prior strings are parsed with :mod:`ast` and :func:`ast.literal_eval`, never
``eval`` (:func:`orchard.space.parse_prior`, over the ``PRIORS`` table there;
``fidelity`` lives in :mod:`orchard.fidelity`). Every prior-specific decision (how to sample it, encode it for
scikit-optimize, compare two of its values, count its values, draw its axis)
is a method of its class, so no caller branches on the prior's type.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import sys
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar

from orchard.errors import SpaceError
from orchard.report import shown
from orchard.trial import INT_LIMIT, finite_number

if TYPE_CHECKING:  # imported where a value is computed: `orchard list` needs no numpy (0.15 s)
    import numpy as np

__all__ = [
    "Choices",
    "Fail",
    "LogUniform",
    "Normal",
    "Prior",
    "RandInt",
    "Scalar",
    "Uniform",
    "bounds",
    "int_bounds",
    "is_integral",
    "is_number",
    "to_builtin",
]

Scalar = int | float | str | bool
#: ``fail(why)`` builds the error for the prior being parsed (it names the dimension and quotes the text).
Fail = Callable[[str], SpaceError]


def to_builtin(value: Any) -> Any:
    """Convert numpy scalars and 0-d arrays (and containers of them) to plain Python values."""
    numpy = sys.modules.get("numpy")  # not imported: no value is numpy's (`orchard list` needs no numpy)
    if numpy is not None and (isinstance(value, numpy.generic)
                              or (isinstance(value, numpy.ndarray) and value.ndim == 0)):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    return value


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (an int too large for a float is not)."""
    return finite_number(value) is not None


def bounds(fail: Fail, low: Any, high: Any) -> None:
    if not (is_number(low) and is_number(high)):
        raise fail("both arguments must be finite numbers")
    if low >= high:  # Optuna takes low == high as a fixed value
        fixed = f" (a fixed value: choices([{low!r}]))" if low == high else ""
        raise fail(f"low ({low!r}) must be < high ({high!r}){fixed}")
    if not math.isfinite(float(high) - float(low)):
        raise fail("high - low must be a finite float (a range below about 1.8e308)")


def int_bounds(fail: Fail, low: Any, high: Any, what: str, top: int) -> None:
    """Refuse integer bounds whose values no storage holds: ints, ``-2**63 < low`` and ``high <= top``."""
    if not (is_integral(low) and is_integral(high)):
        raise fail(f"{what} bounds must be integers")
    if not (-INT_LIMIT < int(low) and int(high) <= top):
        raise fail(f"{what} bounds must keep its values within 64 bits "
                   f"(-2**63 < low, high <= {'2**63' if top == INT_LIMIT else '2**63 - 1'})")


def is_integral(value: Any) -> bool:
    """Whether a number is a whole one; an int always is (``float(2**60 + 1)`` would round it)."""
    if isinstance(value, int):
        return True
    try:
        return float(value).is_integer()
    except (TypeError, ValueError, OverflowError):
        return False


class Prior(abc.ABC):
    """One dimension's distribution. Subclasses are immutable dataclasses.

    A subclass declares its prior-string name and arity (``NAME``, ``ARITY``,
    ``KEYWORDS`` with their defaults) and builds itself from literal arguments in
    :meth:`parse`; :data:`PRIORS` maps names to classes.
    """

    NAME: ClassVar[str] = ""
    #: Positional arguments the prior string takes.
    ARITY: ClassVar[int] = 2
    #: Keyword arguments the prior string accepts.
    KEYWORDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abc.abstractmethod
    def parse(cls, fail: Fail, args: list[Any], kwargs: dict[str, Any]) -> Prior:
        """Build the prior from literal arguments.

        Args:
            fail: builds the error to raise; it names the dimension and quotes the text.
            args: the ``ARITY`` positional arguments.
            kwargs: keyword arguments, a subset of ``KEYWORDS``.

        Raises:
            SpaceError: an argument is invalid (built by ``fail``).
        """

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> Scalar:
        """Draw one plain Python value."""

    @abc.abstractmethod
    def to_skopt(self, name: str) -> Any:
        """Return the scikit-optimize dimension for this prior."""

    @abc.abstractmethod
    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this prior."""

    @abc.abstractmethod
    def grid(self, n: int) -> list[Scalar]:
        """Return at most ``n`` evenly spread values (all of them for finite priors)."""

    @abc.abstractmethod
    def __str__(self) -> str:
        """The canonical prior string, parseable by :func:`parse_prior`."""

    def cast(self, value: Any) -> Scalar:
        """Return ``value`` as this prior's plain Python type."""
        return to_builtin(value)  # type: ignore[no-any-return]

    def size(self) -> int | None:
        """The number of values a search may pick; ``None`` for a continuous prior."""
        return None

    def close(self, x: Any, y: Any, tol: float) -> bool:
        """Whether two values differ by at most ``tol`` of the prior's range (discrete: equal)."""
        return type(x) is type(y) and x == y

    def encode(self, value: Any) -> Any:
        """The value as a point of :meth:`to_skopt`'s dimension."""
        return value

    def decode(self, value: Any) -> Scalar:
        """A value of :meth:`to_skopt`'s dimension as a plain Python value of this prior."""
        return self.cast(to_builtin(value))

    def categories(self) -> list[Scalar] | None:
        """The values to draw as categories on a plot axis; ``None`` for a numeric axis."""
        return None

    def log_range(self) -> tuple[float, float] | None:
        """``(low, high)`` when a plot should draw this dimension on a log axis."""
        return None


@dataclasses.dataclass(frozen=True)
class Uniform(Prior):
    """Uniform on [low, high]; integers if ``discrete``."""

    NAME: ClassVar[str] = "uniform"
    KEYWORDS: ClassVar[tuple[str, ...]] = ("discrete",)

    low: float
    high: float
    discrete: bool = False

    @classmethod
    def parse(cls, fail: Fail, args: list[Any], kwargs: dict[str, Any]) -> Prior:
        low, high = args
        bounds(fail, low, high)
        discrete = kwargs.get("discrete", False)
        if not isinstance(discrete, bool):
            raise fail("discrete must be True or False")
        if not discrete:
            return cls(float(low), float(high))
        int_bounds(fail, low, high, "discrete uniform", INT_LIMIT - 1)  # high is drawn
        return cls(int(low), int(high), True)

    def sample(self, rng: np.random.Generator) -> Scalar:
        if self.discrete:
            return int(rng.integers(int(self.low), int(self.high) + 1))
        return float(rng.uniform(self.low, self.high))

    def to_skopt(self, name: str) -> Any:
        from skopt.space import Integer, Real

        if self.discrete:
            return Integer(int(self.low), int(self.high), name=name)
        return Real(float(self.low), float(self.high), name=name)

    def contains(self, value: Any) -> bool:
        if not is_number(value):
            return False
        if self.discrete and not is_integral(value):
            return False
        return bool(self.low <= value <= self.high)

    def cast(self, value: Any) -> Scalar:
        return int(value) if self.discrete else float(value)

    def size(self) -> int | None:
        return int(self.high) - int(self.low) + 1 if self.discrete else None

    def close(self, x: Any, y: Any, tol: float) -> bool:
        if self.discrete:
            return super().close(x, y, tol)
        return bool(abs(x - y) <= tol * (self.high - self.low))

    def grid(self, n: int) -> list[Scalar]:
        if self.discrete:
            count = int(self.high) - int(self.low) + 1
            if count <= n:
                return list(range(int(self.low), int(self.high) + 1))
            return _int_grid(int(self.low), int(self.high), n)
        import numpy as np

        return [float(v) for v in np.linspace(self.low, self.high, max(n, 1))]

    def __str__(self) -> str:
        suffix = ", discrete=True" if self.discrete else ""
        return f"uniform({self.low!r}, {self.high!r}{suffix})"


@dataclasses.dataclass(frozen=True)
class LogUniform(Prior):
    """Log-uniform on [low, high], 0 < low < high."""

    NAME: ClassVar[str] = "loguniform"

    low: float
    high: float

    @classmethod
    def parse(cls, fail: Fail, args: list[Any], kwargs: dict[str, Any]) -> Prior:
        low, high = args
        bounds(fail, low, high)
        if low <= 0:
            raise fail("loguniform needs 0 < low")
        return cls(float(low), float(high))

    def sample(self, rng: np.random.Generator) -> Scalar:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def to_skopt(self, name: str) -> Any:
        from skopt.space import Real

        return Real(float(self.low), float(self.high), prior="log-uniform", name=name)

    def contains(self, value: Any) -> bool:
        return is_number(value) and bool(self.low <= value <= self.high)

    def cast(self, value: Any) -> Scalar:
        return float(value)

    def close(self, x: Any, y: Any, tol: float) -> bool:
        return bool(abs(math.log(x) - math.log(y)) <= tol * math.log(self.high / self.low))

    def grid(self, n: int) -> list[Scalar]:
        import numpy as np

        return [float(v) for v in np.geomspace(self.low, self.high, max(n, 1))]

    def log_range(self) -> tuple[float, float] | None:
        return self.low, self.high

    def __str__(self) -> str:
        return f"loguniform({self.low!r}, {self.high!r})"


@dataclasses.dataclass(frozen=True)
class RandInt(Prior):
    """Integers ``low <= v < high`` (numpy convention)."""

    NAME: ClassVar[str] = "randint"

    low: int
    high: int

    @classmethod
    def parse(cls, fail: Fail, args: list[Any], kwargs: dict[str, Any]) -> Prior:
        low, high = args
        bounds(fail, low, high)
        int_bounds(fail, low, high, "randint", INT_LIMIT)  # high is never drawn
        return cls(int(low), int(high))

    def sample(self, rng: np.random.Generator) -> Scalar:
        return int(rng.integers(self.low, self.high))

    def to_skopt(self, name: str) -> Any:
        from skopt.space import Categorical, Integer

        if self.high - self.low == 1:  # skopt's Integer needs low < high
            return Categorical([self.low], name=name, transform="onehot")
        return Integer(self.low, self.high - 1, name=name)

    def contains(self, value: Any) -> bool:
        return is_number(value) and is_integral(value) and self.low <= value < self.high

    def cast(self, value: Any) -> Scalar:
        return int(value)

    def size(self) -> int | None:
        return self.high - self.low

    def grid(self, n: int) -> list[Scalar]:
        if self.high - self.low <= n:
            return list(range(self.low, self.high))
        return _int_grid(self.low, self.high - 1, n)

    def __str__(self) -> str:
        return f"randint({self.low!r}, {self.high!r})"


def _equal_pair(values: list[Any] | tuple[Any, ...]) -> tuple[Any, Any] | None:
    """The first two values that are one point of a space (``1`` and ``1.0`` are), or ``None``.

    Bools stay apart from the ints they equal, as in trial ids (:func:`orchard.space.params_hash`).
    """
    seen: dict[Any, Any] = {}
    for value in values:
        key = (bool, value) if isinstance(value, bool) else value
        if key in seen:
            return seen[key], value
        seen[key] = value
    return None


def _unstorable(value: Scalar) -> str | None:
    """Why a choice could not be stored, read back or passed to a script (``None``: it can)."""
    if isinstance(value, str):
        if "\x00" in value:
            return "a text choice cannot hold a NUL character (no script argument can)"
        try:
            value.encode()
        except UnicodeEncodeError:
            return "a text choice cannot hold a lone surrogate (it is not UTF-8, which storages and scripts take)"
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -INT_LIMIT < value < INT_LIMIT else "an int choice must fit in 64 bits"
    return None if finite_number(value) is not None else "a float choice must be finite (1e400 is inf)"


@dataclasses.dataclass(frozen=True)
class Choices(Prior):
    """One of a fixed list of str, int, float or bool values."""

    NAME: ClassVar[str] = "choices"
    ARITY: ClassVar[int] = 1

    values: tuple[Scalar, ...]

    @classmethod
    def parse(cls, fail: Fail, args: list[Any], kwargs: dict[str, Any]) -> Prior:
        (values,) = args
        if not isinstance(values, (list, tuple)) or not values:
            raise fail("choices takes a non-empty list, e.g. choices(['a', 'b'])")
        if not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise fail("choices may only list str, int, float or bool values")
        for value in values:
            why = _unstorable(value)
            if why is not None:
                raise fail(f"choices cannot list {shown(value)}: {why}")
        twins = _equal_pair(values)
        if twins is not None:
            first, second = twins
            if type(first) is type(second):
                raise fail(f"choices lists {first!r} twice")
            raise fail(f"choices lists {first!r} and {second!r}, which are one point of the space "
                       "(trials are told apart by value); keep one, or give them as strings")
        return cls(tuple(values))

    def sample(self, rng: np.random.Generator) -> Scalar:
        return self.values[int(rng.integers(len(self.values)))]

    def to_skopt(self, name: str) -> Any:
        from skopt.space import Categorical

        # Categorical would coerce mixed types; index the options instead.
        return Categorical(list(range(len(self.values))), name=name, transform="onehot")

    def contains(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def cast(self, value: Any) -> Scalar:
        return value  # type: ignore[no-any-return]

    def size(self) -> int | None:
        return len(self.values)

    def encode(self, value: Any) -> Any:
        return next(i for i, v in enumerate(self.values) if type(v) is type(value) and v == value)

    def decode(self, value: Any) -> Scalar:
        return self.values[int(to_builtin(value))]

    def grid(self, n: int) -> list[Scalar]:
        return list(self.values)

    def categories(self) -> list[Scalar] | None:
        return list(self.values)

    def __str__(self) -> str:
        return f"choices({list(self.values)!r})"


@dataclasses.dataclass(frozen=True)
class Normal(Prior):
    """Gaussian with mean ``mu`` and standard deviation ``sigma``."""

    NAME: ClassVar[str] = "normal"

    mu: float
    sigma: float

    @classmethod
    def parse(cls, fail: Fail, args: list[Any], kwargs: dict[str, Any]) -> Prior:
        mu, sigma = args
        if not (is_number(mu) and is_number(sigma)):
            raise fail("both arguments must be finite numbers")
        if sigma <= 0:
            raise fail("sigma must be > 0")
        low, high = float(mu) - 4 * float(sigma), float(mu) + 4 * float(sigma)
        if not (math.isfinite(high - low) and low < high):  # bayes, grid and optuna search mu ± 4 sigma
            raise fail("mu - 4 sigma and mu + 4 sigma must be distinct floats less than about 1.8e308 apart")
        return cls(float(mu), float(sigma))

    def sample(self, rng: np.random.Generator) -> Scalar:
        return float(rng.normal(self.mu, self.sigma))

    def to_skopt(self, name: str) -> Any:
        from skopt.space import Real

        return Real(self.mu - 4 * self.sigma, self.mu + 4 * self.sigma, name=name)

    def contains(self, value: Any) -> bool:
        return is_number(value)

    def cast(self, value: Any) -> Scalar:
        return float(value)

    def close(self, x: Any, y: Any, tol: float) -> bool:
        return bool(abs(x - y) <= tol * 8 * self.sigma)

    def encode(self, value: Any) -> Any:
        """Clip a tail value into the bounded dimension BO searches (mu ± 4 sigma)."""
        return min(max(value, self.mu - 4 * self.sigma), self.mu + 4 * self.sigma)

    def grid(self, n: int) -> list[Scalar]:
        import numpy as np

        return [float(v) for v in np.linspace(self.mu - 2 * self.sigma, self.mu + 2 * self.sigma, max(n, 1))]

    def __str__(self) -> str:
        return f"normal({self.mu!r}, {self.sigma!r})"


def _int_grid(first: int, last: int, n: int) -> list[Scalar]:
    """``n`` integers spread from ``first`` to ``last`` (both included), rounded, computed exactly.

    Through floats (``np.linspace``) the values of a range past 2**53 were rounded onto
    neighbours outside it: ``randint(0, 2**62)``'s grid ended at ``2**62``, which it excludes.
    """
    steps = max(n - 1, 1)
    return sorted({first + round(Fraction((last - first) * i, steps)) for i in range(steps + 1)})
