"""Per-trial and per-worker resources: memory limits, GPU assignment, and running out of them.

Memory: ``trial_memory_limit`` is parsed once at the edge by :func:`parse_memory`
(bytes, or text such as ``"4GB"``, ``"512 MiB"``). An evaluation under a limit runs
in a child process (as under ``trial_timeout``) whose whole process tree's
resident memory :mod:`orchard.isolation` watches; past the limit the evaluation
is killed and the trial broken with reason ``memory`` and the peak seen.

GPUs: :func:`assign_devices` deals ``CUDA_VISIBLE_DEVICES`` values to local
workers round-robin from the list the user gave; :func:`visible_devices` sets
one for the duration of a worker and restores the previous value (executors
reuse their processes). A worker with devices carries them in its name, after
:data:`DEVICES_MARK` (``host:pid:uuid/gpus=0,1``), which is what ``orchard
status`` shows: no storage field is needed.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from orchard.errors import ConfigurationError, ExecutorError
from orchard.naming import worker_name

__all__ = [
    "DEVICES_ENV",
    "DEVICES_MARK",
    "OUT_OF_FILES",
    "assign_devices",
    "devices_of",
    "format_bytes",
    "no_room",
    "parse_gpus",
    "parse_memory",
    "token_of",
    "visible_devices",
    "worker_label",
]

#: What separates a worker's identity from the devices it was given, in its name.
DEVICES_MARK = "/gpus="
DEVICES_ENV = "CUDA_VISIBLE_DEVICES"
#: The errnos of an open, a pipe or a socket refused for want of files (ulimit -n, or the system's limit).
OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
#: A device CUDA_VISIBLE_DEVICES names: its index, or its UUID (``GPU-…``, or a MIG instance's ``MIG-…``).
_DEVICE = re.compile(r"^(?:[0-9]+|GPU-\S+|MIG-\S+)$")
_MEMORY = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-zA-Z]*)\s*$")


# -- memory -------------------------------------------------------------------------


def parse_memory(value: str | float | None) -> int | None:
    """Parse a memory size: bytes (a number) or text with a unit (``"4GB"``, ``"512 MiB"``).

    Units are B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024),
    in any case.

    Args:
        value: the size, or ``None`` for no limit.

    Returns:
        The size in bytes, or ``None``.

    Raises:
        ConfigurationError: not a positive size with a known unit.
    """
    if value is None:
        return None
    hint = "give bytes or a size with a unit, e.g. 4GB, 512MiB"
    if isinstance(value, bool):
        raise ConfigurationError(f"trial_memory_limit {value!r} is not a memory size; {hint}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _MEMORY.match(str(value))
        if match is None or match["unit"].lower() not in _UNITS:
            raise ConfigurationError(f"trial_memory_limit {value!r} is not a memory size; {hint}")
        number, unit = float(match["number"]), match["unit"].lower()
    if not math.isfinite(number * _UNITS[unit]):  # nan, inf, or more digits than a float holds
        raise ConfigurationError(f"trial_memory_limit {value!r} is not a memory size; {hint}")
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ConfigurationError(f"trial_memory_limit must be positive, got {value!r}; {hint}")
    return size


def format_bytes(size: float, binary: bool = False) -> str:
    """``1536000000`` -> ``"1.54 GB"`` (powers of 1000, as limits are usually written); ``binary``:
    ``103599104`` -> ``"98.8 MiB"``, ``512`` -> ``"0.5 KiB"`` (powers of 1024 to a tenth, as file sizes)."""
    if binary:
        prefix, base = ("Mi", 2**20) if size >= 2**20 else ("Ki", 2**10)
        return f"{size / base:.1f} {prefix}B"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} B"


# -- GPUs ---------------------------------------------------------------------------


def parse_gpus(value: str | int | Sequence[int | str] | None) -> list[str] | None:
    """Parse a device list: ``"0,1"``, ``[0, 1]``, ``3`` or ``None``.

    Returns:
        The device ids as strings (``CUDA_VISIBLE_DEVICES`` entries), or ``None``.

    Raises:
        ConfigurationError: an empty list, an entry with a comma or a space, an entry that is no device
            index or UUID (``cuda:0``, ``all``, ``-1``), or a device listed twice.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigurationError(f"gpus {value!r} is not a list of device ids; give e.g. gpus=[0, 1] or --gpus 0,1")
    items: list[Any]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value)
    devices = [str(item).strip() for item in items]
    if not devices or any(not d or "," in d or " " in d for d in devices):
        raise ConfigurationError(
            f"gpus {value!r} is not a list of device ids; give e.g. gpus=[0, 1] or --gpus 0,1"
        )
    unknown = [repr(item) for item, device in zip(items, devices)
               if isinstance(item, (bool, float)) or not _DEVICE.match(device)]
    if unknown:  # CUDA stops reading CUDA_VISIBLE_DEVICES at an entry it does not know: no GPU, silently
        raise ConfigurationError(
            f"gpus {value!r} is not a list of device ids: CUDA knows no device {unknown[0]} and would "
            "show the objective no GPU; name each by its index such as 0 or a UUID such as GPU-8932f937-… "
            "(nvidia-smi -L), e.g. gpus=[0, 1] or --gpus 0,1"
        )
    twice = next((d for at, d in enumerate(devices) if d in devices[:at]), None)
    if twice is not None:  # round-robin already shares devices among more workers: a repeat is a typo
        once = ",".join(dict.fromkeys(devices))
        raise ConfigurationError(
            f"gpus {value!r} names device {twice} twice; list each device once, e.g. gpus=[{once.replace(',', ', ')}] "
            f"or --gpus {once} (workers beyond the devices share them round-robin)"
        )
    return devices


def assign_devices(gpus: Sequence[str] | None, per_worker: int, n_workers: int,
                   shared_environment: bool = False) -> list[str | None]:
    """Deal devices to ``n_workers`` local workers, ``per_worker`` each, round-robin.

    ``["0", "1"]`` to 4 workers gives ``"0", "1", "0", "1"``; ``["0", "1", "2", "3"]``
    with ``per_worker=2`` to 2 workers gives ``"0,1", "2,3"``.

    Args:
        gpus: the device ids (from :func:`parse_gpus`), or ``None``.
        per_worker: how many devices each worker gets.
        n_workers: how many workers.
        shared_environment: the workers are threads of one process (one ``os.environ``).

    Returns:
        One ``CUDA_VISIBLE_DEVICES`` value per worker, or ``None`` each when ``gpus`` is ``None``.

    Raises:
        ConfigurationError: ``per_worker`` is not a positive integer or exceeds the devices
            given, or devices were asked for workers that share one environment.
    """
    if isinstance(per_worker, bool) or not isinstance(per_worker, int) or per_worker < 1:
        raise ConfigurationError(f"gpus_per_worker must be a positive integer, got {per_worker!r}")
    if gpus is None:
        return [None] * n_workers
    if shared_environment:
        raise ConfigurationError(
            "gpus cannot be given to thread workers: they share one environment, so one "
            "CUDA_VISIBLE_DEVICES; use executor='joblib' or 'process'"
        )
    if per_worker > len(gpus):
        raise ConfigurationError(
            f"gpus_per_worker={per_worker} but only {len(gpus)} device(s) were given ({','.join(gpus)}); "
            "list more devices or lower gpus_per_worker"
        )
    return [",".join(gpus[(i * per_worker + k) % len(gpus)] for k in range(per_worker))
            for i in range(n_workers)]


@contextlib.contextmanager
def visible_devices(devices: str | None) -> Iterator[None]:
    """Set ``CUDA_VISIBLE_DEVICES`` to ``devices`` while the block runs (nothing when ``None``).

    The previous value is restored afterwards, because executors reuse their processes.
    """
    if devices is None:
        yield
        return
    previous = os.environ.get(DEVICES_ENV)
    os.environ[DEVICES_ENV] = devices
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(DEVICES_ENV, None)
        else:
            os.environ[DEVICES_ENV] = previous


def devices_of(worker: str | None) -> str | None:
    """The devices recorded in a worker's name (``host:pid:uuid/gpus=0,1`` -> ``"0,1"``), if any."""
    if not worker or DEVICES_MARK not in worker:
        return None
    return worker.rpartition(DEVICES_MARK)[2]


def token_of(worker: str | None) -> str | None:
    """The token a worker name ends with (``host:pid:TOKEN/gpus=0,1`` -> ``"TOKEN"``), if it has a name."""
    return None if worker is None else worker.split(DEVICES_MARK, 1)[0].rsplit(":", 1)[-1]


def worker_label(devices: str | None, token: str | None = None) -> str:
    """A new worker identity, ``host:pid:uuid`` (see :func:`worker_name`), then ``/gpus=DEVICES`` if it has devices."""
    name = worker_name(token)
    return f"{name}{DEVICES_MARK}{devices}" if devices else name


def no_room(err: OSError) -> OSError | ExecutorError:
    """``err``, or for running out of files, processes or memory as an evaluation starts, an
    :class:`ExecutorError` saying so: the trial is not to blame (broken with the OSError, ``max_broken``
    of them stopped the experiment), and the worker gives it back and stops
    (:class:`~orchard.worker.Worker`)."""
    if err.errno not in OUT_OF_FILES | {errno.EAGAIN, errno.ENOMEM}:
        return err
    return ExecutorError(
        f"a worker could not start a child process to evaluate its trial ({type(err).__name__}: {err}), so "
        "it gave the trial back and stopped; this process has run out of open files (ulimit -n) or processes "
        "(ulimit -u): raise the limit or run fewer workers")
