"""Hyperband: several ASHA brackets side by side, each trial's bracket derived from its params.

Hyperband (Li et al., 2018) hedges ASHA's bet that low fidelities rank
configurations well: bracket ``b`` starts its trials at rung ``b``, so bracket
0 is ASHA's most aggressive ladder and the last bracket evaluates every trial
at full fidelity. With ``s_max + 1`` rungs, the paper gives bracket ``s`` (which
starts at rung ``s_max - s``) ``n_s = ceil((s_max + 1) / (s + 1) * eta^s)``
configurations; here each new point joins bracket ``b`` with probability
proportional to its ``n``, so the brackets receive new points in the paper's
proportions.

No worker assigns brackets: a point's bracket is a function of the hash of
its params without the fidelity (:func:`~orchard.algorithms._rungs.config_key`),
so every worker, whatever its seed, puts every trial in the same bracket, and
a promotion stays in its parent's bracket. Promotions are decided within each
bracket exactly as in :class:`~orchard.algorithms._asha.Asha`.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Any, ClassVar

from orchard.algorithms._asha import Asha
from orchard.errors import ConfigurationError
from orchard.space import Space

__all__ = ["Hyperband", "bracket_weights"]


def bracket_weights(num_rungs: int, eta: float) -> list[int]:
    """The paper's number of configurations of each bracket, bracket 0 (lowest start) first."""
    s_max = num_rungs - 1
    return [math.ceil((s_max + 1) / (s + 1) * eta**s) for s in range(s_max, -1, -1)]


class Hyperband(Asha):
    """Hyperband over the space's ``fidelity`` dimension: ASHA brackets starting at every rung.

    Options: those of :class:`~orchard.algorithms._asha.Asha`, plus
        num_brackets: how many brackets, the most aggressive first (default:
            one per rung). An int >= 1, at most the number of rungs.

    Raises:
        ConfigurationError: the space has no fidelity dimension, or an option is invalid.
    """

    name = "hyperband"
    OPTIONS: ClassVar[dict[str, Any]] = {**Asha.OPTIONS, "num_brackets": None}

    def __init__(self, space: Space, seed: int | None = None, **options: Any) -> None:
        super().__init__(space, seed, **options)
        count = self.options["num_brackets"] or len(self.rungs)
        if count > len(self.rungs):
            raise ConfigurationError(
                f"hyperband option num_brackets={count} exceeds the {len(self.rungs)} rungs "
                f"{list(self.rungs)}; lower num_brackets"
            )
        weights = bracket_weights(len(self.rungs), self.eta)[:count]
        total = sum(weights)
        self._cumulative = [c / total for c in itertools.accumulate(weights)]

    @classmethod
    def _extra_int_options(cls) -> tuple[str, ...]:
        return ("num_brackets",)

    def bracket_of_key(self, key: str) -> int:
        """The bracket of a configuration: its hash placed on the brackets' cumulative weights."""
        fraction = int(key[:13], 16) / float(16**13)
        return min(bisect.bisect_right(self._cumulative, fraction), len(self._cumulative) - 1)

    def brackets(self) -> range:
        """Every bracket's number."""
        return range(len(self._cumulative))
