"""Search spaces: named priors, sampling, validation, and params identity.

A space maps dimension names to priors (:mod:`orchard.priors`), written the same
way on the command line (``--lr~'loguniform(1e-5, 1.0)'``) and in Python
(``space={"lr": "loguniform(1e-5, 1.0)"}``). At most one dimension is a
``fidelity``: the training budget multi-fidelity algorithms vary.

Values handed to objectives and storages are plain Python scalars; a trial's id
is a hash of its experiment's id and its params (:func:`trial_id`), so two
workers registering the same point register the same trial.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchard.errors import SpaceError, did_you_mean
from orchard.fidelity import Fidelity
from orchard.priors import (
    Choices,
    LogUniform,
    Normal,
    Prior,
    RandInt,
    Scalar,
    Uniform,
    is_integral,
    is_number,
    to_builtin,
)
from orchard.report import shown

if TYPE_CHECKING:  # `orchard list` reads spaces without numpy (0.15 s); a sample is drawn with it
    import numpy as np

__all__ = [
    "PRIORS",
    "Choices",
    "Fidelity",
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

# -- params identity -------------------------------------------------------------


def _canonical(params: Mapping[str, Any]) -> str:
    plain = {str(k): _norm(v) for k, v in params.items()}
    try:
        return _ENCODER.encode(plain)
    except (ValueError, RecursionError) as err:  # an int too long to print, nesting too deep
        bad = next((k for k, v in plain.items() if not _printable(v)), "?")
        raise SpaceError(f"param {bad!r} cannot identify a trial: {str(err).split(';')[0]}; pass its huge "
                         "ints as str or float and keep params flat") from err


def _norm(value: Any) -> Any:
    kind = type(value)
    if kind is not float and kind in _PLAIN:
        return value  # the usual case, and the cheap one: a trial id is computed several times per trial
    value = value if kind is float else to_builtin(value)
    # 1 and 1.0 are the same point; keep bools distinct from ints.
    if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
        return int(value)
    return value


_PLAIN = frozenset({int, str, bool, type(None)})
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)  # built once, not per hash


def _printable(value: Any) -> bool:
    try:
        json.dumps(value, default=str)
    except (ValueError, RecursionError):
        return False
    return True


def params_hash(params: Mapping[str, Any]) -> str:
    """Return a stable hex digest of a params dict (key order and numpy types do not matter)."""
    return hashlib.sha256(_canonical(params).encode()).hexdigest()[:32]


def trial_id(experiment_id: str, params: Mapping[str, Any]) -> str:
    """Return the deterministic id of the trial at ``params`` in an experiment."""
    digest = hashlib.sha256(f"{experiment_id}\x00{_canonical(params)}".encode())
    return digest.hexdigest()[:32]


#: Every prior by the name used in prior strings.
PRIORS: dict[str, type[Prior]] = {
    cls.NAME: cls for cls in (Uniform, LogUniform, RandInt, Choices, Normal, Fidelity)
}


#: Keyword arguments of Optuna's ``suggest_float``/``suggest_int``, with what a prior string writes instead.
_OPTUNA_KEYWORDS = {
    "log": "for a log scale write loguniform(low, high) (integers: choices([1, 2, 4, 8]) of the values, or a "
           "loguniform rounded in the objective)",
    "step": "for a step write choices([...]) of the values (integers with step 1: randint(low, high + 1))",
}


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

    def fail(why: str, quoted: str = text) -> SpaceError:
        return SpaceError(f"dimension {name!r}: cannot parse prior {quoted!r}: {why}")

    if not isinstance(text, str):
        raise fail("a prior is a string such as 'uniform(0, 1)'", repr(text))
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise fail(f"not a valid expression ({err.msg})") from None
    except UnicodeEncodeError:  # bytes of a command line that are not UTF-8 come as lone surrogates
        raise fail("it holds bytes that are not UTF-8 text; write it in UTF-8") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)):
        raise fail(f"expected one of {', '.join(PRIORS)} followed by (arguments)")
    cls = PRIORS.get(tree.func.id)
    if cls is None:
        raise fail(f"unknown prior {tree.func.id!r}{did_you_mean(tree.func.id, PRIORS)}; "
                   f"valid priors: {', '.join(PRIORS)}")
    try:
        args = [ast.literal_eval(a) for a in tree.args]
        kwargs = {str(k.arg): ast.literal_eval(k.value) for k in tree.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise fail("arguments must be literal numbers, strings or lists") from None
    if len(args) != cls.ARITY:
        raise fail(f"{cls.NAME} takes {cls.ARITY} positional argument(s), got {len(args)}")
    unknown = set(kwargs) - set(cls.KEYWORDS)
    if unknown:  # a **spread argument has key None, which shows up here as 'None'
        optuna = [k for k in sorted(unknown, key=str) if k in _OPTUNA_KEYWORDS]
        hint = f"; {_OPTUNA_KEYWORDS[optuna[0]]}" if optuna else ""
        raise fail(f"unexpected keyword argument(s) {sorted(unknown, key=str)}{hint}")
    return cls.parse(fail, args, kwargs)


# -- the space ------------------------------------------------------------------


def _why_not(prior: Prior, value: Any) -> str:
    """Why ``value`` is not in ``prior``: a wrong type, a fraction where integers go, or out of bounds.

    ``True`` was said to be "outside uniform(0.0, 2.0)", and 2.5 "outside randint(0, 5)".
    """
    if isinstance(prior, Choices):
        return f"is not one of {prior}{_type_twin(prior, value)}"
    number = is_number(value) or isinstance(value, int)  # an int too large for a float is a number
    if isinstance(value, bool) or not number:
        return f"is a {type(value).__name__}, not a finite number as {prior} needs"
    if isinstance(prior, (RandInt, Uniform)) and prior.size() is not None and not is_integral(value):
        return f"is not an integer, as {prior} needs"
    return f"is outside {prior}"


def _type_twin(prior: Choices, value: Any) -> str:
    """Name the choice ``value`` equals but for its type (1.0 for the choice 1, 3 for the choice ``'3'``):
    choices match by type."""
    same_kind = (v for v in prior.values if isinstance(v, bool) is isinstance(value, bool))
    twin = next((v for v in same_kind if v == value), None)
    if twin is None and not isinstance(value, str):  # 3 for the choice '3': a command line reads 3 as an int
        twin = next((v for v in prior.values if isinstance(v, str) and v == str(value)), None)
    if twin is None:
        return ""
    return f" (its type is {type(value).__name__}; the choice {twin!r} has type {type(twin).__name__})"


def _quoted(value: Any) -> str:
    """``repr(value)``, or :func:`shown` where ``repr`` fails (a point may hold a 5,000-digit int).

    The worker died of the ``ValueError`` of ``repr`` while it built the message that refused the point.
    """
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 -- a message must not fail on the value it describes
        if isinstance(value, Mapping):
            return "{" + ", ".join(f"{shown(k, 10_000)}: {shown(v, 10_000)}" for k, v in value.items()) + "}"
        return shown(value, 10_000)


class Space(Mapping[str, Prior]):
    """An ordered, immutable mapping of dimension names to priors."""

    def __init__(self, priors: Mapping[str, Prior]) -> None:
        if not priors:
            raise SpaceError("the search space is empty; define at least one dimension")
        fidelities = [name for name, prior in priors.items() if isinstance(prior, Fidelity)]
        if len(fidelities) > 1:
            raise SpaceError(
                f"dimensions {fidelities!r} are all fidelity priors; a space has at most one fidelity, "
                "keep one and make the others ordinary priors"
            )
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
            problems = [f"{label} {', '.join(map(_quoted, names))}"
                        for label, names in (("missing", missing), ("unknown", extra)) if names]
            raise SpaceError(f"params {_quoted(dict(params))} do not match the space: {'; '.join(problems)} "
                             f"(the space has {', '.join(self._priors)})")
        point: dict[str, Scalar] = {}
        for name, prior in self._priors.items():
            value = to_builtin(params[name])
            if not prior.contains(value):
                raise SpaceError(f"dimension {name!r}: value {_quoted(value)} {_why_not(prior, value)}")
            point[name] = prior.cast(value)
        return point

    def nearly_equal(self, a: Mapping[str, Any], b: Mapping[str, Any], tol: float = 1e-3) -> bool:
        """Whether two points differ by at most ``tol`` of each dimension's range.

        Discrete dimensions must match exactly; ``loguniform`` compares logs;
        ``normal`` uses a range of 8 sigma (see :meth:`Prior.close`).
        """
        return all(prior.close(a[name], b[name], tol) for name, prior in self._priors.items())

    @property
    def fidelity(self) -> tuple[str, Fidelity] | None:
        """The ``(name, prior)`` of the space's fidelity dimension, if it has one."""
        for name, prior in self._priors.items():
            if isinstance(prior, Fidelity):
                return name, prior
        return None

    # -- scikit-optimize bridge -------------------------------------------------

    def to_skopt(self) -> list[Any]:
        """Return the list of scikit-optimize dimensions, in the space's order."""
        return [prior.to_skopt(name) for name, prior in self._priors.items()]

    def to_skopt_point(self, params: Mapping[str, Any]) -> list[Any]:
        """Encode params as a point of :meth:`to_skopt` (choices become their index).

        Values outside a bounded dimension (a ``normal`` tail) are clipped.
        """
        return [prior.encode(params[name]) for name, prior in self._priors.items()]

    def from_skopt_point(self, point: Sequence[Any]) -> dict[str, Scalar]:
        """Decode a scikit-optimize point into plain Python params."""
        return {name: prior.decode(value) for (name, prior), value in zip(self._priors.items(), point)}
