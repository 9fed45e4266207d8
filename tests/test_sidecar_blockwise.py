"""Side-car steps that work chunk by chunk give what the whole-array computations give."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from patchsieve.grid import VolumeGeometry


def _geometry(shape, patch, sample=()):
    spatial = ("z", "y", "x")[-len(shape):]
    sdims = ("s",) if sample else ()
    return VolumeGeometry((*sdims, *spatial), sdims, sample, spatial, shape, patch)


@pytest.mark.parametrize("shape, patch", [((100, 90), (16, 16)), ((33, 64, 50), (8, 16, 7)),
                                          ((16, 16), (16, 16))])
def test_keep_cells_window_is_cover_cells_cut(shape, patch):
    from patchsieve.sidecar import cover_cells, keep_cells_window

    geom = _geometry(shape, patch, (3,))
    rng = np.random.default_rng(1)
    fo = rng.random((3, *geom.grid_shape)) < 0.6
    whole = cover_cells(~fo, geom.cell_shape)
    for _ in range(20):
        lo = [int(rng.integers(0, c)) for c in geom.cell_shape]
        hi = [int(rng.integers(a + 1, c + 1)) for a, c in zip(lo, geom.cell_shape)]
        cells = tuple(slice(a, b) for a, b in zip(lo, hi))
        got = keep_cells_window(fo, (slice(1, 3),), cells, geom.grid_shape)
        np.testing.assert_array_equal(got, whole[(slice(1, 3), *cells)])


def test_epoch_patches_from_background_counts_equal_careamics():
    from patchsieve.sampling import careamics_n_patches
    from patchsieve.sidecar._decisions import n_patches_per_epoch

    rng = np.random.default_rng(2)
    for _ in range(40):
        nd = int(rng.integers(2, 4))
        patch = tuple(int(p) for p in rng.integers(2, 9, nd))
        shape = tuple(int(p * rng.integers(1, 6) + rng.integers(0, p)) for p in patch)
        grid = tuple((n + 1) // p for n, p in zip(shape, patch))
        fpp = float(rng.choice([0.0, 0.1, 0.37, 1.0]))
        fo = rng.random((4, *grid)) < rng.random()
        w = np.where(fo, fpp, 1.0)
        ref = [careamics_n_patches(shape, patch, row, row != 1.0) for row in w]
        got = n_patches_per_epoch(fo.reshape(4, -1).sum(axis=1), fpp, shape, patch)
        assert got.tolist() == ref, (shape, patch, fpp)


@pytest.mark.parametrize("border", ["careamics", "valid"])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_cell_statistics_of_a_window_equal_the_whole_image(tmp_path, border, dtype):
    """Mean/std/mask coverage of any window of regions, from the window's cells plus one,
    equal the whole-image computation bit for bit."""
    from patchsieve.filterpass._jobs import cell_window_stats
    from patchsieve.filters.kernels import (
        cell_int_sums,
        cell_moments,
        moments_from_sums,
        regions_from_cells,
    )
    from patchsieve.sidecar import (
        CELL_MASK_NONZERO,
        CELL_REF_M2,
        CELL_REF_SUM,
        CELL_SUM,
        CELL_SUMSQ,
    )

    rng = np.random.default_rng(3)
    shape, patch = (45, 70), (8, 16)
    geom = _geometry(shape, patch, (2,))
    x = rng.poisson(30, (2, *shape)).astype(dtype)
    if dtype == "float32":
        x += rng.random(x.shape).astype(dtype)
    mask = rng.random((2, *shape)) < 0.3
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="w")
    s, q = cell_int_sums(x if dtype == "uint16" else np.rint(x).astype("uint16"), patch)
    g.create_array(CELL_SUM, data=s.astype("f8")[None])
    g.create_array(CELL_SUMSQ, data=q.astype("f8")[None])
    rs, rm2 = cell_moments(x, patch, border)
    g.create_array(CELL_REF_SUM, data=rs)
    g.create_array(CELL_REF_M2, data=rm2)
    nz, _ = cell_int_sums(mask, patch)
    g.create_array(CELL_MASK_NONZERO, data=nz.astype("f8"))
    if dtype == "uint16":
        cells = {"sum": s.astype("f8"), "m2": moments_from_sums(s, q, patch, shape, border)}
    else:
        cells = {"sum": rs, "m2": rm2}
    cells["nonzero"] = nz.astype("f8")
    todo = ["mean", "std", "mask_coverage"]
    whole = {st: regions_from_cells(st, cells, patch_size=patch, spatial_shape=shape,
                                    grid_shape=geom.grid_shape, border=border) for st in todo}
    for _ in range(15):
        lo = [int(rng.integers(0, n)) for n in geom.grid_shape]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, geom.grid_shape)]
        regions = [slice(a, b) for a, b in zip(lo, hi)]
        got = cell_window_stats(g, geom, todo, [slice(0, 2)], regions, border, dtype)
        for st in todo:
            np.testing.assert_array_equal(got[st], whole[st][(slice(None), *regions)], err_msg=st)


def test_normalisation_chunk_by_chunk_equals_whole_arrays(tmp_path):
    from patchsieve.sidecar import CELL_SUM, CELL_SUMSQ, cover_cells
    from patchsieve.sidecar._decisions import normalizations

    rng = np.random.default_rng(4)
    geom = _geometry((50, 70), (8, 8), (3,))
    s = rng.integers(0, 1000, (2, 3, *geom.cell_shape)).astype("f8")
    q = s * rng.integers(1, 900, s.shape)
    g = zarr.open_group(str(tmp_path / "n.zarr"), mode="w")
    g.create_array(CELL_SUM, data=s, chunks=(2, 1, 3, 4))
    g.create_array(CELL_SUMSQ, data=q, chunks=(2, 1, 3, 4))
    fo = rng.random((3, *geom.grid_shape)) < 0.5
    base, kept = normalizations(g, geom, {"f": fo}, {"percentiles": {"p0.1": [1.0]}})
    cnt = np.broadcast_to(geom.cell_counts(), s.shape[1:])
    keep = cover_cells(~fo, geom.cell_shape)
    for c in range(2):
        m = s[c].sum() / cnt.sum()
        assert base["mean"][c] == m
        assert base["std"][c] == np.sqrt(max(q[c].sum() / cnt.sum() - m * m, 0.0))
        km = s[c][keep].sum() / cnt[keep].sum()
        assert kept["f"]["kept_mean"][c] == km
    assert base["n_pixels"] == 3 * 50 * 70 and base["p0.1"] == [1.0]
    assert kept["f"]["kept_n_pixels"] == int(cnt[keep].sum())


def test_labels_from_decision_windows(tmp_path):
    """Each label box reads only the decisions covering it and equals the whole-image map."""
    from patchsieve.sidecar import cover_cells
    from patchsieve.sidecar._labels import label_block

    rng = np.random.default_rng(5)
    geom = _geometry((70, 90), (16, 16), (2,))
    fo = rng.random((2, *geom.grid_shape)) < 0.5
    keep = cover_cells(~fo, geom.cell_shape)
    for factor in ((1, 1), (2, 2), (4, 4)):
        shape = [int(np.ceil(n / f)) for n, f in zip(geom.spatial_shape, factor)]
        idx = [(np.arange(n) * f) // p for n, f, p in zip(shape, factor, geom.patch_size)]
        whole = keep[(slice(None), *np.ix_(*idx))].astype(np.uint8)
        for y0, x0 in ((0, 0), (10, 7), (shape[0] - 5, shape[1] - 3)):
            box = (slice(1, 2), slice(y0, min(y0 + 13, shape[0])), slice(x0, min(x0 + 9, shape[1])))
            np.testing.assert_array_equal(label_block(fo, geom, box, factor), whole[box])
