"""``orchard status`` judges heartbeats by observation, never by comparing a worker's clock with its own.

The reservation is written by a real process whose clock is 10 minutes behind
(``faketime``), as on a node whose clock drifted: the heartbeat stamped is
600 s "old" by this machine's clock although the worker just wrote it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchard.storages import get_storage

pytestmark = pytest.mark.slow

RESERVE = """
import sys
from orchard.storages import get_storage
store = get_storage(sys.argv[1])
store.register_trial(sys.argv[2], {"x": 0.5}, worker="node7:42:abcd")
"""


def status(*args: str) -> list[str]:
    """The ``orchard status`` command line for the experiment ``skew`` in ``o.pkl``."""
    return [sys.executable, "-m", "orchard.cli", "status", "-n", "skew", "--storage", "o.pkl", "--json", *args]


def readings(stream: Any) -> Iterator[dict[str, Any]]:
    """The JSON objects ``status --watch --json`` prints, one per refresh (JSON Lines: one a line)."""
    for line in stream:
        if line.strip():
            yield json.loads(line)


def test_a_worker_clock_ten_minutes_behind_is_not_reported_lost_and_a_silent_one_is(tmp_path: Path) -> None:
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.fail("faketime is missing: apt-get install -y faketime", pytrace=False)
    store = get_storage(str(tmp_path / "o.pkl"))
    exp_id = store.create_experiment("skew", {"space": {"x": "uniform(0, 1)"}, "algorithm": "random",
                                              "heartbeat": 0.5})  # stale after 1.5 s of unchanged heartbeat
    subprocess.run([faketime, "-f", "-600s", sys.executable, "-c", RESERVE, str(tmp_path / "o.pkl"), exp_id], check=True)
    (trial,) = store.fetch_trials(exp_id)
    assert trial.heartbeat is not None and time.time() - trial.heartbeat > 500  # the skew is real
    store.close()

    once = subprocess.run(status(), cwd=tmp_path, text=True, capture_output=True, check=True, timeout=60)
    (worker,) = json.loads(once.stdout)["workers"]
    assert worker["stale"] is False and worker["heartbeat_age_is_lower_bound"] is True
    assert worker["heartbeat_age"] < 60  # not 600 s

    # The worker never beats again: watching, this process sees the value stand still and calls it lost.
    proc = subprocess.Popen(status("--watch", "--interval", "0.3"), cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE)
    try:
        seen = []
        deadline = time.monotonic() + 60
        for reading in readings(proc.stdout):
            seen.append(reading["workers"][0])
            if seen[-1]["stale"] or time.monotonic() > deadline:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert seen[0]["stale"] is False and seen[-1]["stale"] is True
    assert seen[-1]["heartbeat_age"] > 1.5 and seen[-1]["heartbeat_age_is_lower_bound"] is True
