"""The dump format of ``orchard db dump``/``load``: plain JSON, any storage to any storage.

::

    {"format": "orchard-dump", "version": 1, "created": 1700000000.0, "source": "runs/orchard.pkl",
     "experiments": [{"name": "exp", "config": {...}, "created": ..., "trials": [Trial.to_dict(), ...]}]}

Trial ids are recomputed for the target experiment on load (they hash the
experiment id). Trials that were reserved when dumped are loaded as
``interrupted``: their workers do not exist in the target storage.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from orchard.errors import ConfigurationError, ExperimentConflictError
from orchard.storages import BaseStorage
from orchard.trial import Trial, TrialStatus

__all__ = ["dump_experiments", "load_experiments", "read_dump", "write_dump"]

FORMAT, VERSION = "orchard-dump", 1


def dump_experiments(storage: BaseStorage, name: str | None = None) -> dict[str, Any]:
    """Everything about experiment ``name`` (or every experiment) as JSON-ready data.

    Raises:
        ExperimentNotFoundError: no experiment called ``name``.
    """
    records = [storage.require_experiment(name)] if name else storage.list_experiments()
    experiments = [
        {"name": r.name, "config": r.config, "created": r.created,
         "trials": [t.to_dict() for t in storage.fetch_trials(r.id)]}
        for r in records
    ]
    return {"format": FORMAT, "version": VERSION, "created": time.time(),
            "source": storage.redacted_uri, "experiments": experiments}


def write_dump(data: dict[str, Any], path: str) -> None:
    """Write a dump to ``path`` atomically (temp file, fsync, rename); ``-`` is stdout.

    Raises:
        ConfigurationError: ``path`` is a directory, its folder does not exist, or it
            cannot be written; no temporary file is left behind.
    """
    if path == "-":
        json.dump(data, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    _check_writable(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise ConfigurationError(f"cannot write dump {path}: {err.strerror or err}; "
                                 "give a writable file path with -o") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_writable(path: str) -> None:
    if os.path.isdir(path):
        suggestion = os.path.join(path, "dump.json")
        raise ConfigurationError(f"-o {path} is a directory; give a file path, e.g. -o {suggestion}")
    from orchard.storages.pickled.fileformat import is_log_file

    if is_log_file(path):  # e.g. `-o runs/orchard.pkl`: the dump would replace a storage and its experiments
        raise ConfigurationError(
            f"-o {path} is an Orchard storage file; writing the dump there would replace it and every "
            f"experiment in it: give a new file name, e.g. -o {os.path.splitext(path)[0]}.json"
        )
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ConfigurationError(f"cannot write dump {path}: folder {folder} does not exist; create it first")


def read_dump(path: str) -> dict[str, Any]:
    """Read and check a dump file.

    Raises:
        ConfigurationError: the file cannot be read or is not an Orchard dump.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise ConfigurationError(f"cannot read dump {path}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigurationError(f"{path} is not an Orchard dump (written by 'orchard db dump')")
    if data.get("version") != VERSION:
        raise ConfigurationError(
            f"dump {path} has version {data.get('version')!r}; this Orchard reads version {VERSION}"
        )
    return data


def load_experiments(
    storage: BaseStorage, data: dict[str, Any], rename: str | None = None
) -> Iterator[tuple[str, int, int]]:
    """Restore each experiment of a dump; yield ``(name, trials added, trials in the dump)``.

    An experiment that exists in the target with the same space receives the
    trials it lacks; one with a different space is an error.

    Raises:
        ConfigurationError: ``rename`` given for a dump of several experiments.
        ExperimentConflictError: the target has the experiment with another space.
    """
    experiments = data["experiments"]
    if rename and len(experiments) != 1:
        raise ConfigurationError(
            f"-n renames one experiment but the dump holds {len(experiments)}; dump them one by one with -n"
        )
    for entry in experiments:
        name = rename or entry["name"]
        experiment_id = storage.create_experiment(name, entry["config"], created=entry.get("created"))
        record = storage.require_experiment(name)
        if record.config.get("space") != entry["config"].get("space"):
            raise ExperimentConflictError(
                f"experiment {name!r} exists in {storage.redacted_uri} with space "
                f"{record.config.get('space')}, "
                f"the dump has {entry['config'].get('space')}; load it under another name with -n NEWNAME"
            )
        trials = [_restorable(Trial.from_dict(t), experiment_id) for t in entry["trials"]]
        yield name, storage.restore_trials(experiment_id, trials), len(trials)


def _restorable(trial: Trial, experiment_id: str) -> Trial:
    from orchard.space import trial_id

    if trial.status is TrialStatus.RESERVED:
        trial = dataclasses.replace(trial, status=TrialStatus.INTERRUPTED, worker=None, heartbeat=None)
    return dataclasses.replace(trial, id=trial_id(experiment_id, trial.params), experiment=experiment_id)
