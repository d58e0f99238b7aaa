"""What an open dashboard costs the workers, and how fast its API answers at 10,000 trials.

1. Workers' throughput (random search, trivial objective, 2 workers on one
   pickle file) with no dashboard, and with ``orchard serve`` running and
   polled the way an open experiment page polls it (every 2 s: the experiment,
   then its trials changed since the last version) -- and with a page polling
   10x as often. Runs alternate (ABC, CBA, ...) so that load on the machine
   hits every side alike; trials/s are taken from the trials' own timestamps,
   first start to last end, so process start-up is excluded. The workers' CPU
   seconds per trial are reported beside it: on a shared machine wall-clock
   throughput swings with the neighbours' load, CPU per trial does not.
2. API latency with 10,000 trials in the experiment: the first call (which
   folds the whole history) and the following calls of each endpoint, each
   after the server's refresh interval so that every call folds the change
   feed again.

3. Learning curves (``--curves``): 2,000 trials of 2,000 reports each and 3 of
   100,000, written with ``restore_trials``; the bytes of each page of trials,
   the server's resident memory, and the size and build time of
   ``orchard plot curves`` as .html.

    python bench/dashboard.py                # 6 alternated rounds of 8,000 trials, then latency
    python bench/dashboard.py --quick        # 1 round of 3,000 trials
    python bench/dashboard.py --curves       # only the learning curves (about a minute)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator

SPACE = {"x": "uniform(-5, 10)", "y": "uniform(0, 15)"}
URL = re.compile(r"http://\S+/")


def trivial(x: float, y: float) -> float:
    return x * x + y


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serving(storage: str, cpu: list[float] | None = None, rss: list[float] | None = None) -> Iterator[str]:
    """``orchard serve --port 0`` on ``storage`` for the block; yields its URL.

    Appends the server's CPU seconds to ``cpu``, and its resident memory (MB) at the block's end to ``rss``.
    """
    proc = subprocess.Popen([sys.executable, "-m", "orchard", "serve", "--storage", storage, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = URL.search(line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"orchard serve did not start: {line!r}")
    try:
        yield match.group(0)
    finally:
        if cpu is not None:
            cpu.append(cpu_seconds(proc.pid))
        if rss is not None:
            with open(f"/proc/{proc.pid}/status") as status:
                rss.extend(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def poll_like_a_page(base: str, name: str, period: float, stop: threading.Event) -> int:
    """Do what an open experiment page does every ``period`` s until ``stop``; return the polls made."""
    version, polls = 0, 0
    while not stop.is_set():
        with contextlib.suppress(OSError):  # the experiment may not be created yet
            get(f"{base}api/experiments/{name}")
            delta = get(f"{base}api/experiments/{name}/trials?since={version}")
            version = delta["version"]  # type: ignore[index]
            polls += 1
        stop.wait(period)
    return polls


def one_run(trials: int, period: float | None) -> tuple[float, float, int, float]:
    """2 workers on a fresh file, with a page polling every ``period`` s (None: no dashboard).

    Returns the workers' trials/s, their CPU seconds per trial (user + system,
    from the worker processes' resource usage once they exited: unlike wall
    time, it does not depend on what else the machine runs), the polls made,
    and the server's CPU seconds per second of the run.
    """
    import orchard

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "orchard.pkl")
        exp = orchard.build_experiment("bench", space=SPACE, algorithm="random", storage=path, max_trials=trials)
        stop, polls, cpu = threading.Event(), [0], [0.0]
        started = time.perf_counter()
        with serving(path, cpu) if period is not None else contextlib.nullcontext("") as base:
            poller = None
            if period is not None:
                poller = threading.Thread(target=lambda: polls.__setitem__(0, poll_like_a_page(base, "bench", period, stop)))
                poller.start()
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            exp.workon(trivial, n_workers=2, executor="process")  # the pool is joined: its CPU is counted
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            stop.set()
            if poller is not None:
                poller.join()
        wall = time.perf_counter() - started
        done = [t for t in exp.fetch_trials() if t.end_time is not None]
        span = max(t.end_time for t in done) - min(t.start_time for t in done)  # type: ignore[type-var, operator]
    worker_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return len(done) / span, worker_cpu / len(done), polls[0], cpu[-1] / wall


def throughput(rounds: int, trials: int) -> None:
    modes = [("no dashboard", None), ("page polling every 2 s", 2.0), ("page polling every 0.2 s", 0.2)]
    rates: dict[str, list[float]] = {label: [] for label, _ in modes}
    costs: dict[str, list[float]] = {label: [] for label, _ in modes}
    server_cpu: dict[str, list[float]] = {label: [] for label, _ in modes}
    for round_ in range(rounds):
        for label, period in modes if round_ % 2 == 0 else modes[::-1]:  # ABC, CBA, ABC, ...
            rate, cost, polls, cpu = one_run(trials, period)
            rates[label].append(rate)
            costs[label].append(cost)
            server_cpu[label].append(cpu)
            print(f"  round {round_ + 1}: {label:<26} {rate:7.0f} trials/s, workers' CPU {cost * 1e6:5.0f} us/trial "
                  f"({polls} polls, server {100 * cpu:.0f} % of a core)", flush=True)
    base_rate, base_cost = statistics.median(rates["no dashboard"]), statistics.median(costs["no dashboard"])
    print(f"\nworkers' throughput and CPU per trial, 2 workers, pickle file ({_load()}):")
    print("| dashboard | median trials/s | vs none | workers' CPU per trial (median) | vs none | server CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, period in modes:
        rate, cost = statistics.median(rates[label]), statistics.median(costs[label])
        cpu = f"{100 * statistics.median(server_cpu[label]):.0f} % of a core" if period is not None else "-"
        print(f"| {label} | {rate:.0f} | {rate / base_rate:.2f}x | {cost * 1e6:.0f} us | {cost / base_cost:.2f}x | {cpu} |")


def latency(n_trials: int = 10_000, calls: int = 15) -> None:
    import orchard
    from orchard.trial import Trial, TrialStatus

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "orchard.pkl")
        exp = orchard.build_experiment("big", space=SPACE, algorithm="random", storage=path, max_trials=2 * n_trials)
        now = time.time()
        trials = [Trial(id=f"{i:032x}", experiment=exp.id, params={"x": -5 + 15 * i / n_trials, "y": (i * 7919 % n_trials) * 15 / n_trials},
                        status=TrialStatus.COMPLETED, objective=float(i % 97), worker=f"host:{i % 8}:w",
                        submit_time=now + i, start_time=now + i, end_time=now + i + 0.5, heartbeat=now + i + 0.5,
                        attempts=1) for i in range(n_trials)]
        assert exp.storage.restore_trials(exp.id, trials) == n_trials
        endpoints = ["api/experiments", "api/experiments/big", "api/experiments/big/trials",
                     "api/experiments/big/trials?since=1"]
        with serving(path) as base:
            first: dict[str, float] = {}
            later: dict[str, list[float]] = {e: [] for e in endpoints}
            for endpoint in endpoints:
                first[endpoint] = timed(base + endpoint)
            for _ in range(calls):
                for endpoint in endpoints:
                    time.sleep(0.55)  # past the server's 0.5 s refresh interval: every call folds again
                    later[endpoint].append(timed(base + endpoint))
    print(f"\nAPI latency, {n_trials:,} trials, pickle file ({_load()}):")
    print("| endpoint | first call | median after | max after |\n|---|---:|---:|---:|")
    for endpoint in endpoints:
        print(f"| `/{endpoint}` | {first[endpoint] * 1e3:.0f} ms | {statistics.median(later[endpoint]) * 1e3:.0f} ms "
              f"| {max(later[endpoint]) * 1e3:.0f} ms |")


def curves(n_trials: int = 2_000, steps: int = 2_000, long: int = 3, long_steps: int = 100_000) -> None:
    import orchard
    from orchard.trial import Trial, TrialStatus

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "orchard.pkl")
        exp = orchard.build_experiment("curves", space=SPACE, algorithm="random", storage=path,
                                       max_trials=2 * n_trials)
        now = time.time()

        def length(i: int) -> int:
            return long_steps if i < long else steps

        trials = [Trial(id=f"{i:032x}", experiment=exp.id, params={"x": i / n_trials, "y": 0.0},
                        status=TrialStatus.PRUNED if i % 3 else TrialStatus.COMPLETED,
                        objective=1.0 / (1 + i),
                        worker=f"host:{i % 8}:w", submit_time=now + i, start_time=now + i,
                        end_time=now + i + 0.5, heartbeat=now + i + 0.5, attempts=1,
                        reports=[(s, 1 / (1 + s * (1 + i % 13))) for s in range(length(i))])
                  for i in range(n_trials + long)]
        assert exp.storage.restore_trials(exp.id, trials) == len(trials)
        del trials
        memory: list[float] = []
        with serving(path, rss=memory) as base:
            sizes, after, more, started = [], 0, True, time.perf_counter()
            while more:
                url = f"{base}api/experiments/curves/trials?after={after}"
                with urllib.request.urlopen(url, timeout=300) as response:
                    body = response.read()
                page = json.loads(body)
                sizes.append(len(body))
                after, more = page["after"], page["more"]
            loaded = time.perf_counter() - started
            drawn = page_times(base + "experiments/curves")
        started = time.perf_counter()
        out = os.path.join(tmp, "curves.html")
        subprocess.run([sys.executable, "-m", "orchard", "plot", "curves", "-n", "curves", "--storage", path,
                        "-o", out], check=True, stdout=subprocess.DEVNULL)
        plotted, size = time.perf_counter() - started, os.path.getsize(out)
    print(f"\nlearning curves, {n_trials:,} trials x {steps:,} reports + {long} x {long_steps:,}, "
          f"pickle file ({_load()}):")
    print(f"  trials API: {len(sizes)} pages, the first {sizes[0] / 1e6:.1f} MB, {sum(sizes) / 1e6:.1f} MB "
          f"in all, {loaded:.1f} s (first read of the file included); server {memory[0]:.0f} MB resident")
    if drawn is not None:
        print(f"  headless Chromium: curves drawn {drawn[0]:.1f} s after opening the page, "
              f"every chart and the table redrawn in {drawn[1] * 1e3:.0f} ms")
    print(f"  orchard plot curves -o curves.html: {size / 1e6:.1f} MB in {plotted:.1f} s")


def page_times(url: str) -> tuple[float, float] | None:
    """Seconds until the page at ``url`` drew its curves, and one redraw of every chart (None: no Chromium).

    The browser runs as the live tests run it (tests/test_dashboard_live.py: Debian's chromium and
    chromium-driver, driven by Selenium).
    """
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        from tests.test_dashboard_live import CHROMEDRIVER, CHROMIUM, start_chromium
    except ImportError:  # pytest or selenium missing
        return None
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        return None
    driver = start_chromium()
    try:
        started = time.perf_counter()
        driver.get(url)
        drawn = "const d = document.getElementById('plot-curves').data; return d && d.length"
        while not driver.execute_script(drawn):
            time.sleep(0.05)
        opened = time.perf_counter() - started
        redraw = driver.execute_script("const t = performance.now(); state.drawnVersion = -1; drawPlots(); "
                                       "renderTable(); return performance.now() - t;")
        driver.get("about:blank")
    finally:
        driver.quit()
    return opened, float(redraw) / 1e3


def timed(url: str) -> float:
    start = time.perf_counter()
    get(url)
    return time.perf_counter() - start



def _load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of short runs")
    parser.add_argument("--curves", action="store_true", help="only the learning curves' payloads and plot")
    args = parser.parse_args()
    if args.curves:
        curves()
        return
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}", flush=True)
    throughput(1 if args.quick else 6, 3000 if args.quick else 8000)
    latency()
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
