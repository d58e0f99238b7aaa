"""Pruners: stop a running trial from the values it reports, decided by any worker.

A pruner configuration is a name (``"median"``) or a one-key mapping of a name
to options (``{"asha": {"min_step": 2, "reduction_factor": 3}}``). The
experiment stores its *normalized* form, every option spelled out, so a worker
joining with a different setting is caught.

==========  =================================================================
name        stops a trial when
==========  =================================================================
none        never (the default)
median      its best value so far is worse than the median of others' at that step
percentile  ... worse than a chosen percentile of the others'
asha        it is not among the best ``1/η`` at a rung ``min_step · η^k``
hyperband   the same in several brackets, a trial's bracket fixed by its id
threshold   its value leaves ``[lower, upper]``
patience    it stopped improving (optionally: and a wrapped pruner agrees)
==========  =================================================================

With several objectives, reports give every objective by name and are stored
as vectors; ``asha`` and ``hyperband`` rank them at each rung by non-dominated
sorting (tie-break: crowding distance, then trial id), ``patience`` asks that a
recent report be matched on every objective by an earlier one. ``median``,
``percentile`` and ``threshold`` compare one number and are refused for such an
experiment when it is built (:func:`check_objectives`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from orchard.errors import ConfigurationError, did_you_mean
from orchard.pruners._percentile import MedianPruner, PercentilePruner
from orchard.pruners._rungs import AshaPruner, HyperbandPruner, RungPruner
from orchard.pruners._simple import NopPruner, PatiencePruner, ThresholdPruner
from orchard.pruners.base import BasePruner, Curve, Verdict
from orchard.space import Space

log = logging.getLogger(__name__)

__all__ = [
    "PRUNERS",
    "AshaPruner",
    "BasePruner",
    "Curve",
    "HyperbandPruner",
    "MedianPruner",
    "NopPruner",
    "PatiencePruner",
    "PercentilePruner",
    "ThresholdPruner",
    "Verdict",
    "check_objectives",
    "check_pruner",
    "make_pruner",
    "normalize_pruner_config",
]

PrunerConfig = str | Mapping[str, Any] | None

#: Every pruner by name.
PRUNERS: dict[str, Callable[[], type[BasePruner]]] = {
    "none": lambda: NopPruner,
    "median": lambda: MedianPruner,
    "percentile": lambda: PercentilePruner,
    "asha": lambda: AshaPruner,
    "hyperband": lambda: HyperbandPruner,
    "threshold": lambda: ThresholdPruner,
    "patience": lambda: PatiencePruner,
}


def _split(config: PrunerConfig) -> tuple[str, Mapping[str, Any]]:
    if config is None:
        return "none", {}
    if isinstance(config, str):
        return config, {}
    if isinstance(config, Mapping) and len(config) == 1:
        ((name, options),) = config.items()
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            raise ConfigurationError(f"options of pruner {name!r} must be a mapping, got {options!r}")
        return name, options
    raise ConfigurationError(
        f"a pruner is a name or a one-key mapping such as {{'median': {{'warmup_steps': 5}}}}, got {config!r}"
    )


#: Optuna's pruners by class name, for the message that refuses one given by that name.
_OPTUNA_NAMES = {"NopPruner": "none", "MedianPruner": "median", "PercentilePruner": "percentile",
                 "SuccessiveHalvingPruner": "asha", "HyperbandPruner": "hyperband",
                 "ThresholdPruner": "threshold", "PatientPruner": "patience"}


def _pruner_class(name: str) -> type[BasePruner]:
    if not isinstance(name, str) or name not in PRUNERS:
        ours = _OPTUNA_NAMES.get(name) if isinstance(name, str) else None
        hint = f" (Optuna's {name} is {ours!r})" if ours else did_you_mean(name, PRUNERS)
        raise ConfigurationError(f"unknown pruner {name!r}; valid pruners: {', '.join(PRUNERS)}{hint}")
    return PRUNERS[name]()


def normalize_pruner_config(config: PrunerConfig) -> dict[str, dict[str, Any]]:
    """Return the canonical ``{name: {option: value}}`` form, defaults filled in.

    Raises:
        ConfigurationError: unknown pruner, unknown option or invalid option value.
    """
    name, options = _split(config)
    checked = _pruner_class(name).check_options(options)
    if name == "patience" and checked["wrapped"] is not None:
        if _split(checked["wrapped"])[0] == "patience":  # patience of patience adds nothing, and nests without end
            raise ConfigurationError("pruner 'patience' wraps another 'patience'; wrap a pruner that ranks the "
                                     "trials, such as {'patience': {'patience': 5, 'wrapped': 'median'}}")
        checked["wrapped"] = normalize_pruner_config(checked["wrapped"])
    return {name: checked}


def make_pruner(config: PrunerConfig, objectives: Mapping[str, str] | None = None,
                space: Space | None = None) -> BasePruner:
    """Build the pruner described by ``config`` (normalized or not; ``None`` is ``"none"``).

    ``objectives`` are the experiment's (see :meth:`BasePruner.facing`); ``None``: one, minimised.
    ``space`` is the experiment's: the ``high`` of its fidelity, if an integer, is taken as the
    last step a trial reports (``asha`` and ``hyperband`` stop no training there).

    Raises:
        ConfigurationError: unknown pruner, unknown option or invalid option value.
    """
    ((name, options),) = normalize_pruner_config(config).items()
    fidelity = space.fidelity if space is not None else None
    last_step = int(fidelity[1].high) if fidelity is not None and fidelity[1].integral else None
    built = _pruner_class(name)(**options).facing(objectives, last_step)
    built.fidelity = None if last_step is None or fidelity is None else fidelity[0]
    return built


def check_objectives(config: PrunerConfig, objectives: Mapping[str, str] | None) -> None:
    """Refuse a pruner that cannot rank the experiment's several objectives.

    Raises:
        ConfigurationError: ``objectives`` has more than one objective and the pruner (or the one
            ``patience`` wraps) compares one number per step.
    """
    if objectives is None or len(objectives) < 2:
        return
    ((name, options),) = normalize_pruner_config(config).items()
    if not _pruner_class(name).SEVERAL_OBJECTIVES:
        several = [n for n in PRUNERS if PRUNERS[n]().SEVERAL_OBJECTIVES]
        raise ConfigurationError(
            f"pruner {name!r} compares one value per step and cannot rank the several objectives "
            f"({', '.join(objectives)}); choose one of {', '.join(several)} (they rank by non-dominated sorting)")
    if name == "patience" and options["wrapped"] is not None:
        check_objectives(options["wrapped"], objectives)


def check_pruner(config: PrunerConfig, objectives: Mapping[str, str] | None, space: Space) -> None:
    """Check a new experiment's pruner against its objectives (:func:`check_objectives`) and its space.

    ``asha`` and ``hyperband`` stop no training at the last step a trial reports, if they know it
    (``max_step``, or the ``high`` of an integer fidelity). Without either, a training whose last
    report falls on a rung is stopped there instead of completing: a warning says so, once, where
    the experiment is created.

    Raises:
        ConfigurationError: as :func:`check_objectives`.
    """
    check_objectives(config, objectives)
    built = make_pruner(config, objectives, space)
    rungs = built.wrapped if isinstance(built, PatiencePruner) and built.wrapped is not None else built
    if isinstance(rungs, RungPruner) and rungs.end is None:
        log.warning("pruner %r does not know the last step a trial reports (no max_step, and the space has "
                    "no integer fidelity): a training whose last report falls on a rung is stopped there "
                    "instead of completing; give it max_step, e.g. {%r: {'max_step': 100}}", rungs.name, rungs.name)


PatiencePruner.build = make_pruner
