"""``orchard status``, ``orchard list`` and ``orchard info``: look at experiments.

Workers are not registered anywhere (there is no master): the live workers shown are the
owners of reserved trials. A heartbeat is stamped by its worker's clock, which may disagree
with this machine's by minutes (SPEC §5.8), so its age is judged by observation, like the
workers and the dashboard do: the seconds this command has seen the value stand unchanged on
its own monotonic clock. One reading sees each value for the first time (age ``≥ 0 s``, a lower
bound); ``--watch`` keeps watching, and a value unchanged for 3 × the experiment's heartbeat
marks a lost worker. The stamp itself is printed as written, on the worker's clock. A worker's
GPUs are read from its name (``host:pid:uuid/gpus=0,1``, see :mod:`orchard.resources`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchard.cli._args import (UsageError, add_common, add_name, format_age, format_params, format_time,
                               format_value, missing_storage_file, open_experiment, open_storage, strict_json)
from orchard.terminal import one_line, printable

if TYPE_CHECKING:  # pragma: no cover
    from orchard.experiment import Experiment
    from orchard.trial import Trial

__all__ = ["HeartbeatWatch", "add_parser", "experiment_status", "run_info", "run_list", "run_status"]

_CLEAR = "\x1b[H\x1b[2J"


#: The shortest ``--watch`` period: each refresh reads the whole storage (1e-300 read it in a busy loop).
MIN_INTERVAL = 0.1
#: The ``--watch`` period when ``--interval`` is not given.
DEFAULT_INTERVAL = 2.0


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds, e.g. 2")
    if value < MIN_INTERVAL:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {MIN_INTERVAL} seconds (each refresh reads "
                                         "the whole storage), e.g. 2")
    return value


def add_parser(subparsers: Any) -> None:
    """Register ``status``, ``list`` and ``info`` on the CLI's subparsers."""
    status = subparsers.add_parser("status", help="progress, best trial and live workers of experiments")
    add_name(status, required=False, meaning="one experiment (default: every experiment in the storage)")
    status.add_argument("--watch", action="store_true",
                        help="print the report again every --interval seconds until Ctrl-C (exit status 0); "
                             "in a terminal the screen is redrawn in place")
    status.add_argument("--interval", type=_positive_seconds, metavar="SECONDS",
                        help=f"refresh period of --watch, at least {MIN_INTERVAL} "
                             f"(default: {DEFAULT_INTERVAL}); refused without --watch")
    status.add_argument("--json", action="store_true",
                        help="print JSON: an object with -n, else a list of objects (--watch: one a line)")
    add_common(status)
    status.set_defaults(func=run_status)

    listing = subparsers.add_parser("list", help="the experiments in the storage")
    listing.add_argument("--json", action="store_true",
                         help="print a JSON list of objects with name, created, max_trials, inserted_apart, "
                              "counts, stopped and broken_stop")
    add_common(listing)
    listing.set_defaults(func=run_list)

    info = subparsers.add_parser("info", help="space, algorithm, budget, config, best trial and stats")
    add_name(info)
    info.add_argument("--json", action="store_true", help="print the same as one JSON object, with the best trial in full")
    info.add_argument("--trial", metavar="ID",
                      help="show one trial instead (a unique prefix of its id is enough): its params, "
                           "status, reports and, for a pruned trial, why it was pruned")
    add_common(info)
    info.set_defaults(func=run_info)


# -- status ---------------------------------------------------------------------------


class HeartbeatWatch:
    """When this process first saw each reservation's current lease (owner and heartbeat value).

    Ages come from this process's monotonic clock only: no worker's clock is
    compared with it. A lease already there at the first reading is seen at
    that reading, so its age is a lower bound.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, tuple[Any, float, bool]] = {}  # trial id -> (lease, first seen at, lower bound)
        self._readings = 0

    def observe(self, reserved: list[Trial]) -> dict[str, tuple[float, bool]]:
        """Fold in the reserved trials of one reading; return each one's (age, age is a lower bound)."""
        now, first = self._clock(), self._readings == 0
        seen = {}
        for trial in reserved:
            before = self._seen.get(trial.id)
            seen[trial.id] = before if before is not None and before[0] == trial.lease else (trial.lease, now, first)
        self._readings += 1
        self._seen = seen  # a trial no longer reserved is forgotten
        return {tid: (now - at, lower) for tid, (_, at, lower) in seen.items()}


def experiment_status(experiment: Experiment, watch: HeartbeatWatch | None = None) -> dict[str, Any]:
    """Counts by status, best trial, trials/s and live workers of one experiment, as plain data.

    Args:
        experiment: the experiment to report.
        watch: the heartbeats seen by earlier readings (``--watch``); ``None``: this reading only.
    """
    from orchard.pareto import infeasible  # numpy: imported by the commands that read trials only
    from orchard.resources import devices_of
    from orchard.stopping import broken_stop
    from orchard.trial import TrialStatus

    trials = experiment.fetch_trials()  # one read: the counts, rungs and workers agree while workers run
    stats = experiment.stats_of(trials)
    front = _front(experiment)
    best = experiment.best_trial if front is None else None
    stale_after = experiment.settings.stale_after
    reserved = [trial for trial in trials if trial.status is TrialStatus.RESERVED]
    ages = (watch or HeartbeatWatch()).observe(reserved)
    workers = []
    for trial in reserved:
        age, lower_bound = ages[trial.id]
        workers.append({"worker": trial.worker, "trial": trial.id, "params": trial.params,
                        "heartbeat": trial.heartbeat, "heartbeat_age": age,
                        "heartbeat_age_is_lower_bound": lower_bound, "stale": age > stale_after,
                        "devices": devices_of(trial.worker)})
    return {
        "name": experiment.name, "storage": experiment.storage.redacted_uri, "counts": stats["counts"],
        "max_trials": experiment.max_trials, "best_trial": best.id if best else None,
        "best_objective": stats["best_objective"] if front is None else None, "best_params": stats["best_params"],
        "objectives": experiment.settings.objectives, "pareto_front": front, "elapsed": stats["elapsed"],
        "trials_per_second": stats["trials_per_second"], "workers": workers,
        "rungs": _rungs(experiment, trials), "stop": stats["stop"], "inserted_apart": stats["inserted_apart"],
        "infeasible": infeasible(trials, experiment.settings.constraints),
        "broken_stop": broken_stop(stats["counts"]["broken"], experiment.settings.max_broken),
    }


def _front(experiment: Experiment) -> list[dict[str, Any]] | None:
    """The Pareto front (id, params, each objective's value) of a several-objective experiment, else ``None``.

    The values are under ``values``: an objective named ``id`` or ``params`` overwrote the trial's own.
    """
    from orchard.pareto import reported

    objectives = experiment.settings.objectives
    if objectives is None or len(objectives) < 2:
        return None
    return [{"id": t.id, "params": t.params, "values": {name: reported(t)[name] for name in objectives}}
            for t in experiment.pareto_front()]


def _infeasible_lines(infeasible: dict[str, Any] | None, indent: str) -> list[str]:
    if infeasible is None:
        return []
    return [f"{indent}{infeasible['count']} completed trial(s) break a constraint, so are never best nor on "
            f"the front (the latest, {infeasible['trial'][:12]}: {infeasible['reason']})"]


def _shown_best(objective: float, objectives: dict[str, str] | None) -> str:
    """The best objective as declared: ``accuracy=0.97`` for ``objectives={"accuracy": "max"}``, not -0.97."""
    from orchard.objectives import Shown

    if not objectives:
        return f"{objective:.6g}"
    shown = Shown.stored(objectives)
    return f"{shown.name}={shown.value(objective):.6g}"


def _front_lines(front: list[dict[str, Any]] | None, indent: str, shown: int = 5) -> list[str]:
    if front is None:
        return []
    plural = "" if len(front) == 1 else "s"
    lines = [f"{indent}{len(front)} trial{plural} on the Pareto front (exp.pareto_front())"]
    for entry in front[:shown]:
        values = format_params(entry["values"])
        lines.append(f"{indent}  {values} at {format_params(entry['params'])} (trial {entry['id'][:12]})")
    if len(front) > shown:
        lines.append(f"{indent}  ... and {len(front) - shown} more")
    return lines


def _rungs(experiment: Experiment, trials: list[Trial]) -> dict[str, Any] | None:
    """Trials per rung of the fidelity dimension (multi-fidelity experiments), else ``None``."""
    from orchard.fidelity import rung_counts

    found = experiment.space.fidelity
    if found is None:
        return None
    name, prior = found
    return {"dimension": name, "rungs": rung_counts(prior, name, trials)}


def _rung_lines(rungs: dict[str, Any] | None, indent: str) -> list[str]:
    from orchard.fidelity import format_rungs

    return [] if rungs is None else [f"{indent}{format_rungs(rungs['rungs'])}  (by {rungs['dimension']})"]


def _counts(counts: dict[str, int]) -> str:
    order = ("completed", "pruned", "broken", "reserved", "interrupted", "new")
    return ", ".join(f"{counts.get(k, 0)} {k}" for k in order)


def _speed(stats: dict[str, Any]) -> str:
    return f"{stats['trials_per_second']:.3g} trials/s over {format_age(stats['elapsed'])}"


def _status_lines(status: dict[str, Any]) -> list[str]:
    if "problem" in status:
        return [f"experiment {status['name']!r} ({status['storage']})", f"  problem: {status['problem']}"]
    counts = status["counts"]
    budget = f" of max_trials={status['max_trials']}" if status["max_trials"] is not None else ""
    if status["inserted_apart"]:
        budget += f" ({status['inserted_apart']} of the completed inserted apart from the budget)"
    lines = [
        f"experiment {status['name']!r} ({status['storage']})",
        "  trials:  " + _counts(counts) + budget,
    ]
    if status["broken_stop"] is not None:
        lines.append(f"  {status['broken_stop']['line']}")
    lines += _rung_lines(status["rungs"], "  rungs:   ")
    if status["best_objective"] is not None:
        lines.append(f"  best:    {_shown_best(status['best_objective'], status['objectives'])} at "
                     f"{format_params(status['best_params'])} "
                     f"(trial {status['best_trial'][:12]})")
    lines += _front_lines(status["pareto_front"], "  front:   ")
    lines += _infeasible_lines(status["infeasible"], "  infeasible: ")
    if status["stop"] is not None:
        lines.append(f"  stop:    {status['stop']['line']}")
    lines.append(f"  speed:   {_speed(status)}")
    lines.append(f"  workers: {len(status['workers'])} evaluating")
    for worker in status["workers"]:
        stale = "  LOST (stale heartbeat)" if worker["stale"] else ""
        devices = f"  devices {worker['devices']}" if worker.get("devices") else ""
        bound = "≥ " if worker["heartbeat_age_is_lower_bound"] else ""
        lines.append(f"    {one_line(str(worker['worker']))}  trial {worker['trial'][:12]}  heartbeat unchanged for "
                     f"{bound}{format_age(worker['heartbeat_age'])} (stamped {format_time(worker['heartbeat'])} "
                     f"by its clock){devices}{stale}")
    return lines


def _collect(args: argparse.Namespace, watches: dict[str, HeartbeatWatch] | None = None) -> list[dict[str, Any]]:
    """The status of the experiments asked for; ``watches`` (by experiment id) carries heartbeats seen before."""
    from orchard.experiment import Experiment

    watches = {} if watches is None else watches
    if args.name:
        experiment = open_experiment(args)
        return [experiment_status(experiment, watches.setdefault(experiment.id, HeartbeatWatch()))]
    if missing_storage_file(args) is not None:  # a read-only command creates nothing
        return []
    storage = open_storage(args)
    return [_status_or_problem(Experiment(storage, record), watches.setdefault(record.id, HeartbeatWatch()))
            for record in storage.list_experiments()]


def _status_or_problem(experiment: Experiment, watch: HeartbeatWatch) -> dict[str, Any]:
    """:func:`experiment_status`, or the problem of an experiment whose stored configuration is unusable.

    One such experiment (stored by an older release) made ``status`` of every other one fail.
    """
    from orchard.errors import ConfigurationError

    try:
        return experiment_status(experiment, watch)
    except ConfigurationError as err:
        return {"name": experiment.name, "storage": experiment.storage.redacted_uri, "problem": str(err)}


def _render(args: argparse.Namespace, statuses: list[dict[str, Any]]) -> str:
    if args.json:  # --watch: one document a line (JSON Lines), which `jq` and `while read` take one by one
        return strict_json(statuses[0] if args.name else statuses, indent=None if args.watch else 2)
    if not statuses:  # as list says it: a mistyped --storage is no empty storage
        missing = missing_storage_file(args)
        return "no experiments in " + (f"{missing} (the file does not exist)" if missing else "this storage")
    return "\n\n".join("\n".join(_status_lines(s)) for s in statuses)


def run_status(args: argparse.Namespace) -> int:
    """Print the status of one experiment (``-n``) or of all; ``--watch`` refreshes until Ctrl-C."""
    if args.interval is not None and not args.watch:  # was ignored: one report, then exit 0
        raise UsageError(f"--interval {args.interval:g} is the refresh period of --watch; add --watch "
                         f"(orchard status --watch --interval {args.interval:g}), or leave --interval out")
    interval = DEFAULT_INTERVAL if args.interval is None else args.interval
    if not args.watch:
        print(printable(_render(args, _collect(args))))
        return 0
    from orchard.errors import StorageUnavailableError

    in_place = sys.stdout.isatty()
    watches: dict[str, HeartbeatWatch] = {}
    shown = False
    try:
        while True:
            stamp = time.strftime("%H:%M:%S")
            try:
                text = printable(_render(args, _collect(args, watches)))
            except StorageUnavailableError as err:  # a restart or failover: the watch shows it and goes on
                if not shown:
                    raise  # never read: a wrong address, most likely
                print(f"orchard: storage unavailable at {stamp} ({err}); status --watch tries again every "
                      f"{interval:g} s", file=sys.stderr, flush=True)
                watches.clear()  # no heartbeat could land meanwhile: the ages start over
            else:
                shown = True
                trailer = "" if args.json else f"(updated {stamp}; Ctrl-C to stop)\n\n"  # JSON: broke `jq`
                sys.stdout.write((_CLEAR if in_place and not args.json else "") + f"{text}\n{trailer}")
                sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0  # stopping a watch is its normal end


# -- list and info ----------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    """Print one line per experiment: name, completed of budget, broken, running."""
    from orchard.experiment_config import applied_max_broken
    from orchard.stopping import broken_stop, stop_summary
    from orchard.trial import TrialStatus

    missing = missing_storage_file(args)
    if missing is not None:  # a read-only command creates nothing
        print("[]" if args.json else f"no experiments in {missing} (the file does not exist)")
        return 0
    storage = open_storage(args)
    rows: list[dict[str, Any]] = []
    for record in storage.list_experiments():
        counts = storage.count_trials(record.id)
        rows.append({"name": record.name, "created": record.created,
                     "max_trials": record.config.get("max_trials"),
                     "inserted_apart": storage.count_unbudgeted(record.id),
                     "counts": {status.value: counts[status] for status in TrialStatus},
                     # stopped: no budget left, whatever it says
                     "stopped": (stop_summary(record.config) or {}).get("fired"),
                     "broken_stop": broken_stop(counts[TrialStatus.BROKEN], applied_max_broken(record.config)),
                     "unusable": _unusable(record.config)})
    if args.json:
        print(strict_json(rows))
    elif not rows:
        print(f"no experiments in {storage.redacted_uri}")
    else:
        _print_rows(rows)
    return 0


def _unusable(config: dict[str, Any]) -> str | None:
    """Why ``hunt``, ``status`` and ``info`` refuse a stored configuration (another program's
    ``max_broken`` of 0, a space that is a list), or ``None``: ``list`` showed such an experiment
    as a sound one."""
    from orchard.errors import ConfigurationError
    from orchard.experiment_config import ExperimentConfig

    try:
        ExperimentConfig.from_dict(config)
    except (ConfigurationError, TypeError, ValueError) as err:
        return " ".join(str(err).split())
    return None


#: The widest name ``list`` pads its column to; a longer one has a line of its own, its counts on the next:
#: one name of 128 characters (300, stored by another program) padded every row of the listing to it.
NAME_COLUMN = 40


def _print_rows(rows: list[dict[str, Any]]) -> None:
    names = [one_line(row["name"]) for row in rows]  # as shown: an escaped control is 4 characters wide
    width = max((len(name) for name in names if len(name) <= NAME_COLUMN), default=0)
    for name, row in zip(names, rows):
        c, budget = row["counts"], row["max_trials"] or "-"
        inserted = f" ({row['inserted_apart']} inserted apart)" if row["inserted_apart"] else ""
        counts = printable(f"{c['completed']}/{budget} completed{inserted}  "
                           f"{c.get('pruned', 0)} pruned  {c['broken']} broken  "
                           f"{c['reserved']} running  {c['new'] + c['interrupted']} waiting"
                           + (f"  stopped by {row['stopped']['rule']}" if row["stopped"] else "")
                           + (f"  {row['broken_stop']['said']}" if row["broken_stop"] else "")
                           + (f"  unusable: {row['unusable']}" if row["unusable"] else ""))
        if len(name) > NAME_COLUMN:
            print(name)
            name = ""
        print(f"{name:<{width}}  {counts}")
    if any(row["unusable"] for row in rows):
        from orchard.experiment_config import kept_through_a_dump

        print(f"orchard: hunt, status and info refuse an unusable experiment; {kept_through_a_dump('NAME')}",
              file=sys.stderr)


def run_info(args: argparse.Namespace) -> int:
    """Print an experiment's space, algorithm, budget, config, best trial and stats (or one trial)."""
    from orchard.command import COMMAND_KEY, redacted
    from orchard.pareto import infeasible
    from orchard.stopping import broken_stop

    experiment = open_experiment(args)
    if getattr(args, "trial", None) is not None:  # '' too: an unset shell variable is not "no --trial"
        from orchard.cli._trial import trial_info

        return trial_info(experiment, args.trial, args.json)
    front = _front(experiment)
    best = experiment.best_trial if front is None else None
    record = experiment.storage.require_experiment(experiment.name)
    trials = experiment.fetch_trials()
    info_stats = experiment.stats_of(trials)
    info = {
        "name": experiment.name, "id": experiment.id, "storage": experiment.storage.redacted_uri,
        "created": record.created, "space": experiment.space.config(), "algorithm": experiment.algorithm,
        "config": {k: v for k, v in experiment.config.items()
                   if k not in ("space", "algorithm", "stop_state", "warm_start", COMMAND_KEY)},
        "command": redacted(command) if isinstance(command := experiment.config.get(COMMAND_KEY), str)
        else command,
        "warm_start": _warm_start(experiment),
        "best_trial": best.to_dict() if best else None, "pareto_front": front, "stats": info_stats,
        "rungs": _rungs(experiment, trials), "stop": info_stats["stop"],
        "infeasible": infeasible(trials, experiment.settings.constraints),
        "broken_stop": broken_stop(info_stats["counts"]["broken"], experiment.settings.max_broken),
    }
    if args.json:
        print(strict_json(info))
        return 0
    print(printable("\n".join(_info_lines(info))))
    return 0


def _warm_start(experiment: Experiment) -> list[dict[str, Any]] | None:
    """Which experiments warm-start this one, and how many of their trials it uses now."""
    import dataclasses

    from orchard.warm_start import source_uses

    if not experiment.settings.warm_start:
        return None
    uses = source_uses(experiment.space, experiment.settings.warm_start, experiment.storage,
                       experiment.settings.objectives, experiment.settings.constraints)
    return [dataclasses.asdict(use) for use in uses]


def _warm_start_line(uses: list[dict[str, Any]] | None) -> list[str]:
    if not uses:
        return []
    parts = []
    for use in uses:
        dropped = ", ".join([f"{n} outside {name}" for name, n in sorted(use["dropped"].items())]
                            + [f"{n} without {name}" for name, n in sorted(use["unmeasured"].items())])
        if use.get("unused"):  # "0 of 0 completed trials" read as an empty source, not a lost one
            dropped = f"gives nothing: {use['unused']}"
        parts.append(f"{use['source']} ({use['used']} of {use['completed']} completed trials"
                     + (f"; {dropped}" if dropped else "") + ")")
    return ["  warm start: " + ", ".join(parts)]


def _info_lines(info: dict[str, Any]) -> list[str]:
    lines = [f"experiment {info['name']!r} (id {info['id']}, {info['storage']})",
             f"  created:   {format_time(info['created'])}", "  space:"]
    lines += [f"    {name}: {prior}" for name, prior in info["space"].items()]
    lines.append(f"  algorithm: {json.dumps(info['algorithm'])}")
    if isinstance(info["command"], str):
        lines.append(f"  command:   {info['command']}")
    config = sorted(info["config"].items())
    lines.append("  config:    " + ", ".join(f"{k}={format_value(v)}" for k, v in config))
    lines += _warm_start_line(info.get("warm_start"))
    best = info["best_trial"]
    if best is not None:  # an evaluation inserted with its result has no worker: it read 'worker None'
        by = "inserted" if best.get("worker") is None else f"worker {one_line(str(best['worker']))}"
        lines.append(f"  best:      {_shown_best(best['objective'], info['config'].get('objectives'))} at "
                     f"{format_params(best['params'])} (trial {best['id'][:12]}, {by})")
    lines += _front_lines(info["pareto_front"], "  front:     ")
    lines += _infeasible_lines(info["infeasible"], "  infeasible: ")
    stats = info["stats"]
    lines.append("  trials:    " + _counts(stats["counts"]))
    if info["broken_stop"] is not None:
        lines.append(f"  {info['broken_stop']['line']}")
    lines += _rung_lines(info["rungs"], "  rungs:     ")
    if info["stop"] is not None:
        lines.append(f"  stop:      {info['stop']['line']}")
    lines.append(f"  speed:     {_speed(stats)}")
    return lines
