"""Parity gaps with CAREamics 0.3.5's training path (issue 18).

* Max on data with negative values (quirk B10): CAREamics' ``filter_background`` calls
  ``MaxPatchFilter.filter_out`` on each zero-padded 2x-patch region, which max-filters with
  ``mode="constant"`` (zeros outside the region) and drops a region whose maximum is below the
  threshold, while ``filter_map`` reflects. Side-car decisions follow the training path (the
  statistics ``max`` and ``max_train_cov<c>``); the filter-map statistic ``max_cov<c>`` keeps
  its meaning.
* float32 ties: CAREamics computes MeanStd statistics on float32 patches, patchsieve in float64;
  the decisions differ only for a threshold within float32 rounding of a region's value.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.ndimage import maximum_filter

from patchsieve.config import MaxPatchFilterConfig, MeanStdPatchFilterConfig
from patchsieve.filters import MaxPatchFilter, MeanStdPatchFilter
from patchsieve.filters.kernels import coverage_rank, region_max_coverage, region_max_coverage_constant
from patchsieve.grid import RegionGrid
from patchsieve.regions import filter_out_from_stats, region_stats, required_stats


def _regions(img: np.ndarray, ps: tuple[int, ...]):
    """Every CAREamics region of one (Z)YX image, zero-padded to 2 * patch: (grid index, region)."""
    grid = RegionGrid(img.shape, ps)
    padded = np.zeros(tuple((g + 1) * p for g, p in zip(grid.grid_shape, ps)), np.float32)
    sl = tuple(slice(0, min(s, t)) for s, t in zip(img.shape, padded.shape))
    padded[sl] = img[sl]
    for g in np.ndindex(*grid.grid_shape):
        yield g, padded[tuple(slice(i * p, i * p + 2 * p) for i, p in zip(g, ps))]


def _signed_stack(seed: int = 0, shape=(3, 200, 264)) -> np.ndarray:
    """Background-subtracted data: a uniformly negative background (-5 +- 0.5) with a few
    positive blobs; sizes not divisible by the patch."""
    rng = np.random.default_rng(seed)
    img = np.float32(-5.0) + rng.normal(0, 0.5, shape).astype(np.float32)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    for s in range(shape[0]):
        for _ in range(5):
            cy, cx = rng.uniform(0, shape[1]), rng.uniform(0, shape[2])
            img[s] += (20 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)).astype(np.float32)
    return img


@pytest.mark.parametrize("ps", [(32, 32), (8, 16, 16)])
def test_training_path_kernel_is_constant_mode_maximum_filter(ps):
    """The kernel equals the coverage rank of scipy's constant-mode maximum filter on every
    zero-padded region (the brute-force oracle of CAREamics' filter_out)."""
    rng = np.random.default_rng(1)
    shape = (40, 50, 70)[-len(ps):]
    img = (rng.standard_normal(shape) * 5).astype(np.float32)
    img[tuple(slice(0, s // 3) for s in shape)] += 20  # a positive corner
    grid = RegionGrid(shape, ps)
    cov = 0.5 ** len(ps)
    got = region_max_coverage_constant(img[None], ps, grid.grid_shape, cov)[0]
    size = int(np.prod([2 * p for p in ps]))
    k = coverage_rank(cov, size)
    for g, region in _regions(img, ps):
        f = np.sort(maximum_filter(region, ps, mode="constant").ravel())
        assert got[g] == f[size - k], g
    # non-negative data: the training path and the filter map agree (one kernel call each)
    pos = np.abs(img)
    np.testing.assert_array_equal(
        region_max_coverage_constant(pos[None], ps, grid.grid_shape, cov),
        region_max_coverage(pos[None], ps, grid.grid_shape, cov))


@pytest.mark.parametrize("coverage", [0.25, 0.9])
def test_decisions_follow_careamics_training_path_on_signed_data(coverage):
    """Side-car decisions (region statistics -> filter_out_from_stats) equal CAREamics'
    filter_out on every region of a stack minus its mean; the filter-map rule did not."""
    stack = _signed_stack()
    ps = (64, 64)
    cfg = MaxPatchFilterConfig(threshold=-1.0, coverage=coverage)
    vol = xr.DataArray(stack, dims=("s", "y", "x"))
    stats = region_stats(vol, ps, required_stats(cfg, 2)).compute()
    got = filter_out_from_stats(cfg, {k: stats[k].values for k in stats.data_vars})
    careamics = MaxPatchFilter(threshold=-1.0, coverage=coverage)  # reproduces its filter_out
    want = np.zeros_like(got)
    for s in range(stack.shape[0]):
        for g, region in _regions(stack[s], ps):
            want[(s, *g)] = careamics.filter_out(region[None])
    np.testing.assert_array_equal(got, want)
    # the filter map keeps its meaning: max_cov<c> is the reflect-mode value of filter_map
    name = required_stats(cfg, 2)[0]
    np.testing.assert_array_equal(
        stats[name].values[0], MaxPatchFilter.region_values(stack[0], ps, coverage))
    old_rule = ~(stats[name].values > -1.0)
    # the gap this fixes (issue 18: 16 of 48 regions on a stack minus its mean, coverage 0.9)
    assert (old_rule != want).sum() >= (15 if coverage == 0.9 else 4)


def test_max_region_below_threshold_is_dropped_as_careamics_does():
    """A region of only negative values whose constant-mode filter is mostly zeros passes the
    coverage test at a negative threshold, but CAREamics drops it: its maximum is below."""
    img = np.full((128, 128), -5.0, np.float32)
    img[64:, 64:] = 3.0
    cfg = MaxPatchFilterConfig(threshold=-1.0, coverage=0.1)
    vol = xr.DataArray(img[None], dims=("s", "y", "x"))
    stats = {k: v.values for k, v in region_stats(vol, (32, 32), required_stats(cfg, 2))
             .compute().data_vars.items()}
    got = filter_out_from_stats(cfg, stats)[0]
    f = MaxPatchFilter(threshold=-1.0, coverage=0.1)
    want = np.array([[f.filter_out(r[None]) for _, r in row] for row in
                     [list(_regions(img, (32, 32)))[i * 4:(i + 1) * 4] for i in range(4)]])
    np.testing.assert_array_equal(got, want)
    assert want[0, 0] and not want[3, 3]


def test_statistics_without_training_path_fall_back_to_filter_map_rule():
    """Side-cars written before the training-path statistics stay readable: their decisions
    follow the filter-map value, which is CAREamics' decision for data >= 0."""
    cfg = MaxPatchFilterConfig(threshold=2.0)
    vals = np.array([[1.0, 2.0, 3.0]])
    assert filter_out_from_stats(cfg, {"max_cov0.25": vals}, ndim=2).tolist() == \
        [[True, True, False]]


def test_float32_ties_rule():
    """MeanStd (and Shannon) statistics are exact float64 in patchsieve, float32 in CAREamics:
    a threshold equal to a region's float64 mean can decide differently from CAREamics'
    float32 np.mean; a threshold off by more than float32 rounding decides the same
    (README, differences table)."""
    rng = np.random.default_rng(3)
    region = (rng.random((1, 64, 64)) * 1000 + 0.1).astype(np.float32)
    m64 = float(region.astype(np.float64).mean())
    m32 = float(np.mean(region))  # what CAREamics' filter_out computes
    assert m64 != m32  # float32 summation rounding
    stats = {"mean": np.array([m64]), "std": np.array([1.0])}
    for thr in (min(m32, m64), max(m32, m64)):  # the tie window [min, max]
        ours = bool(filter_out_from_stats(MeanStdPatchFilterConfig(mean_threshold=thr), stats)[0])
        careamics = MeanStdPatchFilter(mean_threshold=thr).filter_out(region)
        assert ours == (m64 < thr) and careamics == (m32 < thr)
    eps = abs(m64) * np.finfo(np.float32).eps * 4
    for thr in (m64 - eps, m64 + eps):  # outside the window: the same decision
        ours = bool(filter_out_from_stats(MeanStdPatchFilterConfig(mean_threshold=thr), stats)[0])
        assert ours == MeanStdPatchFilter(mean_threshold=thr).filter_out(region)
