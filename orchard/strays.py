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
import os
import signal

__all__ = ["RUN_ENV", "kill_earlier_attempts", "marked_processes", "signal_marked"]

#: The variable naming one run of a trial's script, set in its environment.
RUN_ENV = "ORCHARD_TRIAL_RUN"


def marked_processes(run: str, name: str = RUN_ENV) -> list[int]:
    """The pids of the processes whose environment holds ``name=run`` (:data:`RUN_ENV` by default), this one
    left out.

    Reads Linux's ``/proc`` (another user's processes cannot be read, and are not looked at); psutil
    elsewhere.
    """
    if not os.path.isdir("/proc/self"):  # macOS: psutil reads them (an unreadable one is None)
        import psutil

        return [process.pid for process in psutil.process_iter(["environ"])
                if (process.info["environ"] or {}).get(name) == run and process.pid != os.getpid()]
    entry, pids = f"\0{name}={run}\0".encode(), []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            with contextlib.suppress(OSError), open(f"/proc/{name}/environ", "rb") as handle:
                if entry in b"\0" + handle.read() + b"\0":
                    pids.append(int(name))
    return pids


def signal_marked(run: str | None, sig: signal.Signals, group: int | None = None) -> None:
    """Send ``sig`` to the processes that carry ``run``, but those of process group ``group``.

    The group is signalled as a whole by the caller: a process signalled twice (a launcher's
    SIGTERM handler entered again) could cut its own clean-up short. Nothing when ``run`` is ``None``.
    """
    for pid in [] if run is None else marked_processes(run):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group is None or os.getpgid(pid) != group:
                os.kill(pid, sig)


def kill_earlier_attempts(folder: str) -> int:
    """SIGKILL what earlier attempts of a trial left running in its ``folder``; return how many processes.

    A worker killed outright (SIGKILL) takes its script with it (``PR_SET_PDEATHSIG``) but not what
    the script started (``bash train.sh`` running ``python train.py``): the next attempt of the trial
    on this machine ran beside it, in the same folder, on the same checkpoint. They carry the
    folder in ``ORCHARD_WORKING_DIR``, which names one trial of one experiment.
    """
    pids = marked_processes(folder, "ORCHARD_WORKING_DIR")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
