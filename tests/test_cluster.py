"""cluster.get_client: LocalCluster default, scheduler address, errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from patchsieve.errors import ClusterError

pytestmark = pytest.mark.cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _src(tmp_path: Path) -> str:
    data = np.random.default_rng(0).poisson(10, size=(2, 64, 64)).astype(np.uint16)
    arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=data.shape, chunks=(1, 64, 64),
                            dtype=data.dtype, dimension_names=("s", "y", "x"))
    arr[...] = data
    return str(tmp_path / "v.zarr")


def test_unreachable_scheduler(tmp_path):
    from patchsieve import ShannonPatchFilterConfig, compute

    port = _free_port()  # nothing listens there
    t0 = time.time()
    with pytest.raises(ClusterError, match="unreachable"):
        compute(_src(tmp_path), ShannonPatchFilterConfig(threshold=2), (32, 32),
                tmp_path / "o.zarr", scheduler=f"tcp://127.0.0.1:{port}", cluster={"timeout": 3})
    assert time.time() - t0 < 60
    assert not (tmp_path / "o.zarr").exists(), "a failed connection must leave no output"


def test_scheduler_without_workers(tmp_path):
    from patchsieve import ShannonPatchFilterConfig, compute

    port = _free_port()
    dask_bin = str(Path(sys.executable).parent / "dask")
    sched = subprocess.Popen([dask_bin, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--no-dashboard"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        with pytest.raises(ClusterError, match="no workers"):
            compute(_src(tmp_path), ShannonPatchFilterConfig(threshold=2), (32, 32),
                    tmp_path / "o.zarr", scheduler=f"tcp://127.0.0.1:{port}",
                    cluster={"timeout": 3})
    finally:
        sched.terminate()
        sched.wait(timeout=30)


def test_zero_workers_refused():
    from patchsieve.cluster import get_client

    with pytest.raises(ClusterError, match="n_workers"), get_client(n_workers=0):
        pass


def test_default_local_cluster_runs(tmp_path):
    from patchsieve import ShannonPatchFilterConfig, compute

    sc = compute(_src(tmp_path), ShannonPatchFilterConfig(threshold=2), (32, 32),
                 tmp_path / "o.zarr", cluster={"n_workers": 1, "threads_per_worker": 1})
    assert sc.is_complete
