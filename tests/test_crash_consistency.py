"""Crash consistency: SIGKILL the compute process group at seeded random points, then resume.

``patchsieve compute`` runs as a CLI subprocess in its own session (the client and its
LocalCluster worker processes share the process group). The test kills the whole group with
SIGKILL at seeded points of several kinds -- a random delay after the run took the lock
(side-car creation, graph building, the first blocks), random fractions of the
region-statistics blocks written, and the moment every block marker is set (decisions,
normalisation and the ``complete`` flag being written) -- and reruns the same command on the
same output after each kill. After every kill:

* readers (``open_sidecar``, ``PatchDataset``) refuse the side-car unless it is complete, and a
  side-car they accept equals the clean one;
* the final rerun completes it with arrays identical to a clean, uninterrupted run and attrs
  identical apart from the timestamps (``created``, ``updated``, ``timing``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

pytestmark = pytest.mark.cluster

TIMESTAMPS = {"created", "updated", "timing"}
SEEDS = (11, 12, 13, 14)  # one kill per seed, each at a point drawn from its own generator
PATCH = (8, 8)
#: small chunks: many blocks (512) and marker flushes, so kills land mid-run on fast machines
CHUNK = (16, 16)


def write_source(path: Path, n_samples: int = 8, chunk: tuple[int, int] = CHUNK) -> str:
    rng = np.random.default_rng(3)
    data = rng.poisson(20, size=(n_samples, 128, 128)).astype(np.uint16)
    data[:, 40:100, 30:90] += rng.poisson(400, size=(n_samples, 60, 60)).astype(np.uint16)
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(1, *chunk), dtype=data.dtype,
                            dimension_names=("s", "y", "x"), overwrite=True)
    arr[...] = data
    return str(path)


def cli_command(src: str, out: Path, patch: tuple[int, int] = PATCH) -> list[str]:
    return [sys.executable, "-m", "patchsieve.cli", "-q", "compute", src, "--filter", "shannon",
            "--threshold", "4.5", "--filter", "max", "--threshold", "300", "--patch",
            ",".join(map(str, patch)), "-o", str(out), "--no-progress"]


def markers(out: Path) -> tuple[int, int]:
    """(blocks written, blocks in total) of the region statistics; (0, 1) before they exist."""
    try:
        g = zarr.open_group(str(out), mode="r")
        keys = [k for k in g["progress"].array_keys() if k.startswith("stats_")]
        m = np.asarray(g["progress"][keys[0]][...])
        return int(m.sum()), int(m.size)
    except Exception:  # noqa: BLE001 - not written yet, or being written
        return 0, 1


def all_arrays(group: zarr.Group, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for name, arr in group.arrays():
        out[prefix + name] = np.asarray(arr[...])
    for name, sub in group.groups():
        out.update(all_arrays(sub, prefix + name + "/"))
    return out


def assert_same_sidecar(a: Path | str, b: Path | str) -> None:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    aa, bb = all_arrays(ga), all_arrays(gb)
    assert sorted(aa) == sorted(bb)
    for key in aa:
        np.testing.assert_array_equal(aa[key], bb[key], err_msg=key)
    ma = {k: v for k, v in ga.attrs["patchsieve"].items() if k not in TIMESTAMPS}
    mb = {k: v for k, v in gb.attrs["patchsieve"].items() if k not in TIMESTAMPS}
    assert ma == mb


def wait_group_dead(pgid: int, timeout: float = 30.0) -> None:
    """Wait until no process of the killed group (client, nanny, worker) is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} survived SIGKILL")


def kill_schedule(seeds: tuple[int, ...]) -> list[tuple[int, str, float]]:
    """Seeded kill points, in the order the phases of a run come (later kills resume earlier ones).

    The first seed kills at a random delay after the run took the lock (creating the side-car,
    building the graph, the first blocks), the middle ones at random fractions of the
    region-statistics blocks (ascending, so each resumed run still has blocks to write), the last
    one once the run holds the lock and every block marker is set (decisions, normalisation and
    the ``complete`` flag being written).
    """
    rngs = [np.random.default_rng(s) for s in seeds]
    fractions = sorted(float(r.uniform(0.1, 0.9)) for r in rngs[1:-1])
    out = [(seeds[0], "lock", float(rngs[0].uniform(0.0, 1.0)))]
    out += [(s, "progress", f) for s, f in zip(seeds[1:-1], fractions)]
    out.append((seeds[-1], "finalize", 1.0))
    return out


def lock_owner(out: Path) -> int | None:
    """The pid recorded in the side-car's lock (None without a readable lock)."""
    import json

    try:
        return int(json.loads((out / "patchsieve.lock").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_and_kill(cmd: list[str], out: Path, point: tuple[str, float], env: dict[str, str]
                 ) -> tuple[bool, str]:
    """Start the CLI, SIGKILL its process group at ``point``; returns (killed, description)."""
    kind, value = point
    start_done, total = markers(out)
    locked_at: float | None = None
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    t0 = time.monotonic()
    deadline = t0 + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            done, total = markers(out)
            if locked_at is None and lock_owner(out) == proc.pid:
                locked_at = time.monotonic()
            if kind == "lock" and locked_at is not None and time.monotonic() - locked_at >= value:
                break
            if kind == "progress" and done >= max(value * total, start_done + 1) and total > 1:
                break
            if kind == "finalize" and locked_at is not None and total > 1 and done == total:
                break
            time.sleep(0.02)
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            assert proc.returncode == 0, err[-3000:]
            return False, f"{kind}={value:.2f}: finished before the kill"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_group_dead(proc.pid)
        done, total = markers(out)
        return True, (f"{kind}={value:.2f}: killed after {time.monotonic() - t0:.1f} s at "
                      f"{done}/{total} blocks")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def check_readers(out: Path, clean: Path) -> str:
    """Readers refuse an incomplete side-car; one they accept equals the clean run."""
    from patchsieve import PatchDataset, open_sidecar
    from patchsieve.errors import SidecarError, SidecarIncompleteError

    if not out.exists():
        return "absent"
    try:
        sc = open_sidecar(out)
    except SidecarIncompleteError:
        with pytest.raises(SidecarIncompleteError):
            PatchDataset(sidecar=out)
        return "refused (incomplete)"
    except SidecarError:
        return "refused (no side-car yet)"  # killed before the root metadata existed
    assert sc.is_complete
    assert_same_sidecar(out, clean)  # accepted => really complete
    return "complete"


def test_sigkill_at_random_points_then_resume(tmp_path: Path, capsys: Any) -> None:
    from distributed import Client, LocalCluster

    from patchsieve import compute, open_sidecar
    from patchsieve.config import MaxPatchFilterConfig, ShannonPatchFilterConfig

    src = write_source(tmp_path / "src.zarr")
    clean = tmp_path / "clean.patchsieve.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cl, Client(cl, set_as_default=False) as client:
        compute(src, {"shannon": ShannonPatchFilterConfig(threshold=4.5),
                      "max": MaxPatchFilterConfig(threshold=300.0)}, PATCH, clean, client=client)

    out = tmp_path / "killed.patchsieve.zarr"
    cmd = cli_command(src, out)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    log, kills, runs = [], 0, 0
    for seed, kind, value in kill_schedule(SEEDS):
        killed, what = run_and_kill(cmd, out, (kind, value), env)
        runs += 1
        kills += killed
        state = check_readers(out, clean)
        log.append(f"seed {seed}: {what}; readers: {state}")
    t0 = time.monotonic()
    final = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    runs += 1
    log.append(f"final rerun: {time.monotonic() - t0:.1f} s")
    assert final.returncode == 0, final.stderr[-3000:]
    assert open_sidecar(out).is_complete
    assert not (out / "patchsieve.lock").exists()
    assert_same_sidecar(out, clean)
    with capsys.disabled():
        print(f"\ncrash consistency: {runs} runs, {kills} SIGKILLs, 0 mismatches\n  "
              + "\n  ".join(log))
    assert kills >= 3, log  # the schedule must really interrupt runs


# ----------------------------------------------------------------------------- storage faults
def failing_store(limit: list[int]) -> str:
    """Register ``flaky://``: a memory filesystem whose writes fail with ENOSPC once ``limit[0]``
    writes have succeeded (``limit[0] < 0``: never). Returns a fresh side-car URL on it."""
    import errno
    import uuid

    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    def count(path: str) -> None:
        if limit[0] == 0:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        limit[0] -= 1

    class Flaky(MemoryFileSystem):
        protocol = "flaky"

        def pipe_file(self, path: str, value: Any, **kw: Any) -> None:
            count(path)
            return super().pipe_file(path, value, **kw)

        def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
            if "r" not in mode:
                count(path)
            return super()._open(path, mode=mode, **kw)

    fsspec.register_implementation("flaky", Flaky, clobber=True)
    return f"flaky://{uuid.uuid4().hex[:8]}/out.patchsieve.zarr"


def reader_state(url: str) -> str:
    """Readers refuse a side-car cut short by a storage fault."""
    from patchsieve import PatchDataset, open_sidecar
    from patchsieve.errors import SidecarError, SidecarIncompleteError

    try:
        open_sidecar(url)
    except SidecarIncompleteError:
        with pytest.raises(SidecarIncompleteError):
            PatchDataset(sidecar=url)
        return "refused (incomplete)"
    except SidecarError:
        return "refused (no side-car yet)"
    raise AssertionError(f"a side-car cut short by ENOSPC was accepted: {url}")


def test_disk_full_at_every_stage_then_resume(tmp_path: Path, capsys: Any) -> None:
    """ENOSPC after N writes, for N spread over a whole run: never complete, then resumable."""
    from distributed import Client, LocalCluster

    from patchsieve import compute

    rng = np.random.default_rng(9)
    data = rng.poisson(20, size=(4, 96, 96)).astype(np.uint16)
    data[:, 20:70, 30:80] += 300
    src = str(tmp_path / "small.zarr")
    arr = zarr.create_array(src, shape=data.shape, chunks=(1, 32, 32), dtype=data.dtype,
                            dimension_names=("s", "y", "x"))
    arr[...] = data
    from patchsieve.config import ShannonPatchFilterConfig

    cfg = ShannonPatchFilterConfig(threshold=4.5)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cl, Client(cl, set_as_default=False) as client:
        clean = compute(src, cfg, PATCH, tmp_path / "clean.patchsieve.zarr", client=client)
        budget = [-1]
        counter = failing_store(budget)
        budget[0] = 10**9
        compute(src, cfg, PATCH, counter, client=client)
        total = 10**9 - budget[0]  # writes of one complete run
        faults, log = 0, []
        # the number of writes varies a little between runs (markers flush by time and count)
        for n in sorted({int(v) for v in np.linspace(0, 0.9 * total, 5)}):
            budget[0] = n
            url = failing_store(budget)
            try:
                compute(src, cfg, PATCH, url, client=client)
                state = "no fault (fewer writes this time)"
            except OSError as err:  # StorageError is an OSError too
                assert "No space left on device" in str(err)
                faults += 1
                state = reader_state(url)
            budget[0] = -1  # space again: the rerun resumes
            done = compute(src, cfg, PATCH, url, client=client)
            assert done.is_complete
            for name in clean.stats:
                np.testing.assert_array_equal(done.stats[name], clean.stats[name], err_msg=name)
            np.testing.assert_array_equal(done.weights("shannon"), clean.weights("shannon"))
            a = {k: v for k, v in done.attrs.items() if k not in TIMESTAMPS}
            b = {k: v for k, v in clean.attrs.items() if k not in TIMESTAMPS}
            assert a == b
            log.append(f"ENOSPC after {n}/{total} writes: {state}, resumed, identical")
    assert faults >= 4, log
    with capsys.disabled():
        print(f"\ndisk full: {faults} injected faults, {len(log)} resumed runs, 0 mismatches\n  "
              + "\n  ".join(log))


# ----------------------------------------------------------------------------- object storage
@pytest.mark.s3
@pytest.mark.slow  # ~40 s (every block and marker is a PUT to moto); the local variant runs in CI
def test_sigkill_with_the_sidecar_on_s3_then_resume(tmp_path: Path, s3_bucket: Any) -> None:
    """The same guarantees on an object store (a real moto S3 server on 127.0.0.1)."""
    from distributed import Client, LocalCluster

    from patchsieve import compute, open_sidecar
    from patchsieve.config import MaxPatchFilterConfig, ShannonPatchFilterConfig
    from patchsieve.errors import SidecarIncompleteError

    # 1,024 region blocks: the client flushes values and markers every 2 s or 512 blocks, so the
    # run must span several flushes for a kill to land between two of them
    src = write_source(tmp_path / "src.zarr", n_samples=64, chunk=(32, 32))
    opts = s3_bucket.storage_options
    out = f"{s3_bucket.url}/killed.patchsieve.zarr"
    cmd = [*cli_command(src, Path("unused"), patch=(16, 16)), "--endpoint-url",
           opts["endpoint_url"]]
    cmd[cmd.index("-o") + 1] = out
    env = dict(os.environ, PYTHONWARNINGS="ignore", AWS_ACCESS_KEY_ID=opts["key"],
               AWS_SECRET_ACCESS_KEY=opts["secret"])

    def s3_markers() -> tuple[int, int]:
        try:
            g = zarr.open_group(zarr.storage.FsspecStore.from_url(
                out, storage_options=opts, read_only=True), mode="r")
            m = np.asarray(g["progress"][next(iter(
                k for k in g["progress"].array_keys() if k.startswith("stats_")))][...])
            return int(m.sum()), int(m.size)
        except Exception:  # noqa: BLE001 - not written yet
            return 0, 1

    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        done, total = s3_markers()
        if total > 1 and done > 0:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_group_dead(proc.pid)
    if proc.stderr:
        proc.stderr.close()
    done, total = s3_markers()
    assert 0 < done < total, (done, total)
    s3_bucket.fs.invalidate_cache()
    assert s3_bucket.fs.exists(f"{s3_bucket.name}/killed.patchsieve.zarr/patchsieve.lock")
    with pytest.raises(SidecarIncompleteError):
        open_sidecar(out, storage_options=opts)

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    sc = open_sidecar(out, storage_options=opts)
    assert sc.is_complete
    s3_bucket.fs.invalidate_cache()
    assert not s3_bucket.fs.exists(f"{s3_bucket.name}/killed.patchsieve.zarr/patchsieve.lock")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cl, Client(cl, set_as_default=False) as client:
        clean = compute(src, {"shannon": ShannonPatchFilterConfig(threshold=4.5),
                              "max": MaxPatchFilterConfig(threshold=300.0)}, (16, 16),
                        tmp_path / "clean.patchsieve.zarr", client=client)
    for name in clean.stats:
        np.testing.assert_array_equal(sc.stats[name], clean.stats[name], err_msg=name)
    for name in clean.filter_names:
        np.testing.assert_array_equal(sc.weights(name), clean.weights(name), err_msg=name)
    a = {k: v for k, v in sc.attrs.items() if k not in TIMESTAMPS}
    b = {k: v for k, v in clean.attrs.items() if k not in TIMESTAMPS}
    assert a == b
