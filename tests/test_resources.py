"""Resource settings a user gives: memory sizes, GPU lists, executor instances, and status of devices."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import orchard
from orchard.cli import main
from orchard.cli.status import _status_lines, experiment_status
from orchard.errors import ConfigurationError
from orchard.executors import make_executor
from orchard.executors.capacity import THREAD_LOOPS, Machine, check_capacity
from orchard.resources import assign_devices, devices_of, parse_gpus, parse_memory
from tests import workloads


@pytest.mark.parametrize(("text", "size"), [
    ("4GB", 4 * 10**9), ("400 MB", 400 * 10**6), ("1.5gb", 1_500_000_000), ("512MiB", 512 * 2**20),
    ("2 GiB", 2 * 2**30), (1_000_000, 1_000_000), ("123", 123), (None, None),
])
def test_memory_sizes_parse_to_bytes(text: str | int | None, size: int | None) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("bad", ["4 parsecs", -1, "-1GB", 0, "", "GB", "4 GB extra", True, float("nan"), float("inf")])
def test_bad_memory_sizes_are_one_clear_error(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="trial_memory_limit") as info:
        parse_memory(bad)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_bad_memory_limit_fails_workon_before_anything_runs(tmp_path: Path) -> None:
    exp = orchard.build_experiment("m", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=2)
    for bad in ("4 parsecs", -1, float("nan")):
        with pytest.raises(ConfigurationError, match="trial_memory_limit"):
            exp.workon(workloads.quadratic, trial_memory_limit=bad, executor="single", progress=False)
    assert exp.fetch_trials() == []


def test_bad_memory_limit_on_the_command_line_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused_hunt(tmp_path, monkeypatch, capsys, "--trial-memory-limit", "4 parsecs")
    assert "trial_memory_limit '4 parsecs'" in line


def _refused_hunt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                  *options: str) -> str:
    """The one line ``hunt`` with these options fails with, once it is known nothing was stored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "t.py").write_text("print('never run')\n")
    code = main(["hunt", "-n", "e", "--storage", "o.pkl", *options, "python", "t.py", "--x~uniform(0, 1)"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(lines) == 1, lines
    assert not (tmp_path / "o.pkl").exists(), "the experiment was stored before its bad setting was refused"
    return lines[0]


def test_a_device_listed_twice_is_refused_naming_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--gpus 0,1,0 dealt device 0 to more workers than 1, and --gpus 0,0 --gpus-per-worker 2 gave one device as two."""
    line = _refused_hunt(tmp_path, monkeypatch, capsys, "--gpus", "0,1,0", "--n-workers", "2")
    assert line.endswith("gpus '0,1,0' names device 0 twice; list each device once, e.g. gpus=[0, 1] or --gpus 0,1 "
                         "(workers beyond the devices share them round-robin)"), line
    with pytest.raises(ConfigurationError, match=r"gpus \[3, '3'\] names device 3 twice"):
        parse_gpus([3, "3"])


def test_devices_are_dealt_round_robin() -> None:
    assert assign_devices(parse_gpus([0, 1]), 1, 4) == ["0", "1", "0", "1"]
    assert assign_devices(parse_gpus("0,1,2,3"), 2, 2) == ["0,1", "2,3"]
    assert assign_devices(parse_gpus("0, 1, 2"), 2, 3) == ["0,1", "2,0", "1,2"]
    assert assign_devices(None, 1, 3) == [None, None, None]  # nothing set unless asked
    with pytest.raises(ConfigurationError, match="gpus_per_worker=3 but only 2"):
        assign_devices(["0", "1"], 3, 2)
    with pytest.raises(ConfigurationError, match="not a list of device ids"):
        parse_gpus("0,,1")


@pytest.mark.parametrize("per_worker", [0, -1, 1.5, True])
def test_a_bad_gpus_per_worker_is_refused_without_gpus_too(per_worker: object) -> None:
    # as `orchard hunt --gpus-per-worker 0` is, whether --gpus is given or not
    exp = orchard.build_experiment("g", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=1)
    with pytest.raises(ConfigurationError, match="gpus_per_worker must be a positive integer"):
        exp.workon(lambda x: x, executor="single", gpus_per_worker=per_worker)  # type: ignore[arg-type]
    assert exp.fetch_trials() == []


@pytest.mark.parametrize("gpus", [
    "cuda:0,cuda:1", ["cuda:0"], "all", [-1], "-1", [0.5], [0, True], "gpu0", [None],
])
def test_a_device_cuda_would_not_see_is_refused_instead_of_hiding_every_gpu(gpus: object) -> None:
    """CUDA_VISIBLE_DEVICES=cuda:0 (or all, -1, 0.5) makes CUDA see no device: the objective would run on the CPU."""
    with pytest.raises(ConfigurationError, match=r"is not a list of device ids.*index such as 0 or a UUID") as info:
        parse_gpus(gpus)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_device_indexes_and_uuids_are_accepted() -> None:
    assert parse_gpus([0, "1", " 2"]) == ["0", "1", "2"]
    uuids = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6,MIG-GPU-8932f937-d72c-4106-c12f-20bd9faed9f6/1/0"
    assert parse_gpus(uuids) == uuids.split(",")
    mig = "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f"
    assert parse_gpus([mig]) == [mig]


def test_gpus_with_thread_workers_are_refused() -> None:
    exp = orchard.build_experiment("g", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=2)
    with pytest.raises(ConfigurationError, match="share one environment"):
        exp.workon(workloads.quadratic, n_workers=2, executor="thread", gpus=[0, 1], progress=False)
    with ThreadPoolExecutor(2) as pool, pytest.raises(ConfigurationError, match="share one environment"):
        exp.workon(workloads.quadratic, n_workers=2, executor=pool, gpus=[0, 1], progress=False)
    with pytest.raises(ConfigurationError, match="share one environment"):
        exp.workon(workloads.quadratic, n_workers=2, executor="dask", executor_config={"processes": False},
                   gpus=[0, 1], progress=False)


def test_status_shows_the_devices_of_each_live_worker() -> None:
    exp = orchard.build_experiment("s", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=4)
    exp.storage.register_trial(exp.id, {"x": 0.1}, worker="node1:12:ab12cd34/gpus=0,1")
    exp.storage.register_trial(exp.id, {"x": 0.2}, worker="node1:13:ef56ab78")
    status = experiment_status(exp)
    assert sorted((w["worker"], w["devices"]) for w in status["workers"]) == [
        ("node1:12:ab12cd34/gpus=0,1", "0,1"), ("node1:13:ef56ab78", None)]
    lines = _status_lines(status)
    assert any("node1:12:ab12cd34/gpus=0,1" in line and "devices 0,1" in line for line in lines)
    assert not any("node1:13" in line and "devices" in line for line in lines)
    assert devices_of("h:1:u") is None


def test_a_thread_pool_you_own_is_used_and_left_open() -> None:
    exp = orchard.build_experiment("t", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=6)
    with ThreadPoolExecutor(2, thread_name_prefix="mine") as pool:
        stats = exp.workon(workloads.quadratic, n_workers=2, executor=pool, progress=False)
        assert stats["counts"]["completed"] == 6
        assert pool.submit(lambda: 41 + 1).result(timeout=10) == 42  # still open and usable


def test_unknown_executor_lists_names_and_instances() -> None:
    exp = orchard.build_experiment("u", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=1)
    with pytest.raises(ConfigurationError, match="unknown executor 'ray'.*concurrent.futures.Executor"):
        exp.workon(workloads.quadratic, executor="ray", progress=False)


@pytest.mark.parametrize(("executor", "n_workers"), [("process", 100_000), ("joblib", 100_000), ("thread", 10**7)])
def test_more_local_workers_than_the_machine_holds_are_one_line_before_any_starts(
        executor: str, n_workers: int) -> None:
    """100,000 processes need 781 GiB (8 MiB each); 10 million threads pass any kernel's pid_max (2**22)."""
    with pytest.raises(ConfigurationError, match=f"n_workers={n_workers} '{executor}' workers do not fit") as info:
        make_executor(executor, n_workers)  # its pool would start them as the loops are submitted
    assert "\n" not in str(info.value) and "room for" in str(info.value)
    exp = orchard.build_experiment("many", space={"x": "uniform(0, 1)"}, storage="memory://")
    with pytest.raises(ConfigurationError, match=f"n_workers={n_workers}"):
        exp.workon(workloads.quadratic, n_workers=n_workers, executor=executor, progress=False)
    assert exp.fetch_trials() == []


def test_512_forked_workers_fit_a_machine_of_24_gib_and_clusters_are_not_capped() -> None:
    machine = Machine(available_memory=23 * 2**30, free_tasks=32_000)  # docs/scaling.md's 512, on 2 cores
    for executor in ("process", "joblib"):
        check_capacity(executor, 512, machine)
    with pytest.raises(ConfigurationError, match="23.0 GiB of memory is available.* room for 2944"):
        check_capacity("process", 4000, machine)
    with pytest.raises(ConfigurationError, match="32000 kernel tasks are free, room for 32000"):
        check_capacity("process", 40_000, Machine(available_memory=None, free_tasks=32_000))
    check_capacity("dask", 100_000, Machine(available_memory=2**30, free_tasks=100))  # they run elsewhere


@pytest.mark.parametrize("executor, config", [("thread", None), ("dask", {"processes": False})],
                         ids=["thread", "in-process-dask"])
def test_more_thread_workers_than_one_interpreter_runs_are_refused_whatever_the_machine(
        executor: str, config: dict[str, object] | None) -> None:
    """``executor="thread"`` with ``n_workers=10_000`` was admitted (0.4 MiB each fits 24 GiB): its loops take
    turns on one interpreter, which 512 of them kept busy only 31.5 % of the time with 5 s trials."""
    check_capacity("thread", THREAD_LOOPS, Machine(available_memory=23 * 2**30, free_tasks=32_000))
    with pytest.raises(ConfigurationError, match=f"n_workers=10000 'thread' workers do not fit this machine: loops "
                       f"running as threads take turns on one interpreter, .* room for {THREAD_LOOPS}; ") as info:
        make_executor(executor, 10_000, config)
    assert "executor='process'" in str(info.value) and "\n" not in str(info.value)


def test_hunt_refuses_more_workers_than_the_machine_holds_before_storing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused_hunt(tmp_path, monkeypatch, capsys, "--n-workers", "100000", "--executor", "process")
    assert "n_workers=100000 'process' workers do not fit" in line


REPORT_DEVICES = r'''
import json, os
with open(os.environ["ORCHARD_RESULTS_PATH"], "w") as handle:
    json.dump({"objective": 1.0, "devices": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")}, handle)
'''


def test_gpus_and_memory_limit_come_from_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "t.py").write_text(REPORT_DEVICES)
    (tmp_path / "orchard.yaml").write_text("gpus: [3]\ntrial_memory_limit: 2GB\n")
    command = [sys.executable, "t.py", "--x~uniform(0, 1)"]
    assert main(["hunt", "-n", "e", "--storage", "o.pkl", "--max-trials", "2", *command]) == 0
    trials = orchard.get_experiment("e", storage="o.pkl").fetch_trials()
    assert [t.results["devices"] for t in trials] == ["3", "3"]
    assert all(devices_of(t.worker) == "3" for t in trials)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # restored after the worker
    (tmp_path / "orchard.yaml").write_text("trial_memory_limit: 4 parsecs\n")
    capsys.readouterr()
    assert main(["hunt", "-n", "e", "--storage", "o.pkl", "--max-trials", "3", *command]) != 0
    assert "trial_memory_limit '4 parsecs'" in capsys.readouterr().err


def test_the_dask_local_cluster_workon_starts_is_capped_as_local_processes_are() -> None:
    """``executor="dask"`` without an address starts a LocalCluster of n_workers processes here (46 MiB each):
    100,000 of them were started, unchecked, as if they ran elsewhere."""
    from orchard.executors.capacity import LOCAL_CLUSTER, counted_as

    with pytest.raises(ConfigurationError, match="n_workers=100000 'dask LocalCluster' workers do not fit"):
        make_executor("dask", 100_000, {"dashboard_address": None})
    assert counted_as("dask", {"address": "tcp://sched:8786"}) == "dask"  # a cluster elsewhere: not capped
    assert counted_as("dask", {"processes": False}) == "thread" and counted_as("dask", {}) == LOCAL_CLUSTER
    with pytest.raises(ConfigurationError, match="room for 22"):
        check_capacity(LOCAL_CLUSTER, 64, Machine(available_memory=2**30, free_tasks=None))
