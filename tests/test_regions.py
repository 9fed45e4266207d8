"""regions: the Dask graph of region statistics, decisions and filter maps."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchsieve.config import (
    MaskPatchFilterConfig,
    MaxPatchFilterConfig,
    MeanStdPatchFilterConfig,
    ShannonPatchFilterConfig,
)
from patchsieve.errors import ConfigError, DataError, PatchsieveWarning
from patchsieve.filters import (
    MaskPatchFilter,
    MaxPatchFilter,
    MeanStdPatchFilter,
    ShannonPatchFilter,
)
from patchsieve.regions import filter_map_from_stats, region_stats
from patchsieve.regions import filter_out_from_stats as decide
from patchsieve.regions import required_stats as stat_names

ALL = ["max_cov0.25", "mean", "std", "entropy", "max"]


def _vol(arr, dims, chunks):
    return xr.DataArray(da.from_array(arr, chunks=chunks), dims=dims)


def _numpy_stats(img, ps, border="careamics"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchsieveWarning)
        ms = MeanStdPatchFilter.region_values(img, ps, border=border)
        return {
            "max_cov0.25": MaxPatchFilter.region_values(img, ps, 0.25, border=border),
            "mean": ms[0], "std": ms[1],
            "entropy": ShannonPatchFilter.region_values(img, ps, border=border),
        }


def test_stat_names():
    # Max: the filter-map value, then CAREamics' training-path statistics (issue 18, B10)
    assert stat_names(MaxPatchFilterConfig(threshold=1), 2) == [
        "max_cov0.25", "max", "max_train_cov0.25"]
    assert stat_names(MaxPatchFilterConfig(threshold=1), 3)[0] == "max_cov0.125"
    assert stat_names(MaxPatchFilterConfig(threshold=1, coverage=0.3), 3) == [
        "max_cov0.3", "max", "max_train_cov0.3"]
    assert stat_names(MeanStdPatchFilterConfig(mean_threshold=1), 2) == ["mean", "std"]
    assert stat_names({"name": "shannon", "threshold": 7.5}, 2) == ["entropy"]
    assert stat_names(MaskPatchFilterConfig(), 3) == ["mask_coverage"]


def test_dataset_layout_is_lazy_and_named():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 500, (3, 2, 2, 150, 130)).astype(np.uint16)  # t s c y x: reordered
    vol = _vol(arr, ("t", "s", "c", "y", "x"), (1, 2, 1, 64, 64))
    vol = vol.assign_coords(s=[10, 20])
    ds = region_stats(vol, {"y": 32, "x": 64}, ["mean", "entropy"], ref_channel=1)
    assert ds["mean"].dims == ("s", "t", "region_y", "region_x")
    assert ds["mean"].shape == (2, 3, 151 // 32, 131 // 64)
    assert isinstance(ds["mean"].data, da.Array) and ds["mean"].dtype == np.float64
    assert ds["region_y"].values.tolist() == [0, 32, 64, 96]
    assert ds["region_x"].values.tolist() == [0, 64]
    assert ds["s"].values.tolist() == [10, 20]
    assert ds.attrs["patch_size"] == [32, 64] and ds.attrs["border"] == "careamics"
    # chunked along samples (as stored) and along regions (aligned to 64-pixel chunks)
    assert ds["mean"].data.chunks[:2] == ((2,), (1, 1, 1))
    assert ds["mean"].data.chunks[2] == (2, 2)
    got = ds.compute()
    ref = MeanStdPatchFilter.region_values(arr[1, 0, 1], (32, 64))
    np.testing.assert_allclose(got["mean"].values[0, 1], ref[0], rtol=1e-12)


def test_graph_reads_each_block_with_one_patch_of_halo():
    arr = np.arange(256 * 256, dtype=np.float32).reshape(256, 256)
    vol = _vol(arr, ("y", "x"), (64, 256))
    ds = region_stats(vol, (32, 32), ["mean"])
    # 2 regions per 64-row chunk: the block of regions 0..1 reads rows [0, 96)
    assert ds["mean"].data.chunks[0] == (2, 2, 2, 2)
    assert ds["mean"].data.numblocks == (4, 1)


def test_never_materialises_beyond_blocks():
    calls = []

    def spy(block):
        calls.append(block.shape)
        return block

    arr = da.ones((4, 256, 256), chunks=(1, 128, 128), dtype=np.float32).map_blocks(
        spy, meta=np.array((), np.float32))
    ds = region_stats(xr.DataArray(arr, dims=("s", "y", "x")), (64, 64), ["mean"])
    assert calls == []  # building the graph computes nothing
    with dask.config.set(scheduler="sync"):
        ds.compute()
    assert max(int(np.prod(c)) for c in calls) == 128 * 128


@pytest.mark.parametrize("border", ["careamics", "valid"])
@pytest.mark.parametrize(
    ("shape", "ps", "chunks"),
    [
        ((2, 300, 200), (64, 64), (1, 100, 70)),  # not multiples of the patch
        ((1, 300, 200), (64, 64), (1, 20, 30)),  # patch larger than a chunk
        ((1, 64, 64), (64, 64), (1, 64, 64)),  # single-region image
        ((1, 130, 127), (64, 64), (1, 65, 127)),
        ((2, 37, 100, 90), (16, 32, 32), (1, 10, 40, 33)),  # 3D
        ((1, 20, 40, 40), (16, 32, 32), (1, 20, 40, 40)),
    ],
)
def test_dask_equals_numpy(shape, ps, chunks, border):
    rng = np.random.default_rng(3)
    arr = np.rint(rng.gamma(2.0, 50.0, shape)).astype(np.float32)
    dims = ("s", "z", "y", "x")[-len(shape):] if len(shape) == 4 else ("s", "y", "x")
    ds = region_stats(_vol(arr, dims, chunks), ps, ALL[:4], border=border).compute()
    for s in range(shape[0]):
        ref = _numpy_stats(arr[s], ps, border)
        for name in ALL[:4]:
            np.testing.assert_allclose(ds[name].values[s], ref[name], rtol=1e-12, atol=1e-9)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(16, 90), w=st.integers(16, 90), p=st.sampled_from([8, 16]),
    cy=st.integers(3, 60), cx=st.integers(3, 60), seed=st.integers(0, 1000),
)
def test_chunking_independence(h, w, p, cy, cx, seed):
    rng = np.random.default_rng(seed)
    arr = rng.normal(50, 10, (h, w)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchsieveWarning)
        a = region_stats(_vol(arr, ("y", "x"), (cy, cx)), (p, p), ALL).compute()
        b = region_stats(_vol(arr, ("y", "x"), (h, w)), (p, p), ALL).compute()
    for name in ALL:
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_mask_coverage_and_decisions():
    rng = np.random.default_rng(1)
    data = rng.normal(100, 5, (2, 3, 96, 80)).astype(np.float32)  # s c y x
    mask = rng.random((2, 96, 80)) > 0.7
    cfg = MaskPatchFilterConfig(coverage=0.3)
    ds = region_stats(
        _vol(data, ("s", "c", "y", "x"), (1, 1, 40, 40)), (32, 32), ["mask_coverage", "mean"],
        mask=_vol(mask, ("s", "y", "x"), (1, 40, 40)), ref_channel=2,
    ).compute()
    for s in range(2):
        ref = MaskPatchFilter.region_values(mask[s], (32, 32))
        np.testing.assert_array_equal(ds["mask_coverage"].values[s], ref)
        np.testing.assert_allclose(
            ds["mean"].values[s], MeanStdPatchFilter.region_values(data[s, 2], (32, 32))[0]
        )
    np.testing.assert_array_equal(decide(cfg, ds), ds["mask_coverage"].values < 0.3)


def test_decide_rules_and_ties():
    v = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert decide(MaxPatchFilterConfig(threshold=2.0), {"max_cov0.25": v}).tolist() == [
        [True, True], [False, False]]
    assert decide(MaxPatchFilterConfig(threshold=2.0), {"max_cov0.25": v},
                  ties="keep").tolist() == [[True, False], [False, False]]
    cfg = MeanStdPatchFilterConfig(mean_threshold=2.0, std_threshold=3.0)
    out = decide(cfg, {"mean": v, "std": v})
    assert out.tolist() == [[True, True], [False, False]]
    assert decide(cfg, {"mean": v, "std": v}, ties="drop").tolist() == [
        [True, True], [True, False]]
    assert decide(ShannonPatchFilterConfig(threshold=2.0), {"entropy": v}).tolist() == [
        [True, False], [False, False]]
    assert decide(MeanStdPatchFilterConfig(mean_threshold=2.0), {"mean": v}).sum() == 1


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda v: region_stats(v, (8, 8), ["mean"], ref_channel=3), ConfigError,
         "out of range"),
        (lambda v: region_stats(v.isel(c=0), (8, 8), ["mean"], ref_channel=1), ConfigError,
         "no 'c' dim"),
        (lambda v: region_stats(v, (8, 8), ["mean"], ref_channel=-1), ConfigError, ">= 0"),
        (lambda v: region_stats(v, (8, 8), []), ConfigError, "at least one"),
        (lambda v: region_stats(v, (8, 8), ["median"]), ConfigError, "unknown stat"),
        (lambda v: region_stats(v, (8, 8), ["max_cov1.5"]), ConfigError, "coverage"),
        (lambda v: region_stats(v, (8,), ["mean"]), ConfigError, "one entry per spatial dim"),
        (lambda v: region_stats(v, (0, 8), ["mean"]), ConfigError, "positive"),
        (lambda v: region_stats(v, (64, 8), ["mean"]), ConfigError, "larger than the image"),
        (lambda v: region_stats(v, (8, 8), ["mean"], border="x"), ConfigError, "border"),
        (lambda v: region_stats(v.values, (8, 8), ["mean"]), ConfigError, "DataArray"),
        (lambda v: region_stats(v.rename(y="q"), (8, 8), ["mean"]), ConfigError, "dims"),
        (lambda v: region_stats(v, (8, 8), ["mask_coverage"]), ConfigError, "needs mask"),
        (lambda v: region_stats(v, (8, 8), ["mask_coverage"], mask=v.isel(c=0, y=slice(0, 30))),
         DataError, "shape mismatch"),
        (lambda v: region_stats(v.astype(complex), (8, 8), ["mean"]), DataError, "complex"),
        (lambda v: region_stats(v > 0, (8, 8), ["mean"]), DataError, "bool"),
        (lambda v: region_stats(v.isel(y=slice(0, 0)), (8, 8), ["mean"]), DataError, "empty"),
        (lambda v: decide(MaxPatchFilterConfig(threshold=1.0), {"mean": np.zeros(2)}),
         ConfigError, "infer the Max coverage"),
        (lambda v: decide(ShannonPatchFilterConfig(threshold=1.0), {"mean": np.zeros(2)}),
         ConfigError, "lack 'entropy'"),
        (lambda v: filter_map_from_stats(np.zeros((3, 3)), (40, 40), (8, 8)), DataError,
         "grid shape"),
    ],
)
def test_errors(call, exc, match):
    v = xr.DataArray(np.ones((2, 40, 40), np.float32), dims=("c", "y", "x"))
    with pytest.raises(exc, match=match):
        call(v)


@pytest.mark.parametrize(
    ("arr", "stat", "match"),
    [
        (np.where(np.arange(1600).reshape(40, 40) == 1234, np.nan, 1.0), "mean",
         "'y': 30, 'x': 34"),
        (np.where(np.arange(1600).reshape(40, 40) == 5, np.inf, 1.0), "entropy", "NaN or inf"),
        (np.full((40, 40), 3.0), "mask_coverage", "binary"),
    ],
)
def test_data_errors_raised_at_compute(arr, stat, match):
    v = _vol(arr.astype(np.float32), ("y", "x"), (16, 16))
    kw = {"mask": v} if stat == "mask_coverage" else {}
    ds = region_stats(v if stat != "mask_coverage" else v.astype(bool).astype(np.float32),
                      (8, 8), [stat], **kw)
    with pytest.raises(DataError, match=match):
        ds.compute()


def test_filter_map_from_stats_equals_filter_map():
    rng = np.random.default_rng(5)
    arr = rng.normal(0, 10, (2, 100, 70)).astype(np.float32)
    ds = region_stats(_vol(arr, ("s", "y", "x"), (1, 50, 50)), (16, 16), ["mean"]).compute()
    fm = filter_map_from_stats(ds["mean"].values, (100, 70), {"y": 16, "x": 16})
    for s in range(2):
        np.testing.assert_allclose(fm[s], MeanStdPatchFilter.filter_map(arr[s], (16, 16))[0],
                                   rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- cell statistics
def _random_case(rng, kind, nd):
    from patchsieve.filters.kernels import cell_int_sums  # noqa: F401  (import check)

    ps = tuple(int(v) for v in rng.integers(1, 6, nd))
    shape = tuple(max(p, int(p * rng.integers(1, 5) + rng.integers(0, p + 1))) for p in ps)
    n = int(rng.integers(1, 3))
    full = (n, *shape)
    if kind == "uint16":
        x = rng.integers(0, 65535, full).astype(np.uint16)
    elif kind == "int16":
        x = rng.integers(-30000, 30000, full).astype(np.int16)
    elif kind == "uint8":
        x = rng.integers(0, 256, full).astype(np.uint8)
    elif kind == "float32":
        x = (rng.standard_normal(full) * 100 + 1e4).astype(np.float32)
    else:
        x = rng.standard_normal(full) * 3
    return ps, shape, x


@pytest.mark.parametrize("kind", ["uint16", "int16", "uint8", "float32", "float64"])
@pytest.mark.parametrize("border", ["careamics", "valid"])
def test_regions_from_cells_equal_region_stats_bit_for_bit(kind, border):
    """mean/std/mask coverage derived from whole-image cell partials equal the region blocks'."""
    from patchsieve.filters.kernels import (
        cell_int_sums,
        cell_moments,
        cell_stats_supported,
        regions_from_cells,
    )

    rng = np.random.default_rng(abs(hash((kind, border))) % 2**32)
    for _ in range(8):
        nd = int(rng.choice([2, 3]))
        ps, shape, x = _random_case(rng, kind, nd)
        dims = ("s", "z", "y", "x")[:1] + ("z", "y", "x")[3 - nd:]
        m = (rng.random(x.shape) > 0.6).astype(np.uint8)
        chunks = (1, *(2 * p for p in ps))
        ds = region_stats(_vol(x, dims, chunks), ps, ["mean", "std", "mask_coverage"],
                          mask=_vol(m, dims, chunks), border=border).compute()
        s, m2 = cell_moments(x, ps, border)
        nz, _ = cell_int_sums(m, ps)
        cells = {"sum": s, "m2": m2, "nonzero": nz}
        for stat in ("mean", "std", "mask_coverage"):
            if not cell_stats_supported(stat, x.dtype):
                continue
            got = regions_from_cells(stat, cells, patch_size=ps, spatial_shape=shape,
                                     grid_shape=ds.attrs["grid_shape"], border=border)
            np.testing.assert_array_equal(got, ds[stat].values, err_msg=f"{stat} {ps} {shape}")


def test_cell_moments_are_chunking_independent():
    """Cells computed block by block (cell-aligned) equal the whole-image cells."""
    from patchsieve.filters.kernels import cell_moments, moments_from_sums

    rng = np.random.default_rng(3)
    x = rng.integers(0, 4000, (2, 37, 53)).astype(np.uint16)
    ps = (8, 8)
    s, m2 = cell_moments(x, ps)
    s_blk, m2_blk = cell_moments(x[:, 16:, :24], ps)
    np.testing.assert_array_equal(s_blk, s[:, 2:, :3])
    np.testing.assert_array_equal(m2_blk, m2[:, 2:, :3])
    # valid border: partial cells count only in-image pixels
    s_v, m2_v = cell_moments(x, ps, "valid")
    q = (x.astype(np.int64) ** 2)[:, :32, :48].reshape(2, 4, 8, 6, 8).sum(axis=(2, 4))
    np.testing.assert_array_equal(
        m2_v[:, :4, :6], moments_from_sums(s_v[:, :4, :6].astype(np.int64), q, ps, (32, 48), "valid"))
    assert np.all(m2_v >= 0)


def test_regions_from_cells_rejects_other_stats():
    from patchsieve.filters.kernels import regions_from_cells

    with pytest.raises(ConfigError, match="not a cell statistic"):
        regions_from_cells("entropy", {}, patch_size=(4, 4), spatial_shape=(8, 8),
                           grid_shape=(2, 2))
