"""Many workers on one storage: 8 … 256 worker processes sharing one pickle file (or one MongoDB).

Every trial is a sleep of ``--seconds`` (5 s by default) run by
``Experiment.workon(n_workers=W)``, random search, ``W × --rounds`` trials. The
objective itself is the probe: each call reports, in its trial's results, its
own start and end (wall clock, one host), its process id, the bytes the
process read since its previous trial (``rchar`` of ``/proc/self/io``: file
and pipe reads, so storage reads), its memory, and the lock waits / MongoDB
commands the process made since its previous trial (counted by hooks an
executor initializer installs in each worker process). From those records:

* **steady-state efficiency**: busy worker-seconds / (W × window), over the
  window from the moment the last worker started its first trial to the moment
  the last trial started (start-up and wind-down excluded);
* **start-up**: from the ``workon`` call to the first trial's start, and to
  every worker being busy;
* **gap**: a worker's time between the end of one evaluation and the start of
  its next (completing, refreshing, suggesting, reserving), p50 / p95 / max;
* **CPU per trial per worker**: the process CPU time (user + system, so a loaded machine does not
  inflate it as it does wall times) a worker spends between the end of one trial and the start of
  its next (median), the probe's own reads excluded, and of it the main thread's CPU **replaying**
  the file's frames (``replay``), **polling** the lock (trying it and pausing between tries,
  replays done while waiting excluded) and folding the changes into the worker's **history**
  (``History.refresh``, replays excluded); **start-up CPU**: from the fork to the first
  trial (median; a worker started by ``spawn`` also pays its interpreter's start before that);
* **lock wait** p50 / p99 / max and **lock hold** p50 / p99 (pickle), **bytes read per worker per trial**,
  **MongoDB round trips and bytes (BSON of commands + replies) per trial**,
  **memory per idle worker process** (RSS, PSS and USS, MiB, read between two trials) and whether
  scikit-learn was imported;
* **lost workers**: workers that died (e.g. on a lock timeout); ``workon``
  raises and the run is reported as failed.

Usage::

    python bench/scale.py                                  # 8 32 64 128 256 workers, pickle
    python bench/scale.py --workers 8 32 --rounds 3 --seconds 2
    python bench/scale.py --workers 8 16 --storage mongodb # a SecantusDB wire server, started here
    python bench/scale.py --storage mongodb://host:27017/bench
    python bench/scale.py --workers 64 128 256 512 --rounds 6 --executor process   # docs/scaling.md
    python bench/scale.py --workers 64 --executor process --profile /tmp/prof  # cProfile each worker (CPU)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

# -- probes installed in every worker process ------------------------------------------

_WAITS: list[float] = []
_HOLDS: list[float] = []
_HELD = {"since": 0.0}
_MONGO = {"commands": 0, "bytes": 0}
#: thread CPU replaying the file's frames; trying the lock; folding changes into the history (both minus replays)
_CPU = {"replay": 0.0, "polling": 0.0, "history": 0.0}
_LAST: dict[str, Any] = {}
_PROFILE: dict[str, Any] = {}


def install_probes(mongo: bool, profile_dir: str | None = None) -> None:
    """Executor initializer: time every pickle-lock acquisition; count MongoDB commands if ``mongo``.

    With ``profile_dir``, the worker process runs under :mod:`cProfile` and
    writes its cumulative profile to ``profile_dir/PID.prof`` at each trial.
    """
    from orchard import history
    from orchard.storages.pickled import locks, reader

    if profile_dir is not None:
        import cProfile

        _PROFILE.update(dir=profile_dir, profiler=cProfile.Profile(time.process_time))  # CPU, not wall
        _PROFILE["profiler"].enable()

    acquire = locks.acquire

    release = locks.KernelLock.release

    sync = reader.LogReader.sync

    def timed(lock: Any, *args: Any, **kwargs: Any) -> bool:
        start, cpu, replay = time.perf_counter(), time.thread_time(), _CPU["replay"]
        try:
            return acquire(lock, *args, **kwargs)
        finally:
            _HELD["since"] = time.perf_counter()
            _WAITS.append(_HELD["since"] - start)
            _CPU["polling"] += time.thread_time() - cpu - (_CPU["replay"] - replay)

    def timed_sync(self: Any, *args: Any, **kwargs: Any) -> bool:
        cpu = time.thread_time()
        try:
            return sync(self, *args, **kwargs)
        finally:
            _CPU["replay"] += time.thread_time() - cpu

    refresh = history.History.refresh

    def timed_refresh(self: Any) -> Any:
        cpu, replay = time.thread_time(), _CPU["replay"]
        try:
            return refresh(self)
        finally:
            _CPU["history"] += time.thread_time() - cpu - (_CPU["replay"] - replay)

    def timed_release(lock: Any) -> None:
        _HOLDS.append(time.perf_counter() - _HELD["since"])
        release(lock)

    locks.acquire = timed
    reader.LogReader.sync = timed_sync  # type: ignore[method-assign]
    locks.KernelLock.release = timed_release  # type: ignore[method-assign, assignment]
    history.History.refresh = timed_refresh  # type: ignore[method-assign]
    if mongo:  # pymongo is imported only where it is used, as the storage does
        _install_mongo_probe()


def _install_mongo_probe() -> None:
    import bson
    from pymongo import monitoring

    class Counter(monitoring.CommandListener):
        def started(self, event: Any) -> None:
            _MONGO["commands"] += 1
            _MONGO["bytes"] += len(bson.encode(event.command))

        def succeeded(self, event: Any) -> None:
            _MONGO["bytes"] += len(bson.encode(event.reply))

        def failed(self, event: Any) -> None:
            pass

    monitoring.register(Counter())


def _read_counter(path: str, key: str) -> int:
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def _memory() -> dict[str, int]:
    """This process's proportional (PSS) and unshared (USS) memory, KiB, from one read of smaps_rollup."""
    fields = {"Pss:": 0, "Private_Clean:": 0, "Private_Dirty:": 0}
    with contextlib.suppress(OSError), open("/proc/self/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if name in fields:
                fields[name] = int(rest.split()[0])
    return {"pss_kib": fields["Pss:"], "uss_kib": fields["Private_Clean:"] + fields["Private_Dirty:"]}


def probe_sleep(x: float, y: float, seconds: float) -> dict[str, Any]:
    """The objective: sleep, and report what this worker process did since its previous trial.

    The probe's own reads (``/proc``, profiles) are excluded from the CPU and
    bytes it reports: both counters are taken again after them.
    """
    start = time.time()
    cpu = time.process_time()  # this process's CPU (user + system), robust under load
    rchar = _read_counter("/proc/self/io", "rchar:")
    waits, _WAITS[:] = list(_WAITS), []
    holds, _HOLDS[:] = list(_HOLDS), []
    mongo = dict(_MONGO)
    since = {
        "rchar": rchar - _LAST["rchar"] if _LAST else None,
        "cpu": cpu - _LAST["cpu"] if _LAST else cpu,  # the first: the worker's start-up (fork to here)
        "commands": mongo["commands"] - _LAST.get("commands", 0),
        "mongo_bytes": mongo["bytes"] - _LAST.get("mongo_bytes", 0),
        "replay_cpu": _CPU["replay"] - _LAST.get("replay_cpu", 0.0),
        "polling_cpu": _CPU["polling"] - _LAST.get("polling_cpu", 0.0),
        "history_cpu": _CPU["history"] - _LAST.get("history_cpu", 0.0),
    }
    memory = {"rss_kib": _read_counter("/proc/self/status", "VmRSS:"), **_memory()}  # idle, between trials
    if _PROFILE:
        _PROFILE["profiler"].dump_stats(os.path.join(_PROFILE["dir"], f"{os.getpid()}.prof"))
        _PROFILE["profiler"].enable()  # dumping disabled it
    _LAST.update(rchar=_read_counter("/proc/self/io", "rchar:"), commands=mongo["commands"],
                 mongo_bytes=mongo["bytes"], cpu=time.process_time(), replay_cpu=_CPU["replay"],
                 polling_cpu=_CPU["polling"], history_cpu=_CPU["history"])
    time.sleep(seconds)
    return {
        "objective": x * x + y,
        "pid": os.getpid(),
        "t0": start,
        "t1": time.time(),
        "waits": [round(w, 6) for w in waits],
        "holds": [round(h, 6) for h in holds],
        **memory,
        "sklearn": "sklearn" in sys.modules,
        **since,
    }


# -- one run ---------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """The figures of one run."""

    workers: int
    trials: int
    failed: str = ""
    efficiency: float = math.nan
    first_start: float = math.nan
    all_busy: float = math.nan
    gaps: list[float] = dataclasses.field(default_factory=list)
    waits: list[float] = dataclasses.field(default_factory=list)
    holds: list[float] = dataclasses.field(default_factory=list)
    read_per_trial: float = math.nan
    commands_per_trial: float = math.nan
    mongo_bytes_per_trial: float = math.nan
    rss_mib: float = math.nan
    pss_mib: float = math.nan
    uss_mib: float = math.nan
    cpu_per_trial: float = math.nan  # seconds of process CPU a worker spends between two trials (median)
    replay_per_trial: float = math.nan  # of which (main thread) replaying frames, median
    polling_per_trial: float = math.nan  # of which trying the lock and pausing, replays excluded, median
    history_per_trial: float = math.nan  # of which folding changes into the worker's history, replays excluded
    start_cpu: float = math.nan  # seconds of process CPU from a worker's start to its first trial (median)
    sklearn: bool = False
    wall: float = math.nan


def run(workers: int, rounds: int, seconds: float, storage: str, executor: str,
        profile_dir: str | None = None) -> Result:
    """Run ``workers × rounds`` sleeps of ``seconds`` on ``storage``; measure them."""
    import functools

    import orchard

    trials = workers * rounds
    name = f"scale-{workers}-{os.getpid()}-{time.time_ns()}"
    exp = orchard.build_experiment(
        name, space={"x": "uniform(-5, 10)", "y": "uniform(0, 15)"}, algorithm="random",
        storage=storage, max_trials=trials)
    result = Result(workers, trials)
    called = time.time()
    try:
        exp.workon(functools.partial(probe_sleep, seconds=seconds), n_workers=workers, executor=executor,
                   executor_config={"initializer": install_probes, "initargs": (storage.startswith("mongodb"), profile_dir)}, progress=False)
    except orchard.OrchardError as err:
        result.failed = f"{type(err).__name__}: {str(err)[:160]}"
    result.wall = time.time() - called
    completed = exp.fetch_trials(["completed"])
    if not result.failed and len(completed) != trials:
        result.failed = f"budget not exact: {len(completed)} completed of {trials}"
    _measure(result, [t.results for t in completed], called)
    return result


def _measure(result: Result, records: list[dict[str, Any]], called: float) -> None:
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_pid[record["pid"]].append(record)
    if not records:
        return
    runs = [sorted(rs, key=lambda r: r["t0"]) for rs in by_pid.values()]
    result.first_start = min(r["t0"] for r in records) - called
    begin = max(rs[0]["t0"] for rs in runs)  # every worker busy from here on
    end = max(r["t0"] for r in records)  # no trial starts after this: wind-down
    result.all_busy = begin - called
    if end > begin:
        busy = sum(max(0.0, min(r["t1"], end) - max(r["t0"], begin)) for r in records)
        result.efficiency = busy / (len(runs) * (end - begin)) if len(runs) == result.workers else math.nan
    result.gaps = [b["t0"] - a["t1"] for rs in runs for a, b in itertools.pairwise(rs)]
    result.waits = [w for r in records for w in r["waits"]]
    result.holds = [h for r in records for h in r["holds"]]
    later = [r for r in records if r["rchar"] is not None]
    if later:
        result.read_per_trial = statistics.median(r["rchar"] for r in later)
        result.commands_per_trial = sum(r["commands"] for r in later) / len(later)
        result.mongo_bytes_per_trial = sum(r["mongo_bytes"] for r in later) / len(later)
        result.cpu_per_trial = statistics.median(r["cpu"] for r in later)
        result.replay_per_trial = statistics.median(r.get("replay_cpu", math.nan) for r in later)
        result.polling_per_trial = statistics.median(r.get("polling_cpu", math.nan) for r in later)
        result.history_per_trial = statistics.median(r.get("history_cpu", math.nan) for r in later)
    result.start_cpu = statistics.median(rs[0]["cpu"] for rs in runs)
    last = [rs[-1] for rs in runs]
    result.rss_mib = statistics.median(r["rss_kib"] for r in last) / 1024
    result.pss_mib = statistics.median(r["pss_kib"] for r in last) / 1024
    result.uss_mib = statistics.median(r["uss_kib"] for r in last) / 1024
    result.sklearn = any(r["sklearn"] for r in last)


# -- reporting ---------------------------------------------------------------------------


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _percent(share: float) -> str:
    """A steady-state efficiency, or ``none`` when no trial started after every worker had started one."""
    return "none" if math.isnan(share) else f"{share * 100:.1f}"


HEADER = (
    f"{'W':>4} {'eff %':>6} {'1st s':>6} {'busy s':>6} {'gap p50':>8} {'gap p95':>8} {'gap max':>8} "
    f"{'lock p50':>9} {'lock p99':>9} {'lock max':>9} {'hold p50':>9} {'hold p99':>9} {'read/tr':>8} {'rt/tr':>6} {'B/tr':>7} "
    f"{'RSS MiB':>7} {'PSS MiB':>7} {'USS MiB':>7} {'cpu/tr':>7} {'replay':>7} {'polling':>7} {'history':>7} {'cpu st':>7} {'wall s':>6}  status"
)


def row(r: Result) -> str:
    """One line of the table."""
    ms = 1000.0
    status = r.failed or "ok" + (" (sklearn imported!)" if r.sklearn else "")
    return (
        f"{r.workers:>4} {_percent(r.efficiency):>6} {r.first_start:>6.1f} {r.all_busy:>6.1f} "
        f"{_quantile(r.gaps, 0.5) * ms:>6.0f}ms {_quantile(r.gaps, 0.95) * ms:>6.0f}ms "
        f"{max(r.gaps, default=math.nan) * ms:>6.0f}ms "
        f"{_quantile(r.waits, 0.5) * ms:>7.2f}ms {_quantile(r.waits, 0.99) * ms:>7.1f}ms "
        f"{max(r.waits, default=math.nan) * ms:>7.0f}ms "
        f"{_quantile(r.holds, 0.5) * ms:>7.2f}ms {_quantile(r.holds, 0.99) * ms:>7.1f}ms "
        f"{_kib(r.read_per_trial):>8} {r.commands_per_trial:>6.1f} {_kib(r.mongo_bytes_per_trial):>7} "
        f"{r.rss_mib:>7.0f} {r.pss_mib:>7.0f} {r.uss_mib:>7.1f} {r.cpu_per_trial * ms:>5.1f}ms "
        f"{r.replay_per_trial * ms:>5.1f}ms {r.polling_per_trial * ms:>5.1f}ms {r.history_per_trial * ms:>5.1f}ms "
        f"{r.start_cpu * ms:>5.0f}ms {r.wall:>6.0f}  {status}"
    )


def _kib(value: float) -> str:
    return "-" if math.isnan(value) else f"{value / 1024:.1f}K"


@contextlib.contextmanager
def _storage_uri(kind: str, tmp: str) -> Iterator[str]:
    if kind == "pickle":
        yield os.path.join(tmp, "scale.pkl")
    elif kind == "mongodb":
        from orchard.testing.mongo_server import running_mongo_server

        with running_mongo_server(tmp, database="orchard_scale") as uri:
            yield uri
    else:
        yield kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64, 128, 256])
    parser.add_argument("--rounds", type=int, default=5, help="trials per worker")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of one trial")
    parser.add_argument("--storage", default="pickle",
                        help="pickle (a fresh file), mongodb (a SecantusDB server started here), or a URI")
    parser.add_argument("--executor", default="joblib")
    parser.add_argument("--profile", metavar="DIR", help="profile every worker (cProfile), one DIR/PID.prof each")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{args.rounds} rounds of {args.seconds:g} s trials, storage {args.storage}, executor "
          f"{args.executor}, {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory() as tmp, _storage_uri(args.storage, tmp) as uri:
        for workers in args.workers:
            print(row(run(workers, args.rounds, args.seconds, uri, args.executor, args.profile)), flush=True)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    # Run as the importable module ``scale``, so that worker processes find the probes'
    # state in one module (a ``__main__`` function is shipped by value, with its own globals).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import scale

    scale.main()
