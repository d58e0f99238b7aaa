"""Running a user's script for ``orchard hunt``: command rendering, results file, limits.

The command given to ``hunt`` is a template. Tokens that carry a prior define
the search space, and are replaced by the trial's value when it runs:

=============================  =====================  =================================
token                          dimension              rendered as
=============================  =====================  =================================
``--lr~'loguniform(1e-5, 1)'``  ``lr``                 ``--lr=0.0031``
``-lr~'loguniform(1e-5, 1)'``   ``lr``                 ``-lr 0.0031`` (two tokens)
``lr~'loguniform(1e-5, 1)'``    ``lr``                 ``lr=0.0031`` (Hydra-style override)
=============================  =====================  =================================

Dashes and dots in an option name become underscores in the dimension name
(``--learning-rate~…`` is the dimension ``learning_rate`` but is still rendered
as ``--learning-rate=…``). The bare form is only recognised when what follows
``~`` looks like a prior call, so paths such as ``~/data`` are left alone.
The placeholders ``{trial.id}``, ``{trial.working_dir}``,
``{trial.parent_working_dir}`` and ``{exp.name}`` are substituted in every
other token (``{trial.parent_working_dir}`` is empty unless the trial is a
multi-fidelity promotion).

Each trial runs in its own folder ``WORKING_DIR/TRIAL_ID`` (relative paths in
the command resolve there; the script itself is made absolute), in a new
process group, with ``ORCHARD_EXPERIMENT_NAME``, ``ORCHARD_TRIAL_ID``,
``ORCHARD_WORKING_DIR`` and ``ORCHARD_RESULTS_PATH`` set, and for a trial promoted
by ``asha``/``hyperband`` also ``ORCHARD_PARENT_TRIAL_ID`` and
``ORCHARD_PARENT_WORKING_DIR`` (the parent's folder, where it left its checkpoint). Its stdout and stderr
go to ``stdout.log`` and ``stderr.log`` in that folder. The result is the JSON
the script wrote to ``ORCHARD_RESULTS_PATH`` (see :mod:`orchard.report`).
A timeout stops the group (SIGTERM, then SIGKILL after a grace period); a memory
limit (the tree's resident memory) or a cancellation (the worker lost the trial)
kills it at once. POSIX only: process groups are stopped with ``os.killpg``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from orchard.errors import ConfigurationError, SpaceError
from orchard.naming import folder_in
from orchard.objective import Outcome, TrialEvaluator, interpret_result
from orchard.report import RESULTS_ENV
from orchard.resources import SAMPLE_INTERVAL, MemoryWatch, hold_group, kill_tree
from orchard.trial import Trial

__all__ = ["CommandTemplate", "ScriptRunner", "resolve_program"]

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
STDERR_TAIL_LINES = 20

_DIMENSION = re.compile(r"^(?P<dashes>-{0,2})(?P<option>[A-Za-z_][A-Za-z0-9_.-]*)~(?P<prior>.*)$", re.DOTALL)
_PRIOR_CALL = re.compile(r"^\s*[A-Za-z_]\w*\s*\(")
# looks like a dimension (dashes or nothing, then ~prior(...)) but its name is empty or invalid
_BAD_DIMENSION = re.compile(r"^(-{1,2}[^=~]*|)~\s*[A-Za-z_]\w*\s*\(")
_INTERPRETERS = re.compile(r"^(python[\d.]*|pypy[\d.]*|bash|sh|zsh|Rscript|julia|node|perl|ruby)$")
_SCRIPT_SUFFIXES = (".py", ".sh", ".R", ".r", ".jl", ".js", ".pl", ".rb")


# -- the command template ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Slot:
    """One token of the command: literal text, or a dimension rendered per trial."""

    text: str
    dimension: str | None = None
    dashes: str = ""


@dataclasses.dataclass(frozen=True)
class CommandTemplate:
    """A parsed ``hunt`` command: its tokens and the search space they define."""

    slots: tuple[_Slot, ...]
    space: dict[str, str]

    @classmethod
    def parse(cls, tokens: Sequence[str]) -> CommandTemplate:
        """Find the ``name~prior`` tokens of a command.

        Raises:
            SpaceError: a prior cannot be parsed, or a dimension is defined twice.
            ConfigurationError: the command is empty.
        """
        from orchard.space import parse_prior

        if not tokens:
            raise ConfigurationError(
                "no command given to run; put it after the hunt options, "
                "e.g. orchard hunt -n exp python train.py --lr~'loguniform(1e-5, 1)'"
            )
        slots: list[_Slot] = []
        space: dict[str, str] = {}
        for token in tokens:
            match = _DIMENSION.match(token)
            if match is None and _BAD_DIMENSION.match(token):
                raise SpaceError(f"token {token!r} defines a dimension without a valid name; write "
                                 "--name~'prior' with a name of letters, digits and _ (e.g. --lr~'uniform(0, 1)')")
            if match is None or (not match["dashes"] and not _PRIOR_CALL.match(match["prior"])):
                slots.append(_Slot(token))
                continue
            name = re.sub(r"[-.]", "_", match["option"])
            if name in space:
                raise SpaceError(f"dimension {name!r} is defined twice in the command (token {token!r})")
            parse_prior(name, match["prior"])  # fail early, naming the dimension
            space[name] = match["prior"]
            slots.append(_Slot(match["option"], name, match["dashes"]))
        return cls(tuple(slots), space)

    def with_dimensions(self, space: Mapping[str, str]) -> CommandTemplate:
        """Return a template that also passes the dimensions of ``space`` it lacks, as ``--name=value``."""
        extra = [_Slot(name, name, "--") for name in space if name not in self.space]
        merged = {**self.space, **{name: space[name] for name in space if name not in self.space}}
        return CommandTemplate(self.slots + tuple(extra), merged)

    def with_program(self, program: str, script: tuple[int, str] | None = None) -> CommandTemplate:
        """Return a template whose first token (and script token ``(index, path)``) are replaced."""
        slots = list(self.slots)
        slots[0] = _Slot(program)
        if script is not None:
            slots[script[0]] = _Slot(script[1])
        return dataclasses.replace(self, slots=tuple(slots))

    @property
    def tokens(self) -> list[str]:
        """The literal tokens (dimension slots as their option names)."""
        return [slot.text for slot in self.slots]

    def render(self, params: Mapping[str, Any], placeholders: Mapping[str, str]) -> list[str]:
        """Return the argv of one trial: values in place of priors, placeholders substituted."""
        argv: list[str] = []
        for slot in self.slots:
            if slot.dimension is None:
                argv.append(_substitute(slot.text, placeholders))
            elif slot.dashes == "-":
                argv += [f"-{slot.text}", _format_value(params[slot.dimension])]
            else:
                argv.append(f"{slot.dashes}{slot.text}={_format_value(params[slot.dimension])}")
        return argv


def _substitute(text: str, placeholders: Mapping[str, str]) -> str:
    if "{" not in text:
        return text
    for key, value in placeholders.items():
        text = text.replace("{" + key + "}", value)
    return text


def _format_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def resolve_program(tokens: Sequence[str], cwd: str | None = None) -> tuple[str, tuple[int, str] | None]:
    """Check that a command's program (and the script an interpreter runs) exist.

    Args:
        tokens: the command's tokens.
        cwd: the directory relative paths are resolved against (default: the current one).

    Returns:
        The program's absolute path, and ``(index, absolute path)`` of the script
        token when the program is an interpreter such as ``python`` (else ``None``).

    Raises:
        ConfigurationError: the program or script does not exist or cannot be executed.
    """
    here = cwd or os.getcwd()
    program = tokens[0]
    found = shutil.which(program)
    if os.sep in program or (found is None and os.path.isfile(os.path.join(here, program))):
        found = _check_file(program, here)
    if found is None:
        raise ConfigurationError(
            f"command {program!r} not found on PATH nor as a file in {here}; "
            "check the command given to hunt, e.g. 'python train.py ...'"
        )
    script = _find_script(tokens, here) if _INTERPRETERS.match(os.path.basename(program)) else None
    return os.path.abspath(found), script


def _check_file(program: str, here: str) -> str:
    path = os.path.join(here, program)
    if not os.path.isfile(path):
        raise ConfigurationError(f"script {program!r} not found (no such file in {here}); check the command")
    if not os.access(path, os.X_OK):
        raise ConfigurationError(
            f"script {program!r} is not executable; run 'chmod +x {program}' "
            f"or start it through its interpreter, e.g. 'python {program}'"
        )
    return path


def _find_script(tokens: Sequence[str], here: str) -> tuple[int, str] | None:
    """The interpreter's script argument, made absolute (trials run in their own folders)."""
    for index, token in enumerate(tokens[1:], start=1):
        if token in ("-m", "-c", "-e", "--eval"):
            return None
        if token.startswith("-") or "~" in token:
            continue
        path = os.path.join(here, token)
        if os.path.isfile(path):
            return index, os.path.abspath(path)
        if token.endswith(_SCRIPT_SUFFIXES):
            raise ConfigurationError(f"script {token!r} not found in {here}; check the command given to hunt")
        return None
    return None


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
        interrupted: ids of the trials whose script this runner stopped on an interruption.
    """

    template: CommandTemplate
    experiment: str
    working_dir: str
    timeout: float | None = None
    grace: float = 5.0
    memory_limit: int | None = None
    _running: dict[str, subprocess.Popen[bytes]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False)
    _cancelled: set[str] = dataclasses.field(default_factory=set, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Ship the settings only: running processes belong to the process that started them."""
        return {**self.__dict__, "_running": {}, "_cancelled": set()}
    interrupted: list[str] = dataclasses.field(default_factory=list, compare=False, repr=False)

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
            parent_folder = "" if trial.parent is None else folder_in(self.working_dir, trial.parent)
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
        log.debug("trial %s: running %s in %s", trial.id, argv, folder)
        try:
            returncode, stopped = self._run(trial.id, argv, folder, env)
        except KeyboardInterrupt:
            self.interrupted.append(trial.id)  # what `hunt` reports after Ctrl-C
            raise
        outcome = returncode if isinstance(returncode, Outcome) else _outcome(folder, returncode, stopped)
        if outcome.error is not None:
            log.debug("trial %s broken: %s", trial.id, outcome.error["message"])
        return outcome

    def cancel(self, trial: Trial) -> None:
        """Kill ``trial``'s script, its whole process group at once (the worker lost the trial)."""
        self._cancelled.add(trial.id)
        proc = self._running.get(trial.id)
        if proc is not None:
            kill_tree(proc.pid)

    def hold(self, trial: Trial, held: bool) -> None:
        """Pause or resume ``trial``'s script, its whole process group (the lease is in doubt)."""
        proc = self._running.get(trial.id)
        if proc is not None:
            hold_group(proc.pid, held)

    def _run(self, trial_id: str, argv: list[str], folder: str,
             env: dict[str, str]) -> tuple[int | Outcome, Outcome | None]:
        """Run the script; return its exit code and, if Orchard stopped it, the failure why."""
        self._cancelled.discard(trial_id)
        with open(os.path.join(folder, STDOUT_FILE), "wb") as out, \
                open(os.path.join(folder, STDERR_FILE), "wb") as err:
            try:
                proc = subprocess.Popen(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True)
            except OSError as error:
                return Outcome.failure("OSError", f"cannot start {argv[0]!r}: {error}", reason="start"), None
            self._running[trial_id] = proc
            if trial_id in self._cancelled:  # the reservation was lost before the script started
                kill_tree(proc.pid)
            watch = _Watch(proc, self.timeout, self.grace, self.memory_limit)
            try:
                returncode = proc.wait()
            except BaseException:  # Ctrl-C (KeyboardInterrupt) or SIGTERM: stop the script first
                stop_group(proc, self.grace)
                raise
            finally:
                watch.stop()
                self._running.pop(trial_id, None)
            if watch.failure is not None or trial_id in self._cancelled:
                _signal_group(proc.pid, signal.SIGKILL)  # children that outlived the leader
            if trial_id in self._cancelled:
                return returncode, Outcome.failure(
                    "Cancelled", "the script was killed because the worker lost its reservation",
                    reason="cancelled")
            return returncode, watch.failure


class _Watch:
    """Stops a script's process group past its timeout or memory limit, from a daemon thread."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float | None, grace: float,
                 memory_limit: int | None) -> None:
        self.failure: Outcome | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._memory: MemoryWatch | None = None
        if memory_limit is not None:
            with contextlib.suppress(Exception):  # psutil: the script may have exited already
                self._memory = MemoryWatch(proc.pid, memory_limit)
        if timeout is not None or self._memory is not None:
            self._thread = threading.Thread(target=self._watch, args=(proc, timeout, grace),
                                            name="orchard-trial-watch", daemon=True)
            self._thread.start()

    def _watch(self, proc: subprocess.Popen[bytes], timeout: float | None, grace: float) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = SAMPLE_INTERVAL if self._memory is not None else float(timeout or 0)
            if deadline is not None:
                wait = max(min(wait, deadline - time.monotonic()), 0.0)
            if self._stop.wait(wait):
                return
            if self._memory is not None and self._memory.sample():
                message, details = self._memory.failure_details("the script's process tree")
                self.failure = Outcome.failure("MemoryError", message, **details)
                kill_tree(proc.pid)
                return
            if deadline is not None and time.monotonic() >= deadline:
                self.failure = Outcome.failure(
                    "TimeoutError", f"script ran longer than --trial-timeout={timeout:g} s; "
                    "its process group was killed", reason="timeout")
                _signal_group(proc.pid, signal.SIGTERM)
                if not self._stop.wait(grace):
                    _signal_group(proc.pid, signal.SIGKILL)
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop a script's process group: SIGTERM, then SIGKILL after ``grace`` seconds.

    A second Ctrl-C during the grace period kills the group at once.
    """
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


# -- reading the outcome -------------------------------------------------------------


def _outcome(folder: str, returncode: int, stopped: Outcome | None) -> Outcome:
    stderr = _tail(os.path.join(folder, STDERR_FILE))
    last = stderr.strip().splitlines()[-1][:200] if stderr.strip() else ""
    hint = f" (last stderr line: {last})" if last else f"; see {os.path.join(folder, STDERR_FILE)}"
    if stopped is not None and stopped.error is not None:  # timeout, memory or cancellation
        stopped.error["stderr"] = stderr
        return stopped
    if returncode != 0:
        how = (f"was killed by {_signal_name(-returncode)}" if returncode < 0
               else f"exited with code {returncode}")
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
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return failure("missing", f"the script exited 0 without reporting a result ({path} was not written); "
                       "call orchard.report_objective(value) or write JSON to $ORCHARD_RESULTS_PATH",
                       "MissingResult")
    except (OSError, UnicodeDecodeError) as err:
        return failure("unreadable", f"cannot read the results file {path}: {err}")
    if not text.strip():
        return failure("empty", f"the results file {path} is empty")
    try:
        data = json.loads(text)
    except ValueError as err:
        return failure("not-json", f"the results file {path} is not JSON ({err}): {text[:80]!r}")
    outcome = interpret_result(data)
    if outcome.error is not None:
        value = data.get("objective") if isinstance(data, dict) else data
        outcome.error["reason"] = _invalid_reason(data, value)
    return outcome


def _invalid_reason(data: Any, value: Any) -> str:
    if isinstance(data, dict) and "objective" not in data:
        return "no-objective"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else "infinite"
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
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
