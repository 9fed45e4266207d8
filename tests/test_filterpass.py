"""The filter pass (patchsieve.compute) and the side-car it writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from patchsieve.errors import (
    ConfigError,
    SidecarIncompleteError,
    SidecarLockedError,
    SidecarMismatchError,
    StorageError,
)

REF = Path(__file__).resolve().parents[1].parent / "shared" / "careamics_reference"

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cl, Client(cl, set_as_default=False) as c:
        yield c


def write_zarr(path, data, dims, chunks):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                            dimension_names=dims, overwrite=True)
    arr[...] = data
    return str(path)


def _cfg_from_case(d):
    from patchsieve.config import (
        MaskPatchFilterConfig,
        MaxPatchFilterConfig,
        MeanStdPatchFilterConfig,
        ShannonPatchFilterConfig,
    )

    f = str(d["filter"])
    ref = int(d["ref_channel"])
    if f == "max":
        return MaxPatchFilterConfig(threshold=float(d["threshold"]), coverage=float(d["coverage"]),
                                    ref_channel=ref)
    if f == "mean_std":
        st = float(d["std_threshold"])
        return MeanStdPatchFilterConfig(mean_threshold=float(d["mean_threshold"]),
                                        std_threshold=None if st < 0 else st, ref_channel=ref)
    if f == "shannon":
        return ShannonPatchFilterConfig(threshold=float(d["threshold"]), ref_channel=ref)
    if f == "mask":
        return MaskPatchFilterConfig(coverage=float(d["coverage"]))
    raise AssertionError(f)


CASES = ["max_2dnd_cov0.25", "meanstd_2d", "shannon_2du16", "max_3d_cov0.125", "meanonly_3dnd",
         "shannon_mc_ref1", "mask_2dnd", "mask_3d"]


@pytest.mark.careamics
@pytest.mark.parametrize("case", CASES)
def test_sidecar_decisions_equal_careamics(tmp_path, client, case):
    if not REF.is_dir():
        pytest.skip(f"CAREamics reference vectors not found at {REF}")
    from patchsieve import compute

    d = np.load(REF / f"{case}.npz")
    inputs = np.load(REF / "inputs.npz")
    data = inputs[str(d["input_key"])]
    axes = str(d["axes"]).lower()
    ps = tuple(int(p) for p in d["patch_size"])
    chunks = tuple(max(1, n // 2 + 3) if dim in "zyx" else 1 for n, dim in zip(data.shape, axes))
    src = write_zarr(tmp_path / "src.zarr", data, tuple(axes), chunks)
    cfg = _cfg_from_case(d)
    if cfg.name == "mask":
        mask = inputs[str(d["mask_key"])].astype(np.uint8)
        mpath = write_zarr(tmp_path / "mask.zarr", mask, tuple(axes), chunks)
        cfg = cfg.model_copy(update={"mask": mpath})
    sc = compute(src, {"f": cfg}, ps, tmp_path / "out.patchsieve.zarr", client=client)
    assert sc.is_complete
    expected = d["region_filter_out"]
    got = sc.filter_out("f").reshape(expected.shape)
    np.testing.assert_array_equal(got, expected)
    w = sc.weights("f").reshape(expected.shape)
    np.testing.assert_allclose(w, d["region_prob_after_filter_background"])
    tot = sc.sample_totals("f")
    assert int(tot["n_patches_per_epoch"].sum()) == int(d["n_patches_after"])


@pytest.fixture()
def stack(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.poisson(5, size=(4, 150, 200)).astype(np.uint16)
    data[:, 40:100, 60:160] += rng.poisson(300, size=(4, 60, 100)).astype(np.uint16)
    return write_zarr(tmp_path / "stack.zarr", data, ("s", "y", "x"), (1, 64, 100)), data


def _shannon(thr=3.0):
    from patchsieve.config import ShannonPatchFilterConfig

    return ShannonPatchFilterConfig(threshold=thr)


def test_attrs_geometry_and_normalization(tmp_path, client, stack):
    from patchsieve import compute, open_sidecar

    src, data = stack
    out = tmp_path / "o.patchsieve.zarr"
    compute(src, _shannon(), (32, 32), out, client=client)
    sc = open_sidecar(out)
    assert sc.dims == ("s", "y", "x")
    assert sc.sample_shape == (4,) and sc.n_samples == 4
    assert sc.grid_shape == ((150 + 1) // 32, (200 + 1) // 32)
    assert sc.filter_out("shannon").shape == (4, *sc.grid_shape)
    norm = sc.normalization()
    np.testing.assert_allclose(norm["mean"][0], data.mean(), rtol=1e-9)
    np.testing.assert_allclose(norm["std"][0], data.std(), rtol=1e-9)
    assert norm["p99.9"][0] >= norm["p0.1"][0]
    assert "kept_mean" in norm and norm["kept_mean"][0] > norm["mean"][0]
    attrs = json.dumps(sc.attrs)
    assert sc.attrs["complete"] is True and "secret" not in attrs


def test_threshold_change_reuses_stats(tmp_path, client, stack, caplog):
    from patchsieve import compute

    src, _ = stack
    out = tmp_path / "o.patchsieve.zarr"
    a = compute(src, _shannon(1.0), (32, 32), out, client=client)
    before = {k: v.copy() for k, v in a.stats.items()}
    n_bg_a = int(a.filter_out("shannon").sum())
    caplog.set_level("INFO", logger="patchsieve.compute")
    caplog.clear()  # only what the second run logs
    b = compute(src, _shannon(8.0), (32, 32), out, client=client)
    assert not any("blocks to compute" in r.message for r in caplog.records)
    for k, v in b.stats.items():
        np.testing.assert_array_equal(v, before[k])
    assert int(b.filter_out("shannon").sum()) > n_bg_a


def test_mismatch_and_overwrite(tmp_path, client, stack):
    from patchsieve import compute

    src, data = stack
    out = tmp_path / "o.patchsieve.zarr"
    compute(src, _shannon(), (32, 32), out, client=client)
    with pytest.raises(SidecarMismatchError, match="other parameters"):
        compute(src, _shannon(), (64, 64), out, client=client)
    z = zarr.open_array(src, mode="r+")
    z[0, :64, :100] = 7  # first chunk is in the fingerprint sample
    with pytest.raises(SidecarMismatchError, match="source changed"):
        compute(src, _shannon(), (32, 32), out, client=client)
    sc = compute(src, _shannon(), (32, 32), out, client=client, overwrite=True)
    assert sc.is_complete


def test_output_inside_source_refused(tmp_path, client, stack):
    from patchsieve import compute

    src, _ = stack
    with pytest.raises(ConfigError, match="inside the source"):
        compute(src, _shannon(), (32, 32), os.path.join(src, "side.zarr"), client=client)


def test_read_only_output_refused(tmp_path, client, stack):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from patchsieve import compute

    class DenyWrites(MemoryFileSystem):
        protocol = "denywrite"

        def _open(self, path, mode="rb", **kw):
            if "r" not in mode:
                raise PermissionError("Access Denied")
            return super()._open(path, mode=mode, **kw)

        def pipe_file(self, path, value, **kw):
            raise PermissionError("Access Denied")

    fsspec.register_implementation("denywrite", DenyWrites, clobber=True)
    src, _ = stack
    with pytest.raises(StorageError, match="not writable"):
        compute(src, _shannon(), (32, 32), "denywrite://bucket/out.patchsieve.zarr", client=client)


def test_reader_refuses_incomplete(tmp_path, client, stack):
    from patchsieve import compute, open_sidecar

    src, _ = stack
    out = tmp_path / "o.patchsieve.zarr"
    compute(src, _shannon(), (32, 32), out, client=client)
    g = zarr.open_group(str(out), mode="r+")
    meta = g.attrs["patchsieve"]
    meta["complete"] = False
    g.attrs["patchsieve"] = meta
    with pytest.raises(SidecarIncompleteError, match="not complete"):
        open_sidecar(out)
    assert open_sidecar(out, allow_incomplete=True).is_complete is False


def test_lock_refuses_live_owner_and_takes_stale(tmp_path, client, stack):
    import socket

    from patchsieve import compute

    src, _ = stack
    out = tmp_path / "o.patchsieve.zarr"
    out.mkdir()
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "token": "other", "heartbeat": 1e18,
            "started": "now"}
    (out / "patchsieve.lock").write_text(json.dumps(lock))
    with pytest.raises(SidecarLockedError, match="locked by another running compute"):
        compute(src, _shannon(), (32, 32), out, client=client)
    lock["pid"] = 2**22 + 12345  # no such process
    (out / "patchsieve.lock").write_text(json.dumps(lock))
    sc = compute(src, _shannon(), (32, 32), out, client=client)
    assert sc.is_complete and not (out / "patchsieve.lock").exists()


def test_ref_channel_of_single_channel_volume(tmp_path, client, stack):
    from patchsieve import compute
    from patchsieve.config import ShannonPatchFilterConfig

    src, _ = stack
    with pytest.raises(ConfigError, match="ref_channel"):
        compute(src, ShannonPatchFilterConfig(threshold=3, ref_channel=1), (32, 32),
                tmp_path / "o.zarr", client=client)


def test_labels_readable_by_ome_zarr(tmp_path, client, stack):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from patchsieve import compute

    src, data = stack
    out = tmp_path / "o.patchsieve.zarr"
    sc = compute(src, _shannon(), (32, 32), out, client=client, labels=True)
    nodes = list(Reader(parse_url(str(out / "labels" / "shannon")))())
    assert nodes, "ome_zarr reader found no label image"
    lvl0 = np.asarray(nodes[0].data[0])
    assert lvl0.shape == data.shape
    fo = sc.filter_out("shannon")
    # a pixel is signal iff one of the regions covering it is kept
    s, gy, gx = 0, 1, 1
    if not fo[s, gy, gx]:
        assert lvl0[s, gy * 32: gy * 32 + 64, gx * 32: gx * 32 + 64].all()
    assert set(np.unique(lvl0)) <= {0, 1}


def test_labels_rewritten_when_computed_again(tmp_path, client, stack):
    """Running the same job again (``make demo`` twice) or adding a filter rewrites the label
    images instead of failing on the existing ones; each name is listed once."""
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from patchsieve import compute
    from patchsieve.config import MaxPatchFilterConfig

    src, data = stack
    out = tmp_path / "o.patchsieve.zarr"
    compute(src, _shannon(), (32, 32), out, client=client, labels=True)
    compute(src, _shannon(), (32, 32), out, client=client, labels=True)
    sc = compute(src, [_shannon(), MaxPatchFilterConfig(threshold=10.0)], (32, 32), out,
                 client=client, labels=True)
    names = zarr.open_group(str(out / "labels"), mode="r").attrs["ome"]["labels"]
    assert sorted(names) == ["max", "shannon"]
    for name in names:
        lvl0 = np.asarray(list(Reader(parse_url(str(out / "labels" / name)))())[0].data[0])
        assert lvl0.shape == data.shape
        fo = sc.filter_out(name)
        assert lvl0.any() == bool((~fo).any())


def test_default_output_beside_source(tmp_path, client, stack):
    from patchsieve import compute

    src, _ = stack
    sc = compute(src, _shannon(), (32, 32), client=client)
    assert sc.path.endswith("stack.patchsieve.zarr")
    assert Path(sc.path).parent == Path(src).parent


def _regions_filter_out(img, filt, ps):
    """CAREamics' loop: every region (2*ps, stride ps, zero-padded) through ``filt.filter_out``."""
    import itertools

    grid = [(n + 1) // p for n, p in zip(img.shape, ps)]
    out = np.zeros(grid, bool)
    for g in itertools.product(*[range(n) for n in grid]):
        sl = tuple(slice(i * p, i * p + 2 * p) for i, p in zip(g, ps))
        reg = np.zeros([2 * p for p in ps], np.float32)
        part = img[sl].astype(np.float32)
        reg[tuple(slice(0, s) for s in part.shape)] = part
        out[g] = filt.filter_out(reg[None])
    return out


def test_demo_datasets_equal_numpy_filters(tmp_path, client):
    """Side-car decisions on both demo datasets equal the numpy filters region by region."""
    from patchsieve import (
        MaxPatchFilter,
        MaxPatchFilterConfig,
        MeanStdPatchFilter,
        MeanStdPatchFilterConfig,
        ShannonPatchFilter,
        ShannonPatchFilterConfig,
        compute,
        open_volume,
        write_demo_data,
    )

    paths = write_demo_data(tmp_path / "demo", size="small")
    sc = compute(paths["hagen2d"], ShannonPatchFilterConfig(threshold=7.5), (64, 64),
                 tmp_path / "h.zarr", client=client)
    stack = np.asarray(open_volume(paths["hagen2d"]).values)
    want = np.stack([_regions_filter_out(im, ShannonPatchFilter(7.5), (64, 64)) for im in stack])
    np.testing.assert_array_equal(sc.filter_out("shannon"), want)
    assert 0 < want.mean() < 1

    vol = np.asarray(open_volume(paths["vol3d2c"]).values)[1]  # reference channel 1
    ps = (16, 64, 64)
    thr = float(np.median(vol))
    cfgs = {"max": MaxPatchFilterConfig(threshold=thr, ref_channel=1),
            "ms": MeanStdPatchFilterConfig(mean_threshold=thr, std_threshold=10.0, ref_channel=1)}
    sc3 = compute(paths["vol3d2c"], cfgs, ps, tmp_path / "v.zarr", client=client)
    np.testing.assert_array_equal(sc3.filter_out("max")[0],
                                  _regions_filter_out(vol, MaxPatchFilter(thr, 0.125), ps))
    np.testing.assert_array_equal(sc3.filter_out("ms")[0],
                                  _regions_filter_out(vol, MeanStdPatchFilter(thr, 10.0), ps))


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
@pytest.mark.parametrize("border", ["careamics", "valid"])
def test_cell_statistics_equal_region_blocks(tmp_path, client, dtype, border):
    """MeanStd and Mask stats come from the cell partials (no region-block pass) and equal
    region_stats bit for bit; Shannon still runs on region blocks in the same pass."""
    import dask.array as da
    import xarray as xr

    from patchsieve import compute
    from patchsieve.config import MaskPatchFilterConfig, MeanStdPatchFilterConfig
    from patchsieve.regions import region_stats

    rng = np.random.default_rng(7)
    data = rng.poisson(40, size=(2, 19, 70, 90)).astype(dtype)
    data[:, 1, 5:30, 10:60] += 500
    mask = (rng.random((19, 70, 90)) > 0.5).astype(np.uint8)
    src = write_zarr(tmp_path / "v.zarr", data, ("c", "z", "y", "x"), (1, 8, 32, 48))
    mpath = write_zarr(tmp_path / "m.zarr", mask, ("z", "y", "x"), (8, 32, 48))
    out = tmp_path / "o.patchsieve.zarr"
    cfgs = {"ms": MeanStdPatchFilterConfig(mean_threshold=50.0, std_threshold=5.0, ref_channel=1),
            "mask": MaskPatchFilterConfig(coverage=0.5, mask=mpath),
            "sh": _shannon(2.0).model_copy(update={"ref_channel": 1})}
    ps = (4, 16, 16)
    compute(src, cfgs, ps, out, client=client, border=border)
    g = zarr.open_group(str(out), mode="r")
    vol = xr.DataArray(da.from_array(data, chunks=(1, 8, 32, 48)), dims=("c", "z", "y", "x"))
    want = region_stats(vol, ps, ["mean", "std", "entropy", "mask_coverage"], ref_channel=1,
                        mask=xr.DataArray(mask, dims=("z", "y", "x")), border=border).compute()
    for stat in ("mean", "std", "entropy", "mask_coverage"):
        np.testing.assert_array_equal(np.asarray(g[f"stats/{stat}"][...]), want[stat].values,
                                      err_msg=stat)
    markers = sorted(k for k in g["progress"].array_keys())
    assert len([k for k in markers if k.startswith("progress/stats") or k.startswith("stats")]) == 1
    assert "cells" in g and "mask_nonzero" in g["cells"]
    assert ("ref_m2" in g["cells"]) == (dtype == "float32")
    status = g.attrs["patchsieve"]["status"]
    assert status["cells/mask"] == "complete"
    assert (status.get("cells/moments") == "complete") == (dtype == "float32")


def test_resume_reads_only_the_chunks_missing_blocks_need(tmp_path, client, stack, monkeypatch):
    """A rerun after a partial run computes the missing blocks from their own chunks only
    (the scheduler culls the graph); a full pass reads every chunk exactly once."""
    from patchsieve import compute

    src, _ = stack
    out = tmp_path / "o.patchsieve.zarr"
    reads: list[str] = []
    orig = zarr.Array.__getitem__

    def counting(self, sel):
        if str(self.store_path).startswith(str(src)) or "stack.zarr" in str(self.store_path):
            reads.append(repr(sel))
        return orig(self, sel)

    monkeypatch.setattr(zarr.Array, "__getitem__", counting)
    compute(src, _shannon(), (32, 32), out, client=client)
    n_chunks = 4 * 3 * 2
    data_reads = [r for r in reads if r != "Ellipsis"]
    assert len(data_reads) == len(set(data_reads)) == n_chunks, data_reads
    # forget sample 3's region blocks, as if the run had been killed there
    g = zarr.open_group(str(out), mode="r+")
    key = next(k for k in g["progress"].array_keys() if k.startswith("stats_"))
    marker = g["progress"][key]
    done = np.asarray(marker[...])
    done[3] = 0
    marker[...] = done
    meta = dict(g.attrs["patchsieve"])
    meta["status"] = {**meta["status"], "stats/entropy": "incomplete"}
    meta["complete"] = False
    g.attrs["patchsieve"] = meta
    reads.clear()
    compute(src, _shannon(), (32, 32), out, client=client)
    data_reads = [r for r in reads if r != "Ellipsis"]
    assert 0 < len(data_reads) <= 3 * 2, data_reads  # sample 3's chunks only
    assert all(r.startswith("(slice(3, 4") for r in data_reads), data_reads


def test_resume_keeps_arrays_written_with_other_chunks(tmp_path, client, stack):
    """A side-car begun with other zarr chunks (an older version) resumes with its values."""
    from patchsieve import compute

    src, _ = stack
    out = tmp_path / "o.patchsieve.zarr"
    compute(src, _shannon(), (32, 32), out, client=client)
    g = zarr.open_group(str(out), mode="r+")
    want = np.asarray(g["stats/entropy"][...])
    # rewrite the stats array with one chunk per region block, as older versions did
    g.create_array("stats/entropy", shape=want.shape, chunks=(1, 2, 2), dtype="float64",
                   fill_value=np.nan, overwrite=True)[...] = want
    key = next(k for k in g["progress"].array_keys() if k.startswith("stats_"))
    done = np.asarray(g["progress"][key][...])
    done[2:] = 0
    g["progress"][key][...] = done
    meta = dict(g.attrs["patchsieve"])
    meta["status"] = {**meta["status"], "stats/entropy": "incomplete"}
    meta["complete"] = False
    g.attrs["patchsieve"] = meta
    compute(src, _shannon(), (32, 32), out, client=client)
    g = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(np.asarray(g["stats/entropy"][...]), want)
    assert g["stats/entropy"].chunks == (1, 2, 2)


@pytest.mark.parametrize("c_chunk", [1, 2])
def test_percentiles_per_channel_of_channel_chunked_sources(tmp_path, client, c_chunk):
    """A source chunked one channel per chunk gets one percentile per channel, as one whose
    chunks hold every channel (the picks are blocks over all channels)."""
    from patchsieve import compute, open_sidecar
    from patchsieve.config import MeanStdPatchFilterConfig

    rng = np.random.default_rng(0)
    a = np.stack([rng.integers(0, 100, (64, 128)),
                  rng.integers(1000, 2000, (64, 128))]).astype("u2")
    z = zarr.create_array(str(tmp_path / "v.zarr"), shape=a.shape, chunks=(c_chunk, 32, 64),
                          dtype="u2")
    z[...] = a
    out = str(tmp_path / "o.zarr")
    compute(str(tmp_path / "v.zarr"), MeanStdPatchFilterConfig(mean_threshold=10), (16, 16),
            out, axes="cyx", client=client)
    pct = open_sidecar(out).attrs["percentiles"]
    assert len(pct["p0.1"]) == len(pct["p99.9"]) == 2
    assert 0 <= pct["p0.1"][0] <= pct["p99.9"][0] <= 99
    assert 1000 <= pct["p0.1"][1] <= pct["p99.9"][1] <= 1999
