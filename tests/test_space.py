"""Search space: prior parsing, sampling, validation, params identity."""

from __future__ import annotations

import numpy as np
import pytest

from orchard.errors import SpaceError
from orchard.space import (
    Choices,
    LogUniform,
    Normal,
    RandInt,
    Space,
    Uniform,
    params_hash,
    parse_prior,
    to_builtin,
    trial_id,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("uniform(-5, 10)", Uniform(-5.0, 10.0)),
        ("uniform(0, 4, discrete=True)", Uniform(0, 4, True)),
        ("loguniform(1e-5, 1.0)", LogUniform(1e-5, 1.0)),
        ("randint(1, 6)", RandInt(1, 6)),
        ("choices(['a', 'b', 3, True, 0.5])", Choices(("a", "b", 3, True, 0.5))),
        ("normal(0, 2)", Normal(0.0, 2.0)),
        ("  uniform( 0 , 1 ) ", Uniform(0.0, 1.0)),
    ],
)
def test_parse_every_prior(text: str, expected: object) -> None:
    prior = parse_prior("x", text)
    assert prior == expected
    assert parse_prior("x", str(prior)) == prior  # canonical strings round-trip


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("gaussian(0, 1)", "unknown prior 'gaussian'"),
        ("uniform(1)", "takes 2 positional"),
        ("uniform(0, 1, 2)", "takes 2 positional"),
        ("uniform(1, 1)", "must be < high"),
        ("uniform(2, 1)", "must be < high"),
        ("loguniform(0, 1)", "0 < low"),
        ("randint(0.5, 3)", "integers"),
        ("choices([])", "non-empty list"),
        ("choices(['a', 'a'])", "twice"),
        # 1e400 is the literal inf: it was stored as 'choices([inf])', which no worker could read back
        ("choices([0.5, 1e400])", "choices cannot list inf: a float choice must be finite"),
        ("choices([-1e400])", "cannot list -inf"),
        ("choices([1, 2**70])", "literal"),
        ("choices([1, 1180591620717411303424])", "cannot list 1180591620717411303424: an int choice must fit in 64"),
        # every trial broke: no script argument holds a NUL, no storage a lone surrogate
        ("choices(['a', 'b\\x00c'])", "cannot list 'b\\x00c': a text choice cannot hold a NUL character"),
        ("choices(['\\ud800'])", "cannot hold a lone surrogate"),
        # a byte 0xff on a command line, read as '\udcff': was 'unexpected UnicodeEncodeError' from ast.parse
        ("choices(['\udcff'])", "it holds bytes that are not UTF-8 text; write it in UTF-8"),
        ("choices(['x', 1, 1.0])", "1 and 1.0, which are one point of the space"),
        ("choices([2.0, 'b', 2])", "2.0 and 2, which are one point"),
        ("uniform(0, __import__('os').getpid())", "literal"),
        ("uniform(0, 1, log=True)", "unexpected keyword"),
        # Optuna's suggest_float/suggest_int arguments: refused with no word of what to write instead
        ("uniform(1e-5, 1, log=True)", "['log']; for a log scale write loguniform(low, high)"),
        ("randint(1, 1025, log=True)", "(integers: choices([1, 2, 4, 8]) of the values"),
        ("uniform(0, 1, step=0.1)", "['step']; for a step write choices([...]) of the values"),
        ("uniform(0.5, 0.5)", "low (0.5) must be < high (0.5) (a fixed value: choices([0.5]))"),
        ("normal(0, 0)", "sigma"),
        ("uniform(0,", "not a valid expression"),
        ("os.system('x')", "expected one of"),
        ("fidelity(1)", "takes 2 positional"),
        ("fidelity(9, 1)", "must be < high"),
        ("fidelity(0, 9)", "0 < low"),
        ("fidelity(1, 9, base=1)", "base (1) must be a number > 1"),
        ("fidelity(1, 9, base='x')", "must be a number > 1"),
        ("fidelity(1, 9, step=2)", "unexpected keyword"),
    ],
)
def test_bad_priors_name_dimension_and_quote_text(text: str, fragment: str) -> None:
    with pytest.raises(SpaceError) as info:
        parse_prior("lr", text)
    message = str(info.value)
    assert "'lr'" in message and repr(text) in message and fragment in message
    assert "\n" not in message


def test_parsing_never_evaluates_code(tmp_path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(SpaceError):
        parse_prior("x", f"uniform(0, open({str(marker)!r}, 'w').close())")
    assert not marker.exists()


def test_sampling_is_seeded_plain_and_inside_priors() -> None:
    space = Space.from_config({
        "a": "uniform(-1, 1)", "b": "loguniform(1e-4, 1)", "c": "randint(1, 4)",
        "d": "choices(['x', 2, False])", "e": "normal(5, 1)", "f": "uniform(2, 3, discrete=True)",
    })
    first = [space.sample(np.random.default_rng(7)) for _ in range(3)]
    again = [space.sample(np.random.default_rng(7)) for _ in range(3)]
    assert first == again
    rng = np.random.default_rng(0)
    for _ in range(200):
        point = space.sample(rng)
        assert space.validate(point) == point
        assert all(type(v) in (int, float, str, bool) for v in point.values())
        assert 1 <= point["c"] < 4 and isinstance(point["c"], int)
        assert point["f"] in (2, 3)


def test_validate_rejects_points_outside_space() -> None:
    space = Space.from_config({"x": "uniform(0, 1)", "k": "randint(0, 3)"})
    assert space.validate({"x": np.float64(0.5), "k": 2}) == {"x": 0.5, "k": 2}
    for bad in ({"x": 2.0, "k": 0}, {"x": 0.5, "k": 3}, {"x": 0.5}, {"x": 0.5, "k": 1, "z": 1}, {"x": "a", "k": 0}):
        with pytest.raises(SpaceError):
            space.validate(bad)


def test_params_hash_is_stable_across_order_and_numpy_types() -> None:
    a = params_hash({"x": 1.5, "y": "a", "k": 3})
    assert a == params_hash({"k": np.int64(3), "y": "a", "x": np.float64(1.5)})
    assert a != params_hash({"x": 1.5, "y": "b", "k": 3})
    assert params_hash({"flag": True}) != params_hash({"flag": 1})
    assert trial_id("e1", {"x": 1}) != trial_id("e2", {"x": 1})
    assert len(a) == 32 and a == params_hash({"x": 1.5, "y": "a", "k": 3})


def test_to_builtin_converts_numpy_scalars() -> None:
    value = to_builtin({"a": np.int64(2), "b": [np.float32(0.5)], "c": np.bool_(True)})
    assert value == {"a": 2, "b": [0.5], "c": True}
    assert type(value["a"]) is int and type(value["b"][0]) is float and type(value["c"]) is bool


def test_skopt_round_trip_preserves_choices_and_types() -> None:
    space = Space.from_config({"opt": "choices(['adam', 1, True])", "n": "randint(1, 5)", "lr": "loguniform(1e-3, 1)"})
    dims = space.to_skopt()
    assert [d.name for d in dims] == ["opt", "n", "lr"]
    params = {"opt": True, "n": 4, "lr": 0.01}
    assert space.from_skopt_point(space.to_skopt_point(params)) == params
    decoded = space.from_skopt_point([np.int64(0), np.int64(2), np.float64(0.5)])
    assert decoded == {"opt": "adam", "n": 2, "lr": 0.5} and type(decoded["n"]) is int


def test_space_errors_and_diff() -> None:
    with pytest.raises(SpaceError, match="empty"):
        Space.from_config({})
    with pytest.raises(SpaceError, match="identifier"):
        Space.from_config({"bad name": "uniform(0, 1)"})
    a = Space.from_config({"x": "uniform(0, 1)", "y": "randint(0, 3)"})
    b = Space.from_config({"x": "uniform(0, 2)", "z": "randint(0, 3)"})
    assert a.diff(b) == ["x: uniform(0.0, 1.0) != uniform(0.0, 2.0)", "y: randint(0, 3) != (absent)",
                         "z: (absent) != randint(0, 3)"]
    assert a == Space.from_config({"x": "uniform(0.0, 1)", "y": "randint(0, 3)"})


@pytest.mark.parametrize(("name", "value", "why"), [
    ("u", True, "value True is a bool, not a finite number as uniform(0.0, 2.0) needs"),
    ("r", True, "value True is a bool, not a finite number as randint(0, 5) needs"),
    ("r", 2.5, "value 2.5 is not an integer, as randint(0, 5) needs"),
    ("d", 2.5, "value 2.5 is not an integer, as uniform(0, 3, discrete=True) needs"),
    ("d", 7, "value 7 is outside uniform(0, 3, discrete=True)"),
    ("c", 1.0, "value 1.0 is not one of choices([1, True, 'a']) (its type is float; the choice 1 has type int)"),
    ("c", "b", "value 'b' is not one of choices([1, True, 'a'])"),
    # `orchard insert -n e s=3` reads 3 as an int: the str choice it was meant as is named
    ("s", 3, "value 3 is not one of choices(['3', 'True']) (its type is int; the choice '3' has type str)"),
    ("s", True,
     "value True is not one of choices(['3', 'True']) (its type is bool; the choice 'True' has type str)"),
])
def test_a_refused_value_is_said_to_be_of_the_wrong_kind_not_outside(name: str, value: object, why: str) -> None:
    """``True`` was "outside uniform(0.0, 2.0)" and 2.5 "outside randint(0, 5)", though both lie within."""
    space = Space.from_config({"u": "uniform(0, 2)", "r": "randint(0, 5)", "d": "uniform(0, 3, discrete=True)",
                               "c": "choices([1, True, 'a'])", "s": "choices(['3', 'True'])"})
    point = {"u": 1.0, "r": 1, "d": 1, "c": "a", "s": "3", name: value}
    with pytest.raises(SpaceError) as caught:
        space.validate(point)
    assert str(caught.value) == f"dimension {name!r}: {why}"
