"""numpy path vs the CAREamics 0.3.5 reference vectors (filter_map, apply_filter, regions)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from careamics_ref import CASES, config_for, load_case

from patchsieve.errors import PatchsieveWarning
from patchsieve.filters import (
    MaskPatchFilter,
    MaxPatchFilter,
    MeanStdPatchFilter,
    ShannonPatchFilter,
    create_patch_filter,
)
from patchsieve.grid import RegionGrid
from patchsieve.regions import filter_out_from_stats as decide

pytestmark = pytest.mark.careamics

CLS = {"max": MaxPatchFilter, "mean_std": MeanStdPatchFilter, "shannon": ShannonPatchFilter,
       "mask": MaskPatchFilter}


def _fmap(d, im):
    cls = CLS[d["filter"]]
    if d["filter"] == "max":
        cov = d["filter_map_coverage_arg"]
        return cls.filter_map(im, d["ps"], None if cov < 0 else cov)
    return cls.filter_map(im, d["ps"])


def _region_values(d, im):
    cls = CLS[d["filter"]]
    if d["filter"] == "max":
        return cls.region_values(im, d["ps"], d["coverage"])
    v = cls.region_values(im, d["ps"])
    return np.moveaxis(v, 0, -1) if d["filter"] == "mean_std" else v


@pytest.mark.parametrize("case", CASES)
def test_filter_map_and_apply_filter(case):
    d = load_case(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchsieveWarning)
        fms = [_fmap(d, im) for im in d["images"]]
    fm = np.stack(fms, axis=1 if d["filter"] == "mean_std" else 0)
    assert fm.shape == d["filter_map"].shape
    np.testing.assert_allclose(fm, d["filter_map"], rtol=1e-6, atol=1e-9)
    f = d["filter"]
    if f == "mean_std":
        st = d["std_threshold"]
        keep = MeanStdPatchFilter.apply_filter(fm, d["mean_threshold"], None if st < 0 else st)
    else:
        thr = d["coverage"] if f == "mask" else d["threshold"]
        keep = CLS[f].apply_filter(fm, thr)
    np.testing.assert_array_equal(keep, d["apply_filter_keep"])


@pytest.mark.parametrize("case", CASES)
def test_region_values_and_decisions(case):
    d = load_case(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchsieveWarning)
        vals = np.stack([_region_values(d, im) for im in d["images"]])
    np.testing.assert_allclose(vals, d["region_value"], rtol=1e-6, atol=1e-9)
    cfg = config_for(d)
    if d["filter"] == "mean_std":
        stats = {"mean": vals[..., 0], "std": vals[..., 1]}
    elif d["filter"] == "max":
        stats = {f"max_cov{float(d['coverage'])!r}": vals}
    else:
        stats = {{"shannon": "entropy", "mask": "mask_coverage"}[d["filter"]]: vals}
    out = decide(cfg, stats, ndim=len(d["ps"]))
    np.testing.assert_array_equal(out, d["region_filter_out"])
    # the background regions are exactly those whose probability filter_background lowered
    np.testing.assert_array_equal(d["region_prob_after_filter_background"] < 1, out)


@pytest.mark.parametrize("case", CASES)
def test_filter_out_on_extracted_regions(case):
    """filter_out(patch) on CAREamics' (1, *2ps) zero-padded regions equals its decision."""
    d = load_case(case)
    filt = create_patch_filter(config_for(d))
    ps = d["ps"]
    for s, im in enumerate(d["images"]):
        grid = RegionGrid(im.shape, ps)
        for g in grid.coords():
            reg = np.zeros((1, *grid.region_shape), np.float32)
            sl = grid.region_slices(g)
            reg[(0, *(slice(0, x.stop - x.start) for x in sl))] = im[sl]
            assert filt.filter_out(reg) == bool(d["region_filter_out"][(s, *g)]), (s, g)
