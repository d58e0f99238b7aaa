"""The stop request of the loops ``workon`` runs on a Dask cluster that outlives it (:mod:`orchard.executors.remote`).

One in-process ``LocalCluster`` (its scheduler runs in this process), shared by the tests of the module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import orchard
from orchard.trial import Trial, TrialStatus
from tests import workloads

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as dask_client:
        yield dask_client


def _orchard_events(dask_client: Any) -> list[str]:
    """The names of Orchard's events the scheduler holds."""
    def names(dask_scheduler: Any) -> list[str]:
        return [str(name) for name in dask_scheduler.extensions["events"]._events]

    return [name for name in dask_client.run_on_scheduler(names) if name.startswith("orchard-")]


def _wait_for_none_left(dask_client: Any, before: list[str]) -> None:
    """Until the scheduler holds no Orchard event but ``before``; a watch whose wait was under way (a race of
    its loop's end with its 5 s wait) lets go of it within that wait."""
    deadline = time.monotonic() + 10
    while (left := set(_orchard_events(dask_client)) - set(before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, "an Orchard stop event was left on the scheduler"


def _slow(x: float, y: float) -> float:
    time.sleep(0.1)
    return x


def test_an_interrupted_workon_leaves_no_stop_event_on_the_scheduler(client: Any, tmp_path) -> None:
    """Each interrupted workon left its (set) stop event on a scheduler that outlives it, for ever."""
    exp = orchard.build_experiment("stop", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"), max_trials=50)

    def stop(trial: Trial) -> None:
        raise ValueError("enough")

    before = _orchard_events(client)
    with pytest.raises(ValueError, match="enough"):
        exp.workon(_slow, n_workers=2, executor=client, progress=False, on_result=stop)
    assert not exp.fetch_trials([TrialStatus.RESERVED])
    _wait_for_none_left(client, before)


def test_a_workon_that_ends_normally_leaves_no_stop_event_on_the_scheduler(client: Any, tmp_path) -> None:
    exp = orchard.build_experiment("done", space=workloads.SPACE, storage=str(tmp_path / "o.pkl"), max_trials=6)
    before = _orchard_events(client)
    exp.workon(_slow, n_workers=2, executor=client, progress=False)
    assert exp.stats["counts"]["completed"] == 6
    _wait_for_none_left(client, before)
