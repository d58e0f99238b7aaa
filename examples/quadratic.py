"""A script tuned by ``orchard hunt``: read hyperparameters from the command line, report one number.

    orchard hunt -n quadratic --max-trials 30 python examples/quadratic.py \\
        --x~'uniform(-5, 5)' --y~'uniform(-5, 5)'

``orchard hunt`` renders ``--x~'uniform(-5, 5)'`` as ``--x=1.234`` for each trial and runs the
script; :func:`orchard.report_objective` writes the result where ``orchard hunt`` reads it
(the file named by ``ORCHARD_RESULTS_PATH``). Run it in several terminals, or as several
containers (``docker/compose.yml``), and the workers share the experiment.
"""

from __future__ import annotations

import argparse

import orchard


def quadratic(x: float, y: float) -> float:
    """A bowl with its minimum 0 at (1, -2)."""
    return (x - 1.0) ** 2 + (y + 2.0) ** 2


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--x", type=float, required=True)
    parser.add_argument("--y", type=float, required=True)
    args = parser.parse_args(argv)
    value = quadratic(args.x, args.y)
    orchard.report_objective(value, distance=value**0.5)
    print(f"x={args.x:.4f} y={args.y:.4f} objective={value:.6f}")
    return value


if __name__ == "__main__":
    main()
