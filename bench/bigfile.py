"""Build a pickle storage file shaped like a lab's shared default: many experiments, a long history.

Three template experiments are run for real in a ``memory://`` storage (random search;
a median pruner with reports; two objectives), and their experiment and trial records are
cloned, with new ids and params, into ``--experiments`` experiments holding ``--trials``
trials in all (sizes drawn from a long-tailed distribution). The file is written as a
compacted snapshot (what the file is right after a compaction), or with ``--log`` as the
history a worker appends (each trial's reservation, reports and result, one frame each)::

    python bench/bigfile.py /tmp/lab.pkl --experiments 300 --trials 80000
    python bench/bigfile.py /tmp/lab.pkl --experiments 300 --trials 80000 --log
    python bench/bigfile.py /tmp/lab.pkl --experiments 300 --trials 80000 --growth-ratio 4

A small experiment named ``small`` (random search, a few trials) is added last; the same
experiment is also written alone to ``PATH.small.pkl``, to compare against.
With ``--growth-ratio K``, the history is appended as workers write it and compacted by Orchard
whenever the log has grown past ``max(1 MiB, K × the last snapshot)`` (Orchard's rule has K = 1);
each compaction is printed, and the file as it stood before the last one is kept as
``PATH.peak.pkl`` (no ``PATH.small.pkl``).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Iterator
from typing import Any


def _templates() -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    import orchard
    from orchard.storages import get_storage

    storage = get_storage("memory://bigfile-templates")

    def plain(x: float, y: float) -> float:
        return (x - 1) ** 2 + y

    def pruned(x: float, y: float) -> float:
        for step in range(1, 21):
            orchard.report((x - 1) ** 2 + y + 1 / step, step=step)
            if orchard.should_prune():
                raise orchard.TrialPruned()
        return (x - 1) ** 2 + y

    def two(x: float, y: float) -> dict[str, float]:
        return {"error": (x - 1) ** 2, "latency_ms": y * 10, "size_mb": x + y}

    space = {"x": "uniform(-5, 5)", "y": "uniform(0, 3)"}
    runs: list[tuple[str, Any, dict[str, Any]]] = [
        ("plain", plain, {}),
        ("pruned", pruned, {"pruner": "median"}),
        ("two", two, {"objectives": {"error": "min", "latency_ms": "min"}}),
    ]
    out = {}
    for name, fn, extra in runs:
        exp = orchard.build_experiment(name, space=space, max_trials=12, storage=storage, **extra)
        exp.workon(fn, n_workers=1)
        record = storage.get_experiment(name)
        assert record is not None
        trials = [t.to_record() for t in storage.fetch_trials(record.id)]
        out[name] = (record.to_dict(), trials)
    return out


def _experiments(count: int, total: int, rng: random.Random) -> list[int]:
    """Trial counts of ``count`` experiments summing to about ``total``: a few big ones, many small."""
    weights = [rng.paretovariate(1.2) for _ in range(count)]
    scale = total / sum(weights)
    return [max(3, int(w * scale)) for w in weights]


def _clone(template: dict[str, Any], exp_id: str, params: dict[str, Any], now: float,
           extra: int) -> dict[str, Any]:
    from orchard.space import trial_id

    record = dict(template, id=trial_id(exp_id, params), experiment=exp_id, params=params)
    if extra and record.get("results"):  # the metrics a lab's script records besides its objective
        record["results"] = {**record["results"], **{f"metric_{i:03d}": now % (i + 7) for i in range(extra)}}
    for field in ("submit_time", "start_time", "end_time", "heartbeat"):
        if record.get(field) is not None:
            record[field] = now
    record["worker"] = f"host-{int(now) % 97}-{int(now * 1000) % 99991}"
    return record


def _records(sizes: list[int], templates: dict[str, Any], rng: random.Random, log: bool,
             small: int, extra: int) -> Iterator[list[dict[str, Any]]]:
    """Frames of records: the snapshot's (64 records each) or the log's (one verb each)."""
    from orchard.storages.base import new_experiment_id

    kinds = list(templates)
    ids: set[str] = set()
    now = time.time() - 86400 * 365
    pending: list[dict[str, Any]] = []
    plan = [(f"exp-{i:03d}", kinds[i % len(kinds)], n) for i, n in enumerate(sizes)]
    plan.append(("small", "plain", small))
    for name, kind, n in plan:
        config, trials = templates[kind]
        exp_id = new_experiment_id(None, ids)
        ids.add(exp_id)
        experiment = {"op": "experiment", "record": dict(config, id=exp_id, name=name, created=now)}
        if log:
            yield [experiment]
        else:
            pending.append(experiment)
        for k in range(n):
            now += 0.5
            template = trials[k % len(trials)]
            params = {"x": rng.uniform(-5, 5), "y": rng.uniform(0, 3)}
            record = _clone(template, exp_id, params, now, extra if name != "small" else 0)
            if log:
                reserved = {key: value for key, value in record.items()
                            if key not in ("objective", "results", "reports", "verdict", "end_time")}
                yield [{"op": "trial", "trial": dict(reserved, status="reserved", results={})}]
                for step, value in record.get("reports", []):
                    yield [{"op": "report", "trial": record["id"], "step": step, "value": value,
                            "heartbeat": now}]
                yield [{"op": "trial", "trial": record}]
            else:
                pending.append({"op": "trial", "trial": record})
                if len(pending) >= 64:
                    yield pending
                    pending = []
    if pending:
        yield pending


def write(path: str, experiments: int, trials: int, log: bool, small: int, seed: int, extra: int) -> None:
    from orchard.storages.pickled import fileformat

    templates = _templates()
    rng = random.Random(seed)
    sizes = _experiments(experiments, trials, rng)
    for target, plan in ((path, sizes), (path + ".small.pkl", [])):
        batches = _records(plan, templates, rng, log, small, extra)
        frames = (fileformat.encode_frame(batch) for batch in batches)
        tmp = target + ".tmp"
        with open(tmp, "wb") as f:
            f.write(fileformat.encode_header(os.urandom(16), fileformat.HEADER_SIZE))
            base = fileformat.HEADER_SIZE
            for frame in frames:
                f.write(frame)
                base += len(frame)
        if not log:  # a snapshot: the header says where it ends (compaction then waits for the log to grow)
            with open(tmp, "r+b") as f:
                f.write(fileformat.encode_header(os.urandom(16), base))
        os.replace(tmp, target)
        print(f"{target}: {os.path.getsize(target) / 2**20:.1f} MiB, "
              f"{len(plan) + 1} experiments, {sum(plan) + small} trials")


def simulate(path: str, experiments: int, trials: int, small: int, seed: int, extra: int,
             ratio: float) -> None:
    """Append the history as workers do, compacting (with Orchard) once the log has grown past
    ``max(1 MiB, ratio × the last snapshot)``; keep the file as it stood before its last compaction."""
    import shutil

    from orchard.storages.pickled import PickledStorage, fileformat

    rng = random.Random(seed)
    sizes = _experiments(experiments, trials, rng)
    with open(path, "wb") as f:
        f.write(fileformat.encode_header(os.urandom(16), fileformat.HEADER_SIZE))
    storage = PickledStorage(path, fsync=False, compact_bytes=1 << 40)  # compacted here, by the rule given
    base, held = fileformat.HEADER_SIZE, 0.0
    f = open(path, "ab")
    for batch in _records(sizes, _templates(), rng, True, small, extra):
        f.write(fileformat.encode_frame(batch))
        if f.tell() - base <= max(1 << 20, ratio * base):
            continue
        f.close()
        shutil.copyfile(path, path + ".peak.pkl")
        storage.list_experiments()  # what the writer had replayed before it took the lock
        started = time.process_time()
        before, base = storage.compact()
        held += time.process_time() - started
        print(f"compacted {before / 2**20:.1f} MiB into {base / 2**20:.1f} MiB "
              f"(CPU {held:.1f} s in all compactions)")
        f = open(path, "ab")
    f.close()
    print(f"{path}: {os.path.getsize(path) / 2**20:.1f} MiB; {path}.peak.pkl: the file before its last "
          f"compaction, {os.path.getsize(path + '.peak.pkl') / 2**20:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--experiments", type=int, default=300)
    parser.add_argument("--trials", type=int, default=80_000)
    parser.add_argument("--small", type=int, default=20, help="trials of the experiment named small")
    parser.add_argument("--log", action="store_true",
                        help="write the history as appended frames, not a snapshot")
    parser.add_argument("--growth-ratio", type=float, metavar="K",
                        help="append the history as workers do, compacting it with Orchard once the log has "
                             "grown past max(1 MiB, K x the last snapshot); prints each compaction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", type=int, default=0, help="extra float metrics in each trial's results")
    args = parser.parse_args()
    if args.growth_ratio:
        simulate(args.path, args.experiments, args.trials, args.small, args.seed, args.extra,
                 args.growth_ratio)
    else:
        write(args.path, args.experiments, args.trials, args.log, args.small, args.seed, args.extra)


if __name__ == "__main__":
    main()
