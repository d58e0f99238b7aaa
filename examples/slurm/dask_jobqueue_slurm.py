"""Run Orchard workers as Dask tasks on SLURM nodes started by ``dask_jobqueue.SLURMCluster``.

    pip install 'orchard-hpo[dask]' dask-jobqueue
    export ORCHARD_STORAGE=mongodb://USER:PASSWORD@db-host:27017/orchard
    python examples/slurm/dask_jobqueue_slurm.py --jobs 8

Run it on a login node (or in a small SLURM job). ``SLURMCluster`` submits ``--jobs`` batch jobs,
each starting one Dask worker process; Orchard then runs one masterless worker loop per Dask
worker against the shared storage. The storage must be reachable from the compute nodes:
MongoDB, or a pickle file on a shared filesystem (see docs/storages.md for the NFS caveats).
The queue, account and resources below are placeholders: adjust them to your site.
"""

from __future__ import annotations

import argparse
import os

import orchard


def train(lr: float, layers: int) -> float:
    """The objective each Dask worker evaluates: replace it with your training run."""
    import math

    return (math.log10(lr) + 2.0) ** 2 + 0.3 * (layers - 3) ** 2 + 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs to submit (one Dask worker each)")
    parser.add_argument("--max-trials", type=int, default=int(os.environ.get("ORCHARD_EXAMPLE_TRIALS", "200")))
    parser.add_argument("--storage", default=os.environ.get("ORCHARD_STORAGE"))
    parser.add_argument("--queue", default=None, help="SLURM partition (site specific)")
    parser.add_argument("--account", default=None, help="SLURM account (site specific)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    if not args.storage:
        raise SystemExit("give --storage or set ORCHARD_STORAGE to a MongoDB URI reachable from the nodes")
    from dask_jobqueue import SLURMCluster  # pip install dask-jobqueue; not an Orchard dependency

    cluster = SLURMCluster(
        queue=args.queue,
        account=args.account,
        cores=4,                 # cores per job; one Dask worker process per job below
        processes=1,
        memory="8GB",
        walltime="02:00:00",
        job_name="orchard-dask",
        # site specific: activate the environment that has orchard-hpo installed
        job_script_prologue=["# module load python/3.11", "# source $HOME/venvs/orchard/bin/activate"],
    )
    try:
        cluster.scale(jobs=args.jobs)
        exp = orchard.build_experiment(
            "slurm-dask-lr-search",
            space={"lr": "loguniform(1e-5, 1)", "layers": "randint(1, 6)"},
            algorithm={"bayes": {"base_estimator": "GP", "n_initial_points": 10, "acq_func": "EI"}},
            max_trials=args.max_trials,
            storage=args.storage,
        )
        # One Orchard worker loop per Dask worker process (jobs x processes); tasks wait in the
        # scheduler until SLURM starts the jobs.
        stats = exp.workon(train, n_workers=args.jobs, executor="dask",
                           executor_config={"address": cluster.scheduler_address})
    finally:
        cluster.close()
    best = exp.best_trial
    assert best is not None and best.objective is not None
    print(f"completed {stats['counts']['completed']} trials; best {best.objective:.4f} at {best.params}")
    return best.objective


if __name__ == "__main__":
    main()
