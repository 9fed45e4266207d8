"""Tests of patchsieve.dataset.PatchDataset over real (OME-)Zarr stores and real side-cars."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import zarr

from patchsieve.compute import compute
from patchsieve.config import MaxPatchFilterConfig, ShannonPatchFilterConfig
from patchsieve.dataset import PatchDataset, PatchLoader
from patchsieve.demo import write_ome_zarr
from patchsieve.errors import ConfigError, SidecarIncompleteError, SidecarMismatchError
from patchsieve.sampling import shard_positions
from patchsieve.sidecar import open_sidecar
from patchsieve.transforms import RandomFlipRotate

# the side-cars are computed with an in-process LocalCluster
pytestmark = pytest.mark.cluster

CFG = MaxPatchFilterConfig(threshold=200.0, coverage=0.25)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl,
        Client(cl, set_as_default=False) as c,
    ):
        yield c


def _image(shape, seed):
    rng = np.random.default_rng(seed)
    data = rng.poisson(20, size=shape).astype(np.uint16)
    sl = tuple(slice(n // 4, n // 2) for n in shape[-2:])
    data[(Ellipsis, *sl)] += rng.poisson(400, size=data[(Ellipsis, *sl)].shape).astype(np.uint16)
    return data


@pytest.fixture(scope="module")
def syx(tmp_path_factory, client):
    """OME-Zarr (3, 150, 200) uint16, chunks (1, 64, 64), side-car for patch 32x32."""
    root = tmp_path_factory.mktemp("syx")
    data = _image((3, 150, 200), 0)
    src = write_ome_zarr(root / "img.ome.zarr", data, "SYX", chunks=(1, 64, 64))
    sc = compute(src, [CFG], (32, 32), root / "img.patchsieve.zarr", client=client)
    return src, data, sc


@pytest.fixture(scope="module")
def czyx(tmp_path_factory, client):
    """OME-Zarr (2, 20, 70, 80) uint16 CZYX, chunks (1, 8, 32, 32), side-car for 8x16x16."""
    root = tmp_path_factory.mktemp("czyx")
    data = _image((2, 20, 70, 80), 1)
    src = write_ome_zarr(root / "img.ome.zarr", data, "CZYX", chunks=(1, 8, 32, 32))
    cfg = MaxPatchFilterConfig(threshold=200.0, coverage=0.125, ref_channel=0)
    sc = compute(src, [cfg], (8, 16, 16), root / "img.patchsieve.zarr", client=client)
    return src, data, sc


def _expected_2d(data, meta, ps=(32, 32)):
    s, (oy, ox) = int(meta["sample"]), meta["origin"].tolist()
    return data[s, oy : oy + ps[0], ox : ox + ps[1]][None].astype(np.float32)


def _collect(ds_or_loader):
    out = []
    for item in ds_or_loader:
        x, meta = item[0], item[-1]
        if x.ndim == 3 or (x.ndim == 4 and isinstance(meta["sample"], int)):
            out.append((x[None], [meta]))
        else:
            n = x.shape[0]
            metas = [
                {k: (v[i] if hasattr(v, "__getitem__") else v) for k, v in meta.items()} for i in range(n)
            ]
            out.append((x, metas))
    return out


def _keys(metas):
    return [(int(m["sample"]), *[int(o) for o in m["origin"]]) for m in metas]


def _plan_keys(ds, epoch, world_size=1):
    plan = ds.sampler.epoch_plan(epoch)
    plan = plan[: len(plan) - len(plan) % world_size]
    return sorted((int(p["sample"]), *p["origin"].tolist()) for p in plan)


# --------------------------------------------------------------------------- basics
def test_patches_equal_numpy_slicing_2d(syx):
    src, data, sc = syx
    ds = PatchDataset(src, sidecar=sc, return_metadata=True, seed=1)
    assert (
        len(ds)
        == ds.sampler.epoch_length
        == int(sc.sample_totals(ds.filter_name)["n_patches_per_epoch"].sum())
    )
    n = 0
    for x, meta in ds:
        assert x.dtype == torch.float32 and tuple(x.shape) == (1, 32, 32)
        np.testing.assert_array_equal(x.numpy(), _expected_2d(data, meta))
        x.zero_()  # patches are fresh arrays, never views of the chunk cache
        n += 1
    assert n == len(ds)


def test_patches_equal_numpy_slicing_3d_channels(czyx):
    src, data, sc = czyx
    ds = PatchDataset(src, sidecar=sc, channels=[1], return_metadata=True)
    for i, (x, meta) in enumerate(ds):
        oz, oy, ox = meta["origin"].tolist()
        assert tuple(x.shape) == (1, 8, 16, 16)
        np.testing.assert_array_equal(x.numpy(), data[1:2, oz : oz + 8, oy : oy + 16, ox : ox + 16])
        if i > 200:
            break
    both = PatchDataset(src, sidecar=sc, channels=None)
    assert tuple(next(iter(both)).shape) == (2, 8, 16, 16)


def test_plan_order_and_chunk_grouping_draw_the_same_patches(syx):
    src, _, sc = syx
    keys = {}
    for window in (0, 1, 3, None):
        ds = PatchDataset(src, sidecar=sc, return_metadata=True, shuffle_window=window, seed=4)
        keys[window] = [(int(m["sample"]), *m["origin"].tolist()) for _, m in ds]
        assert sorted(keys[window]) == _plan_keys(ds, 0)
    assert keys[0] != keys[1]  # order differs, the set does not
    # window 1: patches of one chunk are read together
    chunk = [(s, y // 64, x // 64) for s, y, x in keys[1]]
    runs = [c for i, c in enumerate(chunk) if i == 0 or c != chunk[i - 1]]
    assert len(runs) == len(set(chunk))


def test_ranks_split_the_truncated_plan(syx):
    src, _, sc = syx
    got = []
    for rank in range(2):
        ds = PatchDataset(src, sidecar=sc, return_metadata=True, rank=rank, world_size=2, seed=2)
        keys = [(int(m["sample"]), *m["origin"].tolist()) for _, m in ds]
        assert len(keys) == len(ds) == ds.sampler.epoch_length // 2
        got.extend(keys)
    assert sorted(got) == _plan_keys(ds, 0, world_size=2)


# --------------------------------------------------------------------------- DataLoader
@pytest.mark.parametrize("collate", ["dataset", "default_collate"])
@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_dataloader_two_workers(syx, context, collate):
    from torch.utils.data import default_collate

    src, data, sc = syx
    ds = PatchDataset(src, sidecar=sc, return_metadata=True, seed=3)
    kw = {"collate_fn": default_collate} if collate == "default_collate" else {}
    loader = ds.loader(batch_size=16, num_workers=2, multiprocessing_context=context, **kw)
    metas = []
    n_batches = 0
    for x, meta in loader:
        n_batches += 1
        for i in range(x.shape[0]):
            m = {"sample": meta["sample"][i], "origin": meta["origin"][i]}
            np.testing.assert_array_equal(x[i].numpy(), _expected_2d(data, m))
            metas.append(m)
    assert sorted(_keys(metas)) == _plan_keys(ds, 0)
    assert n_batches == len(loader)  # each worker's short last batch is counted
    audit = ds.audit()
    assert audit["patches_read"] == len(ds)
    assert 0 < audit["chunk_cache_hit_rate"] <= 1


def test_set_epoch_reaches_persistent_workers(syx):
    src, _, sc = syx
    ds = PatchDataset(src, sidecar=sc, return_metadata=True, seed=5)
    loader = ds.loader(batch_size=32, num_workers=2, multiprocessing_context="fork", persistent_workers=True)
    epochs = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        epochs[epoch] = sorted(
            k
            for _, m in loader
            for k in _keys(
                [{"sample": s, "origin": o} for s, o in zip(m["sample"], m["origin"], strict=True)]
            )
        )
        assert epochs[epoch] == _plan_keys(ds, epoch)
    assert epochs[0] != epochs[1]
    # without set_epoch the loader advances by itself
    again = sorted(
        k
        for _, m in loader
        for k in _keys([{"sample": s, "origin": o} for s, o in zip(m["sample"], m["origin"], strict=True)])
    )
    assert again == _plan_keys(ds, 2) and ds.epoch == 2


# --------------------------------------------------------------------------- resume
def test_resume_mid_epoch_direct_iteration(syx):
    src, _, sc = syx
    ds = PatchDataset(src, sidecar=sc, return_metadata=True, seed=6)
    ds.set_epoch(3)
    full = [(int(m["sample"]), *m["origin"].tolist()) for _, m in ds]
    it = iter(ds)
    first = [(int(m["sample"]), *m["origin"].tolist()) for _, (_, m) in zip(range(41), it, strict=False)]
    state = ds.state_dict()
    assert state["epoch"] == 3 and state["positions"] == [41]
    fresh = PatchDataset(src, sidecar=sc, return_metadata=True, seed=6)
    fresh.load_state_dict(state)
    rest = [(int(m["sample"]), *m["origin"].tolist()) for _, m in fresh]
    assert first + rest == full
    assert len([1 for _ in fresh]) == len(full)  # the resume applies once


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_through_the_loader(syx, num_workers):
    src, _, sc = syx
    kw = {"batch_size": 10, "num_workers": num_workers}
    if num_workers:
        kw["multiprocessing_context"] = "fork"

    def keys_of(batches):
        return [
            k
            for _, m in batches
            for k in _keys(
                [{"sample": s, "origin": o} for s, o in zip(m["sample"], m["origin"], strict=True)]
            )
        ]

    ds = PatchDataset(src, sidecar=sc, return_metadata=True, seed=7)
    loader = ds.loader(**kw)
    full = keys_of(list(loader))
    loader2 = PatchDataset(src, sidecar=sc, return_metadata=True, seed=7).loader(**kw)
    it = iter(loader2)
    head = [next(it) for _ in range(5)]
    state = loader2.state_dict()
    del it
    ds3 = PatchDataset(src, sidecar=sc, return_metadata=True, seed=7)
    loader3 = ds3.loader(**kw)
    loader3.load_state_dict(state)
    tail = list(loader3)
    assert keys_of(head) + keys_of(tail) == full
    assert ds3.epoch == 0
    assert sorted(keys_of(list(loader3))) == _plan_keys(ds3, 1)  # then the next epoch


# --------------------------------------------------------------------------- pairs, norm, augment
def test_paired_target_read_at_the_same_location(syx, tmp_path):
    src, data, sc = syx
    tgt = write_ome_zarr(
        tmp_path / "target.ome.zarr", (data * 2).astype(np.uint16), "SYX", chunks=(1, 50, 50)
    )
    ds = PatchDataset(src, sidecar=sc, target=tgt, transform=RandomFlipRotate(seed=0))
    for i, (x, y) in enumerate(ds):
        np.testing.assert_array_equal(y.numpy(), 2 * x.numpy())
        if i > 100:
            break


def test_normalization_uses_the_sidecar_statistics(syx):
    src, _, sc = syx
    norm = sc.normalization()
    raw = PatchDataset(src, sidecar=sc, seed=8)
    std = PatchDataset(src, sidecar=sc, seed=8, normalize=True)
    for a, b, _ in zip(raw, std, range(20), strict=False):
        np.testing.assert_allclose(
            b.numpy(), (a.numpy() - norm["mean"][0]) / norm["std"][0], rtol=1e-5, atol=1e-5
        )


def test_transform_is_a_flip_or_rotation_of_the_patch():
    t = RandomFlipRotate(seed=1)
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    seen = set()
    for _ in range(64):
        a, b = t(x, x + 100)
        np.testing.assert_array_equal(b, a + 100)
        seen.add(a.tobytes())
        ok = any(
            np.array_equal(a, np.rot90(f, k, axes=(-2, -1)))
            for f in (x, x[:, ::-1], x[:, :, ::-1], x[:, ::-1, ::-1])
            for k in range(4)
        )
        assert ok
    assert len(seen) == 8  # the dihedral group of the square
    with pytest.raises(ConfigError, match="square"):
        t(np.zeros((1, 4, 6), np.float32))


# --------------------------------------------------------------------------- audit
def test_audit_reports_background_and_reads(syx):
    src, _, sc = syx
    ds = PatchDataset(src, sidecar=sc, seed=9)
    for _ in ds:
        pass
    a = ds.audit(epochs=20)
    assert abs(a["realized_background_fraction"] - a["expected_background_fraction"]) < 0.05
    assert a["patches_read"] == len(ds)
    chunk_bytes = 64 * 64 * 2
    assert 0 < a["bytes_read_per_patch"] < 4 * chunk_bytes
    assert a["visits"]["never_visited_eligible"] < a["visits"]["eligible_regions"]


# --------------------------------------------------------------------------- side-car handling
def test_runs_the_filter_pass_then_reuses_the_sidecar(tmp_path, client, monkeypatch):
    data = _image((2, 96, 96), 3)
    src = write_ome_zarr(tmp_path / "vol.ome.zarr", data, "SYX", chunks=(1, 48, 48))
    ds = PatchDataset(src, patch_size=(32, 32), patch_filter_config=CFG, client=client)
    assert ds.sidecar_path.endswith("vol.patchsieve.zarr")
    import importlib

    comp = importlib.import_module("patchsieve.filterpass._pass")  # where ensure_sidecar runs it

    def boom(*a, **k):
        raise AssertionError("compute must not run again")

    monkeypatch.setattr(comp, "compute", boom)
    again = PatchDataset(src, patch_size=(32, 32), patch_filter_config=CFG)
    assert again.sidecar_path == ds.sidecar_path
    x = next(iter(again))
    assert tuple(x.shape) == (1, 32, 32)


class _Incomplete:
    is_complete = False
    path = "somewhere.patchsieve.zarr"


def test_errors(syx, tmp_path):
    src, data, sc = syx
    with pytest.raises(SidecarIncompleteError, match="not complete"):
        PatchDataset(src, sidecar=_Incomplete())
    with pytest.raises(SidecarMismatchError, match="patch_size"):
        PatchDataset(src, sidecar=sc, patch_size=(64, 64))
    with pytest.raises(SidecarMismatchError, match="patch_filter_config"):
        PatchDataset(src, sidecar=sc, patch_filter_config=ShannonPatchFilterConfig(threshold=3.0))
    with pytest.raises(ConfigError, match="channels"):
        PatchDataset(src, sidecar=sc, channels=[1])
    with pytest.raises(ConfigError, match="patch_filter_config"):
        PatchDataset(src, patch_size=(32, 32))
    with pytest.raises(ConfigError, match="target"):
        PatchDataset(src, sidecar=sc, target=str(tmp_path / "missing.zarr"))
    small = write_ome_zarr(tmp_path / "small.ome.zarr", data[:, :100], "SYX")
    with pytest.raises(ConfigError, match="differ"):
        PatchDataset(src, sidecar=sc, target=small)
    other = tmp_path / "other.zarr"
    zarr.create_array(str(other), shape=(3, 150, 201), dtype="uint16", chunks=(1, 64, 64))
    with pytest.raises(SidecarMismatchError, match="shape"):
        PatchDataset(str(other), sidecar=sc, axes="SYX")
    with pytest.raises(ConfigError, match="mode"):
        PatchDataset(src, sidecar=sc, mode="nope")


def test_pickled_dataset_drops_open_handles(syx):
    import pickle

    src, _, sc = syx
    ds = PatchDataset(src, sidecar=sc)
    next(iter(ds))
    assert ds._reader._arr is not None and len(ds._reader._cache)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._reader._arr is None and not clone._reader._cache
    assert torch.equal(next(iter(clone)), next(iter(ds)))


# --------------------------------------------------------------------------- S3
@pytest.mark.s3
@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_s3_dataloader_two_workers(s3_bucket, syx, context):
    _, data, sc = syx
    url = f"{s3_bucket.url}/img.ome.zarr"
    write_ome_zarr(url, data, "SYX", chunks=(1, 64, 64), storage_options=s3_bucket.storage_options)
    ds = PatchDataset(
        url, sidecar=sc, return_metadata=True, seed=10, storage_options=s3_bucket.storage_options
    )
    loader = PatchLoader(ds, batch_size=16, num_workers=2, multiprocessing_context=context)
    seen = []
    for x, meta in loader:
        for i in range(x.shape[0]):
            m = {"sample": meta["sample"][i], "origin": meta["origin"][i]}
            np.testing.assert_array_equal(x[i].numpy(), _expected_2d(data, m))
            seen.append(m)
    assert sorted(_keys(seen)) == _plan_keys(ds, 0)
    assert shard_positions(len(ds), world_size=1).size == len(ds)


def test_nonzero_rank_waits_for_rank_zero_sidecar(tmp_path, client):
    import threading

    data = _image((1, 96, 96), 4)
    src = write_ome_zarr(tmp_path / "wait.ome.zarr", data, "SYX", chunks=(1, 48, 48))
    with pytest.raises(SidecarIncompleteError, match="timeout"):
        PatchDataset(
            src, patch_size=(32, 32), patch_filter_config=CFG, rank=1, world_size=2, sidecar_timeout=1.5
        )
    made = {}

    def rank0():
        made["ds"] = PatchDataset(
            src, patch_size=(32, 32), patch_filter_config=CFG, rank=0, world_size=2, client=client
        )

    t = threading.Thread(target=rank0)
    t.start()
    ds1 = PatchDataset(
        src, patch_size=(32, 32), patch_filter_config=CFG, rank=1, world_size=2, sidecar_timeout=120
    )
    t.join()
    assert ds1.sidecar_path == made["ds"].sidecar_path
    assert len(ds1) == len(made["ds"]) == ds1.sampler.epoch_length // 2


@pytest.mark.parametrize("mode", ["with_replacement", "fixed_subset"])
def test_other_sampling_modes(syx, mode):
    src, data, sc = syx
    kw = {"epoch_length": 50} if mode == "with_replacement" else {}
    ds = PatchDataset(src, sidecar=sc, mode=mode, return_metadata=True, **kw)
    got = list(ds)
    assert len(got) == len(ds) == (50 if mode == "with_replacement" else ds.sampler.epoch_length)
    for x, meta in got[:10]:
        np.testing.assert_array_equal(x.numpy(), _expected_2d(data, meta))


def test_relative_source_found_beside_the_sidecar_from_another_directory(
        tmp_path, client, monkeypatch):
    """A side-car computed with a relative source path records it as given; from another
    working directory ``Sidecar.locate_source`` finds it beside the side-car and PatchDataset
    reads it without ``source``."""
    import shutil

    work = tmp_path / "project"
    work.mkdir()
    data = _image((2, 96, 96), 3)
    write_ome_zarr(work / "img.ome.zarr", data, "SYX", chunks=(1, 48, 48))
    monkeypatch.chdir(work)
    compute("img.ome.zarr", [CFG], (32, 32), "img.patchsieve.zarr", client=client)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sc = open_sidecar(str(work / "img.patchsieve.zarr"))
    assert sc.source == "img.ome.zarr"
    assert os.path.samefile(sc.locate_source(), work / "img.ome.zarr")
    ds = PatchDataset(sidecar=str(work / "img.patchsieve.zarr"), seed=0)
    x = next(iter(ds))
    assert np.asarray(x).shape[-2:] == (32, 32)
    # data moved away: the recorded location is returned unchanged (the open error names it)
    shutil.rmtree(work / "img.ome.zarr")
    assert sc.locate_source() == "img.ome.zarr"
