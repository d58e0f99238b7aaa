"""``orchard insert -n NAME x=1 y=2``: add a point that the next free worker evaluates first."""

from __future__ import annotations

import argparse
from typing import Any

from orchard.cli._args import UsageError, add_common, add_name, format_params, open_experiment, parse_literal

__all__ = ["add_parser", "parse_assignments", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``insert`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "insert", help="add a trial at given params; the next free worker evaluates it first",
        description="Values are read as Python literals (1, 0.5, True, 'a'); other text is a string. "
                    "Every dimension of the space must be given.",
    )
    add_name(parser)
    parser.add_argument("params", nargs="+", metavar="NAME=VALUE", help="one value per dimension")
    add_common(parser)
    parser.set_defaults(func=run)
    return parser


def parse_assignments(tokens: list[str]) -> dict[str, Any]:
    """Turn ``["x=1", "opt=adam"]`` into ``{"x": 1, "opt": "adam"}``.

    Raises:
        UsageError: a token is not ``NAME=VALUE`` or a name is given twice.
    """
    params: dict[str, Any] = {}
    for token in tokens:
        name, sep, text = token.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"insert expects NAME=VALUE, got {token!r}; e.g. orchard insert -n exp x=1 y=2")
        if name in params:
            raise UsageError(f"dimension {name!r} is given twice")
        params[name] = parse_literal(text.strip())
    return params


def run(args: argparse.Namespace) -> int:
    """Validate the params against the experiment's space and register a ``new`` trial.

    Raises:
        SpaceError: the params are not a point of the space.
        DuplicateTrialError: a trial with those params exists.
        BudgetExhaustedError: the budget is fully used.
    """
    params = parse_assignments(args.params)
    experiment = open_experiment(args)
    trial = experiment.insert(params)
    print(f"inserted trial {trial.id} in experiment {experiment.name!r}: {format_params(trial.params)}")
    return 0
