"""Chaos: six workers on one experiment while a driver kills, freezes and restarts them and the server.

For about a minute a driver, at random, SIGKILLs a worker with its script (a
node dying) and starts another, SIGSTOPs one with its script for 1 to 10 s
(a frozen node; the lease is 6 s, so some of them lose their trial) then
SIGCONTs it, and SIGKILLs the MongoDB wire server and starts it again on its
port and data. Afterwards:

* exactly ``max_trials`` trials are completed;
* every result a worker reported as written (``reported.log``) is stored, with its value;
* no trial was reported completed twice;
* no trial's script ran to its end twice, except where the worker that ran it
  first was SIGKILLed before it could record the result (an evaluation a dead
  node finished is lost with the node; SPEC §5.4), or where a frozen script
  ended within ``WAKE_GRACE`` seconds of being SIGCONTed (it wakes together
  with its worker, which needs one storage round trip to learn that the
  reservation is gone and stop it), or where the worker was frozen for more than
  two beats after its script ended and before it could record the result (its
  lease runs out with the node frozen: the evaluation is lost with the lease).

The pruning variant runs the same chaos (for ``PRUNING_SECONDS``, ``PRUNING_TRIALS``
trials) on an experiment with a ``median`` or an ``asha`` pruner (by the seed), its
scripts reporting a curve of ``STEPS`` steps (``reports.log``), and checks, besides
the above with pruned trials counted:

* every trial ends completed, pruned or broken, and completed + pruned is
  ``max_trials``;
* every report whose ``orchard.report()`` call returned with the worker's answer
  is stored on its trial, once, at its step, with its value, unless that run of the
  trial was taken over (a new reservation starts the trial's reports over); the
  stored reports are what the trial's last run sent, and nothing else;
* every pruned trial's stored verdict is reached again from the stored reports, or
  it compared with a trial taken over since (its reports started over);
* no trial was reported completed by one worker and pruned by another.

Workers run ``tests/chaos_script.py`` through :class:`orchard.runner.ScriptRunner`
(``python -m tests.fault_workers ... script``). The seed is printed; set
``ORCHARD_CHAOS_SEED`` to replay a run's choices.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchard.errors import StorageError
from orchard.storages import get_storage
from orchard.testing._mongo_uri import with_database
from orchard.testing.mongo_server import WireServer
from orchard.trial import Trial, TrialStatus
from tests.verdict_checks import assert_verdicts_recompute, unrecomputed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
N_WORKERS, MAX_TRIALS, HEARTBEAT, CHAOS_SECONDS = 6, 100, 2.0, 60.0
WAKE_GRACE = 1.0
#: The pruning variant: its pruners (each prunes most trials and lets some complete), the steps each script
#: reports, its budget (its trials are shorter) and how long the driver goes on.
PRUNERS: list[dict[str, dict[str, int]]] = [{"median": {"min_trials": 5}},
                                            {"asha": {"min_step": 1, "reduction_factor": 3}}]
STEPS, PRUNING_TRIALS, PRUNING_SECONDS = 5, 200, 40.0


class Cluster:
    """The worker processes, and what the driver did to them."""

    def __init__(self, tmp: Path, uri: str, max_trials: int, options: list[str]) -> None:
        self.tmp, self.uri, self.max_trials, self.options = tmp, uri, max_trials, options
        self.live: list[subprocess.Popen[bytes]] = []
        self.killed: set[int] = set()
        self.stopped: dict[int, float] = {}  # pid -> when to resume it
        self.woken: dict[int, list[float]] = collections.defaultdict(list)  # pid -> wall times of SIGCONT
        self.frozen: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)  # pid -> (SIGSTOP, s)
        self.done = collections.Counter[str]()
        self.journal = open(tmp / "driver.log", "a")  # what the driver did, when: to read a failure's logs by

    def note(self, action: str, pid: int = 0) -> None:
        self.journal.write(f"{time.time():.3f} {action} {pid}\n")
        self.journal.flush()

    def start(self) -> None:
        index = len(self.live) + len(self.killed)
        with open(self.tmp / f"worker-{index}.log", "wb") as log:
            self.live.append(subprocess.Popen(
                [sys.executable, "-m", "tests.fault_workers", self.uri, "chaos", "script", "--dir", str(self.tmp),
                 "--max-trials", str(self.max_trials), "--heartbeat", str(HEARTBEAT), "--max-broken", "1000",
                 *self.options],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            ))
        self.note(f"start worker-{index}", self.live[-1].pid)

    def running(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.live if p.poll() is None and p.pid not in self.stopped]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker and its script, as a node dying would; start another worker."""
        for member in _stopped_tree(proc.pid):
            _signal(member, signal.SIGKILL)
        proc.wait()
        self.note("kill", proc.pid)
        self.live.remove(proc)
        self.killed.add(proc.pid)
        self.done["kill"] += 1
        self.start()

    def freeze(self, proc: subprocess.Popen[bytes], seconds: float) -> None:
        """SIGSTOP a worker and its script for ``seconds`` (resumed by :meth:`thaw`)."""
        self.frozen[proc.pid].append((time.time(), seconds))
        _stopped_tree(proc.pid)
        self.note(f"stop {seconds:.1f}", proc.pid)
        self.stopped[proc.pid] = time.monotonic() + seconds
        self.done["stop"] += 1
        self.done["stop longer than the lease"] += seconds > 3 * HEARTBEAT

    def thaw(self, everyone: bool = False) -> None:
        now = time.monotonic()
        for pid, until in list(self.stopped.items()):
            if everyone or until <= now:
                self.woken[pid].append(time.time())  # before the signal: the script may end at once
                for member in _tree(pid):
                    _signal(member, signal.SIGCONT)
                self.note("cont", pid)
                del self.stopped[pid]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stopped_tree(pid: int) -> list[psutil.Process]:
    """SIGSTOP the worker first (it can start no script then), then every descendant."""
    members = _tree(pid)
    for member in members[:1]:
        _signal(member, signal.SIGSTOP)
    members = _tree(pid)
    for member in members[1:]:
        _signal(member, signal.SIGSTOP)
    return members


def _signal(process: psutil.Process, sig: signal.Signals) -> None:
    try:
        process.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def _completed(uri: str) -> int:
    """Completed and pruned trials: the budget used."""
    try:
        with get_storage(uri) as storage:
            record = storage.get_experiment("chaos")
            counts = None if record is None else storage.count_trials(record.id)
            return 0 if counts is None else counts[TrialStatus.COMPLETED] + counts[TrialStatus.PRUNED]
    except StorageError:
        return 0


def _registered(uri: str) -> int:
    try:
        with get_storage(uri) as storage:
            record = storage.get_experiment("chaos")
            return 0 if record is None else sum(storage.count_trials(record.id).values())
    except StorageError:
        return 0


def _drive(cluster: Cluster, server: WireServer, rng: random.Random, seconds: float) -> None:
    # The test server is first killed once the experiment and its collections exist: SecantusDB
    # killed while creating a collection can come back without the collection's file (seen:
    # "WiredTigerError: No such file or directory" on every later command), a fault of the test
    # server's own start-up, not of the workers under test.
    setup = time.monotonic() + 60
    while _registered(cluster.uri) == 0 and time.monotonic() < setup:
        time.sleep(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _completed(cluster.uri) < cluster.max_trials:
        time.sleep(rng.uniform(0.5, 2.0))
        cluster.thaw()
        action = rng.choices(["kill", "stop", "server"], weights=[2, 3, 1])[0]
        running = cluster.running()
        if action == "server":
            cluster.note("server kill")
            server.kill()
            server.start()
            cluster.note("server up")
            cluster.done["server restart"] += 1
        elif running and action == "kill":
            cluster.kill(rng.choice(running))
        elif running and len(cluster.stopped) < 2:
            cluster.freeze(rng.choice(running), rng.uniform(1.0, 10.0))


@dataclasses.dataclass
class Chaos:
    """One chaos run, once its workers have exited."""

    seed: int
    tmp: Path
    cluster: Cluster
    codes: list[int]
    trials: list[Trial]


def _seed() -> int:
    return int(os.environ.get("ORCHARD_CHAOS_SEED", random.randrange(10**6)))


def _chaos(tmp_path: Path, seed: int, seconds: float, max_trials: int, options: list[str]) -> Chaos:
    rng = random.Random(seed)
    with WireServer(tmp_path, durable=True) as server:
        uri = with_database(server.uri, "chaos")
        cluster = Cluster(tmp_path, uri, max_trials, options)
        try:
            for _ in range(N_WORKERS):
                cluster.start()
            _drive(cluster, server, rng, seconds)
            cluster.thaw(everyone=True)
            codes = [proc.wait(timeout=120) for proc in cluster.live]
        finally:
            cluster.thaw(everyone=True)
            for proc in cluster.live:
                if proc.poll() is None:
                    proc.kill()
            cluster.journal.close()
        with get_storage(uri) as storage:
            trials = storage.fetch_trials(storage.require_experiment("chaos").id)
    return Chaos(seed, tmp_path, cluster, codes, trials)


def _check_results(chaos: Chaos) -> None:
    """The invariants of every chaos run (module docstring), once what happened is printed."""
    cluster, tmp_path = chaos.cluster, chaos.tmp
    stored = {t.id: t for t in chaos.trials}
    statuses = collections.Counter(t.status.value for t in chaos.trials)
    reported = _lines(tmp_path / "reported.log")
    ends: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
    for trial_id, worker_pid, when in _lines(tmp_path / "ends.log"):
        ends[trial_id].append((int(worker_pid), float(when)))

    recorded = {(trial_id, int(pid)) for trial_id, _, pid, _ in reported}

    def frozen_before_recording(trial_id: str, pid: int, when: float) -> bool:
        """Whether the worker did not record this end's result, having frozen for over two beats after it."""
        later = [t for runs in ends.values() for p, t in runs if p == pid and t > when]
        until = min(later, default=float("inf"))  # its next script end
        return (trial_id, pid) not in recorded and any(
            when <= stop < until and seconds > 2 * HEARTBEAT for stop, seconds in cluster.frozen[pid])

    def excused(trial_id: str, pid: int, when: float) -> bool:
        return (pid in cluster.killed or any(0 <= when - woke <= WAKE_GRACE for woke in cluster.woken[pid])
                or frozen_before_recording(trial_id, pid, when))

    twice = {tid: runs for tid, runs in ends.items() if len([r for r in runs if not excused(tid, *r)]) > 1}
    print(f"chaos seed {chaos.seed}: {dict(cluster.done)}; trials {dict(statuses)}; {len(reported)} "
          f"results reported; {sum(len(p) for p in ends.values())} script ends; "
          f"{sum(len(p) > 1 for p in ends.values())} trials whose script ended twice "
          f"({len(twice)} explained by no SIGKILL, wake-up or freeze before recording)")
    assert chaos.codes == [0] * len(chaos.codes), f"workers exited with {chaos.codes}; logs in {tmp_path}"
    assert statuses[TrialStatus.COMPLETED.value] + statuses[TrialStatus.PRUNED.value] == cluster.max_trials
    finished = {s.value for s in (TrialStatus.COMPLETED, TrialStatus.PRUNED, TrialStatus.BROKEN)}
    assert set(statuses) <= finished, f"trials left unfinished: {dict(statuses)}"
    duplicates = [tid for tid, n in collections.Counter(tid for tid, _, _, _ in reported).items() if n > 1]
    assert not duplicates, f"trials reported finished twice: {duplicates}"
    for trial_id, objective, _, status in reported:
        trial = stored.get(trial_id)
        assert trial is not None and trial.status.value == status, f"reported {status} of {trial_id} lost"
        assert status in (TrialStatus.COMPLETED.value, TrialStatus.PRUNED.value), f"{trial_id}: {status}"
        assert repr(trial.objective) == objective
    assert not twice, f"scripts that ran to their end twice (worker pid, time): {twice}"


def test_six_workers_survive_a_minute_of_kills_freezes_and_server_restarts(tmp_path: Path) -> None:
    chaos = _chaos(tmp_path, _seed(), CHAOS_SECONDS, MAX_TRIALS, [])
    _check_results(chaos)
    assert all(t.status is not TrialStatus.PRUNED for t in chaos.trials)


def test_reports_and_verdicts_survive_kills_freezes_and_server_restarts(tmp_path: Path) -> None:
    seed = _seed()
    pruner = PRUNERS[seed % len(PRUNERS)]
    chaos = _chaos(tmp_path, seed, PRUNING_SECONDS, PRUNING_TRIALS,
                   ["--pruner", json.dumps(pruner), "--steps", str(STEPS)])
    _check_results(chaos)
    runs = _runs(_lines(tmp_path / "reports.log"))
    statuses = collections.Counter(t.status for t in chaos.trials)
    sent = sum(len(r.sent) for r in runs.values())
    print(f"pruner {pruner}: {len(runs)} script runs reported {sent} steps, "
          f"{sum(len(r.acked) for r in runs.values())} answered, {sum(r.unanswered for r in runs.values())} "
          f"returned unanswered, {sum(r.refused for r in runs.values())} refused; "
          f"{len(runs) - len({r.trial for r in runs.values()})} runs of a trial another run had reported for")
    assert statuses[TrialStatus.PRUNED] > 0 and statuses[TrialStatus.COMPLETED] > 0  # the variant tests both
    for trial in chaos.trials:
        _check_reports(trial, runs)
    retaken = {t.id for t in chaos.trials if t.attempts > 1}  # their reports started over (docs/pruning.md)
    print(f"{len(unrecomputed(chaos.trials, pruner))} of {statuses[TrialStatus.PRUNED]} verdicts not reached "
          f"again from the stored reports; {len(retaken)} trials were taken over")
    assert_verdicts_recompute(chaos.trials, pruner, retaken)


@dataclasses.dataclass
class Run:
    """One script run's reports (``reports.log``): what it sent and what came back answered, by step."""

    trial: str
    worker: int
    sent: dict[int, str] = dataclasses.field(default_factory=dict)
    acked: dict[int, str] = dataclasses.field(default_factory=dict)
    unanswered: int = 0
    refused: int = 0


def _runs(lines: list[list[str]]) -> dict[int, Run]:
    """The script runs of ``reports.log`` by script pid, in the order they first reported."""
    runs: dict[int, Run] = {}
    for trial_id, worker, script, step, value, what in lines:
        run = runs.setdefault(int(script), Run(trial_id, int(worker)))
        if what == "sent":
            run.sent[int(step)] = value
        elif what == "acked":
            run.acked[int(step)] = value
        run.unanswered += what == "unanswered"
        run.refused += what == "refused"
    return runs


def _check_reports(trial: Trial, runs: dict[int, Run]) -> None:
    """The trial's stored reports are its last run's, each one that run saw answered among them.

    The last run is the last one the trial's owner (the worker its record names) started:
    a new reservation starts the trial's reports over, so earlier runs' reports are gone.
    """
    steps = [step for step, _ in trial.reports]
    assert steps == sorted(set(steps)), f"trial {trial.id}: steps twice or out of order: {trial.reports}"
    owner = int(trial.worker.split(":")[1]) if trial.worker else None
    mine = [run for run in runs.values() if run.trial == trial.id and run.worker == owner]
    if not mine:
        assert trial.status is TrialStatus.BROKEN or not trial.reports, f"no run of {trial.id} by its owner"
        return
    last = mine[-1]
    stored = {step: repr(value) for step, value in trial.reports}
    assert stored == {step: last.sent[step] for step in stored if step in last.sent}, (
        f"trial {trial.id} holds reports its last run (worker {owner}) did not send: stored {trial.reports}, "
        f"sent {last.sent}")
    lost = {step: value for step, value in last.acked.items() if stored.get(step) != value}
    assert not lost, f"trial {trial.id}: reports answered to its last run not stored: {lost}; {trial.reports}"
    if trial.status is TrialStatus.COMPLETED:
        assert steps == list(range(1, STEPS + 1)), f"completed trial {trial.id} holds {trial.reports}"


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []
