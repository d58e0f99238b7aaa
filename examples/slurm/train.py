"""A stand-in training script for the SLURM examples: replace its body with your training run.

It receives ``--lr`` and ``--layers`` from ``orchard hunt`` and reports a validation loss with
:func:`orchard.report_objective`. The synthetic loss has its minimum near ``lr=1e-2``,
``layers=3``, so a search has something to find.
"""

from __future__ import annotations

import argparse
import math

import orchard


def validation_loss(lr: float, layers: int) -> float:
    """A smooth synthetic loss: quadratic in log10(lr) and in the depth."""
    return (math.log10(lr) + 2.0) ** 2 + 0.3 * (layers - 3) ** 2 + 0.05


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--layers", type=int, default=3)
    args = parser.parse_args(argv)
    loss = validation_loss(args.lr, args.layers)
    orchard.report_objective(loss)
    print(f"lr={args.lr:.3g} layers={args.layers} loss={loss:.4f}")
    return loss


if __name__ == "__main__":
    main()
