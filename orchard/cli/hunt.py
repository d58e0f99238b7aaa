"""``orchard hunt -n NAME [options] COMMAND…``: run a script as the trials of an experiment.

The first ``hunt`` on a name creates the experiment; every later one (another
terminal, another node, a SLURM array task) joins it as one more worker.
Settings are resolved by :class:`orchard.config.Settings`, in this order: the
flags, the ``--config`` file, ``ORCHARD_*`` variables, ``./orchard.yaml``,
``~/.config/orchard/config.yaml``, the defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchard.cli._args import GivenOnce, UsageError, add_common, add_name, format_params, refuse_in_process
from orchard.cli._output import print_stored
from orchard.terminal import printable

if TYPE_CHECKING:  # pragma: no cover
    from orchard.command import CommandTemplate
    from orchard.config import Settings
    from orchard.experiment import Experiment
    from orchard.storages import BaseStorage

__all__ = ["add_parser", "run"]

log = logging.getLogger(__name__)

#: The folder of the trial folders when none is given: ``DEFAULT_RUNS/NAME`` in the directory of the
#: ``hunt`` that creates the experiment (stored absolute).
DEFAULT_RUNS = "orchard-runs"
EXAMPLE = ("orchard hunt -n exp --max-trials 50 python train.py --lr~'loguniform(1e-5, 1)' "
           "--layers~'randint(1, 6)'")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hunt`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "hunt", help="run a script as trials of an experiment (one worker per hunt; join at will)",
        usage="orchard hunt -n NAME [options] COMMAND...",
        description="Run COMMAND once per trial. Tokens --name~'prior' define the search space and are "
                    f"replaced by each trial's value. Example: {EXAMPLE}",
    )
    add_name(parser, required=False)
    option = parser.add_argument
    option("--max-trials", metavar="N",
           help="the budget: how many completed trials the experiment ends with; it can be raised later "
                "(running workers go on to it), never lowered. Without one, workers run until stopped, the grid is exhausted, or "
                "--idle-timeout expires")
    option("--max-broken", metavar="N",
           help="stop when N trials are broken (default 3); it can be raised later (after a fix), "
                "never lowered")
    option("--max-attempts", metavar="N",
           help="break a trial after its reservation was lost N times to dead or frozen workers "
                "(default 3); it can be raised later, never lowered")
    option("--algorithm", metavar="ALGO",
           help="random (default), grid, bayes, asha, hyperband, nsga2, optuna, an installed plugin's name, or a "
                "YAML mapping of a name to options, such as '{bayes: {acq_func: EI, n_initial_points: 5}}'")
    option("--pruner", metavar="PRUNER",
           help="stop trials from the values scripts report each step (see ORCHARD_REPORT_PATH): none "
                "(default), median, percentile, asha, hyperband, threshold, patience, or a YAML mapping "
                "such as '{asha: {min_step: 2}}'")
    option("--objective", metavar="NAME:DIR", dest="objectives", action="append",
           help="one of several objectives, min or max (or minimize, maximize) (repeat: --objective "
                "error:min --objective latency_ms:min, or list them: error:min,latency_ms:min); the script "
                "then reports each by name in its results JSON")
    option("--constraint", metavar="EXPR", dest="constraints", action="append",
           help="a bound on a reported metric, 'NAME <= NUMBER' or 'NAME >= NUMBER' (repeatable); "
                "trials that break it are kept but never on the front")
    option("--stop", metavar="RULE=VALUE", action="append",
           help="stop reserving trials once a rule holds on the stored history (repeatable): target=0.1, "
                "patience=20 (with min_delta=0.001), max_cost=10 (the reported cost metric summed), "
                "max_time=2h (the trials' own evaluation times summed); stored with the experiment")
    option("--warm-start", metavar="EXP", dest="warm_start", action="append",
           help="tell the algorithm the completed trials of an earlier experiment first (repeatable): a name "
                "in this storage, STORAGE:NAME in another (mongodb://host/db:old, runs/old.pkl:old), or a YAML "
                "mapping '{experiment: old, fill: {batch: 32}}' for a dimension the old space lacks")
    option("--n-workers", metavar="K",
           help="run K workers on this machine through the executor (default 1: with the default "
                "executor, the one worker runs in the hunt process itself)")
    option("--executor", metavar="NAME",
           help="the executor of the K workers: joblib (default; alias loky), process, dask, thread, single")
    option("--executor-config", metavar="MAPPING",
           help="executor options as a YAML mapping, such as '{address: tcp://scheduler:8786}' for Dask "
                "(thread and single take none; with options, even one worker runs in the pool)")
    option("--trial-timeout", metavar="SECONDS",
           help="stop a trial's whole process group after this long; the trial is broken with reason timeout")
    option("--trial-memory-limit", metavar="SIZE",
           help="kill a trial whose process tree's resident memory passes SIZE (e.g. 4GB); reason memory")
    option("--gpus", metavar="IDS",
           help="devices dealt to the local workers as CUDA_VISIBLE_DEVICES, e.g. 0,1 (default: none set)")
    option("--gpus-per-worker", metavar="N", help="devices per worker (default 1)")
    option("--heartbeat", metavar="SECONDS",
           help="seconds between a worker's heartbeats (default 30); a trial whose heartbeat stands still "
                "for 3 x this is lost. Fixed when the experiment is created: a joiner gives the same or none")
    option("--idle-timeout", metavar="SECONDS",
           help="a worker exits after this long with nothing to do")
    option("--working-dir", metavar="DIR",
           help="the folder of the per-trial folders (default ./orchard-runs/NAME in the directory of the hunt "
                "that creates the experiment); the folder the experiment is created with is stored, absolute, "
                "and is the default of later workers, wherever they start")
    option("--config", metavar="FILE", action=GivenOnce,
           help="a YAML file of settings, which may also hold name and space")
    option("--seed", metavar="SEED",
           help="seed of the algorithm (an integer >= 0), fixed when the experiment is created: a joiner "
                "gives the same or none")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND",
                        help="the command to run for each trial; its --name~'prior' tokens define the space")
    add_common(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Create or join the experiment and work on it until there is nothing left to do.

    Returns:
        0 when the budget is met (or was already met).

    Raises:
        ExperimentBrokenError: ``max_broken`` trials broke.
        ConfigurationError: bad options, priors or command.
    """
    from orchard.config import Settings
    from orchard.interruption import interruptible

    with interruptible():  # SIGTERM (kill, scancel) stops the workers and releases trials as Ctrl-C does
        return _hunt(args, Settings(flags=vars(args), config_file=args.config))


def _check_stop_is_no_command(values: list[str] | None) -> None:
    """``--stop python obj.py`` took ``python`` as the stopping rule and ``obj.py`` as the command."""
    import shutil

    for value in values or ():
        if "=" in value or value.lstrip().startswith("{"):
            continue
        if shutil.which(value) or os.path.isfile(value):  # (a folder named as a rule is not a command)
            raise UsageError(f"--stop {value}: {value!r} is the start of the command, taken as the stopping "
                             f"rule; --stop needs a rule (RULE=VALUE) before the command, e.g. "
                             f"--stop target=0.1 {value} ...")


def _hunt(args: argparse.Namespace, settings: Settings) -> int:
    from orchard.naming import check_experiment_name
    from orchard.storages import get_storage

    _check_stop_is_no_command(args.stop)
    settings.check()  # every bad value is refused before anything is stored
    name = settings.get("name")
    tokens = list(args.command)
    if not name:
        given = next((token for token in tokens[1:] if token.split("=", 1)[0] in ("-n", "--name")), None)
        late = "" if given is None else (f"; the {given!r} after the command is passed to the script: put "
                                         "hunt's options before the command")
        raise UsageError(f"hunt needs an experiment name: -n NAME (or name: in --config){late}")
    check_experiment_name(name)
    if tokens[:1] == ["--"]:
        tokens = tokens[1:]
    template = _template(tokens, settings.get("space"), args.config)
    storage = get_storage(settings.get("storage"))
    # it printed the best trial, and every trial was gone at exit
    refuse_in_process(storage, "every trial hunt runs", "nothing was run")
    template = _complete_space(template, storage, name)
    _check_runnable(storage, name)
    _check_capacity(storage, name, settings)
    experiment = _experiment(name, template, storage, settings)
    _compare_command(experiment, template)
    if _nothing_to_do(experiment, settings):
        return 0
    return _work(experiment, template, settings)


def _template(tokens: list[str], file_space: Mapping[str, str] | None, config_file: str | None) -> CommandTemplate:
    from orchard.command import CommandTemplate, relative_files, resolve_program
    from orchard.errors import ConfigurationError

    template = CommandTemplate.parse(tokens)
    if template.slots[0].dimension is not None:
        raise ConfigurationError(f"the command starts with the prior {tokens[0]!r}; start it with the "
                                 f"program to run, e.g. {EXAMPLE}")
    if file_space:
        if not isinstance(file_space, Mapping):
            raise ConfigurationError("space in the config file must be a mapping of names to priors")
        _check_file_space(template, file_space, config_file)
        template = template.with_dimensions(file_space)
    program, script = resolve_program(tokens)
    template = template.with_program(program, script)
    for token, path in relative_files(template, os.getcwd()):
        log.warning("the command names %r, a file of %s, by a relative path, but each trial runs in a folder "
                    "of its own, where that path finds nothing: give it absolute (%s)",
                    token, os.getcwd(), path)
    for token in tokens[1:]:
        if token.split("=", 1)[0] in _HUNT_ONLY:
            log.warning("%r comes after the command, so it is passed to the script, not to hunt: put hunt's "
                        "options before the command", token)
    return template


#: Options of hunt that scripts hardly have: given after the command, they were meant for hunt.
_HUNT_ONLY = frozenset({"--max-trials", "--max-broken", "--max-attempts", "--n-workers", "--executor-config",
                        "--trial-timeout", "--trial-memory-limit", "--idle-timeout", "--warm-start",
                        "--gpus-per-worker"})


def _check_file_space(template: CommandTemplate, file_space: Mapping[str, str], config_file: str | None) -> None:
    """Refuse a bad dimension of the ``--config`` space naming the file, and one the command gives otherwise.

    The command's prior was used and the file's dropped without a word.
    """
    from orchard.errors import SpaceError
    from orchard.space import Space

    where = f"the space of config file {config_file}" if config_file else "the space of the config file"
    try:
        given = Space.from_config(file_space)
    except SpaceError as err:
        raise SpaceError(f"{err} (in {where})") from None
    both = {name: template.space[name] for name in given if name in template.space}
    if not both:  # the command holds none of the file's dimensions: nothing to compare
        return
    command = Space.from_config(both)
    for name in command:
        if command[name] != given[name]:
            raise SpaceError(f"dimension {name!r} is {command[name]} in the command but {given[name]} in {where}; "
                             "define it in one place")


def _complete_space(template: CommandTemplate, storage: BaseStorage, name: str) -> CommandTemplate:
    """Without priors in the command, join the stored experiment and pass all its dimensions.

    A stored configuration Orchard refuses (a space another program wrote as text) is named as such.
    """
    from orchard.errors import ConfigurationError
    from orchard.experiment import Experiment

    if template.space:
        return template
    record = storage.get_experiment(name)
    if record is None:
        unnamed = template.unnamed_prior()
        found = "" if unnamed is None else (f" (token {unnamed!r} is a prior with no name: write it as one "
                                            f"token --name~{unnamed!r})")
        raise ConfigurationError(
            f"the command defines no dimension{found} and experiment {name!r} does not exist in "
            f"{storage.redacted_uri}; mark hyperparameters as --name~'prior', e.g. {EXAMPLE}"
        )
    return template.with_dimensions(Experiment(storage, record).space.config())


def _check_runnable(storage: BaseStorage, name: str) -> None:
    """Refuse, before a raised ``--max-trials`` is stored, a stored experiment no worker here can run.

    Its algorithm is a plugin not installed here: status and info read such an experiment, but
    the workers refuse it, and a hunt that failed so had already stored the budget it was given.
    """
    from orchard.experiment import Experiment
    from orchard.experiment_config import WorkerSettings

    record = storage.get_experiment(name)
    if record is not None:
        WorkerSettings.for_experiment(Experiment(storage, record).settings)


def _check_capacity(storage: BaseStorage, name: str, settings: Settings) -> None:
    """Refuse, before the experiment is stored, more local workers than this machine holds, or executor
    options that the executor would not use.

    Only the workers :func:`_work` starts count: no more than the budget.
    """
    from orchard.errors import ConfigurationError
    from orchard.executors import check_executor_config
    from orchard.executors.capacity import check_capacity, counted_as

    budget = settings.get("max_trials", use_default=False)
    if budget is None and (record := storage.get_experiment(name)) is not None:
        budget = record.config.get("max_trials")
    n_workers = settings.get("n_workers")
    config = settings.get("executor_config")
    try:  # --executor thread dropped them without a word, wherever they were set
        check_executor_config(settings.get("executor"), config)
    except ConfigurationError as err:
        raise ConfigurationError(f"{err} (executor_config from {settings.source('executor_config')})") from None
    started = min(n_workers, budget) if budget else n_workers
    if settings.get("executor") == "single" and started > 1:  # refused by the executor: the experiment stored
        raise ConfigurationError(f"executor 'single' (from {settings.source('executor')}) runs one worker in "
                                 f"the hunt process, not {started} (n_workers from "
                                 f"{settings.source('n_workers')}); use --executor thread or joblib for several, "
                                 "or give one worker")
    executor = counted_as(settings.get("executor"), config if isinstance(config, Mapping) else {})
    check_capacity(executor, started)


def _experiment(name: str, template: CommandTemplate, storage: BaseStorage, settings: Settings) -> Experiment:
    from orchard.experiment import build_experiment

    def given(key: str) -> Any:  # unset stays unset: a joiner keeps the stored value
        return settings.get(key, use_default=False)

    # The default folder is stored (absolute) when the experiment is created, like a given one: hunts
    # started later from other directories then find the same trial folders and checkpoints.
    working_dir = given("working_dir") or _default_runs(name)
    if given("working_dir"):
        _make_folder(os.path.abspath(working_dir), name)  # before anything is stored with it

    new = storage.get_experiment(name) is None
    with settings.naming_conflicts({}):
        experiment = build_experiment(
            name, space=template.space, algorithm=given("algorithm"),
            storage=storage, max_trials=given("max_trials"), max_broken=given("max_broken"),
            max_attempts=given("max_attempts"), heartbeat=given("heartbeat"), seed=given("seed"),
            working_dir=working_dir, pruner=given("pruner"),
            objectives=given("objectives"), constraints=given("constraints"), stop=given("stop"),
            warm_start=given("warm_start"),
        )
    if new:
        _warn_of_similar_names(storage, name)
    return experiment


def _compare_command(experiment: Experiment, template: CommandTemplate) -> None:
    """Store the command of an experiment's first hunt; warn when a hunt joins it with another command.

    Hunts running another script, or the same one with other fixed arguments (``--epochs 10``
    against ``--epochs 20``), put results into one history that cannot be compared: said, not refused,
    since a node may run its own copy of the script or pass its own device on purpose.
    """
    from orchard.command import COMMAND_KEY, redacted

    shown = template.shown()
    storage = experiment.storage
    if storage.swap_experiment(experiment.id, COMMAND_KEY, None, shown):
        return
    stored = storage.experiment(experiment.id).config.get(COMMAND_KEY)
    if isinstance(stored, str) and not template.runs_like(stored):
        log.warning("experiment %r was first hunted with `%s`, and this hunt runs `%s`: both go into one "
                    "history; if their results are not comparable, stop this hunt and use another -n",
                    experiment.name, redacted(stored), shown)


def _warn_of_similar_names(storage: BaseStorage, name: str) -> None:
    """Say that a new experiment's name is close to a stored one: a mistyped -n creates an experiment."""
    similar = [record.name for record in storage.list_experiments() if _mistyped(name, record.name)]
    if similar:
        log.warning("created experiment %r in %s, which also holds %s: to join one of those instead, stop "
                    "this hunt and check -n", name, storage.redacted_uri, ", ".join(map(repr, similar)))


def _mistyped(name: str, other: str) -> bool:
    """Whether ``name`` looks like ``other`` mistyped: another case or separator, or one letter wrong.

    Names of a numbered series (``run-1``, ``run-2``, ``lr-search-v2``) are not typos of each other.
    """
    def folded(text: str) -> str:
        return re.sub(r"[-_.]", "", text.lower())

    if name == other or re.sub(r"\d", "", name) == re.sub(r"\d", "", other):
        return False
    if folded(name) == folded(other):
        return True
    short, long = sorted((name, other), key=len)
    if len(short) < 5 or len(long) - len(short) > 1:
        return False
    if len(short) < len(long):  # one letter left out
        return any(long[:i] + long[i + 1:] == short for i in range(len(long)))
    wrong = [i for i in range(len(name)) if name[i] != other[i]]
    swapped = len(wrong) == 2 and wrong[1] == wrong[0] + 1 and name[wrong[0]] == other[wrong[1]] \
        and name[wrong[1]] == other[wrong[0]]
    return len(wrong) == 1 or swapped


def _default_runs(name: str) -> str:
    """``./orchard-runs/NAME``, absolute."""
    from orchard.naming import folder_in

    return os.path.abspath(folder_in(DEFAULT_RUNS, name))


def _make_folder(path: str, name: str) -> None:
    """Create ``path``, the folder of the trial folders, or say in one line why this machine cannot."""
    from orchard.errors import ConfigurationError

    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:  # every trial would break on it, and the experiment with them
        raise ConfigurationError(
            f"cannot create the folder of experiment {name!r}'s trials, {path}: {err.strerror or err}; "
            "give --working-dir with a folder this machine can write") from err


def _nothing_to_do(experiment: Experiment, settings: Settings) -> bool:
    """Say so when the budget is met or a stopping rule stopped the experiment: no worker starts.

    A budget given to raise a stopped one was not stored, and the warning saying so gave the remedy: not
    said twice.
    """
    from orchard.recording import RAISABLE, nothing_to_do

    asked = {key: settings.get(key, use_default=False) for key in RAISABLE}
    config = experiment.storage.experiment(experiment.id).config
    said = nothing_to_do(experiment.storage, experiment.id, experiment.name, experiment.max_trials, config,
                         asked, "Raise --max-trials to run more")
    if said is not None:
        print(printable(said))
    return said is not None


def _work(experiment: Experiment, template: CommandTemplate, settings: Settings) -> int:
    from orchard.executors.capacity import workers_to_start
    from orchard.objectives import Shown
    from orchard.recording import budget_to_give
    from orchard.resources import parse_memory
    from orchard.runner import ScriptRunner
    from orchard.stopping import stop_summary

    base = os.path.abspath(settings.get("working_dir") or experiment.settings.working_dir
                           or _default_runs(experiment.name))  # None: stored by an older release
    _make_folder(base, experiment.name)
    stored = experiment.settings.working_dir
    runner = ScriptRunner(template, experiment.name, base, settings.get("trial_timeout"),
                          memory_limit=parse_memory(settings.get("trial_memory_limit")),
                          parent_dirs=(os.path.abspath(stored),) if stored else ())
    def to_give() -> int | None:
        return budget_to_give(experiment.storage, experiment.id, experiment.max_trials)

    n_workers = workers_to_start(settings.get("n_workers"), to_give, experiment.name)  # workon's own rule
    executor = settings.get("executor", use_default=False)
    if n_workers == 1 and executor in ("joblib", "loky") and not settings.get("executor_config"):
        executor = "single"  # one worker: run it here, no process pool to start (nor options to give it)
    # an interruption raises Interrupted, saying what was released; a worker that could not run to its end
    # while the others finished the experiment (out of open files) is a warning of workon's, and exit 0
    stats = experiment.workon(
        runner, n_workers=n_workers, executor=executor, idle_timeout=settings.get("idle_timeout"),
        executor_config=settings.get("executor_config"),
        gpus=settings.get("gpus"), gpus_per_worker=settings.get("gpus_per_worker"),
    )
    counts = stats["counts"]
    best = ""
    objectives = experiment.settings.objectives
    if objectives is not None and len(objectives) > 1:
        front = len(experiment.pareto_front())
        best = f"; {front} trial{'' if front == 1 else 's'} on the Pareto front (exp.pareto_front())"
    elif stats["best_objective"] is not None:  # as the objective returned it: best acc 0.97, not -0.97
        shown = Shown.of(objectives)
        value = shown.value(stats["best_objective"])
        best = f"; best {shown.name} {value:.6g} at {format_params(stats['best_params'])}"
    pruned = f", {counts['pruned']} pruned" if counts["pruned"] else ""  # they hold budget too
    print_stored(printable(f"experiment {experiment.name!r}: {counts['completed']} completed{pruned}, "
                    f"{counts['broken']} broken{best}"))
    stopping = stop_summary(experiment.storage.experiment(experiment.id).config)
    if stopping is not None and stopping["fired"] is not None:
        print(printable(f"experiment {experiment.name!r}: {stopping['line']}"))
    return 0  # a space smaller than max_trials: workon warned (the space is exhausted, how much was not run)

