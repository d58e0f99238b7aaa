"""Collecting garbage less often while workers run in this process (see :func:`fewer_collections`)."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["fewer_collections"]

#: Allocations between two young-generation collections while a worker runs (Python's default: 700).
_YOUNG_COLLECTION_EVERY = 50_000
_collections_lock = threading.Lock()
_workers_running = 0  # workers running in this process (guarded by _collections_lock)
_thresholds_before: tuple[int, int, int] = gc.get_threshold()  # to restore when the last one stops


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect the youngest generation less often while a worker runs in this process.

    A worker's history and its storage's table hold every trial: many objects,
    long-lived and acyclic. With Python's default threshold, a refresh that folds
    in a few hundred changed trials triggers collections that traverse them again
    and again: the change feed cost 25 µs per trial at 256 workers against 7 µs
    with the collector off (docs/scaling.md). The thresholds are restored when
    the last worker of the process stops.
    """
    global _workers_running, _thresholds_before
    with _collections_lock:
        if _workers_running == 0:
            _thresholds_before = young, middle, old = gc.get_threshold()
            gc.set_threshold(max(young, _YOUNG_COLLECTION_EVERY), middle, old)
        _workers_running += 1
    try:
        yield
    finally:
        with _collections_lock:
            _workers_running -= 1
            if _workers_running == 0:
                gc.set_threshold(*_thresholds_before)
