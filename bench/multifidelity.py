"""Multi-fidelity on a real training task: time to a target score, and the best score in a wall budget.

The task: scikit-learn's ``MLPClassifier`` (one hidden layer, Adam, minibatches of 64) trained
with ``partial_fit``, one call per epoch, for ``epochs`` epochs, on a problem scikit-learn
generates: ``make_classification`` with 40 000 samples, 20 features (14 informative), 10
classes of 2 clusters each, ``random_state=0`` (the same data in every process and venv), 25 %
held out; the objective is the validation error rate. The space is the learning rate,
log-uniform over three decades (1e-4 to 1e-1), the L2 penalty, log-uniform 1e-6 to 1e-1, and
the hidden layer's width, 32 to 256, with ``epochs`` as the fidelity: ``fidelity(1, 81, base=3)``.

Why this task: multi-fidelity pays where a full training is expensive next to what an
evaluation costs besides training (starting it, storage, a checkpoint). Here one epoch takes
80-140 ms of one core (hidden width 64 to 256, measured on a quiet machine), so a full 81-epoch
training takes 6.5-11.5 s, while scoring the 10 000 validation samples takes 5-20 ms, the
checkpoint's pickling under 1 ms and Orchard's worker loop about 3 ms per evaluation (measured
with a 20 ms objective, 4 workers, 700 ASHA trials in one pickled storage file); the earlier
task (digits, 0.6 s per full training) drowned the low rungs in overhead. The space has a realistic spread: too small a
learning rate is still far from converged at 81 epochs, too large a one stalls or diverges,
and wide, lightly penalized networks do best; low-epoch error ranks configurations
imperfectly but usefully (Spearman correlation with the 81-epoch error: 0.50 at 1 epoch, 0.75
at 3, 0.86 at 9, 0.97 at 27), which is what multi-fidelity exploits and what can mislead it.

The defaults are the headline sitting's: the fidelity starts at 3 epochs (``--low 3``: rungs
3, 9, 27, 81; 1-epoch error ranks configurations too poorly to be worth its evaluation
overheads, the same ladder is given to every tool), the target is 0.095 validation error, and
each run has 180 s of wall time, for 5 seeds. Between 1 random configuration in 37 and 1 in
104 reaches 0.095 at 81 epochs, depending on the sitting (5 in 363 over the first ten seeds,
4 in 418 and 17 in 631 in the fifth and sixth sittings; the report counts it again in each
run's own random-search trainings), so random search, at about 20 full trainings per 100 s on
2 cores, needs about 175-500 s on average and sometimes misses within the budget, while the
methods that stop bad trainings early have the budget to find it.
``--calibrate N`` measures how often N random points reach ``--target`` (every rung scored).
A run that misses the target is censored at the budget and counted as such. Censoring also caps
what a ratio can show: on a seed where random search misses the target, a method that reaches
it at ``t`` scores at most ``wall / t``, so the ratio is printed as a lower bound.

Methods, each with 4 workers, each started at the same instant and stopped
after the same wall budget, for several seeds:

==================  ============================================================================
orchard-asha        ``asha``; a promoted trial resumes its parent's checkpoint (``current_trial``)
orchard-hyperband   ``hyperband``; the same checkpoint handoff
orchard-random      ``random``: every trial at full fidelity (81 epochs)
optuna-sha          Optuna, ``RandomSampler`` + ``SuccessiveHalvingPruner(min_resource=LOW,
                    reduction_factor=3)``: a trial trains on, and is pruned at a rung; 4
                    processes sharing a ``JournalFileBackend`` file
orion-asha          Oríon 0.2.7's ``asha`` (its own venv, created here; Oríon hands no
                    checkpoint over, so each trial trains from scratch, as Oríon's ASHA
                    examples do); 4 processes sharing a ``pickleddb`` file
==================  ============================================================================

Every evaluation (and, for Optuna, every rung a trial reaches; Optuna scores the model only
there, as its pruner decides only there) appends ``wall-time epochs error epochs-trained`` to a
log; the figures come from those logs, the same way for every method: the time from the start
to the first model whose validation error is at most ``--target`` (a run that never gets there
counts as the wall budget: censored), and the best error within the wall budget. The table
gives, per method, the median time to target over seeds with its range, how many seeds reached
it, and the median over seeds of random search's time divided by the method's on the same
seed (each seed's ratio is printed too, marked when censoring makes it a bound). The methods
run one after another, and which one goes first rotates seed by seed.

    python bench/multifidelity.py                 # 5 seeds x 5 methods x 180 s: about 77 minutes
    python bench/multifidelity.py --low 1 --target 0.10 --wall 100 --seeds 3   # the first sittings
    python bench/multifidelity.py --sampler bayes # new points from Orchard's bayes and Optuna's TPE
    python bench/multifidelity.py --seeds 1 --wall 30 --methods orchard-asha orchard-random
    python bench/multifidelity.py --calibrate 40  # how hard is --target for random configurations?
    python bench/multifidelity.py --sampler bayes --methods orchard-asha orchard-random --target 0.091 --wall 1200 --until-target --seeds 6 --first-seed 40   # the ninth sitting
    python bench/multifidelity.py --sampler bayes --sampler-fit all_rungs --low 9 --methods orchard-asha orchard-random --target 0.091 --wall 900 --until-target --seeds 6 --first-seed 46   # the tenth
    python bench/multifidelity.py --rescore bench/logs/multifidelity/sixth.json.gz --target 0.091   # a logged sitting, another target
    python bench/multifidelity.py --rescore bench/logs/multifidelity/{seventh,optuna-091,eighth}.json.gz --target 0.091 --pool   # sittings as one table
    python bench/multifidelity.py --rescore bench/logs/multifidelity/optuna-tenth.json.gz --target 0.091 --versus optuna-sha   # ratios against Optuna

Each worker process runs one BLAS thread (``OPENBLAS_NUM_THREADS=1``…), so four
workers use four cores' worth of work, not sixteen threads fighting for them.
The Oríon venv is created at ``--orion-venv`` with ``python3 -m venv`` and
``pip install orion==0.2.7 scikit-learn typing_extensions`` (Oríon 0.2.7 imports
``typing_extensions`` without declaring it); if that fails, the reason is printed
and the other methods still run. Not a timed test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
METHODS = ("orchard-asha", "orchard-hyperband", "orchard-random", "optuna-sha", "orion-asha")
WORKERS = 4


def ladder(low: int) -> tuple[int, ...]:
    """The rungs from ``low`` epochs: ``low * 3**k`` up to 81 (what ``fidelity(low, 81, base=3)`` gives)."""
    return tuple(low * 3**k for k in range(10) if low * 3**k <= 81)


#: The lowest fidelity (``--low``; the workers inherit it as ``MF_LOW``).
LOW = int(os.environ.get("MF_LOW", "3"))
RUNGS = ladder(LOW)
#: How new points are drawn (``--sampler``; ``MF_SAMPLER``): ``random`` everywhere, or each tool's
#: model-based sampler where it has one (Orchard's ``bayes`` inside ``asha``/``hyperband``, Optuna's TPE).
SAMPLER = os.environ.get("MF_SAMPLER", "bayes")
#: Orchard's promotion rule for ``asha``/``hyperband`` (``--rule``; ``MF_RULE``): ``promotion`` (a quota
#: per rung) or ``stopping`` (a verdict per arrival, the rule of Optuna's pruner).
RULE = os.environ.get("MF_RULE", "stopping")
#: Orchard's ``min_points`` for a ``bayes`` sampler inside ``asha``/``hyperband`` (``--min-points``;
#: ``MF_MIN_POINTS``); empty: the algorithm's default.
MIN_POINTS = os.environ.get("MF_MIN_POINTS", "")
#: What Orchard's ``bayes`` sampler inside ``asha``/``hyperband`` is fitted on (``--sampler-fit``;
#: ``MF_SAMPLER_FIT``): ``refined`` (asha's default) or the ``highest_rung`` with enough results.
SAMPLER_FIT = os.environ.get("MF_SAMPLER_FIT", "refined")
#: Orchard's ``reduction_factor`` for ``asha``/``hyperband`` (``--eta``; ``MF_ETA``); empty: the
#: fidelity's base, 3, as for the other tools. The rungs stay ``low * 3**k`` either way.
ETA = os.environ.get("MF_ETA", "")
LR, ALPHA, HIDDEN = (1e-4, 1e-1), (1e-6, 1e-1), (32, 256)
CLASSES, BATCH = 10, 64
#: The same space in Orchard's and Oríon's prior syntax (Optuna's suggest_* calls use the same bounds).
SPACE = {"lr": f"loguniform{LR}", "alpha": f"loguniform{ALPHA}", "hidden": f"uniform({HIDDEN[0]}, {HIDDEN[1]}, discrete=True)",
         "epochs": f"fidelity({LOW}, 81, base=3)"}
SINGLE_THREAD = {key: "1" for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}

# -- the training task (runs in every framework's worker processes) -----------------------------

_DATA: Any = None


def data() -> Any:
    """The generated classification problem, split 75/25, built once per process (deterministic)."""
    global _DATA
    if _DATA is None:
        from sklearn.datasets import make_classification
        from sklearn.model_selection import train_test_split

        X, y = make_classification(
            n_samples=40_000, n_features=20, n_informative=14, n_redundant=4, n_classes=CLASSES,
            n_clusters_per_class=2, class_sep=1.0, flip_y=0.0, random_state=0)
        _DATA = train_test_split(X, y, test_size=0.25, random_state=0)
    return _DATA


def new_model(lr: float, alpha: float, hidden: int) -> Any:
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(int(hidden),), learning_rate_init=lr, alpha=alpha,
                         batch_size=BATCH, random_state=0)


def train(model: Any, epochs: int) -> None:
    """``epochs`` more epochs of ``partial_fit`` (one pass over the training set each)."""
    import warnings

    import numpy as np

    X_train, _, y_train, _ = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(epochs):
            model.partial_fit(X_train, y_train, classes=np.arange(CLASSES))


def error(model: Any) -> float:
    _, X_valid, _, y_valid = data()
    return float(1.0 - model.score(X_valid, y_valid))


def log_evaluation(epochs: int, err: float, trained: int) -> None:
    """Append ``time epochs error trained`` to the run's log (one small O_APPEND write: atomic).

    ``trained`` is the epochs this evaluation actually ran (a resumed trial trains only the rest).
    """
    with open(os.environ["MF_LOG"], "a") as handle:
        handle.write(f"{time.time():.4f} {epochs} {err:.6f} {trained}\n")


# -- workers ------------------------------------------------------------------------------------


def orchard_objective(lr: float, alpha: float, hidden: int, epochs: int) -> float:
    """Train to ``epochs``, resuming the parent's checkpoint when the trial is a promotion."""
    import orchard

    trial = orchard.current_trial()
    model, done = new_model(lr, alpha, hidden), 0
    if trial is not None and trial.parent_working_dir:
        with open(os.path.join(trial.parent_working_dir, "model.pkl"), "rb") as handle:
            model, done = pickle.load(handle)  # written below by this benchmark
    train(model, epochs - done)
    if trial is not None and trial.working_dir:
        with open(os.path.join(trial.working_dir, "model.pkl"), "wb") as handle:
            pickle.dump((model, epochs), handle)
    err = error(model)
    log_evaluation(epochs, err, epochs - done)
    return err


def orchard_options() -> dict[str, Any]:
    """The options of Orchard's ``asha``/``hyperband`` in this run."""
    options: dict[str, Any] = {"sampler": SAMPLER, "rule": RULE}
    if SAMPLER == "bayes":  # a random sampler fits nothing (asha refuses the option)
        options["sampler_fit"] = SAMPLER_FIT
    if ETA:
        options["reduction_factor"] = float(ETA)
    if MIN_POINTS:
        options["min_points"] = int(MIN_POINTS)
    return options


def orchard_experiment(algorithm: str, seed: int, workdir: str) -> Any:
    """The run's Orchard experiment (created by the first caller, loaded by the others)."""
    import orchard

    return orchard.build_experiment(
        f"mf-{algorithm}", space=SPACE, algorithm=algorithm if algorithm == "random" else {algorithm: orchard_options()},
        storage=os.path.join(workdir, "orchard.pkl"), max_trials=100_000, seed=seed,
        working_dir=os.path.join(workdir, "runs"))


def orchard_workers(algorithm: str, seed: int, workdir: str, workers: int = WORKERS) -> None:
    orchard_experiment(algorithm, seed, workdir).workon(
        orchard_objective, n_workers=workers, executor="process", progress=False)


def optuna_worker(seed: int, index: int, workdir: str) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(os.path.join(workdir, "optuna.log")))
    study = optuna.create_study(
        study_name="mf", storage=storage, load_if_exists=True,
        sampler=(optuna.samplers.TPESampler if SAMPLER == "bayes" else optuna.samplers.RandomSampler)(seed=seed * 100 + index),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=LOW, reduction_factor=3))

    def objective(trial: Any) -> float:
        model = new_model(trial.suggest_float("lr", *LR, log=True), trial.suggest_float("alpha", *ALPHA, log=True),
                          trial.suggest_int("hidden", *HIDDEN))
        err, done = 1.0, 0
        for rung in RUNGS:  # the pruner decides only at its rungs, so the model is scored only there
            train(model, rung - done)
            err = error(model)
            log_evaluation(rung, err, rung - done)
            done = rung
            trial.report(err, rung)
            if rung < RUNGS[-1] and trial.should_prune():
                raise optuna.TrialPruned()
        return err

    study.optimize(objective, n_trials=100_000)


def orion_worker(seed: int, workdir: str) -> None:
    from orion.client import build_experiment

    experiment = build_experiment(
        "mf", space={k: v for k, v in SPACE.items()},
        algorithm={"asha": {"seed": seed, "num_rungs": len(RUNGS), "num_brackets": 1}},
        storage={"type": "legacy", "database": {"type": "pickleddb", "host": os.path.join(workdir, "orion.pkl")}},
        max_trials=100_000)

    def objective(lr: float, alpha: float, hidden: int, epochs: int) -> list[dict[str, Any]]:
        model = new_model(lr, alpha, hidden)
        train(model, epochs)
        err = error(model)
        log_evaluation(epochs, err, epochs)
        return [{"name": "error", "type": "objective", "value": err}]

    experiment.workon(objective, max_trials=100_000)


def worker_main(argv: list[str]) -> None:
    """``--role METHOD --seed S --index I --workdir DIR``: one method's worker(s), run until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    if args.role.startswith("orchard-"):
        orchard_workers(args.role.split("-", 1)[1], args.seed, args.workdir)
    elif args.role == "optuna-sha":
        optuna_worker(args.seed, args.index, args.workdir)
    elif args.role == "orion-asha":
        orion_worker(args.seed, args.workdir)


# -- calibration: how hard the target is for random configurations at full fidelity --------------


def sample_config(rng: Any) -> tuple[float, float, int]:
    """A random point of the space (log-uniform ``lr`` and ``alpha``, uniform ``hidden``)."""
    import math

    def log_uniform(low: float, high: float) -> float:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))

    return log_uniform(*LR), log_uniform(*ALPHA), int(rng.integers(HIDDEN[0], HIDDEN[1] + 1))


def rung_errors(config: tuple[float, float, int]) -> list[float]:
    """One configuration trained to the top rung, scored at every rung (a calibration sample)."""
    model, done, errors = new_model(*config), 0, []
    for rung in RUNGS:
        train(model, rung - done)
        done = rung
        errors.append(error(model))
    return errors


def calibrate(samples: int, target: float) -> None:
    """Print how often a random configuration reaches ``target`` and how well low rungs rank."""
    import multiprocessing

    import numpy as np
    from scipy.stats import spearmanr

    os.environ.update(SINGLE_THREAD)  # inherited by the pool's processes
    rng = np.random.default_rng(12345)
    configs = [sample_config(rng) for _ in range(samples)]
    with multiprocessing.Pool(os.cpu_count() or 1) as pool:
        errors = np.array(pool.map(rung_errors, configs, chunksize=1))
    top = errors[:, -1]
    print(f"{samples} random configurations at {RUNGS[-1]} epochs: error quantiles 5/10/25/50 % = "
          + " / ".join(f"{q:.4f}" for q in np.quantile(top, [0.05, 0.1, 0.25, 0.5])))
    print(f"reach target {target:g}: {np.mean(top <= target):.1%} at {RUNGS[-1]} epochs, "
          f"{np.mean(errors.min(axis=1) <= target):.1%} at some rung")
    for i, rung in enumerate(RUNGS[:-1]):
        print(f"Spearman rank correlation, error at {rung} epochs vs at {RUNGS[-1]}: "
              f"{spearmanr(errors[:, i], top).statistic:.2f}")


# -- the driver ---------------------------------------------------------------------------------


def ensure_orion_venv(path: Path) -> tuple[str | None, str]:
    """The Python of a venv with Oríon 0.2.7 (created on first use), or ``None`` and why not."""
    python = path / "bin" / "python"
    probe = [str(python), "-c", "import orion.client, sklearn; print(orion.core.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return str(python), "ok"
    steps = [["python3", "-m", "venv", str(path)],
             # Oríon 0.2.7 imports typing_extensions without declaring it (ModuleNotFoundError otherwise)
             [str(python), "-m", "pip", "install", "-q", "orion==0.2.7", "scikit-learn", "typing_extensions"], probe]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return None, f"`{' '.join(step[:4])}` failed: {' | '.join(tail)}"
    return str(python), "ok"


def launch(method: str, seed: int, workdir: str, log: str, orion_python: str | None) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, **SINGLE_THREAD, "MF_LOG": log}
    base = [str(HERE), "--seed", str(seed), "--workdir", workdir, "--role", method]
    if method.startswith("orchard-"):  # one workon with 4 worker processes
        commands = [[sys.executable, *base]]
    else:  # 4 independent processes sharing one storage file
        python = orion_python if method == "orion-asha" else sys.executable
        assert python is not None
        commands = [[python, *base, "--index", str(i)] for i in range(WORKERS)]
    procs = []
    for i, command in enumerate(commands):
        with open(os.path.join(workdir, f"stderr-{i}.log"), "wb") as stderr:
            procs.append(subprocess.Popen(command, cwd=workdir, env=env, start_new_session=True,  # Oríon's trial
                                          stdout=subprocess.DEVNULL, stderr=stderr))  # folders go there
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)


def run_one(method: str, seed: int, wall: float, orion_python: str | None,
            until: float | None = None) -> tuple[list[tuple[float, int, float, int]], float]:
    """Run one method for ``wall`` seconds, or with ``until`` set, until a model's error is at most ``until``.

    Returns ``(seconds since start, epochs, error, trained)`` for each evaluation logged within
    the wall budget, and how long the run went on (the wall budget, or less when it stopped at
    the target). The time to target is read from the log's own time stamps, not from when the
    stop was noticed, so stopping early does not change it.
    """
    with tempfile.TemporaryDirectory(prefix=f"mf-{method}-") as workdir:
        log = os.path.join(workdir, "evaluations.log")
        Path(log).touch()
        start = time.time()
        procs = launch(method, seed, workdir, log, orion_python)
        with open(log) as reader:
            unread = ""  # a line still being written is kept until its newline arrives
            while time.time() - start < wall and any(p.poll() is None for p in procs):
                time.sleep(0.2)
                *lines, unread = (unread + reader.read()).split("\n")
                if until is not None and any(float(line.split()[2]) <= until for line in lines):
                    break
        duration = min(time.time() - start, wall)
        stop(procs)
        rows = [line.split() for line in Path(log).read_text().splitlines()]
        if not rows:
            errors = "".join(p.read_text()[-400:] for p in Path(workdir).glob("stderr-*.log"))
            print(f"  {method} seed {seed}: no evaluation logged. {errors.strip()[-400:]}", file=sys.stderr)
    evaluations = sorted((float(t) - start, int(e), float(v), int(n)) for t, e, v, n in rows if float(t) - start <= wall)
    return evaluations, duration


def summarize(evaluations: list[tuple[float, int, float, int]], target: float) -> dict[str, Any]:
    hit = next((t for t, _, err, _ in evaluations if err <= target), None)
    full = [e for e in evaluations if e[1] == RUNGS[-1]]
    return {"time_to_target": hit, "best": min((err for _, _, err, _ in evaluations), default=None),
            "evaluations": len(evaluations), "epochs_trained": sum(n for *_, n in evaluations),
            "full_fidelity": len(full)}


def censored_time(run: dict[str, Any], wall: float) -> float:
    """The run's time to target; a run that missed it counts as the whole wall budget (censored)."""
    return wall if run["time_to_target"] is None else float(run["time_to_target"])


def seed_ratio(baseline: dict[str, Any], run: dict[str, Any], wall: float) -> tuple[float, str]:
    """The baseline's (random search's, unless ``--versus``) time to target over this run's, on one
    seed, and what kind of figure it is.

    The mark is ``">"`` when only the baseline missed the target (the ratio is a lower bound),
    ``"<"`` when only this run missed it (an upper bound), ``"?"`` when both did (both count as
    the wall budget, so the ratio is 1 and says nothing), ``""`` when both reached it.
    """
    ratio = censored_time(baseline, wall) / max(censored_time(run, wall), 1e-9)
    missed = (baseline["time_to_target"] is None, run["time_to_target"] is None)
    return ratio, {(False, False): "", (True, False): ">", (False, True): "<", (True, True): "?"}[missed]


def report(results: Mapping[str, Sequence[dict[str, Any] | None]], wall: float, target: float,
           until: float | None = None, versus: str = "orchard-random") -> None:
    """Print the table: per method, time to target, seeds reached, the ratio against ``versus``, best error.

    The ratio column divides ``versus``'s time (random search's by default) by each other
    method's, seed by seed; ``versus``'s own row has none.

    A ``None`` run is a seed the method did not run on (``--rescore --pool`` of sittings that ran
    different methods): it is left out of that method's figures, and a ratio against ``versus``
    is taken only on seeds where both ran. With ``until`` (``--until-target``), runs stopped at
    the first model with error at most ``until``, so a best error is the best before that stop.
    """
    seeds = max((len(runs) for runs in results.values()), default=0)
    print(f"\n{seeds} seed(s); wall budget {wall:g} s per run; target validation error <= {target:g}; "
          f"{WORKERS} workers each")
    label = "random" if versus == "orchard-random" else versus
    print(f"{'method':<18} {'time to target: median [range]':>31} {'reached':>8}  {f'vs {label}: median (per seed)':<34}"
          f"{'best error':>10} {'evals':>6} {'full':>5}")
    baseline_runs = results.get(versus, [])
    for method, maybe_runs in results.items():
        runs = [r for r in maybe_runs if r is not None]
        if not runs:
            continue
        times = [censored_time(r, wall) for r in runs]
        reached = sum(r["time_to_target"] is not None for r in runs)
        shown = f"{statistics.median(times):.1f} s [{min(times):.1f}-{max(times):.1f}]"
        ratios = ([seed_ratio(b, r, wall) for b, r in zip(baseline_runs, maybe_runs) if b is not None and r is not None]
                  if len(baseline_runs) == len(maybe_runs) and method != versus else [])
        against = (f"{statistics.median(x for x, _ in ratios):.2f}x ("
                  + ", ".join(f"{mark}{x:.2f}" for x, mark in ratios) + ")") if ratios else "-"
        bests = [r["best"] for r in runs if r["best"] is not None]
        best = statistics.median(bests) if bests else float("nan")
        print(f"{method:<18} {shown:>31} {reached:>5}/{len(runs):<2}  {against:<34}{best:>10.4f} "
              f"{statistics.median(r['evaluations'] for r in runs):>6.0f} "
              f"{statistics.median(r['full_fidelity'] for r in runs):>5.0f}")
    print("time to target: a run that did not reach the target counts as the wall budget (censored), "
          f"so a median\nat the budget means the target was missed; 'vs {label}' = {label}'s time / this "
          f"method's, seed by seed\n(> lower bound: {label} missed; < upper bound: this method missed; "
          "? both missed), then the median;\nbest error, evals (evaluations logged) and full "
          "(evaluations at full fidelity) are medians over seeds")
    if until is not None:
        print(f"runs stopped at the first model with error <= {until:g} (--until-target): best error, evals and "
              "full count up to that stop,\nnot the whole wall budget")


def use_settings(low: int, sampler: str, rule: str, min_points: int | None, sampler_fit: str,
                 eta: float | None = None) -> None:
    """Use these settings here and in every worker started from now on (see the module's globals)."""
    global LOW, RUNGS, SAMPLER, RULE, MIN_POINTS, SAMPLER_FIT, ETA
    LOW, SAMPLER, RULE, SAMPLER_FIT = low, sampler, rule, sampler_fit
    MIN_POINTS = "" if min_points is None else str(min_points)
    ETA = "" if eta is None else repr(eta)
    os.environ.update(MF_LOW=str(low), MF_SAMPLER=sampler, MF_RULE=rule, MF_MIN_POINTS=MIN_POINTS,
                      MF_SAMPLER_FIT=sampler_fit, MF_ETA=ETA)
    RUNGS = ladder(low)
    SPACE["epochs"] = f"fidelity({low}, {RUNGS[-1]}, base=3)"


def full_training_errors(runs: list[list[tuple[float, int, float, int]]]) -> list[float]:
    """The validation errors of every evaluation at full fidelity in ``runs``."""
    return [err for evaluations in runs for _, epochs, err, _ in evaluations if epochs == RUNGS[-1]]


def random_odds(runs: list[list[tuple[float, int, float, int]]], durations: Sequence[float], target: float) -> None:
    """Print how rare the target is among random search's own full trainings, and what that implies.

    Random search draws independent points, so its time to the target is a geometric draw: with
    ``k`` of ``n`` trainings reaching it at ``n / (the runs' total seconds)`` trainings per second, the
    expected time is about ``(n / k) / rate``. That figure is derived from the runs, not measured
    as a time to target; it is printed to show what the censored runs could not.
    """
    scores = full_training_errors(runs)
    if not scores:
        return
    hits, rate = sum(err <= target for err in scores), len(scores) / sum(durations)
    if hits:
        print(f"random search's own full trainings: {hits} of {len(scores)} reached {target:g} (1 in "
              f"{len(scores) / hits:.0f}); at its {rate:.2f} trainings/s, a geometric draw gives an "
              f"expected time to target of about {len(scores) / hits / rate:.0f} s (derived, not measured)")
    else:
        print(f"random search's own full trainings: none of {len(scores)} reached {target:g} (rarer than "
              f"about 1 in {len(scores)} at {rate:.2f} trainings/s)")


def stopped_at(logged: Mapping[str, Any]) -> float | None:
    """The error a logged sitting's runs stopped at (``--until-target``), or ``None`` if they ran the whole budget."""
    return float(logged["target"]) if logged.get("until_target") else None


def rescore(paths: list[Path], target: float, pool: bool = False, versus: str = "orchard-random") -> None:
    """Score the runs ``--json`` files logged against another target, and say it is a re-analysis.

    Every evaluation was logged with its wall time, so the time to any target, the best error and
    random search's odds can be read again from the files; nothing is run. Each file keeps its own
    wall budget. With several files, random search's full trainings are also pooled: how many
    reached the target, and the error that 1 in 200 of them reached. With ``pool``, the files
    (which must share a wall budget) are also reported as one table, their seeds side by side; a
    method a file did not run is missing on that file's seeds, and ratios come from seeds that
    ran both it and random search.
    """
    logs = [json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
            for path in paths]
    walls = sorted({float(logged["wall"]) for logged in logs})
    untils = [stopped_at(logged) for logged in logs]
    for path, until in zip(paths, untils):
        if until is not None and target < until:
            raise SystemExit(f"{path}: its runs stopped at error {until:g} (--until-target), so a stricter "
                             f"target ({target:g}) cannot be read from it; rescore at {until:g} or above")
    if pool and len(walls) > 1:
        raise SystemExit(f"--pool needs logs with one wall budget, got {walls}; pool like with like")
    pooled: list[float] = []
    table: dict[str, list[dict[str, Any] | None]] = {}
    seeds_before = 0
    for path, logged, until in zip(paths, logs, untils):
        wall = float(logged["wall"])
        raw = {method: [[(float(t), int(e), float(v), int(n)) for t, e, v, n in run] for run in runs]
               for method, runs in logged["runs"].items()}  # logged by run_one: in time order, within the wall
        scored = {method: [summarize(run, target) for run in runs] for method, runs in raw.items()}
        print(f"\nre-scored from {path} (logged with target {logged['target']:g}, {wall:g} s): a re-analysis "
              f"of logged runs, not a new sitting")
        report(scored, wall, target, until, versus)
        random_durations = logged.get("durations", {}).get("orchard-random") or [wall] * len(raw.get("orchard-random", []))
        random_odds(raw.get("orchard-random", []), random_durations, target)
        pooled += full_training_errors(raw.get("orchard-random", []))
        for method, summaries in scored.items():
            table.setdefault(method, [None] * seeds_before).extend(summaries)
        seeds_before += max(len(summaries) for summaries in scored.values())
        for column in table.values():
            column.extend([None] * (seeds_before - len(column)))
    if len(paths) > 1 and pooled:
        pooled.sort()
        hits = sum(err <= target for err in pooled)
        print(f"\nover these {len(paths)} logs, random search's full trainings: {hits} of {len(pooled)} reached "
              f"{target:g}{f' (1 in {len(pooled) / hits:.0f})' if hits else ''}; 1 in 200 of them reached "
              f"{pooled[math.ceil(len(pooled) / 200) - 1]:g} or better")
    if pool:
        print(f"\npooled: the {len(paths)} logs as one table ({seeds_before} seeds; a method is counted on the "
              "seeds it ran), a re-analysis of logged runs")
        report(table, walls[0], target, max((u for u in untils if u is not None), default=None), versus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one up")
    parser.add_argument("--wall", type=float, default=180.0, help="wall budget of each run, seconds")
    parser.add_argument("--target", type=float, default=0.095, help="target validation error")
    parser.add_argument("--orion-venv", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "orchard-bench" / "orion-0.2.7")
    parser.add_argument("--json", type=Path, help="also write every run's evaluations here (gzipped if it ends in .gz)")
    parser.add_argument("--until-target", action="store_true",
                        help="stop each run at its first model reaching --target (its time to target is "
                             "unchanged; best error then means best before the stop): long budgets at less cost")
    parser.add_argument("--label", default="", help="printed above the table, e.g. 'under load, not a result'")
    parser.add_argument("--calibrate", type=int, metavar="N",
                        help="instead of the benchmark, train N random configurations to full fidelity and "
                             "print how many reach --target and how well low rungs rank them")
    parser.add_argument("--rescore", type=Path, nargs="+", metavar="JSON",
                        help="instead of the benchmark, score the runs --json files (or .json.gz) logged "
                             "against --target: a re-analysis of logged runs")
    parser.add_argument("--pool", action="store_true",
                        help="with --rescore: also report the files (one wall budget) as one table, seeds side by side")
    parser.add_argument("--low", type=int, choices=(1, 3, 9), default=LOW,
                        help="lowest fidelity, the same in every tool: rungs low*3^k epochs up to 81")
    parser.add_argument("--sampler", choices=("random", "bayes"), default=SAMPLER,
                        help="new points: random everywhere, or model-based where the tool has it "
                             "(Orchard asha/hyperband: bayes; Optuna: TPE; Orion's asha has none)")
    parser.add_argument("--rule", choices=("promotion", "stopping"), default=RULE,
                        help="Orchard asha/hyperband's promotion rule: a quota per rung, or a verdict "
                             "per arrival (Optuna's pruner's rule)")
    parser.add_argument("--min-points", type=int, default=int(MIN_POINTS) if MIN_POINTS else None,
                        help="Orchard asha/hyperband's min_points for the bayes sampler (default: Orchard's)")
    parser.add_argument("--sampler-fit", choices=("refined", "highest_rung"), default=SAMPLER_FIT,
                        help="what Orchard asha/hyperband's bayes sampler is fitted on: the highest rung with "
                             "enough results (BOHB's choice), or every configuration ranked by refinement"
                             " (refined, the default)")
    parser.add_argument("--eta", type=float, default=float(ETA) if ETA else None,
                        help="Orchard asha/hyperband's reduction_factor (default: the fidelity's base, 3, as for "
                             "the other tools; the rungs stay low*3^k)")
    parser.add_argument("--versus", choices=METHODS, default="orchard-random",
                        help="the method every other method's time to target is divided by, seed by seed "
                             "(default: random search)")
    args = parser.parse_args(argv)
    use_settings(args.low, args.sampler, args.rule, args.min_points, args.sampler_fit, args.eta)
    if args.calibrate:
        calibrate(args.calibrate, args.target)
        return
    if args.rescore:
        rescore(args.rescore, args.target, args.pool, args.versus)
        return
    orion_python = None
    if "orion-asha" in args.methods:
        orion_python, why = ensure_orion_venv(args.orion_venv)
        if orion_python is None:
            print(f"orion-asha skipped: {why}")
            args.methods.remove("orion-asha")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; rungs {RUNGS} epochs; "
          f"sampler {SAMPLER}; Orchard's options {orchard_options()}. {args.label}".rstrip())
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    raw: dict[str, list[Any]] = {m: [] for m in args.methods}
    durations: dict[str, list[float]] = {m: [] for m in args.methods}
    until = args.target if args.until_target else None
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        shift = seed % len(args.methods)  # who runs first rotates seed by seed, as the machine's state drifts
        for method in args.methods[shift:] + args.methods[:shift]:
            evaluations, duration = run_one(method, seed, args.wall, orion_python, until)
            summary = summarize(evaluations, args.target)
            results[method].append(summary)
            raw[method].append(evaluations)
            durations[method].append(duration)
            print(f"  seed {seed} {method:<18} {json.dumps(summary)}", flush=True)
    report(results, args.wall, args.target, until, args.versus)
    random_odds(raw.get("orchard-random", []), durations.get("orchard-random", []), args.target)
    if args.json:
        logged = json.dumps({"wall": args.wall, "target": args.target, "until_target": args.until_target,
                             "runs": raw, "durations": durations}).encode()
        args.json.write_bytes(gzip.compress(logged) if args.json.suffix == ".gz" else logged)


if __name__ == "__main__":
    if "--role" in sys.argv[1:]:
        worker_main(sys.argv[1:])
    else:
        main()
