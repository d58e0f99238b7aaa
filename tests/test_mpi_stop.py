"""An interruption of the process that called ``workon`` stops its loops on an MPI pool (``mpi4py.futures``).

No signal of that process reaches the MPI ranks (only ``mpiexec``'s own forwards one), nor a Dask event:
the loops are told by the stop mark of :mod:`orchard.executors.children`, which they watch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import orchard
from orchard.trial import TrialStatus

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

MPI_STOPPED = r'''
import os, sys, time
from mpi4py.futures import MPIPoolExecutor
import orchard

def objective(x):
    open(os.path.join(os.environ["RUNNING_DIR"], f"{os.getpid()}-{os.urandom(4).hex()}.running"), "w").close()
    time.sleep(60)  # far longer than the test: only a stop ends it
    return x

if __name__ == "__main__":
    exp = orchard.build_experiment("mpi-stop", space={"x": "uniform(0, 1)"}, storage=sys.argv[1],
                                   max_trials=6)
    pool = MPIPoolExecutor()
    try:
        exp.workon(objective, n_workers=2, executor=pool, progress=False)
    except orchard.Interrupted as err:
        print("INTERRUPTED", err, flush=True)
    pool.shutdown(wait=True)  # as the interpreter's exit does: waits for the loops
    print("SHUT", flush=True)
'''


def _driver(mpiexec: psutil.Process, script: Path) -> psutil.Process:
    """Rank 0 of the job: the process running the script's ``__main__`` (the other ranks serve the pool)."""
    for child in mpiexec.children(recursive=True):
        try:
            if str(script) in child.cmdline() and child.environ().get("OMPI_COMM_WORLD_RANK") == "0":
                return child
        except psutil.Error:
            continue
    raise AssertionError("no rank 0 under mpiexec")


@pytest.mark.timeout(150)
def test_sigterm_to_the_driver_stops_its_loops_on_an_mpi_pool(tmp_path: Path, mpiexec: list[str]) -> None:
    """``kill`` of the Python process running ``workon`` with an ``MPIPoolExecutor`` (an ``on_result`` that
    raises, a Ctrl-C reaching only it): its loops on the MPI ranks were told nothing, ran the whole budget
    on (3 rounds of 60 s trials), and the driver waited for them at exit. They stop now, at once, and give
    their trials back."""
    command = mpiexec
    script, running = tmp_path / "main.py", tmp_path / "running"
    script.write_text(MPI_STOPPED)
    running.mkdir()
    storage = str(tmp_path / "o.pkl")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}, "PYTHONPATH": str(ROOT),
           "RUNNING_DIR": str(running)}
    log = tmp_path / "log"
    with log.open("w") as out:
        proc = subprocess.Popen([*command, "-n", "3", sys.executable, "-m", "mpi4py.futures", str(script),
                                 storage], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(running.glob("*.running"))) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.05)
        _driver(psutil.Process(proc.pid), script).send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pytest.fail("the MPI ranks ran on after their workon was interrupted")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log.read_text()
    assert "INTERRUPTED 2 of 2 running trial(s) released (status interrupted)" in out, out
    assert "SHUT" in out, out
    trials = orchard.get_experiment("mpi-stop", storage=storage).fetch_trials()
    assert sorted(t.status.value for t in trials) == ["interrupted", "interrupted"]
    assert all(t.attempts == 0 for t in trials)
    assert not [t for t in trials if t.status is TrialStatus.COMPLETED]


MPI_UNSPAWNED = r'''
import sys
from mpi4py.futures import MPIPoolExecutor
import orchard

def objective(x):
    return x

if __name__ == "__main__":
    exp = orchard.build_experiment("unspawned", space={"x": "uniform(0, 1)"}, storage=sys.argv[1],
                                   max_trials=4)
    exp.workon(objective, n_workers=2, executor=MPIPoolExecutor(max_workers=512), progress=False)
'''


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("mpiexec")  # skipped where MPI is missing, as the test above
def test_an_mpi_pool_that_cannot_spawn_its_ranks_is_one_error_not_a_hang(tmp_path: Path) -> None:
    """An ``MPIPoolExecutor`` started under plain ``python`` spawns its ranks as the first task comes; when
    MPI refuses (more ranks than slots), mpi4py's thread that spawns them dies and leaves every task
    pending: ``workon`` waited for ever. It says what happened instead."""
    script = tmp_path / "main.py"
    script.write_text(MPI_UNSPAWNED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "OMPI_MCA_rmaps"))}
    try:
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / "o.pkl")], cwd=tmp_path,
                              env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                              timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("workon waited for ever on an MPI pool whose ranks could not be spawned")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    said = "orchard.errors.ExecutorError: executor 'MPIPoolExecutor' could not start its worker processes"
    assert last.startswith(said), proc.stderr
    assert orchard.get_experiment("unspawned", storage=str(tmp_path / "o.pkl")).fetch_trials() == []
