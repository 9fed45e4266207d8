"""PatchDataset at scale (issue 17): a 10**7-region side-car (plan state, block-wise reads),
the same epoch for every (world_size, num_workers), object storage with latency."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from patchsieve.dataset import PatchDataset
from patchsieve.sidecar import Sidecar

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from scale_sidecar import write_scale_sidecar, write_scale_volume  # noqa: E402


def _scale(tmp: Path, grid, patch, chunks, axes):
    src = write_scale_volume(tmp, grid, patch, chunks)
    return src, write_scale_sidecar(src, patch, tmp / "volume.patchsieve.zarr", axes=axes)


@pytest.fixture
def no_whole_arrays(monkeypatch):
    """The dataset must never load a whole region grid from the side-car."""

    def refuse(*a, **k):
        raise AssertionError("a whole decision / statistics array was loaded")

    for name in ("filter_out", "weights"):
        monkeypatch.setattr(Sidecar, name, refuse)
    monkeypatch.setattr(Sidecar, "stats", property(refuse))


def test_ten_million_regions_start_with_a_small_plan_state(tmp_path, no_whole_arrays):
    """A complete side-car of 200x250x200 regions over a metadata-only 13 TB-class volume:
    constructed and first batch delivered with < 100 MB allocated (plan state, reads, cache)."""
    grid, patch = (200, 250, 200), (16, 64, 64)
    src, sc_path = _scale(tmp_path, grid, patch, (16, 256, 256), "ZYX")
    tracemalloc.start()
    try:
        ds = PatchDataset(sidecar=sc_path, seed=0, return_metadata=True)
        x, meta = next(iter(ds.loader(batch_size=64)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"{peak / 2**20:.1f} MiB"
    assert ds.sampler.state_bytes < 32 * 2**20
    assert tuple(x.shape) == (64, 1, *patch) and not x.any()  # fill value: chunks never written
    from patchsieve.sidecar import open_sidecar

    sc = open_sidecar(sc_path)
    assert len(ds) == int(sc.sample_totals("max")["n_patches_per_epoch"][0])
    region = np.stack(np.unravel_index(meta["region"].numpy(), grid), axis=1)
    origin = meta["origin"].numpy()
    assert (origin >= region * patch).all() and (origin < region * patch + patch).all()
    for r, bg in zip(region.tolist(), meta["is_background"].tolist(), strict=True):
        assert bool(sc.decision_block("max", 0, r, [v + 1 for v in r])[0, 0, 0]) == bg


def _epoch_keys(sc_path, ws, nw, **kw):
    keys = []
    for rank in range(ws):
        ds = PatchDataset(sidecar=sc_path, seed=3, rank=rank, world_size=ws, return_metadata=True,
                          batch_size=512, **kw)
        loader = ds.loader(num_workers=nw, **({"multiprocessing_context": "fork"} if nw else {}))
        for _, meta in loader:
            keys.append(np.concatenate([meta["sample"].numpy()[:, None], meta["origin"].numpy()], 1))
    keys = np.concatenate(keys)
    return keys[np.lexsort(keys.T[::-1])], len(ds) * ws


def _same_epoch(sc_path):
    one, n1 = _epoch_keys(sc_path, 1, 0)
    four, n4 = _epoch_keys(sc_path, 2, 2)
    assert len(one) == n1 and len(four) == n4 == n1 - n1 % 2
    # the (2, 2) epoch is the (1, 0) epoch minus at most the one patch the truncation drops
    rows1 = {tuple(r) for r in one.tolist()}
    counts1: dict = {}
    for r in one.tolist():
        counts1[tuple(r)] = counts1.get(tuple(r), 0) + 1
    for r in four.tolist():
        counts1[tuple(r)] -= 1
    left = [k for k, v in counts1.items() if v]
    assert all(counts1[k] >= 0 for k in rows1) and sum(counts1[k] for k in left) == n1 - n4


def test_same_epoch_for_world_1x0_and_2x2(tmp_path):
    _, sc_path = _scale(tmp_path, (200, 250), (8, 8), (64, 64), "YX")
    _same_epoch(sc_path)


@pytest.mark.slow
def test_same_epoch_for_world_1x0_and_2x2_a_million_regions(tmp_path):
    _, sc_path = _scale(tmp_path, (1000, 1000), (8, 8), (256, 256), "YX")
    _same_epoch(sc_path)


@pytest.mark.s3
def test_object_storage_with_latency_reads_chunks_concurrently(tmp_path):
    """A real moto S3 server answering every request after 30 ms: the workers keep many chunk
    requests in flight and deliver exactly the batches of the local copy."""
    from distributed import Client, LocalCluster
    from latency_s3 import DelayedMotoServer

    from patchsieve.compute import compute
    from patchsieve.config import MaxPatchFilterConfig
    from patchsieve.demo import write_ome_zarr

    rng = np.random.default_rng(0)
    data = rng.poisson(20, size=(2, 128, 128)).astype(np.uint16)
    data[:, 32:96, 16:80] += 400
    src = write_ome_zarr(tmp_path / "img.ome.zarr", data, "SYX", chunks=(1, 32, 32))
    with (LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                       dashboard_address=None) as cl, Client(cl, set_as_default=False) as c):
        sc = compute(src, [MaxPatchFilterConfig(threshold=200.0)], (16, 16),
                     tmp_path / "img.patchsieve.zarr", client=c)
    with DelayedMotoServer(0.03) as s3:
        url = s3.upload(src, "latency", "img.ome.zarr")
        kw = {"sidecar": sc, "seed": 1, "batch_size": 8, "return_metadata": True}
        lkw = {"num_workers": 2, "multiprocessing_context": "fork"}
        remote = list(PatchDataset(url, storage_options=s3.storage_options, **kw).loader(**lkw))
        assert s3.stats is not None and s3.stats.max_in_flight >= 4
    local = list(PatchDataset(src, **kw).loader(**lkw))
    assert len(remote) == len(local) > 4
    for (xr, mr), (xl, ml) in zip(remote, local, strict=True):
        assert np.array_equal(xr.numpy(), xl.numpy())
        assert np.array_equal(mr["origin"].numpy(), ml["origin"].numpy())
