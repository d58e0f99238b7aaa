"""The soft lock (NFS) with real processes: skewed clocks and a holder stalled past the break age.

A broken soft lock must never let two writers interleave unseen: a lock's age
is judged by watching it on the waiter's own monotonic clock (never by
comparing clocks), a writer checks it still holds the lock before it
appends, and every frame names the offset it was written for, so a writer that
lost the lock is fenced out and raises instead of returning. Clock skew is
real (``faketime``), the stall is a real ``SIGSTOP``.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from orchard.errors import StorageUnavailableError
from orchard.storages.pickled import PickledStorage
from orchard.testing.conformance import StorageConformance

SPAWN = multiprocessing.get_context("spawn")
WAIT = 60.0


class TestSoftLockedFileConformance(StorageConformance):
    """Every storage guarantee holds for a soft-locked file (fenced appends, no truncation)."""

    @pytest.fixture
    def storage(self, tmp_path: Path) -> Any:
        with PickledStorage(tmp_path / "soft.pkl", lock="soft") as store:
            yield store

_WRITER = textwrap.dedent(
    """
    import sys
    from orchard.storages.pickled import PickledStorage

    path, exp_id, worker, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    storage = PickledStorage(path, lock="soft", timeout=120, fsync=False)
    with open(out, "w") as log:
        for i in range(n):
            trial = storage.register_trial(exp_id, {"x": worker * 10_000 + i})
            log.write(trial.id + "\\n")  # written only once the registration returned
            log.flush()
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs faketime (apt-get install faketime)")
def test_writers_with_skewed_clocks_never_interleave(tmp_path: Path) -> None:
    """Three writers on one soft-locked file, one clock 120 s ahead and one 120 s behind."""
    path = tmp_path / "orchard.pkl"
    exp_id = PickledStorage(path, lock="soft").create_experiment("exp", {})
    clocks = [[], ["faketime", "-f", "+120s"], ["faketime", "-f", "-120s"]]
    outs = [tmp_path / f"returned-{w}.txt" for w in range(len(clocks))]
    writers = [
        subprocess.Popen([*clock, sys.executable, "-c", _WRITER, str(path), exp_id, str(w), "150", str(out)])
        for w, (clock, out) in enumerate(zip(clocks, outs))
    ]
    codes = [writer.wait(timeout=240) for writer in writers]
    assert codes == [0, 0, 0], "a writer failed (a corrupted file?)"
    storage = PickledStorage(path, lock="soft")
    stored = {t.id for t in storage.fetch_trials(exp_id)}
    returned = {line for out in outs for line in out.read_text().split()}
    assert len(returned) == 450 and returned <= stored, f"{len(returned - stored)} returned writes are missing"
    assert storage.check().clean, "writers interleaved: the file holds damaged frames"


def _stall_while_holding_the_lock(path: str, exp_id: str, ready: Any, outcome: Any, owns_lies: bool) -> None:
    """Register a trial, but SIGSTOP this process in the middle of the verb, under the lock."""
    from orchard.storages.pickled import locks
    from orchard.storages.table import TrialTable

    real = TrialTable.register_trial

    def stalled(self: TrialTable, *args: Any, **kwargs: Any) -> Any:
        ready.set()
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen while holding the lock, until the test's SIGCONT
        return real(self, *args, **kwargs)

    TrialTable.register_trial = stalled  # type: ignore[method-assign]
    if owns_lies:  # the worst case: the lock is broken just after the holder's last check
        locks.SoftLock.owns = lambda self: True  # type: ignore[method-assign]
    storage = PickledStorage(path, lock="soft", stale_lock_after=0.5, fsync=False)
    try:
        storage.register_trial(exp_id, {"x": -1.0})
        outcome.put("returned")
    except StorageUnavailableError as err:
        outcome.put(f"refused: {err}")
    except BaseException as err:  # noqa: BLE001 - reported to the test
        outcome.put(f"{type(err).__name__}: {err}")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("owns_lies", [False, True], ids=["checked", "broken-after-check"])
def test_a_holder_stalled_past_the_break_age_is_fenced_out(tmp_path: Path, owns_lies: bool) -> None:
    path = tmp_path / "orchard.pkl"
    exp_id = PickledStorage(path, lock="soft").create_experiment("exp", {})
    ready, outcome = SPAWN.Event(), SPAWN.Queue()
    holder = SPAWN.Process(target=_stall_while_holding_the_lock,
                           args=(str(path), exp_id, ready, outcome, owns_lies), daemon=True)
    holder.start()
    try:
        assert ready.wait(WAIT), "the holder did not take the lock"
        other = PickledStorage(path, lock="soft", stale_lock_after=0.5, timeout=30, fsync=False)
        returned = [other.register_trial(exp_id, {"x": float(i)}).id for i in range(5)]  # breaks the lock
        os.kill(holder.pid, signal.SIGCONT)
        result = outcome.get(timeout=WAIT)
    finally:
        if holder.is_alive():
            os.kill(holder.pid, signal.SIGCONT)
        holder.join(WAIT)
    assert result.startswith("refused:") and "soft lock" in result, result
    storage = PickledStorage(path, lock="soft")
    trials = storage.fetch_trials(exp_id)
    assert [t.id for t in trials] == returned, "every write that returned is stored, the fenced one is not"
    assert storage.register_trial(exp_id, {"x": 9.0}).id in {t.id for t in storage.fetch_trials(exp_id)}
    health = storage.check()
    assert health.clean != owns_lies, "a fenced-out frame is reported as damage; a refused write leaves none"
