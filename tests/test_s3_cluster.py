"""S3 source + real Dask processes: a worker SIGKILLed mid-run, the side-car is still exact.

A real ``dask scheduler`` and two ``dask worker`` processes (no nanny, so a killed worker stays
dead) run on 127.0.0.1; the source lives on the moto S3 server of ``tests/conftest.py``. The
filter pass is started with ``patchsieve compute --scheduler tcp://...`` in a subprocess and its
side-car is written to S3. The workers and the CLI get the S3 credentials from their environment
only (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``); the endpoint comes from
``AWS_ENDPOINT_URL_S3`` for the workers and ``--endpoint-url`` for the CLI. The result must equal
a LocalCluster run's (Python API with a ``Client``): identical arrays, identical attrs apart from
the timestamps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

pytestmark = [pytest.mark.s3, pytest.mark.cluster]

TIMESTAMPS = {"created", "updated", "timing"}
BIN = Path(sys.executable).parent
SHAPE = (2, 512, 512)  # Hagen-like demo stack: 32 chunks of 128x128
FILTERS = ["--filter", "shannon", "--threshold", "7.5", "--filter", "mean_std", "--threshold",
           "150"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(s3_server) -> dict[str, str]:
    """Environment of every process that touches S3: credentials only from here."""
    opts = s3_server.storage_options
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": opts["key"],
        "AWS_SECRET_ACCESS_KEY": opts["secret"],
        "AWS_ENDPOINT_URL_S3": opts["endpoint_url"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost",
        "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    })
    return env


class DaskProcesses:
    """A ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1."""

    def __init__(self, env: dict[str, str], n_workers: int = 2, logdir: Path | None = None):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = env
        self.logs: list[Path] = []
        self.scheduler = self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port",
                                                   str(self.port), "--no-dashboard"], logdir)
        self.workers = [
            self._start(f"w{i}", ["worker", self.address, "--nthreads", "1", "--no-nanny",
                                  "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}",
                                  "--memory-limit", "2GiB"], logdir)
            for i in range(n_workers)
        ]

    def _start(self, name: str, args: list[str], logdir: Path | None) -> subprocess.Popen:
        log = subprocess.DEVNULL
        if logdir is not None:
            path = logdir / f"dask-{name}.log"
            self.logs.append(path)
            log = path.open("wb")
        return subprocess.Popen([str(BIN / "dask"), *args], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)

    def stop(self) -> None:
        procs = [*self.workers, self.scheduler]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@pytest.fixture
def dask_processes(s3_server, tmp_path):
    procs = DaskProcesses(worker_env(s3_server), logdir=tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def s3_source(s3_bucket, tmp_path):
    from patchsieve.demo import write_demo_data

    local = write_demo_data(tmp_path / "demo", kind="hagen2d", size="small",
                            shapes={"hagen2d": SHAPE})["hagen2d"]
    s3_bucket.fs.put(local, f"{s3_bucket.name}/hagen2d.ome.zarr", recursive=True)
    return f"{s3_bucket.url}/hagen2d.ome.zarr"


def sidecar_content(url: str, storage_options=None) -> tuple[dict, dict]:
    """Every array of a side-car (progress markers and labels excluded) and its attrs."""
    store = url
    if "://" in url:
        store = zarr.storage.FsspecStore.from_url(url, storage_options=dict(storage_options),
                                                  read_only=True)
    root = zarr.open_group(store, mode="r")

    def arrays(g, prefix=""):
        out = {}
        for name, arr in g.arrays():
            out[prefix + name] = np.asarray(arr[...])
        for name, sub in g.groups():
            if name not in ("progress", "labels"):
                out.update(arrays(sub, f"{prefix}{name}/"))
        return out

    attrs = {k: v for k, v in dict(root.attrs).get("patchsieve", dict(root.attrs)).items()
             if k not in TIMESTAMPS}
    return arrays(root), attrs


def assert_same_sidecar(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    (arr_a, attrs_a), (arr_b, attrs_b) = a, b
    assert sorted(arr_a) == sorted(arr_b)
    assert arr_a, "no arrays in the side-car"
    for key in arr_a:
        np.testing.assert_array_equal(arr_a[key], arr_b[key], err_msg=key)
    assert attrs_a == attrs_b


def _blocks_done(url: str, storage_options) -> tuple[int, int]:
    """(blocks marked done, blocks) of the region-statistics pass of a side-car being written."""
    store = zarr.storage.FsspecStore.from_url(url, storage_options=dict(storage_options),
                                              read_only=True)
    progress = zarr.open_group(store, mode="r")["progress"]
    markers = [np.asarray(progress[k][...]) for k in progress.array_keys()
               if k.startswith(("stats", "cells"))]
    assert markers, sorted(progress.array_keys())
    return int(sum(m.sum() for m in markers)), int(sum(m.size for m in markers))


def _wait_until_running_on(client, worker_addr: str, proc: subprocess.Popen, timeout: float) -> int:
    """Block until the scheduler shows tasks processing on ``worker_addr``; return their count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the filter pass ended before the worker was killed:\n{out}\n{err}")
        n = len(client.processing().get(worker_addr, ()))
        if n:
            return n
        time.sleep(0.05)
    pytest.fail("no task reached the victim worker in time")


def test_s3_pass_on_real_cluster_survives_worker_kill(s3_server, s3_source, dask_processes,
                                                      tmp_path):
    from distributed import Client, LocalCluster

    from patchsieve.compute import compute
    from patchsieve.config import MeanStdPatchFilterConfig, ShannonPatchFilterConfig

    opts = s3_server.storage_options
    out_url = s3_source.replace("hagen2d.ome.zarr", "cluster-run.patchsieve.zarr")
    with Client(dask_processes.address, timeout=30, set_as_default=False) as watcher:
        watcher.wait_for_workers(2, timeout=60)
        info = watcher.scheduler_info()["workers"]
        victim_addr = next(a for a, w in info.items() if w["name"] == "w0")
        cmd = [str(BIN / "patchsieve"), "compute", s3_source, *FILTERS, "--patch", "64,64",
               "--scheduler", dask_processes.address, "--endpoint-url", opts["endpoint_url"],
               "--output", out_url, "--json", "--no-progress"]
        proc = subprocess.Popen(cmd, env=dask_processes.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            running = _wait_until_running_on(watcher, victim_addr, proc, timeout=90)
            os.kill(dask_processes.workers[0].pid, signal.SIGKILL)
            assert proc.poll() is None, "the pass finished before the kill"
            done_at_kill, total = _blocks_done(out_url, opts)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, f"rc={proc.returncode}\n{out}\n{err}"
        assert dask_processes.workers[0].wait(timeout=10) == -signal.SIGKILL
        assert list(watcher.scheduler_info()["workers"]) != [victim_addr]
        assert len(watcher.scheduler_info()["workers"]) == 1
    summary = json.loads(out[out.index("{"):])
    assert summary["complete"] and summary["sidecar"] == out_url
    assert running >= 1 and done_at_kill < total, (running, done_at_kill, total)

    # the same pass on a LocalCluster through the Python API, same S3 source
    configs = {"shannon": ShannonPatchFilterConfig(threshold=7.5),
               "mean_std": MeanStdPatchFilterConfig(mean_threshold=150.0)}
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cl, Client(cl, set_as_default=False) as c:
        ref = compute(s3_source, configs, (64, 64), tmp_path / "local-run.patchsieve.zarr",
                      client=c, storage_options=opts)
    assert ref.is_complete
    cluster_side = sidecar_content(out_url, opts)
    assert_same_sidecar(cluster_side, sidecar_content(ref.path))
    fo = cluster_side[0]
    assert any(k.endswith("filter_out") or "filter_out" in k for k in fo), sorted(fo)
