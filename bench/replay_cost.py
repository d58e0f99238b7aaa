"""What one other worker's trial costs a worker that shares its pickle file, stage by stage.

Every worker on one file reads every other worker's records: a trial appends two
frames (its reservation and its completion), and each worker decodes, checks and
applies both, then folds the trial into its algorithm's history. This writes
``--trials`` such trials (results shaped like ``bench/scale.py``'s probe) into a
fresh file and times each stage over all of them in one process (process CPU,
best of ``--repeat``), in microseconds per trial::

    python bench/replay_cost.py                             # 2,000 trials, best of 3
    python bench/replay_cost.py --trials 5000 --repeat 5    # the figures in docs/scaling.md

Stages, each read two ways: *decoded* (every record unpickled and checked, as
``orchard db check`` reads a file) and *by summaries* (what a worker's replay does:
another worker's trial is built from the summary after its record and decoded
only when its results are read, :mod:`orchard.storages.pickled.summaries`).
``frames`` (checksums, then records or summaries: ``fileformat.scan``), of which
``unpickle`` and ``check`` alone; ``apply`` (building the trials and indexing
them in the table); ``worker`` (all of it as a worker does it: a new reader
replays the file, and a random search's history folds it in, counts its
observations and lists the pending points). A worker's CPU per trial at W
workers is about W times ``worker``, plus its own verbs, plus what contention
adds (``bench/scale.py``).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
from collections.abc import Callable

_PROBE_RESULTS = {"objective": 1.0, "pid": 1234, "t0": 1.7e9, "t1": 1.7e9 + 5, "waits": [1.2e-4, 1.2e-2],
                  "holds": [7.2e-4, 8e-4], "rss_kib": 35000, "pss_kib": 9000, "uss_kib": 8200, "sklearn": False,
                  "rchar": 63000, "cpu": 0.0051, "commands": 0, "mongo_bytes": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from orchard.history import History
    from orchard.storages.pickled import PickledStorage, fileformat
    from orchard.storages.pickled.records import check_batch
    from orchard.storages.table import TrialTable

    n = args.trials
    with tempfile.TemporaryDirectory() as tmp:
        storage = PickledStorage(os.path.join(tmp, "replay.pkl"), fsync=False, compact_bytes=1 << 40)
        exp = storage.create_experiment("replay", {})
        for i in range(n):
            trial = storage.register_trial(exp, {"x": random.random(), "y": random.random()}, worker=f"w{i}",
                                           budget=None)
            storage.complete_trial(trial.id, f"w{i}", 1.0, _PROBE_RESULTS)
        with open(storage.path, "rb") as f:
            data = f.read()[fileformat.HEADER_SIZE:]
        start = fileformat.HEADER_SIZE
        batches = fileformat.scan(data, start, storage.path).batches
        payloads, pos = [], 0
        while pos < len(data):
            length = fileformat.FRAME.unpack_from(data, pos)[0]
            payloads.append(data[pos + fileformat.FRAME.size: pos + fileformat.FRAME.size + length])
            pos += fileformat.FRAME.size + length

        lazy = fileformat.scan(data, start, storage.path, lazy=True).batches

        def apply(batches: list[list[dict[str, object]]]) -> None:
            table = TrialTable()
            for batch in batches:
                table.apply_all(batch)

        def worker(decoding: bool) -> None:
            """What a worker does with the file: replay it and fold it into a random search's history."""
            scan_file = fileformat.scan_file
            if decoding:  # every record unpickled and checked (what `db check` reads)
                fileformat.scan_file = lambda *a, lazy=False: scan_file(*a, lazy=False)  # type: ignore[misc]
            try:
                history = History(PickledStorage(storage.path, fsync=False), exp)
                history.refresh()
                len(history.pending())
                len(history.observations)
            finally:
                fileformat.scan_file = scan_file

        stages: list[tuple[str, Callable[[], object]]] = [
            ("frames, decoded", lambda: fileformat.scan(data, start, storage.path)),
            ("  of which unpickle", lambda: [fileformat._RecordUnpickler(io.BytesIO(p)).load() for p in payloads]),
            ("  of which check", lambda: [check_batch(b, len(p)) for b, p in zip(batches, payloads)]),
            ("frames, by summaries", lambda: fileformat.scan(data, start, storage.path, lazy=True)),
            ("apply, decoded", lambda: apply(batches)),
            ("apply, by summaries", lambda: apply(lazy)),
            ("worker, decoded", lambda: worker(True)),
            ("worker, by summaries", lambda: worker(False)),
        ]
        print(f"{n} trials, {len(payloads)} frames, {len(data) / n:.0f} bytes per trial")
        for name, stage in stages:
            best = min(_cpu(stage) for _ in range(args.repeat)) / n * 1e6
            print(f"{name:22s} {best:6.1f} µs per trial")


def _cpu(stage: Callable[[], object]) -> float:
    start = time.process_time()
    stage()
    return time.process_time() - start


if __name__ == "__main__":
    main()
