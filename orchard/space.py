"""Search spaces: priors parsed safely from strings, sampling, and params identity.

A space maps dimension names to priors, written the same way on the command
line (``--lr~'loguniform(1e-5, 1.0)'``) and in Python
(``space={"lr": "loguniform(1e-5, 1.0)"}``):

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
``eval``. Values handed to objectives and storages are plain Python scalars.
"""

from __future__ import annotations

import abc
import ast
import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from orchard.errors import SpaceError

__all__ = [
    "Choices",
    "LogUniform",
    "Normal",
    "Prior",
    "RandInt",
    "Space",
    "Uniform",
    "params_hash",
    "parse_prior",
    "to_builtin",
    "trial_id",
]

Scalar = int | float | str | bool


# -- params identity -------------------------------------------------------------


def to_builtin(value: Any) -> Any:
    """Convert numpy scalars (and containers of them) to plain Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    return value


def _canonical(params: Mapping[str, Any]) -> str:
    def norm(value: Any) -> Any:
        value = to_builtin(value)
        # 1 and 1.0 are the same point; keep bools distinct from ints.
        if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
            return int(value)
        return value

    return json.dumps({str(k): norm(v) for k, v in params.items()}, sort_keys=True,
                      separators=(",", ":"), default=str)


def params_hash(params: Mapping[str, Any]) -> str:
    """Return a stable hex digest of a params dict (key order and numpy types do not matter)."""
    return hashlib.sha256(_canonical(params).encode()).hexdigest()[:32]


def trial_id(experiment_id: str, params: Mapping[str, Any]) -> str:
    """Return the deterministic id of the trial at ``params`` in an experiment."""
    digest = hashlib.sha256(f"{experiment_id}\x00{_canonical(params)}".encode())
    return digest.hexdigest()[:32]


# -- priors ---------------------------------------------------------------------


class Prior(abc.ABC):
    """One dimension's distribution. Subclasses are immutable dataclasses."""

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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Uniform(Prior):
    """Uniform on [low, high]; integers if ``discrete``."""

    low: float
    high: float
    discrete: bool = False

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
        if not _is_number(value):
            return False
        if self.discrete and float(value) != int(value):
            return False
        return bool(self.low <= value <= self.high)

    def cast(self, value: Any) -> Scalar:
        return int(value) if self.discrete else float(value)

    def grid(self, n: int) -> list[Scalar]:
        if self.discrete:
            count = int(self.high) - int(self.low) + 1
            if count <= n:
                return list(range(int(self.low), int(self.high) + 1))
            return sorted({int(round(v)) for v in np.linspace(self.low, self.high, n)})
        return [float(v) for v in np.linspace(self.low, self.high, max(n, 1))]

    def __str__(self) -> str:
        suffix = ", discrete=True" if self.discrete else ""
        return f"uniform({self.low!r}, {self.high!r}{suffix})"


@dataclasses.dataclass(frozen=True)
class LogUniform(Prior):
    """Log-uniform on [low, high], 0 < low < high."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> Scalar:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def to_skopt(self, name: str) -> Any:
        from skopt.space import Real

        return Real(float(self.low), float(self.high), prior="log-uniform", name=name)

    def contains(self, value: Any) -> bool:
        return _is_number(value) and bool(self.low <= value <= self.high)

    def cast(self, value: Any) -> Scalar:
        return float(value)

    def grid(self, n: int) -> list[Scalar]:
        return [float(v) for v in np.geomspace(self.low, self.high, max(n, 1))]

    def __str__(self) -> str:
        return f"loguniform({self.low!r}, {self.high!r})"


@dataclasses.dataclass(frozen=True)
class RandInt(Prior):
    """Integers ``low <= v < high`` (numpy convention)."""

    low: int
    high: int

    def sample(self, rng: np.random.Generator) -> Scalar:
        return int(rng.integers(self.low, self.high))

    def to_skopt(self, name: str) -> Any:
        from skopt.space import Categorical, Integer

        if self.high - self.low == 1:  # skopt's Integer needs low < high
            return Categorical([self.low], name=name, transform="onehot")
        return Integer(self.low, self.high - 1, name=name)

    def contains(self, value: Any) -> bool:
        return (
            _is_number(value) and float(value) == int(value) and self.low <= value < self.high
        )

    def cast(self, value: Any) -> Scalar:
        return int(value)

    def grid(self, n: int) -> list[Scalar]:
        if self.high - self.low <= n:
            return list(range(self.low, self.high))
        return sorted({int(round(v)) for v in np.linspace(self.low, self.high - 1, n)})

    def __str__(self) -> str:
        return f"randint({self.low!r}, {self.high!r})"


@dataclasses.dataclass(frozen=True)
class Choices(Prior):
    """One of a fixed list of str, int, float or bool values."""

    values: tuple[Scalar, ...]

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

    def grid(self, n: int) -> list[Scalar]:
        return list(self.values)

    def __str__(self) -> str:
        return f"choices({list(self.values)!r})"


@dataclasses.dataclass(frozen=True)
class Normal(Prior):
    """Gaussian with mean ``mu`` and standard deviation ``sigma``."""

    mu: float
    sigma: float

    def sample(self, rng: np.random.Generator) -> Scalar:
        return float(rng.normal(self.mu, self.sigma))

    def to_skopt(self, name: str) -> Any:
        from skopt.space import Real

        return Real(self.mu - 4 * self.sigma, self.mu + 4 * self.sigma, name=name)

    def contains(self, value: Any) -> bool:
        return _is_number(value)

    def cast(self, value: Any) -> Scalar:
        return float(value)

    def grid(self, n: int) -> list[Scalar]:
        return [float(v) for v in np.linspace(self.mu - 2 * self.sigma, self.mu + 2 * self.sigma, max(n, 1))]

    def __str__(self) -> str:
        return f"normal({self.mu!r}, {self.sigma!r})"


# -- parsing --------------------------------------------------------------------


def _fail(name: str, text: str, why: str) -> SpaceError:
    return SpaceError(f"dimension {name!r}: cannot parse prior {text!r}: {why}")


_ARITY = {"uniform": 2, "loguniform": 2, "randint": 2, "choices": 1, "normal": 2}
_KEYWORDS = {"uniform": {"discrete"}}


def parse_prior(name: str, text: str) -> Prior:
    """Parse a prior string such as ``"loguniform(1e-5, 1.0)"`` without ``eval``.

    Args:
        name: the dimension's name, quoted in error messages.
        text: the prior string.

    Returns:
        The prior.

    Raises:
        SpaceError: unknown prior, wrong arity, non-literal argument or bad bounds;
            the message names the dimension and quotes ``text``.
    """
    if not isinstance(text, str):
        raise _fail(name, repr(text), "a prior is a string such as 'uniform(0, 1)'")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise _fail(name, text, f"not a valid expression ({err.msg})") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)):
        raise _fail(name, text, f"expected one of {', '.join(_ARITY)} followed by (arguments)")
    kind = tree.func.id
    if kind not in _ARITY:
        raise _fail(name, text, f"unknown prior {kind!r}; valid priors: {', '.join(_ARITY)}")
    try:
        args = [ast.literal_eval(a) for a in tree.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in tree.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _fail(name, text, "arguments must be literal numbers, strings or lists") from None
    if len(args) != _ARITY[kind]:
        raise _fail(name, text, f"{kind} takes {_ARITY[kind]} positional argument(s), got {len(args)}")
    unknown = {str(key) for key in kwargs} - _KEYWORDS.get(kind, set())
    if unknown:  # a **spread argument has key None, which shows up here as 'None'
        raise _fail(name, text, f"unexpected keyword argument(s) {sorted(unknown)}")
    return _build(name, text, kind, args, {str(k): v for k, v in kwargs.items()})


def _build(name: str, text: str, kind: str, args: list[Any], kwargs: dict[str, Any]) -> Prior:
    if kind == "choices":
        (values,) = args
        if not isinstance(values, (list, tuple)) or not values:
            raise _fail(name, text, "choices takes a non-empty list, e.g. choices(['a', 'b'])")
        if not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise _fail(name, text, "choices may only list str, int, float or bool values")
        if len({(type(v), v) for v in values}) != len(values):
            raise _fail(name, text, "choices lists a value twice")
        return Choices(tuple(values))
    low, high = args
    if not (_is_number(low) and _is_number(high)):
        raise _fail(name, text, "both arguments must be finite numbers")
    if kind == "normal":
        if high <= 0:
            raise _fail(name, text, "sigma must be > 0")
        return Normal(float(low), float(high))
    if low >= high:
        raise _fail(name, text, f"low ({low!r}) must be < high ({high!r})")
    if kind == "loguniform":
        if low <= 0:
            raise _fail(name, text, "loguniform needs 0 < low")
        return LogUniform(float(low), float(high))
    if kind == "randint":
        if low != int(low) or high != int(high):
            raise _fail(name, text, "randint bounds must be integers")
        return RandInt(int(low), int(high))
    discrete = kwargs.get("discrete", False)
    if not isinstance(discrete, bool):
        raise _fail(name, text, "discrete must be True or False")
    if discrete:
        if low != int(low) or high != int(high):
            raise _fail(name, text, "discrete uniform bounds must be integers")
        return Uniform(int(low), int(high), True)
    return Uniform(float(low), float(high))


# -- the space ------------------------------------------------------------------


def _why_not(prior: Prior, value: Any) -> str:
    """Why ``value`` is not in ``prior``: a wrong type, or outside its bounds or choices."""
    if isinstance(prior, Choices):
        return f"is not one of {prior}"
    if not _is_number(value):
        return f"is a {type(value).__name__}, not a finite number as {prior} needs"
    return f"is outside {prior}"


class Space(Mapping[str, Prior]):
    """An ordered, immutable mapping of dimension names to priors."""

    def __init__(self, priors: Mapping[str, Prior]) -> None:
        if not priors:
            raise SpaceError("the search space is empty; define at least one dimension")
        self._priors = dict(priors)

    @classmethod
    def from_config(cls, config: Mapping[str, str | Prior]) -> Space:
        """Build a space from ``{name: prior string}`` (priors are accepted as they are).

        Raises:
            SpaceError: a name or prior is invalid.
        """
        if not isinstance(config, Mapping):
            raise SpaceError(
                f"space must be a mapping of names to prior strings, got {type(config).__name__}"
            )
        priors: dict[str, Prior] = {}
        for name, text in config.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise SpaceError(f"dimension name {name!r} must be a Python identifier")
            priors[name] = text if isinstance(text, Prior) else parse_prior(name, text)
        return cls(priors)

    def __getitem__(self, name: str) -> Prior:
        return self._priors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._priors)

    def __len__(self) -> int:
        return len(self._priors)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(tuple(self.config().items()))

    def __repr__(self) -> str:
        return f"Space({self.config()!r})"

    def config(self) -> dict[str, str]:
        """The canonical ``{name: prior string}`` stored with the experiment."""
        return {name: str(prior) for name, prior in self._priors.items()}

    def diff(self, other: Space) -> list[str]:
        """Human-readable differences between two spaces (empty if equal)."""
        mine, theirs = self.config(), other.config()
        lines = []
        for name in sorted(set(mine) | set(theirs)):
            a, b = mine.get(name, "(absent)"), theirs.get(name, "(absent)")
            if a != b:
                lines.append(f"{name}: {a} != {b}")
        return lines

    def sample(self, rng: np.random.Generator) -> dict[str, Scalar]:
        """Draw one point, as plain Python values."""
        return {name: prior.sample(rng) for name, prior in self._priors.items()}

    def validate(self, params: Mapping[str, Any]) -> dict[str, Scalar]:
        """Return ``params`` cast to the space's types, or raise if it is not a point of it.

        Raises:
            SpaceError: a dimension is missing, unknown, or out of its prior.
        """
        missing = [n for n in self._priors if n not in params]
        extra = [n for n in params if n not in self._priors]
        if missing or extra:
            problems = [f"{label} {', '.join(map(repr, names))}"
                        for label, names in (("missing", missing), ("unknown", extra)) if names]
            raise SpaceError(f"params {dict(params)!r} do not match the space: {'; '.join(problems)} "
                             f"(the space has {', '.join(self._priors)})")
        point: dict[str, Scalar] = {}
        for name, prior in self._priors.items():
            value = to_builtin(params[name])
            if not prior.contains(value):
                raise SpaceError(f"dimension {name!r}: value {value!r} {_why_not(prior, value)}")
            point[name] = prior.cast(value)
        return point

    def nearly_equal(self, a: Mapping[str, Any], b: Mapping[str, Any], tol: float = 1e-3) -> bool:
        """Whether two points differ by at most ``tol`` of each dimension's range.

        Discrete dimensions must match exactly; ``loguniform`` compares logs;
        ``normal`` uses a range of 8 sigma.
        """
        for name, prior in self._priors.items():
            x, y = a[name], b[name]
            if isinstance(prior, Uniform) and not prior.discrete:
                span = prior.high - prior.low
            elif isinstance(prior, LogUniform):
                x, y, span = math.log(x), math.log(y), math.log(prior.high / prior.low)
            elif isinstance(prior, Normal):
                span = 8 * prior.sigma
            else:
                if type(x) is not type(y) or x != y:
                    return False
                continue
            if abs(x - y) > tol * span:
                return False
        return True

    # -- scikit-optimize bridge -------------------------------------------------

    def to_skopt(self) -> list[Any]:
        """Return the list of scikit-optimize dimensions, in the space's order."""
        return [prior.to_skopt(name) for name, prior in self._priors.items()]

    def to_skopt_point(self, params: Mapping[str, Any]) -> list[Any]:
        """Encode params as a point of :meth:`to_skopt` (choices become their index).

        Values outside a bounded dimension (a ``normal`` tail) are clipped.
        """
        point: list[Any] = []
        for name, prior in self._priors.items():
            value = params[name]
            if isinstance(prior, Choices):
                value = next(i for i, v in enumerate(prior.values) if type(v) is type(value) and v == value)
            elif isinstance(prior, Normal):
                value = min(max(value, prior.mu - 4 * prior.sigma), prior.mu + 4 * prior.sigma)
            point.append(value)
        return point

    def from_skopt_point(self, point: Sequence[Any]) -> dict[str, Scalar]:
        """Decode a scikit-optimize point into plain Python params."""
        params: dict[str, Scalar] = {}
        for (name, prior), value in zip(self._priors.items(), point):
            value = to_builtin(value)
            params[name] = prior.values[int(value)] if isinstance(prior, Choices) else prior.cast(value)
        return params
