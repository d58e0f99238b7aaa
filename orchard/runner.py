"""Running a user's script for ``orchard hunt``: one trial's folder, process group and result.

The command is a :class:`~orchard.command.CommandTemplate` (the search space in
its ``--name~'prior'`` tokens; see :mod:`orchard.command`).

Each trial runs in its own folder ``WORKING_DIR/TRIAL_ID`` (relative paths in
the command resolve there; the script itself is made absolute), in a new
process group, with ``ORCHARD_EXPERIMENT_NAME``, ``ORCHARD_TRIAL_ID``,
``ORCHARD_WORKING_DIR`` and ``ORCHARD_RESULTS_PATH`` set, and for a trial promoted
by ``asha``/``hyperband`` also ``ORCHARD_PARENT_TRIAL_ID`` and
``ORCHARD_PARENT_WORKING_DIR`` (the parent's folder, where it left its checkpoint). Its stdout and stderr
go to ``stdout.log`` and ``stderr.log`` in that folder. The result is the JSON
the script wrote to ``ORCHARD_RESULTS_PATH`` (see :mod:`orchard.report`); its
reports go to ``ORCHARD_REPORT_PATH``, a file of that run alone.
A timeout or an interruption stops the group (SIGTERM, then SIGKILL after a
grace period); a memory limit (the tree's resident memory) or a cancellation
(the worker lost the trial) kills it at once (:mod:`orchard.isolation`); once
the command has exited, whatever it left running in its group is killed. Each
of these also reaches the processes that left the group but inherited the run's
``ORCHARD_TRIAL_RUN`` (:mod:`orchard.strays`); before the command starts, what
an earlier attempt left running in the trial's folder is killed. POSIX only:
process groups are stopped with ``os.killpg``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import time
import uuid
from typing import Any

from orchard import suspension
from orchard.command import CommandTemplate, resolve_program
from orchard.errors import ConfigurationError, ExecutorError
from orchard.interruption import deferred
from orchard.isolation import (
    GroupWatch,
    Stopped,
    death_hook,
    hold_group,
    kill_tree,
    signal_group,
    stop_group,
)
from orchard.naming import folder_in
from orchard.objective import MAX_RESULT_DEPTH, MAX_RESULTS_BYTES, Outcome, TrialEvaluator, interpret_result
from orchard.report import RESULTS_ENV, each_key_once, open_regular, read_at_most
from orchard.resources import format_bytes, no_room
from orchard.storages._uri import redact
from orchard.strays import RUN_ENV, WORKER_ENV, kill_earlier_attempts
from orchard.trial import Trial
from orchard.verdicts import ReportFollower, current_judge

__all__ = ["CommandTemplate", "ScriptRunner", "resolve_program"]  # the template re-exported from orchard.command

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
#: Bytes of a results file read at most: the results a trial may hold, with room for indentation.
#: A larger file (an array dumped by mistake, a link to /dev/zero) is refused, not read into memory.
MAX_RESULTS_FILE_BYTES = 16 * MAX_RESULTS_BYTES
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
STDERR_TAIL_LINES = 20
#: Seconds a worker waits, after its script was ended by SIGTERM, SIGINT or SIGHUP from elsewhere, for the
#: same signal to reach the worker before it records the trial broken. A scheduler stopping a job (scancel,
#: a time limit, systemd) signals every process of it at once, the script often first: its trial is given
#: back, not broken (max_broken of them broke the experiment of every worker).
STOP_SIGNAL_WAIT = 1.0
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
_STOP_LOOK = 0.01  # seconds between two looks for a stop request meanwhile
#: The report and verdict files of one run of a trial's script (``run``: its token), removed when it ends.
REPORTS_FILE = "reports-{run}.jsonl"
VERDICT_FILE = "verdict-{run}.json"


# -- running one trial --------------------------------------------------------------


@dataclasses.dataclass
class ScriptRunner(TrialEvaluator):
    """Evaluates trials by running the command; picklable, so executors can ship it.

    Args:
        template: the parsed command (its program already made absolute).
        experiment: the experiment's name (``{exp.name}``, ``ORCHARD_EXPERIMENT_NAME``).
        working_dir: absolute folder under which each trial gets ``TRIAL_ID/``.
        timeout: seconds after which the script's process group is stopped.
        grace: seconds between SIGTERM and SIGKILL when stopping a script.
        memory_limit: bytes of resident memory (the script's whole process tree)
            past which its process group is killed.
        parent_dirs: more absolute folders a promoted trial's parent may have run under (the
            experiment's own ``working_dir`` when this worker was given another), after ``working_dir``.
    """

    template: CommandTemplate
    experiment: str
    working_dir: str
    timeout: float | None = None
    grace: float = 5.0
    memory_limit: int | None = None
    parent_dirs: tuple[str, ...] = ()
    _running: dict[str, tuple[subprocess.Popen[bytes], str]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False)
    _cancelled: set[str] = dataclasses.field(default_factory=set, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Ship the settings only: running processes belong to the process that started them."""
        return {**self.__dict__, "_running": {}, "_cancelled": set()}

    def __call__(self, trial: Trial) -> Outcome:
        """Run the command for ``trial`` and return its outcome (never raises for script failures).

        ``KeyboardInterrupt`` stops the script's process group and propagates, so the
        worker releases the trial.
        """
        folder = os.path.join(self.working_dir, trial.id)
        results = os.path.join(folder, RESULTS_FILE)
        try:
            folder = folder_in(self.working_dir, trial.id)  # a stored id never leaves working_dir
            os.makedirs(folder, exist_ok=True)
            if os.path.exists(results):
                os.remove(results)  # left by an earlier, interrupted attempt
            parent_folder = "" if trial.parent is None else self._parent_folder(trial.parent)
        except (OSError, ConfigurationError) as err:
            return Outcome.failure(type(err).__name__, f"cannot prepare trial folder {folder}: {err}",
                                   reason="setup")
        argv = self.template.render(trial.params, {
            "trial.id": trial.id, "trial.working_dir": folder, "exp.name": self.experiment,
            "trial.parent_working_dir": parent_folder,
        })
        env = {**os.environ, "ORCHARD_EXPERIMENT_NAME": self.experiment, "ORCHARD_TRIAL_ID": trial.id,
               "ORCHARD_WORKING_DIR": folder, RESULTS_ENV: results}
        for key in ("ORCHARD_PARENT_TRIAL_ID", "ORCHARD_PARENT_WORKING_DIR"):
            env.pop(key, None)  # never inherited from a hunt that itself runs inside a trial
        if trial.parent is not None:
            env.update(ORCHARD_PARENT_TRIAL_ID=trial.parent, ORCHARD_PARENT_WORKING_DIR=parent_folder)
        # files of this run's own: a run that lost the trial (its worker frozen past the lease) and wakes
        # beside the next run in this folder reports into, and reads verdicts from, its own files only
        run = uuid.uuid4().hex[:12]
        env[RUN_ENV] = run  # inherited by every process it starts: those that leave its group are stopped too
        env[WORKER_ENV] = str(os.getpid())  # what it leaves running once this process is gone is killed
        reports = (os.path.join(folder, REPORTS_FILE.format(run=run)),
                   os.path.join(folder, VERDICT_FILE.format(run=run)))
        judging = current_judge()  # the experiment's declared objectives: what the script's bare numbers mean
        env.update(ReportFollower.environment(*reports, trial.id, None if judging is None else judging[0].objectives))
        try:
            ReportFollower.prepare(*reports)
            left = kill_earlier_attempts(folder)
        except OSError as error:
            raise no_room(error) from None  # no file left to start it: the trial is given back
        if left:
            log.warning("trial %s: killed %d process(es) an earlier attempt left running in %s (its worker "
                        "was killed outright)", trial.id, left, folder)
        log.debug("trial %s: running %s in %s", trial.id, [redact(arg) for arg in argv], folder)
        try:
            returncode, stopped = self._run(trial.id, argv, folder, env, reports, run)
        finally:
            for path in reports:
                with contextlib.suppress(OSError):
                    os.remove(path)
        outcome = returncode if isinstance(returncode, Outcome) else _outcome(folder, returncode, stopped)
        if outcome.error is not None:
            log.debug("trial %s broken: %s", trial.id, outcome.error["message"])
        return outcome

    def _parent_folder(self, parent: str) -> str:
        """The parent's folder: under this worker's ``working_dir``, else the first of :attr:`parent_dirs`
        that holds it (the parent ran on a worker with another ``--working-dir``)."""
        folders = [folder_in(base, parent) for base in (self.working_dir, *self.parent_dirs)]
        return next((folder for folder in folders if os.path.isdir(folder)), folders[0])

    def cancel(self, trial: Trial) -> bool:
        """Kill ``trial``'s script, its whole process group at once (the worker lost the trial)."""
        self._cancelled.add(trial.id)
        running = self._running.get(trial.id)
        if running is not None:
            kill_tree(running[0].pid, run=running[1])
        return True  # a script not started yet is killed as it starts

    def hold(self, trial: Trial, held: bool) -> bool:
        """Pause or resume ``trial``'s script, its whole process group (the lease is in doubt)."""
        running = self._running.get(trial.id)
        if running is None:
            return False  # not started yet, or over
        hold_group(running[0].pid, held, running[1])
        return True

    def _run(self, trial_id: str, argv: list[str], folder: str, env: dict[str, str],
             reports: tuple[str, str], run: str) -> tuple[int | Outcome, Outcome | None]:
        """Run the script; return its exit code and, if Orchard stopped it, the failure why."""
        self._cancelled.discard(trial_id)
        judging = current_judge()
        with open(os.path.join(folder, STDOUT_FILE), "wb") as out, \
                open(os.path.join(folder, STDERR_FILE), "wb") as err, \
                contextlib.ExitStack() as following:
            started: list[subprocess.Popen[bytes]] = []
            try:
                # an interruption handled in fork's at-fork hooks would be dropped there: raised once started;
                # a Ctrl-Z as it starts, once its group is followed: it pauses the script with the worker
                with suspension.starting(), deferred():
                    # dies with this process: a SIGKILLed hunt left its script running, and after the lease
                    # a second attempt of the trial ran beside it
                    started.append(subprocess.Popen(
                        argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                        start_new_session=True, preexec_fn=death_hook()))  # noqa: PLW1509 - no import or dlopen
                    following.enter_context(suspension.following(started[0].pid, run))
            except OSError as error:
                if isinstance(room := no_room(error), ExecutorError):  # not the script's fault: given back
                    raise room from None
                return Outcome.failure("OSError", f"cannot start {argv[0]!r}: {error}", reason="start"), None
            except BaseException:  # interrupted as it started: it has done nothing yet
                for proc in started:
                    kill_tree(proc.pid, run=run)
                    proc.wait()
                raise
            proc = started[0]
            self._running[trial_id] = (proc, run)
            if trial_id in self._cancelled:  # the reservation was lost before the script started
                kill_tree(proc.pid, run=run)
            if judging is not None:  # the script's reports are stored and judged while it runs
                following.enter_context(ReportFollower(
                    judging[0], trial_id, *reports, grace=self.grace,
                    stop=lambda: stop_group(proc.pid, self.grace, lambda grace: _wait(proc, grace), run)))
            watch = GroupWatch(proc.pid, self.timeout, self.memory_limit, self.grace, run)
            try:
                returncode = proc.wait()
            except BaseException:  # Ctrl-C (KeyboardInterrupt) or SIGTERM: stop the script first
                stop_group(proc.pid, self.grace, lambda grace: _wait(proc, grace), run)
                proc.wait()
                raise
            finally:
                watch.stop()
                self._running.pop(trial_id, None)
            signal_group(proc.pid, signal.SIGKILL, run)  # what it left running ends with its trial, in its group
            # or out of it
            if trial_id not in self._cancelled and watch.stopped is None and _stop_signal(returncode) \
                    and (judging is None or judging[0].verdict_of(trial_id) is None):
                self._await_stop(trial_id)
            if trial_id in self._cancelled:
                return returncode, Outcome.failure(
                    "Cancelled", "the script was killed because the worker lost its reservation",
                    reason="cancelled")
            return returncode, None if watch.stopped is None else self._stopped(watch.stopped)

    def _await_stop(self, trial_id: str) -> None:
        """Wait :data:`STOP_SIGNAL_WAIT` for this worker to be stopped as its script was.

        A signal to a worker in its process's main thread raises here; a worker running as a thread is
        stopped by a request, which cancels the trial: either way the trial is given back, not broken.
        """
        deadline = time.monotonic() + STOP_SIGNAL_WAIT
        while trial_id not in self._cancelled and time.monotonic() < deadline:
            time.sleep(_STOP_LOOK)

    def _stopped(self, stopped: Stopped) -> Outcome:
        if stopped.reason == "memory":
            message, details = stopped.memory_failure("the script's process tree")
            return Outcome.failure("MemoryError", message, **details)
        return Outcome.failure(
            "TimeoutError", f"script ran longer than --trial-timeout={self.timeout:g} s; "
            "its process group was killed", reason="timeout")


def _stop_signal(returncode: int) -> bool:
    """Whether the script was ended by a signal that stops jobs (directly, or as a shell's code 128 + N)."""
    return -returncode in _STOP_SIGNALS or returncode - 128 in _STOP_SIGNALS


def _wait(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``proc`` to exit; return whether it did."""
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


# -- reading the outcome -------------------------------------------------------------


def _outcome(folder: str, returncode: int, stopped: Outcome | None) -> Outcome:
    stderr = _tail(os.path.join(folder, STDERR_FILE))
    last = stderr.strip().splitlines()[-1][:200] if stderr.strip() else ""
    hint = f" (last stderr line: {last})" if last else f"; see {os.path.join(folder, STDERR_FILE)}"
    if stopped is not None and stopped.error is not None:  # timeout, memory or cancellation
        stopped.error["stderr"] = stderr
        return stopped
    if returncode != 0:
        how = f"was killed by {_signal_name(-returncode)}" if returncode < 0 else _exit_status(returncode)
        return Outcome.failure("ScriptError", f"script {how}{hint}", reason="exit-code",
                               returncode=returncode, stderr=stderr)
    outcome = _read_results(os.path.join(folder, RESULTS_FILE))
    if outcome.error is not None:
        outcome.error.setdefault("stderr", stderr)
    return outcome


def _read_results(path: str) -> Outcome:
    def failure(reason: str, message: str, type_: str = "InvalidResult") -> Outcome:
        return Outcome.failure(type_, message, reason=reason)

    try:
        handle = open_regular(path)
        if handle is None:
            return failure("unreadable", f"the results file {path} is not a regular file (a pipe, a link to a "
                           "device); write the JSON into the file itself")
        with handle:
            data = read_at_most(handle, MAX_RESULTS_FILE_BYTES)
        if data is None:
            return failure("unstorable", f"the results file {path} holds more than "
                           f"{format_bytes(MAX_RESULTS_FILE_BYTES)}, and a trial may hold "
                           f"{format_bytes(MAX_RESULTS_BYTES)} of results: report summary numbers, and save arrays "
                           "and curves to files (e.g. in the trial's working_dir)")
        text = data.decode("utf-8-sig")  # a byte order mark (Windows tools write one) is no part of the JSON
    except FileNotFoundError:
        return failure("missing", f"the script exited 0 without reporting a result ({path} was not written); "
                       "call orchard.report_objective(value) or write JSON to $ORCHARD_RESULTS_PATH",
                       "MissingResult")
    except (OSError, UnicodeDecodeError) as err:
        return failure("unreadable", f"cannot read the results file {path}: {err}")
    if not text.strip():
        return failure("empty", f"the results file {path} is empty")
    try:
        data = json.loads(text, object_pairs_hook=each_key_once)  # {"objective": 1, "objective": 2}: which?
        outcome = interpret_result(data)
    except RecursionError:  # parsing and reading recurse once a level: [[[[…]]]] a thousand deep
        return failure("unstorable", f"the results file {path} nests lists or dicts more than "
                       f"{MAX_RESULT_DEPTH} deep, which no storage holds: report summary numbers")
    except ValueError as err:
        return failure("not-json", f"the results file {path} is not JSON ({err}): {text[:80]!r}")
    if outcome.error is not None and "reason" not in outcome.error:  # e.g. "unstorable" is given
        value = data.get("objective") if isinstance(data, dict) else data
        outcome.error["reason"] = _invalid_reason(data, value)
    return outcome


def _invalid_reason(data: Any, value: Any) -> str:
    if isinstance(data, dict) and "objective" not in data:
        return "no-objective"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else "infinite"
    if isinstance(value, int) and not isinstance(value, bool):
        return "infinite"  # an int is refused only beyond any float
    return "not-a-number"


def _tail(path: str, lines: int = STDERR_TAIL_LINES, limit: int = 8192) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - limit, 0))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _signal_name(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    if number == signal.SIGKILL:
        return f"{name}, which the kernel's out-of-memory killer sends among others"
    return name


def _exit_status(code: int) -> str:
    """``exited with code 137``, and what a code above 128 (a shell's answer for a killed child) means."""
    if code > 128 and code - 128 in signal.valid_signals():
        return (f"exited with code {code}, a shell's code for a program it ran that was killed by "
                f"{_signal_name(code - 128)}")
    return f"exited with code {code}"
