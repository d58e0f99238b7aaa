"""The processes a script's run left outside its process group, found by the mark they inherited.

``orchard hunt`` starts each run of a script in a process group of its own and
stops that group. A process that leaves the group (``setsid``, a daemon, the
workers torchrun starts in sessions of their own) is out of the group's reach,
and once its parent has exited it is no longer a descendant either: a trial's
timeout, its pruning or a stopped ``hunt`` left it running, holding its GPU.
Every process the script starts inherits its environment, though, unless it is
started without it: the run's token in :data:`RUN_ENV` finds them all, and
the trial's folder in ``ORCHARD_WORKING_DIR`` those an attempt left behind when
its worker was killed outright (:func:`kill_earlier_attempts`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

__all__ = ["RUN_ENV", "WORKER_ENV", "kill_earlier_attempts", "marked_processes", "signal_group",
           "signal_marked"]

log = logging.getLogger(__name__)

#: The variable naming one run of a trial's script, set in its environment.
RUN_ENV = "ORCHARD_TRIAL_RUN"
#: The variable holding the pid of the worker process that started the run.
WORKER_ENV = "ORCHARD_TRIAL_WORKER_PID"


def marked_processes(run: str, name: str = RUN_ENV) -> list[int]:
    """The pids of the processes whose environment holds ``name=run`` (:data:`RUN_ENV` by default), this one
    left out.

    Reads Linux's ``/proc`` (another user's processes cannot be read, and are not looked at); psutil
    elsewhere.
    """
    return [pid for pid, _ in _environments(name, run)]


def _environments(name: str, value: str) -> list[tuple[int, bytes]]:
    """The pids and environments (NUL-separated, framed by NULs) of the processes with ``name=value``,
    this one left out: Linux's ``/proc``, psutil elsewhere (an unreadable one is ``None`` there)."""
    # encoded as the environment is: a folder whose name is no UTF-8 (b"x\xff") holds lone surrogates
    entry, found = os.fsencode(f"\0{name}={value}\0"), []
    if not os.path.isdir("/proc/self"):
        import psutil

        for process in psutil.process_iter(["environ"]):
            variables = process.info["environ"] or {}
            if variables.get(name) == value and process.pid != os.getpid():
                pairs = "\0".join(f"{key}={text}" for key, text in variables.items())
                found.append((process.pid, os.fsencode(f"\0{pairs}\0")))
        return found
    for entry_name in os.listdir("/proc"):
        if entry_name.isdigit() and int(entry_name) != os.getpid():
            with contextlib.suppress(OSError), open(f"/proc/{entry_name}/environ", "rb") as handle:
                environment = b"\0" + handle.read() + b"\0"
                if entry in environment:
                    found.append((int(entry_name), environment))
    return found


def signal_group(pgid: int, sig: signal.Signals, run: str | None = None) -> None:
    """Send ``sig`` to a process group (one that is gone is ignored), and to the processes out of it that
    carry ``run``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    signal_marked(run, sig, pgid)


def signal_marked(run: str | None, sig: signal.Signals, group: int | None = None) -> None:
    """Send ``sig`` to the processes that carry ``run``, but those of process group ``group``.

    The group is signalled as a whole by the caller: a process signalled twice (a launcher's
    SIGTERM handler entered again) could cut its own clean-up short. Nothing when ``run`` is ``None``.

    The search is the clean-up after a run, whose value is already in hand: a search that cannot read
    ``/proc`` (this process has as many files open as it may, ``ulimit -n``) is given up with a warning,
    not raised over that value (it lost the trial's result).
    """
    try:
        pids = [] if run is None else marked_processes(run)
    except OSError as err:
        log.warning("could not look for the processes run %s left out of its group (%s); any such process "
                    "runs on", run, err)
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group is None or os.getpgid(pid) != group:
                os.kill(pid, sig)


def kill_earlier_attempts(folder: str) -> int:
    """SIGKILL what earlier attempts of a trial left running in its ``folder``; return how many processes.

    A worker killed outright (SIGKILL) takes its script with it (``PR_SET_PDEATHSIG``) but not what
    the script started (``bash train.sh`` running ``python train.py``): the next attempt of the trial
    on this machine ran beside it, in the same folder, on the same checkpoint. They carry the
    folder in ``ORCHARD_WORKING_DIR``, which names one trial of one experiment.

    Only processes whose worker (:data:`WORKER_ENV`) is gone: a worker that is alive, frozen or not, still
    owns its run, and another storage's copy of the experiment (``db load`` keeps trial ids) may run the
    same trial in the same folder.
    """
    killed = 0
    for pid, environment in _environments("ORCHARD_WORKING_DIR", folder):
        worker = _value(environment, WORKER_ENV)
        if worker is None or not worker.isdigit() or _alive(int(worker)):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def _value(environment: bytes, name: str) -> str | None:
    """The value of ``name`` in a NUL-separated environment framed by NULs, if set."""
    start = environment.find(f"\0{name}=".encode())
    if start < 0:
        return None
    start += len(name) + 2
    return environment[start:environment.index(b"\0", start)].decode(errors="replace")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
