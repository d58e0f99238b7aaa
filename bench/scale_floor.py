"""The floor under ``bench/scale.py``: W forked processes sharing one append-only file, decoding nothing.

Each process runs ``--rounds`` trials of ``--seconds`` (a sleep), and between two
trials does what any reader of one shared append-only log must do at the least:
it takes the file's lock (a blocking ``flock``, the kernel's queue, no polling),
reads every byte appended since its offset and checksums it frame by frame
(the frame header and ``crc32``, as Orchard's reader does before decoding a
payload), appends two frames of the sizes an Orchard trial appends (about 300
and 560 bytes), and releases the lock. Nothing is unpickled, checked or
applied. So the figures are what a worker would pay if it decoded only a small
binary summary of other workers' trials: the lower bound of any design that
keeps one shared file and has every worker read all of it.

    python bench/scale_floor.py --workers 128 256 512

Columns as in ``bench/scale.py``: steady-state busy %, gap p95 between a
worker's trials, process CPU per trial per worker (median), bytes read per
worker per trial. Compare with ``bench/scale.py --executor process`` at the
same W and load.
"""

from __future__ import annotations

import fcntl
import os
import statistics
import struct
import tempfile
import time
import zlib

from _harness import scale_options

_FRAME = struct.Struct("<III")  # payload length, crc32(payload), crc32(the first 8 bytes): Orchard's frame
_SIZES = (300, 560)  # an Orchard trial's two frames with bench/scale.py's probe results (docs/scaling.md)


def _frame(size: int) -> bytes:
    payload = os.urandom(size)
    head = struct.pack("<II", size, zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def _catch_up(fd: int, offset: int) -> tuple[int, int]:
    """Read and checksum every frame appended since ``offset``; return the new offset and the bytes read."""
    data = os.pread(fd, os.fstat(fd).st_size - offset, offset)
    view, pos = memoryview(data), 0
    while len(data) - pos >= _FRAME.size:
        length, crc, head_crc = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + length
        if zlib.crc32(view[pos: pos + 8]) != head_crc or zlib.crc32(view[pos + _FRAME.size: end]) != crc:
            raise SystemExit(f"bad frame at {offset + pos}")
        pos = end
    return offset + pos, len(data)


def _worker(path: str, rounds: int, seconds: float, out: int) -> None:
    frames = [_frame(size) for size in _SIZES]
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    offset, rows = 0, []
    for _ in range(rounds):
        cpu = time.process_time()
        fcntl.flock(lock, fcntl.LOCK_EX)
        offset, read = _catch_up(fd, offset)
        for frame in frames:  # the reservation's frame, then (after the trial, here at once) the completion's
            os.write(fd, frame)
        offset += sum(map(len, frames))
        fcntl.flock(lock, fcntl.LOCK_UN)
        start = time.time()
        rows.append(f"{start} {time.process_time() - cpu} {read}")
        time.sleep(seconds)
        rows.append(f"end {time.time()}")
    os.write(out, ("\n".join(rows) + "\n").encode())
    os._exit(0)


def run(workers: int, rounds: int, seconds: float, tmp: str) -> str:
    path = os.path.join(tmp, f"floor-{workers}.log")
    open(path, "wb").close()
    logs, children = [], []
    for i in range(workers):
        log = os.open(os.path.join(tmp, f"w{workers}-{i}.txt"), os.O_WRONLY | os.O_CREAT, 0o644)
        pid = os.fork()
        if pid == 0:
            _worker(path, rounds, seconds, log)
        os.close(log)
        logs.append(os.path.join(tmp, f"w{workers}-{i}.txt"))
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    starts, ends, cpus, reads, gaps = [], [], [], [], []
    for name in logs:
        with open(name) as f:
            lines = f.read().split()
        rows = [lines[i: i + 3] for i in range(0, len(lines), 5)]
        ends_of = [float(lines[i + 4]) for i in range(0, len(lines), 5)]
        worker_starts = [float(r[0]) for r in rows]
        starts.append(worker_starts)
        ends.append(ends_of)
        cpus += [float(r[1]) for r in rows[1:]]
        reads += [int(r[2]) for r in rows[1:]]
        gaps += [s - e for s, e in zip(worker_starts[1:], ends_of)]
    window_start = max(s[0] for s in starts)
    window_end = max(s[-1] for s in starts)
    busy = sum(max(0.0, min(e, window_end) - max(s, window_start))
               for ws, we in zip(starts, ends) for s, e in zip(ws, we))
    efficiency = busy / (workers * (window_end - window_start)) if window_end > window_start else float("nan")
    gaps.sort()
    p95 = gaps[int(0.95 * (len(gaps) - 1))] if gaps else float("nan")
    return (f"{workers:>5} {100 * efficiency:6.1f} {p95 * 1e3:8.0f}ms {statistics.median(cpus) * 1e3:7.2f}ms "
            f"{statistics.median(reads) / 1024:8.1f}K")


def main() -> None:
    args = scale_options(__doc__, [128, 256, 512])
    load = os.getloadavg()
    print(f"{args.rounds} rounds of {args.seconds:g} s, {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'W':>5} {'eff %':>6} {'gap p95':>10} {'cpu/tr':>9} {'read/tr':>9}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            print(run(workers, args.rounds, args.seconds, tmp), flush=True)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
