"""``orchard plot {regret,parallel,timeline,rungs,curves,pareto,hypervolume} -n NAME -o FILE.html|.png``: draw a figure."""

from __future__ import annotations

import argparse
from typing import Any

from orchard.cli._args import add_common, add_name, open_experiment

__all__ = ["add_parser", "run"]

KINDS = ("regret", "parallel", "timeline", "rungs", "curves", "pareto", "hypervolume")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``plot`` command on the CLI's subparsers.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The ``plot`` parser, whose ``func`` default is :func:`run`.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "plot",
        help="draw a figure of an experiment (.html interactive, .png static)",
        description=(
            "Draw a figure of an experiment. regret: objective per completed trial and the best so "
            "far; parallel: parameters as parallel coordinates coloured by objective; timeline: a "
            "row per worker, a bar per trial, with each worker's busy fraction; rungs (asha/hyperband): "
            "objective per fidelity, each promotion a line from its parent; curves: the values each trial "
            "reported per step (orchard.report), pruned trials ending in a cross, the best trial thick; "
            "pareto (several objectives): completed trials at their objective values, the feasible front "
            "highlighted, infeasible trials as crosses, one panel per pair of objectives; hypervolume: the "
            "feasible front's hypervolume after each completed trial, against the reference point in the title."
        ),
    )
    parser.add_argument("kind", choices=KINDS, help="which figure to draw")
    add_name(parser)
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE",
        help="output file: FILE.html (interactive, works offline) or FILE.png",
    )
    add_common(parser)  # --storage, --debug
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the figure ``args.kind`` of experiment ``args.name`` and save it to ``args.output``.

    Prints the path written and returns 0.

    Raises:
        ConfigurationError: unknown output suffix or plotting libraries missing.
        ExperimentNotFoundError: no experiment of that name in the storage.
        StorageError: the storage cannot be read.
    """
    from orchard import plotting

    output = plotting.check_output(args.output)  # before touching the storage
    experiment = open_experiment(args)  # read-only: a missing pickle file is not created
    trials = experiment.fetch_trials()
    settings = experiment.settings
    figure = plotting.make_figure(args.kind, trials, experiment.name, experiment.space,
                                  settings.objectives, settings.constraints)
    print(plotting.save(figure, output))
    return 0
