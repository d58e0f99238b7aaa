"""``orchard db {test,dump,load,rm,release,check,repair,compact}``: storage tools.

``dump`` writes experiments (configuration and every trial) to a JSON file,
``load`` restores them into any storage (e.g. from a pickle file to MongoDB);
``rm`` deletes an experiment after confirmation; ``release`` gives back a
reservation whose worker is gone (reserved → interrupted); ``test`` checks a storage end to end;
``check`` lists damaged bytes of a pickle file, ``repair`` rewrites it clean and ``compact``
rewrites it as a snapshot now (``rm`` does so when the experiment was a large part of the file).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from orchard.cli._args import (
    GivenOnce,
    add_common,
    add_name,
    confirm,
    open_experiment,
    open_storage,
    refuse_in_process,
)
from orchard.cli._output import print_stored
from orchard.terminal import printable
from orchard.trial import Trial, TrialStatus

if TYPE_CHECKING:  # pragma: no cover
    from orchard.experiment import Experiment

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``db`` and its sub-commands on the CLI's subparsers."""
    from orchard.cli._args import OneLineParser

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "db", help="storage tools: test, dump, load, rm, release, check, repair, compact"
    )
    commands = parser.add_subparsers(dest="db_command", metavar="SUBCOMMAND", parser_class=OneLineParser)
    commands.required = True

    test = commands.add_parser(
        "test", help="check the storage: connect, write, atomic reserve, lock; with timings"
    )
    test.set_defaults(func=_run_test)

    dump = commands.add_parser("dump", help="write experiments and their trials to a JSON file")
    add_name(dump, required=False, meaning="one experiment (default: every experiment in the storage)")
    dump.add_argument("-o", "--output", required=True, metavar="FILE.json", action=GivenOnce,
                      help="the JSON file to write, through a temporary file renamed at the end; its folder "
                           "must exist ('-': stdout)")
    dump.set_defaults(func=_run_dump)

    load = commands.add_parser("load", help="restore experiments from a dump (into any storage)")
    load.add_argument("file", metavar="FILE.json", help="a file written by 'orchard db dump' ('-': stdin)")
    load.add_argument("-n", "--name", metavar="NEWNAME", action=GivenOnce,
                      help="load the experiment of a one-experiment dump under this name")
    load.set_defaults(func=_run_load)

    rm = commands.add_parser("rm", help="delete an experiment and all its trials (keep a copy with dump first)")
    add_name(rm)
    rm.add_argument("--yes", "-y", action="store_true",
                    help="do not ask for confirmation (required without a terminal)")
    rm.set_defaults(func=_run_rm)

    release = commands.add_parser(
        "release", help="give back a reserved trial whose worker is gone (it becomes interrupted)"
    )
    add_name(release)
    release.add_argument("trial", metavar="TRIAL_ID", help="the trial's id (or a unique prefix)")
    release.add_argument("--force", action="store_true",
                         help="release at once, even if its worker is alive (that evaluation is thrown away); "
                              "without it, a trial whose heartbeat changes within 3 × heartbeat is not released")
    release.set_defaults(func=_run_release)

    check = commands.add_parser("check", help="read a whole pickle file and list damaged byte ranges (exit 1 if any)")
    check.set_defaults(func=_run_check)

    repair = commands.add_parser(
        "repair", help="rewrite a damaged pickle file with every readable record, keeping a backup"
    )
    repair.set_defaults(func=_run_repair)

    compact = commands.add_parser(
        "compact", help="rewrite a pickle file now without the records of deleted experiments and of past "
                        "changes (workers may keep running); prints its size before and after")
    compact.set_defaults(func=_run_compact)

    # `db --storage X test` and `db test --storage X`
    for sub in (parser, test, dump, load, rm, release, check, repair, compact):
        add_common(sub)
    return parser


def _run_test(args: argparse.Namespace) -> int:
    from orchard.cli._dbtest import check_storage

    for line in check_storage(lambda: open_storage(args)):
        print(line, flush=True)
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from orchard.cli._dbrepair import run_check

    return run_check(open_storage(args), args)


def _run_repair(args: argparse.Namespace) -> int:
    from orchard.cli._dbrepair import run_repair

    return run_repair(open_storage(args), args)


def _run_compact(args: argparse.Namespace) -> int:
    from orchard.cli._dbrepair import run_compact

    return run_compact(open_storage(args), args)


def _run_dump(args: argparse.Namespace) -> int:
    from orchard.cli._args import missing_storage_file
    from orchard.cli._dumps import dump_experiments, write_dump
    from orchard.errors import StorageError

    missing = missing_storage_file(args)
    if missing is not None:  # dumping only reads: create nothing
        raise StorageError(f"storage file {missing} does not exist, so there is nothing to dump; check --storage")
    storage = open_storage(args)
    data = dump_experiments(storage, args.name)
    write_dump(data, args.output)
    n_trials = sum(len(e["trials"]) for e in data["experiments"])
    where = "stdout" if args.output == "-" else args.output
    print(f"dumped {len(data['experiments'])} experiment(s), {n_trials} trials, to {where}",
          file=sys.stderr if args.output == "-" else sys.stdout)
    return 0


def _run_load(args: argparse.Namespace) -> int:
    from orchard.cli._dumps import load_experiments, read_dump
    from orchard.naming import check_experiment_name

    if args.name is not None:
        check_experiment_name(args.name)
    data = read_dump(args.file, args.name)
    storage = open_storage(args)
    refuse_in_process(storage, "the trials loaded", "nothing was loaded")  # it said "loaded", then lost them
    with _again_on_outage("the trials loaded so far stay, and the same command adds the rest (those already "
                          "there are skipped)"):
        for name, added, total in load_experiments(storage, data, args.name):
            print_stored(f"loaded experiment {name!r} into {storage.redacted_uri}: {added} of {total} trials added"
                         + (f" ({total - added} were already there)" if added < total else ""))
    return 0


@contextlib.contextmanager
def _again_on_outage(what: str) -> Iterator[None]:
    """Say, when the storage is lost midway or Ctrl-C (SIGTERM) stops the command, what was done and
    that running the command again is safe."""
    from orchard.errors import Interrupted, StorageUnavailableError

    try:
        yield
    except StorageUnavailableError as err:
        raise StorageUnavailableError(f"{err}; {what}", reached=err.reached) from err
    except KeyboardInterrupt as err:  # was only 'stopped by SIGTERM': what was stored, and what to do, unsaid
        raise Interrupted(what, terminated=isinstance(err, Interrupted) and err.terminated) from None


def _run_rm(args: argparse.Namespace) -> int:
    from orchard.errors import ConfigurationError

    experiment = open_experiment(args)
    storage = experiment.storage
    counts = storage.count_trials(experiment.id)
    n_trials = sum(counts.values())
    where = f" --storage {storage.redacted_uri}" if getattr(args, "storage", None) else ""
    backup = f"orchard db dump -n {experiment.name}{where} -o {experiment.name}.json"
    from orchard.cli._dumps import warm_started_from

    readers = ", ".join(map(repr, warm_started_from(storage, experiment.name)))
    if readers:  # they lost its trials without a word (a warning from each of their workers, later)
        print(f"orchard: WARNING: experiment(s) {readers} warm-start from {experiment.name!r}: once it is "
              "deleted, their workers are told nothing from it", file=sys.stderr)
    if counts[TrialStatus.RESERVED]:  # the question asked of them said nothing of it
        print(f"orchard: WARNING: {counts[TrialStatus.RESERVED]} trial(s) of {experiment.name!r} are running "
              f"now (orchard status -n {experiment.name} names their workers): once it is deleted, their "
              "workers stop and their results are lost; stop them first to keep them", file=sys.stderr)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigurationError(
                f"refusing to delete experiment {experiment.name!r} ({n_trials} trials) without "
                f"confirmation: no terminal to ask on; keep a copy first with '{backup}', then add --yes"
            )
        print(f"to keep a copy, answer no and run '{backup}' first", file=sys.stderr)
        if not confirm(f"delete experiment {experiment.name!r} and its {n_trials} trials "
                       f"from {storage.redacted_uri}?"):
            print("nothing deleted")
            return 1
    from orchard.cli._dbrepair import compact_after_rm, trials_in_file

    total = trials_in_file(storage)
    with _again_on_outage("some of its trials may be deleted already; run the same command again to finish"):
        deleted = storage.delete_experiment(experiment.id)
    print_stored(f"deleted experiment {experiment.name!r} and its {deleted} trials from {storage.redacted_uri}")
    compact_after_rm(storage, deleted, total)
    return 0


def _run_release(args: argparse.Namespace) -> int:
    from orchard.errors import ConfigurationError

    experiment = open_experiment(args)
    trial = _find_trial(experiment, args.trial)
    if trial.status is not TrialStatus.RESERVED:
        raise ConfigurationError(
            f"trial {trial.id} of experiment {experiment.name!r} is {trial.status.value}, not reserved; "
            f"only a reserved trial can be released ({_reserved_list(experiment)})"
        )
    if args.force:
        released = experiment.storage.release_trial(trial.id, None)
        holder = printable(str(trial.worker))
        print_stored(f"released trial {released.id} of experiment {experiment.name!r} (was reserved by {holder}, "
                     "whose result, if it is still running, will be refused); it is now interrupted and the "
                     "next worker takes it")
        return 0
    from orchard.cli._release import release_if_lost

    released = release_if_lost(experiment, trial)
    now = (f"it is now broken: its reservation was lost {released.attempts} times (max_attempts)"
           if released.status is TrialStatus.BROKEN else "it is now interrupted and the next worker takes it")
    holder = printable(str(trial.worker))
    print_stored(f"released trial {released.id} of experiment {experiment.name!r}: the heartbeat of {holder} "
                 f"stood unchanged for 3 × heartbeat, so that worker is gone; {now}")
    return 0


def _find_trial(experiment: Experiment, wanted: str) -> Trial:
    """The experiment's trial whose id is ``wanted`` or starts with it.

    Raises:
        ConfigurationError: ``wanted`` is empty.
        TrialNotFoundError: no trial, or several, match.
    """
    from orchard.errors import ConfigurationError, TrialNotFoundError

    if not wanted.strip():  # every id starts with "": an unset shell variable would pick the only trial
        raise ConfigurationError(f"TRIAL_ID is empty (an unset shell variable?); give the id of a trial of "
                                 f"experiment {experiment.name!r}, or a unique prefix of it; {_reserved_list(experiment)}")
    trial = experiment.storage.get_trial(wanted)
    if trial is not None and trial.experiment == experiment.id:
        return trial
    matches = [t for t in experiment.fetch_trials() if t.id.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    what = f"trial {wanted!r} does not exist" if not matches else f"{len(matches)} trials match {wanted!r}"
    raise TrialNotFoundError(f"{what} in experiment {experiment.name!r}; {_reserved_list(experiment)}")


def _reserved_list(experiment: Experiment) -> str:
    reserved = [t.id[:12] for t in experiment.fetch_trials([TrialStatus.RESERVED])]
    return f"reserved trials: {', '.join(reserved) or 'none'}, see orchard status -n {experiment.name}"
