"""Kill the filter pass (client and its LocalCluster workers, SIGKILL) mid-run; the rerun resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

pytestmark = pytest.mark.cluster

TIMESTAMPS = {"created", "updated", "timing"}


def _write_source(path, seed=3):
    rng = np.random.default_rng(seed)
    data = rng.poisson(20, size=(48, 384, 384)).astype(np.uint16)
    data[:, 100:200, 50:200] += 400
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(1, 64, 64), dtype=data.dtype,
                            dimension_names=("s", "y", "x"), overwrite=True)
    arr[...] = data
    return str(path)


def _markers_done(out):
    try:
        g = zarr.open_group(str(out), mode="r")
        keys = [k for k in g["progress"].array_keys() if k.startswith("stats_")]
        if not keys:
            return 0, 1
        m = np.asarray(g["progress"][keys[0]][...])
        return int(m.sum()), int(m.size)
    except Exception:  # noqa: BLE001 - not written yet
        return 0, 1


def _compare_sidecars(a, b):
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")

    def arrays(g, prefix=""):
        out = {}
        for name, arr in g.arrays():
            out[prefix + name] = np.asarray(arr[...])
        for name, sub in g.groups():
            if name in ("progress", "labels"):
                continue
            out.update(arrays(sub, prefix + name + "/"))
        return out

    aa, bb = arrays(ga), arrays(gb)
    assert sorted(aa) == sorted(bb)
    for k in aa:
        np.testing.assert_array_equal(aa[k], bb[k], err_msg=k)
    ma = {k: v for k, v in ga.attrs["patchsieve"].items() if k not in TIMESTAMPS}
    mb = {k: v for k, v in gb.attrs["patchsieve"].items() if k not in TIMESTAMPS}
    assert ma == mb


def test_sigkill_mid_run_then_resume(tmp_path):
    src = _write_source(tmp_path / "src.zarr")
    out = tmp_path / "killed.patchsieve.zarr"
    cmd = [sys.executable, "-m", "patchsieve.cli", "-q", "compute", src, "--filter", "shannon",
           "--threshold", "4.5", "--patch", "16,16", "-o", str(out), "--no-progress"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    done, total = 0, 1
    while time.time() < deadline and proc.poll() is None:
        done, total = _markers_done(out)
        if done > 0:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"compute ended before it could be killed: {proc.stdout.read()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.5)
    done, total = _markers_done(out)
    assert 0 < done < total, (done, total)

    from patchsieve import open_sidecar
    from patchsieve.errors import SidecarIncompleteError

    with pytest.raises(SidecarIncompleteError):
        open_sidecar(out)
    # the lock of the killed run is stale (its pid is gone) and is taken over
    rerun = subprocess.run(cmd[:2] + ["patchsieve.cli", "-v"] + cmd[4:], capture_output=True,
                           text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = re.search(r"region statistics \['entropy'\]: (\d+) of (\d+) blocks to compute",
                  rerun.stderr)
    assert m, rerun.stderr[-3000:]
    assert int(m.group(1)) == total - done and int(m.group(2)) == total
    clean = tmp_path / "clean.patchsieve.zarr"
    subprocess.run([*cmd[:cmd.index("-o")], "-o", str(clean), "--no-progress"], check=True,
                   capture_output=True, env=env, timeout=300)
    assert open_sidecar(out).is_complete
    _compare_sidecars(out, clean)
