"""Dask path (regions.region_stats) vs the CAREamics reference vectors, several chunkings."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from careamics_ref import CASES, config_for, load_case

from patchsieve.errors import PatchsieveWarning
from patchsieve.regions import filter_map_from_stats, region_stats
from patchsieve.regions import filter_out_from_stats as decide
from patchsieve.regions import required_stats as stat_names

pytestmark = pytest.mark.careamics

# spatial chunk per axis, as a function of the patch size along that axis
CHUNKINGS = {
    "not-multiple": lambda p: p + p // 2 + 3,  # chunks not multiples of the patch
    "smaller-than-patch": lambda p: max(1, p // 2 - 1),  # patch larger than a chunk
    "one-chunk": lambda p: 10**6,  # single block
    "odd": lambda p: 2 * p - 5,
}


def _volume(d, raw, chunk_fn):
    axes = d["axes"].lower()
    ps = dict(zip(("z", "y", "x")[-len(d["ps"]):], d["ps"]))
    chunks = tuple(1 if a in "sc" else chunk_fn(ps[a]) for a in axes)
    return xr.DataArray(da.from_array(raw, chunks=chunks), dims=tuple(axes))


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("case", CASES)
def test_dask_region_stats_match(case, chunking):
    d = load_case(case)
    fn = CHUNKINGS[chunking]
    cfg = config_for(d)
    nd = len(d["ps"])
    vol = _volume(d, d["raw"], fn)
    mask = _volume(d, d["mask_raw"], fn) if d["filter"] == "mask" else None
    names = stat_names(cfg, nd)
    ds = region_stats(vol, d["ps"], names, ref_channel=cfg.ref_channel, mask=mask)
    assert all(isinstance(ds[n].data, da.Array) for n in names)
    with warnings.catch_warnings(), dask.config.set(scheduler="sync"):
        warnings.simplefilter("ignore", PatchsieveWarning)
        ds = ds.compute()
    # the region values: Max's filter-map statistic (its training-path ones only decide)
    shown = names if d["filter"] == "mean_std" else names[:1]
    vals = np.stack([ds[n].values for n in shown], axis=-1)
    vals = vals[..., 0] if len(shown) == 1 else vals
    out = decide(cfg, ds, ndim=nd)
    if "S" not in d["axes"]:
        vals, out = vals[None], out[None]
    np.testing.assert_allclose(vals, d["region_value"], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(out, d["region_filter_out"])
    # per-pixel map rebuilt from the Dask region values
    spatial = d["images"].shape[1:]
    fms = [filter_map_from_stats(vals[..., i] if vals.ndim > nd + 1 else vals, spatial,
                                 d["ps"]) for i in range(2 if d["filter"] == "mean_std" else 1)]
    fm = np.stack(fms) if d["filter"] == "mean_std" else fms[0]
    np.testing.assert_allclose(fm, d["filter_map"], rtol=1e-6, atol=1e-9)
