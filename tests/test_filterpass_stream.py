"""The streaming filter pass: blocks walked lazily, bounded tasks in flight, identical results,
resume after Ctrl-C without recomputing a marked block (counted on a procedural volume)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cl, Client(cl, set_as_default=False) as c:
        yield c


def _write(path, data, dims, chunks):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                            dimension_names=dims, overwrite=True)
    arr[...] = data
    return str(path)


def _data(shape, seed=0, dtype="uint16"):
    rng = np.random.default_rng(seed)
    x = rng.poisson(20, size=shape).astype(dtype)
    sl = tuple(slice(n // 4, n // 2) for n in shape)
    x[sl] += rng.poisson(200, size=x[sl].shape).astype(dtype)
    return x


def _configs():
    from patchsieve.config import (
        MaxPatchFilterConfig,
        MeanStdPatchFilterConfig,
        ShannonPatchFilterConfig,
    )

    return {"shannon": ShannonPatchFilterConfig(threshold=3.0),
            "max": MaxPatchFilterConfig(threshold=100.0),
            "mean_std": MeanStdPatchFilterConfig(mean_threshold=30.0, std_threshold=5.0)}


LAYOUTS = [
    # shape, dims, chunks, patch: chunks multiple of the patch, not, patch > chunk,
    # chunked channels, several samples per chunk, 3D
    ((3, 96, 128), ("s", "y", "x"), (1, 32, 64), (16, 16)),
    ((2, 100, 90), ("s", "y", "x"), (1, 37, 50), (16, 16)),
    ((2, 80, 80), ("s", "y", "x"), (1, 10, 12), (16, 16)),
    ((2, 2, 64, 64), ("s", "c", "y", "x"), (1, 1, 32, 32), (16, 16)),
    ((5, 64, 64), ("s", "y", "x"), (2, 64, 24), (16, 16)),
    ((24, 64, 80), ("z", "y", "x"), (8, 32, 32), (4, 16, 16)),
]


@pytest.mark.parametrize("shape, dims, chunks, patch", LAYOUTS)
def test_blocks_give_the_statistics_of_region_stats(tmp_path, client, shape, dims, chunks, patch):
    """Every statistic equals the whole-graph reference (region_stats), bit for bit."""
    from patchsieve import compute, open_volume
    from patchsieve.regions import region_stats

    data = _data(shape)
    src = _write(tmp_path / "v.zarr", data, dims, chunks)
    sc = compute(src, _configs(), patch, tmp_path / "o.patchsieve.zarr", client=client)
    vol = open_volume(src)
    ref = region_stats(vol, patch, sc.stat_names, ref_channel=0).compute()
    for name in sc.stat_names:
        got = sc.stats[name].reshape(ref[name].shape)
        np.testing.assert_array_equal(got, ref[name].values, err_msg=name)
    assert sc.attrs["timing"]["pass"]["max_tasks_in_flight"] <= \
        sc.attrs["timing"]["pass"]["window"]


def test_memory_and_dask_sources_give_the_storage_results(tmp_path, client):
    """A volume read by key (zarr), an in-memory array (scattered once) and a transformed
    DataArray (read through its dask graph) write the same side-car arrays."""
    from patchsieve import compute, open_volume

    data = _data((2, 96, 96), 3)
    src = _write(tmp_path / "v.zarr", data, ("s", "y", "x"), (1, 48, 48))
    cfg = _configs()
    a = compute(src, cfg, (16, 16), tmp_path / "a.patchsieve.zarr", client=client)
    b = compute(data, cfg, (16, 16), tmp_path / "b.patchsieve.zarr", client=client, axes="SYX")
    vol = open_volume(src)
    c = compute(vol.copy(data=vol.data + 0), cfg, (16, 16), tmp_path / "c.patchsieve.zarr",
                client=client)
    assert (a.attrs["timing"]["pass"]["source"], b.attrs["timing"]["pass"]["source"],
            c.attrs["timing"]["pass"]["source"]) == ("storage", "memory", "dask")
    for other in (b, c):
        for name in a.stat_names:
            np.testing.assert_array_equal(other.stats[name], a.stats[name], err_msg=name)
        np.testing.assert_array_equal(other.weights("shannon"), a.weights("shannon"))
        assert other.normalization()["p99.9"] == a.normalization()["p99.9"]


def test_two_workers_walk_a_stream_of_tiles_each(tmp_path, client):
    """On two workers the halo'd pass runs one stream of tiles per worker; same results."""
    from distributed import Client, LocalCluster

    from patchsieve import compute

    data = _data((40, 96, 96), 4)
    src = _write(tmp_path / "v.zarr", data, ("z", "y", "x"), (8, 16, 16))
    cfg = {"shannon": _configs()["shannon"]}
    one = compute(src, cfg, (4, 8, 8), tmp_path / "one.patchsieve.zarr", client=client)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cl, Client(cl, set_as_default=False) as c2:
        two = compute(src, cfg, (4, 8, 8), tmp_path / "two.patchsieve.zarr", client=c2)
    assert two.attrs["timing"]["pass"]["streams"] == 2
    np.testing.assert_array_equal(two.stats["entropy"], one.stats["entropy"])
    np.testing.assert_array_equal(two.weights("shannon"), one.weights("shannon"))


class _TaskCount:
    """A scheduler plugin: how many of the pass's block tasks the scheduler holds at most."""

    name = "patchsieve-task-count"

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.max = 0
        self.total = 0

    def transition(self, key, start, finish, *args, **kwargs):  # noqa: ANN001
        if not str(key).startswith("patchsieve-block"):
            return
        if finish in ("released", "forgotten", "erred", "cancelled"):
            self.live.discard(key)
        elif key not in self.live:
            self.live.add(key)
            self.total += 1
            self.max = max(self.max, len(self.live))


def test_start_up_on_a_hundred_thousand_chunks(tmp_path, client):
    """10^5 chunks of a metadata-only volume: blocks start at once, the scheduler never holds
    more than the window of tasks, no large-graph warning; Ctrl-C keeps every block handed back."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    from patchsieve import compute
    from patchsieve.config import MeanStdPatchFilterConfig, ShannonPatchFilterConfig

    src = str(tmp_path / "meta.zarr")
    zarr.create_array(src, shape=(128, 4096, 3200), chunks=(4, 64, 64), dtype="uint16",
                      dimension_names=("z", "y", "x"))
    count = type("Count", (_TaskCount, SchedulerPlugin), {})()
    client.register_plugin(count)
    seen = []

    def stop_after(done: int, total: int) -> None:
        seen.append((done, total))
        if done >= 300:
            raise KeyboardInterrupt

    out = tmp_path / "o.patchsieve.zarr"
    cfg = {"shannon": ShannonPatchFilterConfig(threshold=1.0),
           "mean_std": MeanStdPatchFilterConfig(mean_threshold=1.0)}
    with warnings.catch_warnings(record=True) as caught, pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("always")
        compute(src, cfg, (4, 16, 16), out, client=client, on_progress=stop_after)
    assert not [w for w in caught if "large graph" in str(w.message)]
    assert seen[0][1] == 128 // 4 * 4096 // 64 * 3200 // 64 == 102_400
    count = client.cluster.scheduler.plugins[count.name]  # the scheduler's own copy
    threads = sum(client.nthreads().values())
    # in flight (submitted, not handed back) <= 4 x threads; the scheduler may still hold a few
    # finished tasks whose release is on its way: nothing near the 102,400 blocks in any case
    assert 0 < count.max <= 2 * 4 * threads, count.max
    assert count.total < 102_400 // 16
    g = zarr.open_group(str(out), mode="r")
    marks = {k: int(np.count_nonzero(g["progress"][k][...])) for k in g["progress"].array_keys()}
    done = seen[-1][0]
    assert all(m >= done for m in marks.values()), (marks, done)  # flushed on the interrupt
    # the marker arrays are chunked: a flush rewrites the chunks of the blocks it marks
    assert all(g["progress"][k].nchunks > 1 for k in marks)


def test_ctrl_c_then_rerun_recomputes_no_marked_block(tmp_path, client):
    """Interrupted twice and completed on a procedural volume of 80,000 chunks: no chunk whose
    block had a marker is served again (the counters see every read)."""
    from patchsieve import compute, open_sidecar
    from patchsieve.config import MeanStdPatchFilterConfig
    from patchsieve.demo import procedural_url, served_chunks

    url = procedural_url((100, 1600, 2048), (4, 32, 32), seed=7)
    counts = tmp_path / "counts"
    so = {"counts": str(counts)}
    out = tmp_path / "p.patchsieve.zarr"
    cfg = MeanStdPatchFilterConfig(mean_threshold=150.0)

    def stop_at(n: int):
        def cb(done: int, total: int) -> None:
            if done >= n:
                raise KeyboardInterrupt
        return cb

    def marked() -> set[tuple[int, ...]]:
        g = zarr.open_group(str(out), mode="r")
        m = np.asarray(g["progress"]["cells"][...])
        return {tuple(int(i) for i in idx) for idx in np.argwhere(m)}

    with pytest.raises(KeyboardInterrupt):
        compute(url, cfg, (4, 16, 16), out, client=client, storage_options=so,
                on_progress=stop_at(400))
    first = marked()
    served_1 = served_chunks(counts, url)
    assert len(first) >= 400
    with pytest.raises(KeyboardInterrupt):
        compute(url, cfg, (4, 16, 16), out, client=client, storage_options=so,
                on_progress=stop_at(400))
    second = marked()
    served_2 = served_chunks(counts, url) - served_1
    sc = open_sidecar(out, allow_incomplete=True)
    fingerprint_and_sample = {tuple(int(i) for i in np.unravel_index(f, (25, 50, 64)))
                              for f in np.linspace(0, 25 * 50 * 64 - 1, 8).astype(int)}
    fingerprint_and_sample |= {(0, 0, 0), (24, 49, 63)}
    again = set(served_2) & first
    assert again <= fingerprint_and_sample, sorted(again - fingerprint_and_sample)[:5]
    assert first < second and len(second) >= len(first) + 400
    assert sc.progress()["cells"]["done"] == len(second)


def test_old_markers_are_dropped_when_resuming(tmp_path, client):
    """A side-car begun by an earlier version (no ``block_grid``) has markers of other blocks:
    they are dropped, the incomplete parts computed again."""
    from patchsieve import compute, open_sidecar

    data = _data((2, 64, 64), 5)
    src = _write(tmp_path / "v.zarr", data, ("s", "y", "x"), (1, 32, 32))
    out = tmp_path / "o.patchsieve.zarr"
    cfg = {"shannon": _configs()["shannon"]}
    ref = compute(src, cfg, (16, 16), out, client=client)
    expected = ref.stats["entropy"].copy()
    g = zarr.open_group(str(out), mode="r+")
    meta = dict(g.attrs["patchsieve"])
    del meta["block_grid"]
    meta["status"] = {k: v for k, v in meta["status"].items() if k != "stats/entropy"}
    meta["complete"] = False
    g.attrs["patchsieve"] = meta
    g["stats/entropy"][...] = np.nan  # values the old markers vouch for
    again = compute(src, cfg, (16, 16), out, client=client)
    np.testing.assert_array_equal(again.stats["entropy"], expected)
    assert open_sidecar(out).attrs["block_grid"] == "source-chunks"


def test_blocklog_writes_touched_chunks_only(tmp_path):
    """A flush writes the side-car chunks and the marker chunks its blocks touched."""
    from patchsieve.sidecar import SidecarLock
    from patchsieve.sidecar._writer import BlockLog

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    vals = g.create_array("v", shape=(8, 100), chunks=(4, 25), dtype="f8", fill_value=np.nan)
    marker = g.create_array("m", shape=(8, 10), chunks=(2, 5), dtype="u1")
    vals[0:4, 0:25] = 7.0  # a resumed side-car keeps what is there
    writes: list[tuple] = []
    orig = zarr.Array.__setitem__

    def spy(self, sel, value):  # noqa: ANN001
        writes.append((self.path, sel))
        return orig(self, sel, value)

    class Lock(SidecarLock):
        def __init__(self) -> None:
            pass

        def heartbeat(self) -> None:
            pass

    log = BlockLog({"v": vals}, marker, Lock())
    log.put((0, 1), (slice(0, 1), slice(10, 20)), {"v": np.ones((1, 10))})
    assert writes == [] or {w[0] for w in writes} == {"v", "m"}  # the first block flushes
    writes.clear()
    log.put((5, 9), (slice(5, 6), slice(90, 100)), {"v": np.full((1, 10), 2.0)})
    zarr.Array.__setitem__ = spy
    try:
        log.flush()
    finally:
        zarr.Array.__setitem__ = orig
    assert writes == [("v", (slice(4, 8), slice(75, 100))), ("m", (slice(4, 6), slice(5, 10)))]
    v = vals[...]
    assert v[0, 0] == 7.0 and v[0, 15] == 1.0 and v[5, 95] == 2.0 and np.isnan(v[5, 0])
    assert marker[0, 1] == 1 and marker[5, 9] == 1 and int(np.asarray(marker[...]).sum()) == 2


def test_sigkill_then_rerun_recomputes_only_blocks_without_a_marker(tmp_path):
    """`patchsieve compute` SIGKILLed mid-run, then rerun: no block marked at the kill is read
    again; at most the blocks in flight plus one marker flush are computed twice."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from patchsieve import open_sidecar
    from patchsieve.demo import procedural_url, served_chunks
    from patchsieve.filterpass._plan import MAX_GROUP
    from patchsieve.filterpass._scheduler import TASKS_PER_THREAD
    from patchsieve.sidecar._writer import FLUSH_EVERY_BLOCKS

    url = procedural_url((64, 512, 1024), (4, 32, 32), seed=9)
    counts, out = tmp_path / "counts", tmp_path / "k.patchsieve.zarr"
    cmd = [sys.executable, "-m", "patchsieve.cli", "-q", "compute", url, "--filter", "mean_std",
           "--threshold", "150", "--patch", "4,16,16", "-o", str(out), "--no-progress",
           "--n-workers", "1", "--threads-per-worker", "2",
           "--storage-options", json.dumps({"counts": str(counts)})]
    env = dict(os.environ, PYTHONWARNINGS="ignore")

    def marked() -> np.ndarray:
        try:
            return np.asarray(zarr.open_group(str(out), mode="r")["progress"]["cells"][...])
        except Exception:  # noqa: BLE001 - not written yet
            return np.zeros(0)

    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and marked().sum() < 600:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    at_kill = {tuple(int(i) for i in x) for x in np.argwhere(marked())}
    served_1 = served_chunks(counts, url)
    assert 600 <= len(at_kill) < 8192
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    served_2 = served_chunks(counts, url) - served_1
    twice = set(served_1) & set(served_2)
    picks = {tuple(int(i) for i in np.unravel_index(f, (16, 16, 32)))
             for f in [0, 8191, *np.linspace(0, 8191, 8).astype(int)]}  # the fingerprint's
    sc = open_sidecar(out)
    picks |= {tuple(int(i) for i in np.unravel_index(f, (16, 16, 32)))
              for f in sc.normalization()["sampled_chunks"]}
    assert not (twice & at_kill) - picks, sorted((twice & at_kill) - picks)[:5]
    assert len(twice - picks) <= TASKS_PER_THREAD * 2 * MAX_GROUP + FLUSH_EVERY_BLOCKS
    assert set(served_1) | set(served_2) >= {tuple(i) for i in np.ndindex(16, 16, 32)}


def test_patch_dataset_reads_a_procedural_volume(tmp_path, client):
    """A side-car of a procedural URL feeds PatchDataset; its DataLoader workers re-open the URL
    (fsspec entry point) and their reads are counted too."""
    torch = pytest.importorskip("torch")

    from patchsieve import PatchDataset, compute
    from patchsieve.config import ShannonPatchFilterConfig
    from patchsieve.demo import procedural_url, served_chunks

    url = procedural_url((4, 128, 128), (1, 64, 64), axes="syx", seed=4)
    counts = tmp_path / "counts"
    so = {"counts": str(counts)}
    sc = compute(url, ShannonPatchFilterConfig(threshold=7.0), (32, 32),
                 tmp_path / "p.patchsieve.zarr", client=client, storage_options=so)
    after_pass = served_chunks(counts, url)
    assert set(after_pass) == {tuple(i) for i in np.ndindex(4, 2, 2)}
    ds = PatchDataset(sidecar=sc.path, storage_options=so, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
    n = sum(int(b.shape[0]) for b in loader)
    assert n == len(ds) > 0
    assert sum((served_chunks(counts, url) - after_pass).values()) > 0
