"""Warm start: completed trials of earlier experiments, told to the algorithm as prior evidence.

``build_experiment(..., warm_start=["old", "mongodb://host/db:other"])``,
``orchard hunt --warm-start old`` (repeatable) or ``warm_start: [old]`` in a
config file. Each *source* is written

* ``"NAME"``: the experiment ``NAME`` in the experiment's own storage;
* ``"STORAGE:NAME"``: in another storage, given by URI or ``.pkl`` path
  (``mongodb://host/db:other``, ``runs/old.pkl:other``); the name follows the last ``:``;
* a mapping ``{"experiment": NAME, "storage": URI, "fill": {DIM: VALUE}}`` (storage and fill optional).

The sources are stored with the experiment's configuration, so every worker that joins uses the same ones.
A source's storage is stored with its password hidden (:func:`hide_passwords`): whoever reads the experiment
does not read the credentials of another database. A worker takes the password from the sources it was
given (:func:`with_passwords`), else from its own storage's URI when the source is kept on the same server
for the same user; without either, the source gives nothing, with a warning saying how to give it. Each
worker reads them once, when it starts (:func:`prior_trials`; a process keeps what it read while a source's
count of completed trials stays the same), and hands their completed trials to the algorithm before its
own (:class:`orchard.history.History`'s ``prior``). They are evidence only: not trials of the new
experiment, so its budget, best trial and Pareto front stay its own.

**How a source's trials are mapped into this space.** The space has no default values, so the rule is
explicit:

* a dimension of both spaces keeps the trial's value; a trial whose value is outside this space's prior
  (a range narrowed, a choice removed) is dropped, and counted per dimension;
* a dimension this space adds takes the source's ``fill`` value (checked against the prior); without one
  the source is refused;
* a dimension this space lacks refuses the source: the trials were evaluated at values this space cannot
  express.

A source whose dimensions do not fit, or none of whose completed trials fit, is refused when the
experiment is created, with the dimensions named; nothing is stored.

**How a source's trials are scored.** A trial is told with this experiment's objective, not its source's:
with declared ``objectives`` it is recomputed from the trial's results in this experiment's directions (a
trial that did not record them all is left out; :class:`orchard.history.History` does it), so a source
that maximised ``acc`` is not told as evidence for minimising it. A source that declared objectives cannot
warm-start an experiment of one unnamed objective (what the source measured and what the new one returns
cannot be matched); one deleted and created again so, after the experiment it warm-started, gives nothing.

A trial that did not record a metric this experiment's ``constraints`` read says nothing of its point's
feasibility: it is left out, with a warning (:func:`_measured`); a source of no other trials is refused.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from orchard.constraints import unrecorded
from orchard.errors import ConfigurationError, ExperimentNotFoundError, OrchardError, StorageError
from orchard.naming import check_experiment_name
from orchard.objectives import minimized
from orchard.priors import to_builtin
from orchard.report import shown
from orchard.space import Space
from orchard.storages import BaseStorage, get_storage
from orchard.storages._uri import lend_password, names_storage, password_of, pickle_path, redact, redact_all
from orchard.trial import Trial, TrialStatus

__all__ = ["Source", "SourceUse", "check_sources", "hide_passwords", "normalize_warm_start", "prior_trials",
           "source_uses", "with_passwords"]

log = logging.getLogger(__name__)

_SOURCE_KEYS = frozenset({"experiment", "storage", "fill"})
_EXAMPLE = "warm_start=['old-exp', 'mongodb://host/db:other', {'experiment': 'old', 'fill': {'batch': 32}}]"


@dataclasses.dataclass(frozen=True)
class Source:
    """One experiment whose completed trials warm-start another.

    Attributes:
        experiment: its name.
        storage: the URI of its storage (``None``: the warm-started experiment's own).
        fill: values of the dimensions the new space adds.
    """

    experiment: str
    storage: str | None = None
    fill: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        """How messages name the source (credentials redacted)."""
        return self.experiment if self.storage is None else f"{redact(self.storage)}:{self.experiment}"

    def to_dict(self) -> dict[str, Any]:
        """The stored form."""
        return {"experiment": self.experiment, "storage": self.storage, "fill": dict(self.fill)}


@dataclasses.dataclass(frozen=True)
class SourceUse:
    """What a warm start took from one source: ``used`` of its ``completed`` trials.

    ``dropped`` counts, per dimension, the trials left out because their value was
    outside this space's prior there; ``unmeasured``, per metric, those left out because they did not
    record a metric a constraint of this experiment reads. ``unused`` says why a source gives nothing now
    (it no longer exists, cannot be read, or no longer fits), ``None`` while it gives.
    """

    source: str
    used: int
    completed: int
    dropped: Mapping[str, int]
    unused: str | None = None
    unmeasured: Mapping[str, int] = dataclasses.field(default_factory=dict)


def _parse_source(item: Any) -> Source:
    if isinstance(item, str) and item.lstrip().startswith("{"):
        from orchard.yaml_input import load_yaml

        item = load_yaml(item, f"warm_start source {shown(redact(item))}")
    if isinstance(item, Mapping):
        unknown = sorted(set(map(str, item)) - _SOURCE_KEYS)
        fill = item.get("fill") or {}
        name, storage = item.get("experiment"), item.get("storage") or None
        if unknown or not isinstance(fill, Mapping) or not isinstance(storage or "", str) or name is None:
            unknown_keys = f"; unknown: {unknown}" if unknown else "" if name is not None else "; names no experiment"
            raise ConfigurationError(
                f"warm_start source {redact_all(dict(item))!r}: keys are experiment, storage (a URI) and "
                f"fill (a mapping of dimension to value){unknown_keys}; e.g. {_EXAMPLE}")
        if storage is not None and not names_storage(storage):  # refused later, as if it were --storage
            raise _not_a_storage(redact_all(dict(item)), storage, "e.g. {experiment: e, storage: runs/o.pkl}")
        fill = {str(k): to_builtin(v) for k, v in fill.items()}
    elif isinstance(item, str) and item.strip():
        storage, name = _split(item.strip())
        fill = {}
    else:
        raise ConfigurationError(
            f"warm_start source {redact_all(item)!r} is not an experiment name or mapping; e.g. {_EXAMPLE}")
    return Source(check_experiment_name(name), _absolute(storage) if storage else None, fill)


def _absolute(storage: str) -> str:
    """A pickle file's path made absolute, so every worker reads the same file whatever its directory (a
    relative one was resolved in each worker's: those started elsewhere found no source, made its folder)."""
    found = pickle_path(storage)
    if found is None:
        return storage
    base, mark, query = storage.partition("?")
    scheme = base[: len(base) - len(found[0])]  # "pickle://" as written, or nothing
    return scheme + os.path.abspath(os.path.expanduser(found[0])) + mark + query


def _split(text: str) -> tuple[str | None, str]:
    """``"STORAGE:NAME"`` into its storage and name; a plain name has no storage."""
    head, sep, name = text.rpartition(":")
    if sep and "/" not in name and names_storage(head):
        return head, name
    if names_storage(text):
        raise ConfigurationError(
            f"warm_start source {redact(text)!r} names a storage but no experiment; write STORAGE:NAME, "
            "e.g. mongodb://host/db:old-exp or runs/orchard.pkl:old-exp")
    if sep:  # no name holds ':' ("experiment name 'old.json:old' is not allowed" for a dump, or a folder)
        raise _not_a_storage(redact(text), head, "STORAGE:NAME, e.g. runs/orchard.pkl:old-exp")
    return None, text


def _not_a_storage(label: Any, there: str, example: str) -> ConfigurationError:
    said = f"warm_start source {label!r}: {redact(there)!r} is neither a storage URI nor a .pkl path"
    return ConfigurationError(f"{said}; write {example} (load a dump into a storage: orchard db load)")


def normalize_warm_start(value: Any) -> list[dict[str, Any]] | None:
    """Check warm-start sources; return their stored form (``None`` stays ``None``).

    Args:
        value: a source or a list of sources (see the module docstring).

    Raises:
        ConfigurationError: a source is malformed or given twice; the message shows the forms.
    """
    if value is None or value == []:
        return None
    items = [value] if isinstance(value, (str, Mapping)) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigurationError(f"warm_start must be a list of sources, got {type(value).__name__}; e.g. {_EXAMPLE}")
    sources = [_parse_source(item) for item in items]
    labels = [source.label for source in sources]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigurationError(f"warm_start names {', '.join(map(repr, twice))} twice; name each source once")
    return [source.to_dict() for source in sources]


def hide_passwords(sources: Sequence[Any] | None) -> list[Any] | None:
    """``sources`` as an experiment stores them, and a dump shows them: each storage URI's password hidden
    (pickle paths as they are; an item that is no source, in a damaged record, too)."""
    if sources is None:
        return None
    return [{**item, "storage": redact(item["storage"])} if isinstance(item, Mapping)
            and isinstance(item.get("storage"), str) and pickle_path(item["storage"]) is None else item
            for item in sources]


def with_passwords(stored: Sequence[Mapping[str, Any]] | None,
                   given: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The ``stored`` sources, each storage whose password is hidden taken from the same source ``given``."""
    known = {(redact(s["storage"]), s["experiment"]): s["storage"] for s in given or () if s.get("storage")}
    if stored is None:
        return None
    return [{**s, "storage": known.get((redact(s["storage"]), s["experiment"]), s["storage"])}
            if s.get("storage") else dict(s) for s in stored]


def _sources(stored: Sequence[Mapping[str, Any]] | None) -> list[Source]:
    return [Source(s["experiment"], s.get("storage"), s.get("fill") or {}) for s in stored or ()]


def _fit_problems(source: Source, theirs: Space, space: Space) -> list[str]:
    """Why the dimensions of ``theirs`` do not map into ``space`` (empty if they do)."""
    problems = []
    for name in space:
        if name in theirs and name in source.fill:
            problems.append(f"{name!r} is in both spaces, so it takes no fill value")
        elif name not in theirs and name not in source.fill:
            problems.append(f"{name!r} is new in this space (give a value to evaluate it at: "
                            f"{{'experiment': {source.experiment!r}, 'fill': {{{name!r}: VALUE}}}})")
        elif name in source.fill and not space[name].contains(source.fill[name]):
            problems.append(f"fill value {source.fill[name]!r} of {name!r} is outside {space[name]}")
    problems += [f"{name!r} is not in this space" for name in theirs if name not in space]
    problems += [f"fill names {name!r}, which is not in this space" for name in source.fill if name not in space]
    return problems


def _mapped(trial: Trial, space: Space, fill: Mapping[str, Any], dropped: dict[str, int]) -> Trial | None:
    """``trial`` with its params in ``space``, or ``None`` (counted in ``dropped``) if one is outside it."""
    point = {**trial.params, **fill}
    for name, prior in space.items():  # a record another program wrote may lack a dimension
        if name not in point or not prior.contains(to_builtin(point[name])):
            dropped[name] = dropped.get(name, 0) + 1
            return None
    return dataclasses.replace(trial, params={name: prior.cast(point[name]) for name, prior in space.items()})


#: Each source's last read, by (storage, experiment id): the count of completed trials it was read at,
#: and what was read. One entry per source: a copy per count kept every older read of a source that
#: was still growing (a process starting workers, or ``orchard info`` run, again and again held them all).
_CACHE: dict[tuple[str, str], tuple[int, tuple[Space, dict[str, str] | None, list[Trial]]]] = {}
_CACHE_LOCK = threading.Lock()
_WARNED: set[tuple[str, str, tuple[tuple[str, int], ...]]] = set()  # (storage, source, counts) warned about


def _read(source: Source, own: BaseStorage) -> tuple[Space, dict[str, str] | None, list[Trial]]:
    """The source's space, objectives and completed trials, read once per process while its count stays the same."""
    storage = own if source.storage is None else get_storage(lend_password(source.storage, own.uri))
    try:
        record = storage.get_experiment(source.experiment)
        if record is None:
            raise _missing(source, storage)
        count = storage.count_trials(record.id)[TrialStatus.COMPLETED]
        key = (storage.uri, record.id)
        with _CACHE_LOCK:
            last = _CACHE.get(key)
        cached = last[1] if last is not None and last[0] == count else None
        if cached is None:
            try:
                theirs = Space.from_config(record.config["space"])
            except (KeyError, OrchardError) as err:
                raise ConfigurationError(f"warm start source {source.label!r} has no usable space ({err})") from None
            trials = [t for t in storage.fetch_trials(record.id, [TrialStatus.COMPLETED]) if t.objective is not None]
            cached = (theirs, record.config.get("objectives") or None, trials)
            with _CACHE_LOCK:
                _CACHE[key] = (count, cached)
    finally:
        if source.storage is not None:
            storage.close()
    return cached


def _missing(source: Source, storage: BaseStorage) -> ExperimentNotFoundError:
    """The error for a source ``storage`` does not hold, naming it as a warm start source (not --storage);
    a missing file is named (``experiments there: none`` made a typo look like an empty storage)."""
    names = ", ".join(sorted(r.name for r in storage.list_experiments())) or "none"
    where, fix = "its storage", "check its name and its storage"
    if source.storage is None:
        where = "this experiment's storage"
        fix = "check its name, or write STORAGE:NAME for one in another storage"
    elif _file_gone(source) is not None:
        return ExperimentNotFoundError(f"warm start source {source.label!r} does not exist: its storage file "
                                       f"{_file_gone(source)} does not exist; check its path")
    return ExperimentNotFoundError(
        f"warm start source {source.label!r} does not exist: no experiment named {source.experiment!r} "
        f"in {where} {storage.redacted_uri} (experiments there: {names}); {fix}")


def _file_gone(source: Source) -> str | None:
    """The path of ``source``'s pickle file when it does not exist (``None``: it does, or it is no file)."""
    found = pickle_path(source.storage) if source.storage is not None else None
    return found[0] if found is not None and not os.path.exists(found[0]) else None


def _named_objective(trial: Trial) -> Trial:
    """A trial of one unnamed objective, with it in its results as ``"objective"`` (kept apart from them).

    So an experiment declaring an objective of that name (``objectives={"objective": "max"}``: maximise
    what the scripts report with ``report_objective``) is told the value the source recorded.
    """
    if "objective" in trial.results or trial.objective is None:
        return trial
    return dataclasses.replace(trial, results={**trial.results, "objective": trial.objective})


def _scored(trial: Trial, objectives: Mapping[str, str] | None) -> bool:
    """Whether ``trial`` recorded every one of ``objectives`` (``None``: one unnamed one) as a finite number."""
    try:
        return objectives is None or all(map(math.isfinite, minimized(trial.results, objectives)))
    except (KeyError, TypeError, ValueError):
        return False


def _objective_problem(source: Source, theirs: Mapping[str, str] | None, objectives: Mapping[str, str] | None,
                       trials: Sequence[Trial]) -> str | None:
    """Why ``source``'s trials cannot be scored with this experiment's ``objectives`` (``None`` if they can)."""
    if objectives is None and theirs is not None:
        return (f"warm start from {source.label!r}: it measured the objectives {dict(theirs)!r}, this experiment "
                f"one unnamed objective; declare the objectives it optimises (objectives={dict(theirs)!r}, with "
                "this experiment's directions) or drop the source")
    if trials and not any(_scored(t, objectives) for t in trials):
        names = list(objectives or ())
        absent = [name for name in names if not any(name in t.results for t in trials)]
        which = f" ({', '.join(map(repr, absent))} in none of them)" if 0 < len(absent) < len(names) else ""
        return (f"warm start from {source.label!r}: none of its {len(trials)} completed trials recorded the "
                f"objectives {', '.join(map(repr, names))} this experiment optimises{which}; drop the source "
                "or name the objectives as its trials recorded them")
    return None


def _gather(space: Space, stored: Sequence[Mapping[str, Any]] | None, own: BaseStorage, strict: bool,
            objectives: Mapping[str, str] | None = None,
            constraints: Sequence[str] | None = None) -> tuple[list[Trial], list[SourceUse]]:
    """The sources' trials mapped into ``space``, and what each gave.

    ``strict`` (when the experiment is created) refuses a missing source and one none of whose
    trials fits; otherwise (a worker starting later) such a source gives nothing, with a warning,
    so deleting an old experiment, recreating it with another space, damaging its record, or losing
    or damaging the other storage it was in, never stops the ones it warm-started.
    """
    prior: list[Trial] = []
    uses: list[SourceUse] = []
    for source in _sources(stored):
        try:
            theirs, their_objectives, trials = _read(source, own)
        except (ExperimentNotFoundError, StorageError, ConfigurationError) as err:
            if strict and isinstance(err, StorageError) and source.storage is not None:  # not the own storage
                raise StorageError(f"warm start source {source.label!r} cannot be read: {err}") from err
            if strict or (isinstance(err, StorageError) and source.storage is None):
                raise  # the experiment's own storage failing is no excuse
            if isinstance(err, ConfigurationError):  # its record holds a space this release cannot read
                unused, why = "its space cannot be read", str(err)
            elif isinstance(err, ExperimentNotFoundError) and _file_gone(source) is not None:  # moved, often
                unused = "its storage file is gone"
                why = (f"warm start source {source.label!r} cannot be read: its file {_file_gone(source)} does not "
                       "exist (moved or deleted?)")
            elif isinstance(err, ExperimentNotFoundError):
                unused, why = "it no longer exists", f"warm start source {source.label!r} no longer exists"
            else:
                unused = "it cannot be read"
                why = f"warm start source {source.label!r} cannot be read ({err})"
                if password_of(source.storage or "") == "***":
                    why += ("; its password is not stored with the experiment: give the source again, "
                            "with it, to each worker (--warm-start, warm_start=)")
            log.warning("%s; going on without it", why)
            uses.append(SourceUse(source.label, 0, 0, {}, unused))
            continue
        if not strict and objectives is None and their_objectives is not None:  # deleted, created anew since
            log.warning("warm start source %r now measures the objectives %r, not this experiment's one "
                        "unnamed objective; going on without it", source.label, dict(their_objectives))
            uses.append(SourceUse(source.label, 0, len(trials), {}, "it measures other objectives now"))
            continue
        if their_objectives is None and "objective" in (objectives or ()):  # its one objective, by that name
            trials = [_named_objective(t) for t in trials]
        problems = _fit_problems(source, theirs, space)
        if problems and not strict:  # recreated with another space since: the sources cannot be changed
            log.warning("warm start source %r no longer fits this space (%s); going on without it",
                        source.label, "; ".join(problems))
            uses.append(SourceUse(source.label, 0, len(trials), {}, "it no longer fits this space"))
            continue
        if problems:
            raise ConfigurationError(
                f"warm start from {source.label!r}: its space does not fit this one: {'; '.join(problems)}. "
                "Fix the space or the source (see docs/warm-start.md)")
        scoring = _objective_problem(source, their_objectives, objectives, trials) if strict else None
        if scoring is not None:
            raise ConfigurationError(scoring)
        fill = {name: space[name].cast(value) for name, value in source.fill.items()}
        dropped: dict[str, int] = {}
        fitting = [m for t in trials if (m := _mapped(t, space, fill, dropped)) is not None and _scored(t, objectives)]
        if strict and trials and not fitting:
            outside = "; ".join(f"{name}: {n} value(s) outside {space[name]}" for name, n in sorted(dropped.items()))
            raise ConfigurationError(
                f"warm start from {source.label!r}: none of its {len(trials)} completed trials fits this space "
                f"({outside}); widen those dimensions or drop the source")
        fitting, unmeasured = _measured(source, fitting, constraints, own, strict)
        prior += fitting
        uses.append(SourceUse(source.label, len(fitting), len(trials), dropped, unmeasured=unmeasured))
    return prior, uses


def _measured(source: Source, trials: list[Trial], constraints: Sequence[str] | None, own: BaseStorage,
              strict: bool) -> tuple[list[Trial], dict[str, int]]:
    """``trials`` but those without a metric ``constraints`` read, and how many lacked each. Told, they
    were judged infeasible (an infinite violation): the algorithm shunned every point the source evaluated."""
    lacking = [unrecorded(trial.results, constraints) for trial in trials]
    kept = [trial for trial, missing in zip(trials, lacking) if not missing]
    unmeasured = dict(collections.Counter(metric for missing in lacking for metric in missing))
    read = f"{', '.join(map(repr, sorted(unmeasured)))} (read by {', '.join(map(repr, constraints or ()))})"
    if strict and trials and not kept:
        raise ConfigurationError(
            f"warm start from {source.label!r}: none of its {len(trials)} completed trials recorded {read}, "
            "so none says whether its point is feasible; drop the source or those constraints")
    key = (own.uri, source.label, tuple(sorted(unmeasured.items())))
    if unmeasured and key not in _WARNED:  # once a process, not once a worker (a race: twice, harmless)
        _WARNED.add(key)
        log.warning("warm start source %r: %d of its %d completed trials did not record %s, so they say "
                    "nothing of their points' feasibility; they are left out", source.label,
                    len(trials) - len(kept), len(trials), read)
    return kept, unmeasured


def check_sources(space: Space, stored: Sequence[Mapping[str, Any]] | None, own: BaseStorage, name: str,
                  objectives: Mapping[str, str] | None = None,
                  constraints: Sequence[str] | None = None) -> None:
    """Check, before an experiment is created, that each source exists, maps into ``space``, was scored
    on ``objectives`` (the experiment's several objectives; ``None``: one unnamed objective) and
    recorded the metrics its ``constraints`` read.

    Raises:
        ExperimentNotFoundError: a source experiment does not exist.
        ConfigurationError: a source is the experiment itself, does not fit (the dimensions are named),
            measured other objectives, or none of its trials recorded a metric the constraints read.
        StorageError: a source's storage cannot be opened.
    """
    sources = _sources(stored)
    places = [_storage_uri(source, own) for source in sources]
    if any(s.experiment == name and place == own.uri for s, place in zip(sources, places)):
        raise ConfigurationError(f"experiment {name!r} cannot warm-start from itself; name an earlier experiment")
    named: dict[tuple[str, str], Source] = {}
    for source, place in zip(sources, places):
        same = None if place is None else named.setdefault((place, source.experiment), source)
        if same is not None and same is not source:  # its trials were told twice, as if evaluated twice
            raise ConfigurationError(f"warm_start names one experiment twice: {same.label!r} and "
                                     f"{source.label!r}; name each source once")
    _gather(space, stored, own, strict=True, objectives=objectives, constraints=constraints)


def _storage_uri(source: Source, own: BaseStorage) -> str | None:
    """The URI of the storage ``source`` is kept in, however it was written (``None``: it cannot be opened).

    A source named by the path of the experiment's own storage is in that storage.
    """
    if source.storage is None:
        return own.uri
    try:
        with get_storage(source.storage) as theirs:
            return theirs.uri
    except OrchardError:
        return None  # _gather says why it cannot be read


def prior_trials(space: Space, stored: Sequence[Mapping[str, Any]] | None, own: BaseStorage,
                 objectives: Mapping[str, str] | None = None,
                 constraints: Sequence[str] | None = None) -> list[Trial]:
    """The completed trials of the sources that recorded ``objectives`` (the experiment's declared ones;
    ``None``: one unnamed objective) and the metrics ``constraints`` read, their params mapped into
    ``space``; ``[]`` without sources.

    A source deleted since the experiment was created, recreated with a space that does not fit
    (or with declared objectives, for an experiment of one unnamed objective), or kept in another
    storage that cannot be read now (unreachable, damaged, replaced), gives nothing (with a warning).

    Raises:
        StorageError: the experiment's own storage cannot be read.
    """
    return _gather(space, stored, own, False, objectives, constraints)[0] if stored else []


def source_uses(space: Space, stored: Sequence[Mapping[str, Any]] | None, own: BaseStorage,
                objectives: Mapping[str, str] | None = None, constraints: Sequence[str] | None = None,
                ) -> list[SourceUse]:
    """What each source gives now (for ``orchard info``); ``[]`` without sources.

    With the experiment's ``objectives``, only trials that recorded each of them count (the others
    tell the search nothing: :class:`~orchard.history.History` leaves them out), and only those that
    recorded the metrics of its ``constraints``.
    """
    return _gather(space, stored, own, False, objectives, constraints)[1] if stored else []
