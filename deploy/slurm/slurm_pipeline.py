"""Run a patchsieve pipeline on Slurm: dask-jobqueue's SLURMCluster submits the Dask workers.

Usage (on a login node, or inside the sbatch allocation of ``run_pipeline.sbatch``)::

    python deploy/slurm/slurm_pipeline.py pipelines/seed-tutorial.yaml --jobs 4 \
        --queue compute --account myproj --set output=/scratch/$USER/hagen2d.patchsieve.zarr

Each Slurm job runs one worker process with ``--cores`` threads and ``--memory`` of RAM; the
worker memory limit is what Dask spills and pauses against, which keeps the filter pass
out-of-core (see docs/cluster.md). Print the generated job script with ``--print-job-script``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import Any


def make_cluster(
    *,
    queue: str | None = None,
    account: str | None = None,
    cores: int = 4,
    memory: str = "16GiB",
    walltime: str = "02:00:00",
    local_directory: str = "$TMPDIR",
    python: str | None = None,
    job_extra: Sequence[str] = (),
    scheduler_host: str | None = None,
) -> Any:
    """A ``dask_jobqueue.SLURMCluster``: one worker process per job, ``cores`` threads each."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        queue=queue,
        account=account,
        cores=cores,
        processes=1,
        memory=memory,
        walltime=walltime,
        local_directory=local_directory,
        python=python,
        job_name="patchsieve-worker",
        job_extra_directives=list(job_extra),
        # the scheduler runs in this process; workers connect back to it
        scheduler_options={"dashboard_address": ":8787",
                           **({"host": scheduler_host} if scheduler_host else {})},
        log_directory="patchsieve-slurm-logs",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, start the cluster, run the pipeline, print its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="pipeline spec (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override key.path=value (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="Slurm jobs (one worker each)")
    parser.add_argument("--queue", default=None, help="Slurm partition")
    parser.add_argument("--account", default=None, help="Slurm account")
    parser.add_argument("--cores", type=int, default=4, help="threads per worker")
    parser.add_argument("--memory", default="16GiB", help="memory per worker (its memory limit)")
    parser.add_argument("--walltime", default="02:00:00")
    parser.add_argument("--print-job-script", action="store_true",
                        help="print the worker job script and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from distributed import Client

    from patchsieve.pipeline import run_pipeline

    run_pipeline(args.spec, overrides=args.overrides, dry_run=True)  # fail fast on a bad spec
    with make_cluster(queue=args.queue, account=args.account, cores=args.cores,
                      memory=args.memory, walltime=args.walltime) as cluster:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=args.jobs)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=3600)
            summary = run_pipeline(args.spec, overrides=args.overrides, client=client)
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
