"""The worker processes tests/test_faults.py starts, kills, freezes and runs under skewed clocks.

Run as ``python -m tests.fault_workers STORAGE NAME OBJECTIVE [options]`` from the
repository root: it joins (or creates) the experiment, runs ``workon`` with one
in-process worker, logs to stderr and prints the experiment's stats as JSON on
its last stdout line. The objective's files (markers, logs) live in ``--dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orchard
from orchard.objective import Outcome
from orchard.trial import Trial

#: The point of the poison trial: evaluating it SIGKILLs the worker process.
POISON = 0.5
_DIR_VAR = "ORCHARD_FAULT_DIR"


def _dir() -> Path:
    return Path(os.environ[_DIR_VAR])


def waits_for_go(x: float) -> float:
    """Says it started, then finishes only once the test created ``go`` (so it ends when told)."""
    (_dir() / "started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (_dir() / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return x


def poison(x: float) -> float:
    """Kills its own worker process on the poison point (as a segfault or the OOM killer would)."""
    if x == POISON:
        with open(_dir() / "poisoned", "a") as log:
            log.write(f"{os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return x


def steady(x: float) -> float:
    """Takes longer than a heartbeat, so leases are judged while trials run."""
    time.sleep(1.5)
    return x


def outlasting(x: float) -> float:
    """Takes longer than a lease of a 1 s heartbeat (3 s): only heartbeats keep its trial reserved."""
    time.sleep(3.5)
    return x


OBJECTIVES: dict[str, Callable[[float], float]] = {"waits_for_go": waits_for_go, "poison": poison,
                                                   "steady": steady, "outlasting": outlasting}
SCRIPT = "script"  # the objective that runs tests/chaos_script.py as a hunt would


def script_worker(args: argparse.Namespace) -> dict[str, object]:
    """One worker evaluating trials by running chaos_script.py; reports each result it wrote.

    After each result the storage accepted, appends ``TRIAL_ID OBJECTIVE PID STATUS`` to
    ``DIR/reported.log``: the results this worker (process ``PID``) says were written.
    With ``--pruner`` (JSON) the experiment has that pruner and the script reports
    ``--steps`` steps, logged to ``DIR/reports.log`` (see chaos_script.py).
    """
    from orchard.runner import CommandTemplate, ScriptRunner, resolve_program
    from orchard.worker import Worker, WorkerSettings

    tokens = [sys.executable, str(Path(__file__).with_name("chaos_script.py")), "--x~uniform(0, 1)"]
    program, script = resolve_program(tokens)
    template = CommandTemplate.parse(tokens).with_program(program, script)
    exp = orchard.build_experiment(args.name, space=template.space, algorithm="random", storage=args.storage,
                                   max_trials=args.max_trials, heartbeat=args.heartbeat,
                                   max_broken=args.max_broken, pruner=json.loads(args.pruner or "null"))
    os.environ["CHAOS_ENDS"] = str(Path(args.dir) / "ends.log")
    if args.pruner:
        os.environ.update(CHAOS_REPORTS=str(Path(args.dir) / "reports.log"), CHAOS_STEPS=str(args.steps))
    runner = ScriptRunner(template, exp.name, os.path.join(args.dir, "runs"))
    settings = WorkerSettings(space=exp.space, algorithm=exp.algorithm, max_trials=exp.max_trials,
                              max_broken=args.max_broken, heartbeat=args.heartbeat,
                              pruner=exp.settings.pruner)

    def reported(trial: Trial, outcome: Outcome) -> None:
        with open(Path(args.dir) / "reported.log", "a") as log:
            log.write(f"{trial.id} {trial.objective!r} {os.getpid()} {trial.status.value}\n")

    report = Worker(exp.storage, exp.id, settings, runner, on_outcome=reported).run()
    return dataclasses.asdict(report)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("storage")
    parser.add_argument("name")
    parser.add_argument("objective", choices=sorted([*OBJECTIVES, SCRIPT]))
    parser.add_argument("--dir", required=True)
    parser.add_argument("--max-trials", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--max-broken", type=int, default=3)
    parser.add_argument("--pruner", help="the script's pruner (JSON); it reports --steps steps")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--log-driver-errors", action="store_true",
                        help="log each MongoDB call the driver gave up on (a DEBUG line of the client)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(created).3f {os.getpid()} %(name)s %(levelname)s %(message)s")
    if args.log_driver_errors:
        logging.getLogger("orchard.storages.mongodb.client").setLevel(logging.DEBUG)
    os.environ[_DIR_VAR] = args.dir
    if args.objective == SCRIPT:
        print(json.dumps(script_worker(args)))
        return 0
    exp = orchard.build_experiment(args.name, space={"x": "uniform(0, 1)"}, algorithm="random",
                                   storage=args.storage, max_trials=args.max_trials,
                                   heartbeat=args.heartbeat, max_broken=args.max_broken)
    stats = exp.workon(OBJECTIVES[args.objective], n_workers=1, executor="single", progress=False)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
