"""``orchard db release``: give a reservation back, but not one whose worker is alive.

A reserved trial whose worker still heartbeats is being evaluated: releasing it
throws that evaluation away (the worker's result is refused as a lost
reservation). So, unless ``--force`` is given, the command first judges the
lease the way every worker does (:class:`orchard.leases.LeaseObserver`: by
observation on this process's monotonic clock, never by comparing a stamp with
a clock, SPEC §5.8). It reads the trial every fraction of a heartbeat:

* the heartbeat value changes (or another worker holds the trial): its worker
  is alive, and the command refuses, naming the worker and when the change was
  seen;
* the trial leaves ``reserved`` (its worker finished it, or someone released
  it): nothing to release;
* the value stands unchanged for the experiment's ``stale_after``
  (3 × heartbeat): the lease is lost, and the trial is taken back conditional on
  that exact lease (:meth:`~orchard.storages.base.BaseStorage.release_lost`), as
  any worker of the experiment would do then: interrupted, or broken once its
  reservations were lost ``max_attempts`` times. A heartbeat landing meanwhile
  wins, and the command refuses as above. A reservation holding no heartbeat
  at all (another program's write) is judged the same way, and taken back
  without counting an attempt (:func:`orchard.trial.take_back`).

Ctrl-C while watching releases nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchard.cli._args import format_age, format_time
from orchard.terminal import printable
from orchard.errors import ConfigurationError, TrialNotFoundError
from orchard.leases import LeaseObserver
from orchard.trial import Lease, Trial, TrialStatus

if TYPE_CHECKING:  # pragma: no cover
    from orchard.experiment import Experiment

__all__ = ["release_if_lost"]

_POLLS_PER_HEARTBEAT = 4  # reads of the trial per heartbeat period while watching
_LONGEST_POLL = 1.0  # seconds between reads at most


def release_if_lost(experiment: Experiment, trial: Trial, *, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> Trial:
    """Watch ``trial``'s lease until it is judged lost, then take the trial back; return it as written.

    Args:
        experiment: the trial's experiment (its heartbeat, ``stale_after`` and ``max_attempts`` apply).
        trial: a reserved trial of ``experiment``, as just read.
        clock: this process's monotonic clock (injectable for tests).
        sleep: waits between reads (injectable for tests).

    Raises:
        ConfigurationError: the trial's worker is alive (its heartbeat changed while watched), or
            the trial left ``reserved`` meanwhile; nothing was released.
        TrialNotFoundError: the trial (or its experiment) was deleted meanwhile.
    """
    settings, storage = experiment.settings, experiment.storage
    lease = trial.lease
    assert lease is not None, "the caller passes a reserved trial"
    observer = LeaseObserver(settings.stale_after, clock)
    poll = min(_LONGEST_POLL, settings.heartbeat / _POLLS_PER_HEARTBEAT)
    print(f"trial {trial.id} is reserved by {printable(str(lease.worker))}; watching its heartbeat for up to "
          f"{format_age(settings.stale_after)} (3 × heartbeat) to tell a live worker from a lost one "
          "(--force releases at once, Ctrl-C releases nothing)", file=sys.stderr, flush=True)
    current, read_at = trial, clock()  # read_at: when the read that returned `current` began
    unchanged_at = read_at
    while True:
        _refuse_unless_held(experiment, current, lease, clock() - unchanged_at)
        unchanged_at = read_at  # a change found by a later read landed after this read began
        observer.observe([current])
        if trial.id in observer.lost():
            taken = storage.release_lost(experiment.id, {trial.id: lease}, settings.max_attempts)
            if taken:
                return taken[0]
        else:
            sleep(poll)
        read_at = clock()
        found = storage.get_trial(trial.id)
        if found is None:
            raise TrialNotFoundError(f"trial {trial.id} of experiment {experiment.name!r} was deleted while "
                                     "this command watched it (orchard db rm?); nothing to release")
        current = found


def _refuse_unless_held(experiment: Experiment, trial: Trial, lease: Lease, since_change: float) -> None:
    """Raise unless ``trial`` still holds ``lease``: its worker wrote meanwhile, so it is alive."""
    if trial.lease == lease:
        return
    where = f"trial {trial.id} of experiment {experiment.name!r}"
    if trial.status is not TrialStatus.RESERVED:
        how = ("its worker finished it" if trial.status.is_terminal
               else "it was released (by its worker, another worker or another orchard db release)")
        raise ConfigurationError(f"{where} is now {trial.status.value}: {how} while this command watched, "
                                 "so there is nothing to release")
    assert trial.lease is not None
    who = "its worker" if trial.lease.worker == lease.worker else "another worker"
    raise ConfigurationError(
        f"{where} is held by a live worker: {who} {trial.lease.worker} heartbeat less than "
        f"{format_age(since_change)} ago (seen by this command; stamped {format_time(trial.lease.heartbeat)} "
        "by its clock); releasing it would throw its evaluation away: wait for it to finish, stop that worker "
        "(Ctrl-C or SIGTERM releases its trial), or add --force to release it anyway"
    )
