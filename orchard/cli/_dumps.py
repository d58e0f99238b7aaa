"""The dump format of ``orchard db dump``/``load``: plain JSON, any storage to any storage.

::

    {"format": "orchard-dump", "version": 1, "created": 1700000000.0, "source": "runs/orchard.pkl",
     "experiments": [{"name": "exp", "id": "9f…", "config": {...}, "created": ...,
                      "trials": [Trial.to_dict(), ...]}]}

An experiment is loaded with its dumped id unless an experiment of the target holds it, so its trials keep
their ids (they hash the experiment id); else the trial ids are recomputed for the target experiment. Trials
that were reserved when dumped are loaded as ``interrupted``, their attempt given back (not counted against
``max_attempts``), as a graceful release does: their workers do not exist in the target storage.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any, TextIO

from orchard.cli._args import each_key_once
from orchard.errors import ConfigurationError, ExperimentConflictError
from orchard.experiment_config import ExperimentConfig
from orchard.report import read_at_most
from orchard.resources import format_bytes
from orchard.space import params_hash, trial_id
from orchard.stopping import LEDGER_KEY, unreadable_ledger
from orchard.storages import BaseStorage, ExperimentRecord
from orchard.storages.base import finishes
from orchard.trial import Trial, TrialStatus
from orchard.warm_start import hide_passwords, normalize_warm_start

__all__ = ["MAX_DUMP_BYTES", "dump_experiments", "load_experiments", "read_dump", "same_storage",
           "warm_started_from", "write_dump"]

FORMAT, VERSION = "orchard-dump", 1

#: Bytes of a dump ``db load`` reads at most: about two million trials of a few params (520 bytes each).
MAX_DUMP_BYTES = 10**9


def dump_experiments(storage: BaseStorage, name: str | None = None) -> dict[str, Any]:
    """Everything about experiment ``name`` (or every experiment) as JSON-ready data.

    Each experiment's configuration is read after its trials, so that a dump of running
    workers holds a stopping ledger no older than its trials, as the storage always does:
    a dumped trial that fired a rule is never loaded into a copy whose rules did not fire.

    Raises:
        ExperimentNotFoundError: no experiment called ``name``.
    """
    from orchard.errors import ExperimentNotFoundError

    records = [storage.require_experiment(name)] if name else storage.list_experiments()
    experiments = []
    for listed in records:
        trials = [t.to_dict() for t in storage.fetch_trials(listed.id)]
        try:  # read after the trials: the stopping ledger is folded before a result is stored, never after
            record = storage.experiment(listed.id)
        except ExperimentNotFoundError:
            if name:
                raise
            continue  # deleted (db rm) while the others were read
        experiments.append({"name": record.name, "id": record.id, "config": _shareable(record.config),
                            "created": record.created, "trials": trials})
    return {"format": FORMAT, "version": VERSION, "created": time.time(),
            "source": storage.redacted_uri, "experiments": experiments}


def _shareable(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the password of each warm-start source's storage URI hidden, as every URI in a dump.

    A dump is made to be shared. After ``db load``, a source whose storage needs that
    password, and is not on the loading storage's server for the same user, cannot be read:
    its warm start gives nothing, with a warning.
    """
    sources = config.get("warm_start")
    return {**config, "warm_start": hide_passwords(sources)} if isinstance(sources, list) else config


def write_dump(data: dict[str, Any], path: str) -> None:
    """Write a dump to ``path`` atomically (temp file, fsync, rename); ``-`` is stdout.

    A symbolic link stays one (the file it names is replaced), and a replaced file keeps its
    permissions; a path that names no regular file (``/dev/stdout``, a FIFO) is written into,
    never replaced.

    Raises:
        ConfigurationError: ``path`` is a directory, its folder does not exist, or it
            cannot be written (stdout included: a full disk behind ``> dump.json``);
            no temporary file is left behind.
    """
    if path == "-":
        _write_into(sys.stdout, "stdout", data)
        return
    _check_writable(path)
    target = os.path.realpath(path)
    if os.path.exists(target) and not os.path.isfile(target):  # e.g. -o /dev/null run as root: never replace it
        try:
            with open(path, "w", encoding="utf-8") as handle:
                _write_into(handle, path, data)
        except OSError as err:
            raise _unwritable(path, err) from err
        return
    left = f"{path} is unchanged" if os.path.exists(target) else "no file was written"  # not "incomplete"
    # a new name, created exclusively: a name known in advance (the pid) in a shared folder let another
    # user plant a symbolic link there, and the dump was written into the file it named
    tmp = f"{target}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            with contextlib.suppress(FileNotFoundError):  # a file chmod 600 stays so: it holds every trial
                shutil.copymode(target, tmp)
            _write_into(handle, path, data, left)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as err:
        raise _unwritable(path, err, left) from err
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _write_into(handle: TextIO, where: str, data: Any, left: str = "the dump is incomplete") -> None:
    """Write and flush the JSON of ``data``: a write error must not pass for a complete dump."""
    try:
        json.dump(data, handle, indent=1)
        handle.write("\n")
        handle.flush()
    except OSError as err:
        if handle is sys.stdout:  # what is left in its buffer cannot be written either: drop it quietly
            sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives until exit
            if isinstance(err, BrokenPipeError):  # `db dump -o - | head`: the reader left (exit 141)
                raise
        raise _unwritable(where, err, left) from err


def _unwritable(where: str, err: OSError, left: str = "the dump is incomplete") -> ConfigurationError:
    return ConfigurationError(f"cannot write dump {where}: {err.strerror or err}; {left}: "
                              "give a writable file path with -o (on a disk with free space)")


def _linked(path: str) -> str:
    return f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""


def _check_writable(path: str) -> None:
    if os.path.isdir(path):
        suggestion = os.path.join(path, "dump.json")
        raise ConfigurationError(f"-o {path} is a directory; give a file path, e.g. -o {suggestion}")
    from orchard.storages.pickled.fileformat import is_log_file

    locked = path[:-len(".lock")] if path.endswith(".lock") and is_log_file(path[:-len(".lock")]) else None
    if locked is not None or is_log_file(path):  # `-o runs/orchard.pkl`: a storage, its experiments replaced
        stem, suffix = os.path.splitext(locked or path)  # dump.json: a link to the storage file was given
        named = f"{stem}-dump.json" if suffix == ".json" else f"{stem}.json"
        what = f"the lock file of storage {locked}" if locked else f"an Orchard storage file{_linked(path)}"
        lost = "under the storage's workers" if locked else "and every experiment in it"
        raise ConfigurationError(f"-o {path} is {what}; writing the dump there would replace it {lost}: give "
                                 f"a new file name, e.g. -o {named}")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ConfigurationError(f"cannot write dump {path}: folder {folder} does not exist; create it first")


def read_dump(path: str, rename: str | None = None) -> dict[str, Any]:
    """Read and check a dump file, ``-`` for stdin (every experiment and trial in it, before anything is loaded).

    ``rename``: the experiment will be loaded under this name, so its name in the dump is not checked.

    Raises:
        ConfigurationError: the file cannot be read or is not an Orchard dump.
    """
    if not path.strip():  # read as a file named '' or ' ', which did not exist
        raise ConfigurationError("FILE.json is empty (an unset shell variable?); give a file written by "
                                 "'orchard db dump', or - for stdin")
    from orchard.storages.pickled.fileformat import is_log_file

    if path != "-" and is_log_file(path):  # it said "'utf-8' codec can't decode byte 0x89 in position 0"
        raise ConfigurationError(
            f"{path} is an Orchard storage file, not a dump; to copy its experiments, dump them first "
            f"(orchard db dump --storage {path} -o {os.path.splitext(path)[0]}.json) and load that; "
            "nothing was loaded")
    try:
        if path == "-":  # the other end of `orchard db dump -o - | orchard db load -`
            text = _read_bounded(sys.stdin, path)
        else:
            with open(path, "rb") as handle:
                text = _read_bounded(handle, path)
        if not text.strip():  # json said 'Expecting value: line 1 column 1 (char 0)'
            source = "nothing came on stdin: did the command before the pipe fail?" if path == "-" else \
                "the file is empty"
            raise ConfigurationError(f"cannot read dump {path}: {source}; nothing was loaded")
        data = json.loads(text, object_pairs_hook=each_key_once)  # a hand-edited dump: no value lost
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # a text file said "Expecting value: line 1 …"
        raise ConfigurationError(f"cannot read dump {path}: it is not JSON ({err}), so no file written by "
                                 "'orchard db dump'; nothing was loaded") from None
    except (OSError, ValueError) as err:
        raise ConfigurationError(f"cannot read dump {path}: {err}") from None
    except RecursionError:
        raise ConfigurationError(f"cannot read dump {path}: it is nested too deeply for a dump") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigurationError(f"{path} is not an Orchard dump (written by 'orchard db dump')")
    if data.get("version") != VERSION:
        raise ConfigurationError(
            f"dump {path} has version {data.get('version')!r}; this Orchard reads version {VERSION}"
        )
    experiments = data.get("experiments")
    if not isinstance(experiments, list):
        raise ConfigurationError(f"dump {path} has no list of experiments; it was not written by 'orchard db dump'")
    for at, entry in enumerate(experiments):
        _check_experiment(entry, f"dump {path}, experiment {at}", rename is None)
    names = collections.Counter(entry["name"] for entry in experiments) if rename is None else {}
    twice = sorted(name for name, count in names.items() if count > 1)
    if twice:  # the second's trials went into the first, or half the dump was loaded
        raise ConfigurationError(f"dump {path} holds experiment {twice[0]!r} twice; keep one, or rename the "
                                 "other; nothing was loaded")
    return data


def _read_bounded(handle: IO[Any], path: str) -> str:
    """The text of a dump, read up to ``MAX_DUMP_BYTES`` (:func:`~orchard.report.read_at_most`)."""
    data = read_at_most(handle, MAX_DUMP_BYTES)
    if data is None:
        raise ConfigurationError(f"dump {path} holds more than {format_bytes(MAX_DUMP_BYTES)}, more than 'orchard db "
                                 "dump' writes of two million trials: is it the right file? nothing was loaded")
    return (data.decode("utf-8") if isinstance(data, bytes) else data).removeprefix("\ufeff")  # Notepad's BOM


def _check_experiment(entry: Any, where: str, named: bool) -> None:
    """Check one experiment of a dump as ``create_experiment`` and the workers would.

    A dump is data from outside: a configuration or a trial that the storage's own
    verbs would refuse must not be stored by ``load`` (every worker would then
    fail on it, or count it).

    Raises:
        ConfigurationError: what is wrong, and where in the dump.
    """
    from orchard.errors import StorageError
    from orchard.naming import check_experiment_name
    from orchard.storages.pickled.records import check_trial, experiment_fault

    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict) \
            or not isinstance(entry.get("trials"), list):
        raise ConfigurationError(f"{where} is not an object with a name, a config and a list of trials; "
                                 "nothing was loaded")
    try:
        if named:
            check_experiment_name(entry.get("name"))
    except ConfigurationError as err:
        raise ConfigurationError(f"{where}: {err}; load it under another name with -n NEWNAME") from None
    where = f"{where} ({entry.get('name')!r})"
    try:
        config = ExperimentConfig.from_dict(entry["config"])
    except ConfigurationError as err:
        raise ConfigurationError(f"{where} has an invalid configuration: {err}; nothing was loaded") from None
    created = entry.get("created")
    if created is not None:  # absent: loaded as created now
        fault = experiment_fault({"id": "", "name": "", "created": created, "config": {}})
        if fault is not None:
            raise ConfigurationError(f"{where} cannot be loaded: {fault}; nothing was loaded")
    points: dict[str, int] = {}
    for number, record in enumerate(entry["trials"]):
        try:
            if not isinstance(record, dict):
                raise TypeError(f"it is a JSON {type(record).__name__}, not an object")
            fields = {**_DEFAULT_FIELDS, **record, "id": "", "experiment": ""}  # both are rewritten on load
            check_trial(fields, _JSON_VALUES)  # what every reader would skip (RecordError, a ValueError)
            trial = Trial.from_dict(fields)
            config.space.validate(trial.params)
            _check_numbers(trial, config.objectives or {})
            first = points.setdefault(params_hash(trial.params), number)
            if first != number:  # one was dropped as "already there"
                raise ValueError(f"its params are those of trial {first}, and an experiment holds one trial "
                                 "per point")
        except (ConfigurationError, StorageError, TypeError, ValueError, KeyError) as err:
            raise ConfigurationError(f"{where}, trial {number} cannot be loaded: {err}; nothing was loaded") from None


#: A dumped trial's fields at their default: a field left out of a dump written by hand reads as its default.
_DEFAULT_FIELDS = Trial(id="", experiment="", params={}).to_dict()
_JSON_VALUES = 1 << 62  # json.load builds no shared sub-lists: the file's size bounds the walk of a trial


def _check_numbers(trial: Trial, objectives: Mapping[str, str]) -> None:
    """Refuse what a worker would not have stored: an objective, a report or a named objective not finite.

    JSON dumps may hold NaN and Infinity: a NaN objective loaded became the best trial.
    """
    from orchard.pareto import reported
    from orchard.report import shown
    from orchard.trial import finite_number

    if trial.objective is not None and (isinstance(trial.objective, bool) or finite_number(trial.objective) is None):
        raise TypeError(f"objective {shown(trial.objective)} is not a finite number")
    for step, value in trial.reports:
        if not all(math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,))):
            raise ValueError(f"its report at step {step} is {shown(value)}, not finite numbers")
    if trial.status is TrialStatus.COMPLETED:
        values = reported(trial)  # a worker of an older release took `objective` out of the results
        for name in objectives:
            if finite_number(values.get(name)) is None:
                raise ValueError(f"objective {shown(name)} is {shown(values.get(name))}, not a finite number")


def load_experiments(
    storage: BaseStorage, data: dict[str, Any], rename: str | None = None
) -> Iterator[tuple[str, int, int]]:
    """Restore each experiment of a dump; yield ``(name, trials added, trials in the dump)``.

    An experiment that exists in the target with the same space and objectives
    receives the trials it lacks, and the results of those still waiting to run
    there (:func:`~orchard.storages.base.finishes`); one with another space or other objectives is
    an error, found for every experiment of the dump before anything is stored.
    A new experiment keeps its dumped id unless the target holds it, so its trials keep theirs.
    Else trial ids are recomputed for the target experiment, and every reference to a
    trial of the dump (a promotion's ``parent``, the trials a pruned trial's verdict
    compared it with, the trials the stopping ledger names) follows its trial to its new id.

    Raises:
        ConfigurationError: ``rename`` given for a dump of several experiments.
        ExperimentConflictError: the target has an experiment of that name with another
            space or other objectives.
    """
    experiments = data["experiments"]
    if rename and len(experiments) != 1:
        raise ConfigurationError(
            f"-n renames one experiment but the dump holds {len(experiments)}; dump them one by one with -n"
        )
    loaded = set() if rename else {entry["name"] for entry in experiments}
    source = data.get("source")
    configs = [_sources_followed(entry["config"], source, storage, loaded) for entry in experiments]
    for entry, config in zip(experiments, configs):  # every conflict before the first write
        _check_not_itself(rename or entry["name"], config, storage)
        record = storage.get_experiment(rename or entry["name"])
        if record is not None:
            _check_fits(storage, record, entry["config"], len(experiments), "nothing was loaded")
    for entry, config in zip(experiments, configs):
        name = rename or entry["name"]
        experiment_id = storage.create_experiment(name, config, created=entry.get("created"),
                                                  keep_id=_dumped_id(entry))
        record = storage.require_experiment(name)
        _check_fits(storage, record, entry["config"], len(experiments), "the experiments before it were loaded")
        new_ids = {t["id"]: trial_id(experiment_id, t["params"])
                   for t in entry["trials"] if isinstance(t.get("id"), str)}
        trials = [_restorable(t, experiment_id, new_ids) for t in entry["trials"]]
        _follow_ledger(storage, record, entry["config"].get(LEDGER_KEY), new_ids)
        stored = {t.id: t for t in storage.fetch_trials(experiment_id)}  # one read, not a refused write each
        trials = [t for t in trials if t.id not in stored or finishes(stored[t.id], t)]
        yield name, storage.restore_trials(experiment_id, trials) if trials else 0, len(entry["trials"])


def _sources_followed(config: dict[str, Any], origin: Any, storage: BaseStorage,
                      loaded: set[str]) -> dict[str, Any]:
    """``config`` with its warm-start sources naming where they are once loaded into ``storage``.

    A source in the storage dumped from (``origin``) stays there unless this load brings it along:
    named by its name alone, it read another experiment of that name in the target, or none
    ("no longer exists"); named by the dumped storage's path, the old file, not the copy loaded beside it.
    """
    sources = normalize_warm_start(config.get("warm_start"))  # "exp" too (checked by read_dump): it was not
    if not sources:                                            # followed, and read the target's exp
        return config
    if not isinstance(origin, str) or same_storage(origin, storage.uri):
        return {**config, "warm_start": sources}
    followed = []
    for source in sources:
        there = source["storage"]
        if there is None and source["experiment"] not in loaded:
            source = {**source, "storage": origin}
        elif there is not None and source["experiment"] in loaded and same_storage(there, origin):
            source = {**source, "storage": None}
        followed.append(source)
    return {**config, "warm_start": followed}


def _check_not_itself(name: str, config: Mapping[str, Any], storage: BaseStorage) -> None:
    """Refuse an experiment whose warm start, once loaded, names itself: its own trials were told twice.

    ``build_experiment`` refuses it; a dump edited by hand was loaded.
    """
    for source in config.get("warm_start") or ():
        there = source["storage"]
        if source["experiment"] == name and (there is None or same_storage(there, storage.uri)):
            raise ConfigurationError(
                f"experiment {name!r} of the dump warm-starts from itself once loaded into "
                f"{storage.redacted_uri} (its warm_start names {name!r}), so its own trials would be told "
                "twice; name an earlier experiment in its warm_start, or leave warm_start out; "
                "nothing was loaded")


def same_storage(one: str, other: str) -> bool:
    """Whether two URIs name one storage: the same pickle file, or the same URI, passwords hidden."""
    from orchard.storages._uri import pickle_path, redact

    files = [found[0] for uri in (one, other) if (found := pickle_path(uri)) is not None]
    if len(files) < 2:
        return redact(one) == redact(other)
    return len({os.path.realpath(os.path.expanduser(path)) for path in files}) == 1


def warm_started_from(storage: BaseStorage, name: str) -> list[str]:
    """The experiments of ``storage`` that warm-start from its experiment ``name`` (for ``db rm`` to say)."""
    def reads(source: Any) -> bool:
        if not isinstance(source, dict) or source.get("experiment") != name:
            return False
        there = source.get("storage")
        return there is None or isinstance(there, str) and same_storage(there, storage.uri)

    return sorted(r.name for r in storage.list_experiments()
                  if isinstance(r.config.get("warm_start"), list) and any(map(reads, r.config["warm_start"])))


def _dumped_id(entry: Mapping[str, Any]) -> str | None:
    """The id an experiment had where it was dumped: its ``id``, or (a dump of an earlier release)
    the ``experiment`` of its trials when they all name one."""
    if isinstance(entry.get("id"), str):
        return str(entry["id"])
    named = {t.get("experiment") if isinstance(t.get("experiment"), str) else None for t in entry["trials"]}
    return named.pop() if len(named) == 1 else None


def _check_fits(storage: BaseStorage, record: ExperimentRecord, config: dict[str, Any], dumped: int,
                done: str) -> None:
    """Refuse to load trials into ``record`` if its space or objectives differ from the dump's ``config``.

    Both are read as a worker reads them (``uniform(0,1)`` is ``uniform(0.0, 1.0)``).

    Raises:
        ExperimentConflictError: the differences, and how to load the experiment under another name.
    """
    ours = ExperimentConfig.from_dict(config)  # checked by read_dump
    try:
        theirs = ExperimentConfig.from_dict(record.config)
    except ConfigurationError as err:
        problems = [f"its stored configuration cannot be read ({err})"]
    else:
        problems = [f"space {line}" for line in theirs.space.diff(ours.space)]
        if list((theirs.objectives or {}).items()) != list((ours.objectives or {}).items()):
            there, here = (goals.objectives or "objective: min" for goals in (theirs, ours))
            problems.append(f"objectives {there} != {here}")
    if not problems:
        return
    name = record.name
    how = "load it under another name with -n NEWNAME" if dumped == 1 else (
        f"dump it alone (orchard db dump -n {name} -o {name}.json) and load that with -n NEWNAME")
    raise ExperimentConflictError(
        f"experiment {name!r} exists in {storage.redacted_uri} with another configuration than the "
        f"dump's (stored != dumped: {'; '.join(problems)}), so the dumped trials do not fit it; {how}; {done}")


def _restorable(record: dict[str, Any], experiment_id: str, new_ids: Mapping[str, str]) -> Trial:
    """A dumped trial as ``db load`` stores it: its id recomputed, its parent's and its verdict's trials
    followed (so ``info --trial`` reaches a pruned trial's verdict again), never reserved.

    A field left out of the dump (written by hand) reads as its default, as :func:`_check_experiment` read it.
    """
    trial = Trial.from_dict({**_DEFAULT_FIELDS, **record, "id": "", "experiment": experiment_id})
    if trial.status is TrialStatus.RESERVED:  # its worker is not in the target: given back, as by a release
        trial = dataclasses.replace(trial, status=TrialStatus.INTERRUPTED, worker=None, heartbeat=None,
                                    attempts=max(trial.attempts - 1, 0))
    parent = new_ids.get(trial.parent, trial.parent) if trial.parent is not None else None
    verdict = trial.verdict
    if isinstance(verdict, dict) and isinstance(verdict.get("compared"), list):
        compared = [new_ids.get(c, c) if isinstance(c, str) else c for c in verdict["compared"]]
        verdict = {**verdict, "compared": compared}
    new_id = trial_id(experiment_id, trial.params)
    return dataclasses.replace(trial, id=new_id, parent=parent, verdict=verdict)


def _follow_ledger(storage: BaseStorage, record: ExperimentRecord, dumped: Any,
                   new_ids: Mapping[str, str]) -> None:
    """Rename the trials the dumped stopping ledger names (the one that fired a rule) to their new ids.

    Only in the ledger this load stored: a compare-and-swap against the dumped one, so
    the ledger of an experiment that existed, or that a worker has folded into since, stays.
    """
    stored = record.config.get(LEDGER_KEY)
    if not isinstance(dumped, dict) or stored != dumped or unreadable_ledger(dumped) is not None:
        return
    ledger = {**dumped, "recent": [_renamed(item, new_ids) for item in dumped.get("recent", [])]}
    if isinstance(dumped.get("fired"), dict):
        ledger["fired"] = {**dumped["fired"], "trial": _renamed(dumped["fired"]["trial"], new_ids)}
    if ledger != dumped:
        storage.swap_experiment(record.id, LEDGER_KEY, stored, ledger)


def _renamed(item: str, new_ids: Mapping[str, str]) -> str:
    """A ledger's ``TRIAL_ID`` or ``TRIAL_ID@TIME`` with the trial's new id."""
    old, at, when = item.partition("@")
    return new_ids.get(old, old) + at + when
