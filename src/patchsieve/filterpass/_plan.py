"""What a filter pass computes: the Dask graphs of region-statistic blocks, cell-partial blocks
and the percentile sample, over the missing blocks of a side-car (private to the filter pass)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from patchsieve.errors import ConfigError
from patchsieve.filters.kernels import (
    cell_int_sums,
    cell_moments,
    cell_stats_supported,
    jit_available,
)
from patchsieve.filters.stats import check_mask_values
from patchsieve.grid import VolumeGeometry, region_chunks
from patchsieve.regions import region_block_array, region_stats

#: number of chunks sampled (seeded) for the per-channel percentiles
PERCENTILE_CHUNKS = 16
PERCENTILE_VALUES_PER_CHUNK = 65536
PERCENTILES = (0.1, 99.9)
#: cell partial sets -> their status key in the side-car attrs
CELL_SETS = {"base": "cells", "moments": "cells/moments", "mask": "cells/mask"}


def _cell_partials(block: np.ndarray, ps: Sequence[int], n_spatial: int) -> np.ndarray:
    """Per-cell (sum, sumsq) over the trailing ``n_spatial`` axes of a cell-aligned block.

    Returns float64 of shape (2, *leading, *cells).
    """
    blk = np.asarray(block)
    if jit_available() and _small_int(blk.dtype) and 1 <= n_spatial <= 3 \
            and int(np.prod(ps)) < (1 << 31):
        # exact int64 sums in one numba pass (equal to the float64 sums: all < 2**53)
        lead = blk.shape[: blk.ndim - n_spatial]
        s, q = cell_int_sums(blk, ps)
        return np.stack([s, q]).astype(np.float64).reshape((2, *lead, *s.shape[1:]))
    x = np.asarray(blk, dtype=np.float64)
    lead = x.shape[: x.ndim - n_spatial]
    sp = x.shape[x.ndim - n_spatial :]
    cells = [math.ceil(n / p) for n, p in zip(sp, ps)]
    pad = [(0, 0)] * len(lead) + [(0, c * p - n) for c, p, n in zip(cells, ps, sp)]
    if any(p[1] for p in pad):
        x = np.pad(x, pad)
    shape = list(lead)
    for c, p in zip(cells, ps):
        shape += [c, p]
    x = x.reshape(shape)
    axes = tuple(len(lead) + 2 * i + 1 for i in range(n_spatial))
    return np.stack([x.sum(axis=axes), (x * x).sum(axis=axes)])


def _percentile_sample(block: np.ndarray, seed: int, n: int, channel_axis: int | None) -> np.ndarray:
    """A seeded subsample of a block's values, shape (n_channels, k)."""
    x = np.asarray(block)
    if channel_axis is None:
        x = x[None]
    else:
        x = np.moveaxis(x, channel_axis, 0)
    x = x.reshape(x.shape[0], -1)
    rng = np.random.default_rng(seed)
    if x.shape[1] > n:
        idx = rng.choice(x.shape[1], size=n, replace=False)
        x = x[:, idx]
    return x.astype(np.float64)


class _Plan:
    """What to compute: region-stat blocks, cell blocks and percentile chunks, with their keys.

    ``region_todo`` are the statistics that need overlapping region blocks (one patch of halo);
    ``cell_sets`` the per-cell partials to compute in one pass over cell-aligned blocks: ``"base"``
    (sum, sum of squares of every channel), ``"moments"`` (the reference channel's MeanStd cell
    moments, for float data) and ``"mask"`` (non-zero counts of the mask).
    """

    def __init__(self, volume: Any, geom: VolumeGeometry, region_todo: Sequence[str],
                 cell_sets: Sequence[str], configs: Mapping[str, Any], border: str, seed: int,
                 storage_options: Mapping[str, Any] | None):
        import dask.array as da

        self.geom = geom
        self.stats = list(region_todo)
        self.cell_sets = list(cell_sets)
        mask = None
        mask_cfgs = [c for c in configs.values() if c.name == "mask"]
        if mask_cfgs and ("mask_coverage" in self.stats or "mask" in self.cell_sets):
            mask = _open_mask(mask_cfgs[0], volume, storage_options)
        data = volume.data
        dims = list(volume.dims)
        self.dims = dims
        ps = list(geom.patch_size)
        # the side-car's region chunks: the first region block per axis
        chunk_of = dict(zip(dims, (c[0] for c in data.chunks)))
        self.stat_chunks = tuple(
            [int(chunk_of[d]) for d in geom.sample_dims]
            + [int(region_chunks(data.chunks[dims.index(d)], p, g)[0])
               for d, p, g in zip(geom.spatial_dims, ps, geom.grid_shape)])
        self.stat_blocks = None
        self.stat_numblocks: tuple[int, ...] = ()
        if self.stats:
            if "mask_coverage" in self.stats:  # only without cell support (never at present)
                ds = region_stats(volume, geom.patch_by_dim, self.stats,
                                  ref_channel=geom.ref_channel, mask=mask, border=border)
                raw = da.stack([ds[s].data for s in self.stats])
            else:
                raw = region_block_array(volume, geom.patch_by_dim, self.stats,
                                         ref_channel=geom.ref_channel, border=border)
            # regular blocks (the first block per axis; a no-op when the storage chunks are
            # whole multiples of the patch), then one task per block packs its stats
            raw = raw.rechunk((len(self.stats), *self.stat_chunks))
            self.stat_blocks = da.map_blocks(
                _pack_blocks, raw, drop_axis=0, dtype=object,
                chunks=tuple((1,) * len(c) for c in raw.chunks[1:]),
                meta=np.empty((0,) * (raw.ndim - 1), dtype=object),
            )
            self.stat_numblocks = raw.numblocks[1:]
        # per-cell partials over a cell-aligned rechunk of the volume (all channels)
        target = []
        for d, c in zip(dims, data.chunks):
            if d in geom.spatial_dims:
                p = geom.patch_by_dim[d]
                target.append(max(p, (c[0] // p) * p))
            elif d == "c":
                target.append(-1)
            else:
                target.append(c[0])
        self.cell_input = data.rechunk(tuple(target))
        n_sp = geom.ndim
        c_axis = dims.index("c") if "c" in dims else None
        args = [self.cell_input]
        if "mask" in self.cell_sets:
            if mask is None:  # pragma: no cover - _cell_plan asks for it only with a mask
                raise ConfigError("the mask cell partials need the mask filter's mask.")
            m = mask.transpose(*[d for d in dims if d != "c"]).data
            m = m.rechunk(tuple(c for d, c in zip(dims, self.cell_input.chunks) if d != "c"))
            if c_axis is not None:
                m = m[(slice(None),) * c_axis + (None,)]
            args.append(m)
        self.cell_blocks = da.map_blocks(
            _cell_block, *args, ps=tuple(ps), n_spatial=n_sp, c_axis=c_axis,
            ref=geom.ref_channel, sets=tuple(self.cell_sets), border=border,
            dims=tuple(dims), dtype=object,
            chunks=tuple((1,) * len(c) for c in self.cell_input.chunks),
            meta=np.empty((0,) * self.cell_input.ndim, dtype=object),
        )
        self.cell_numblocks = self.cell_input.numblocks
        cell_chunks = []
        for d, c in zip(dims, self.cell_input.chunks):
            if d in geom.spatial_dims:
                cell_chunks.append(c[0] // geom.patch_by_dim[d])
            elif d != "c":
                cell_chunks.append(c[0])
        self.cell_chunks = tuple(cell_chunks)
        # percentile sample: seeded choice of source chunks
        nb = data.numblocks
        total = int(np.prod(nb))
        rng = np.random.default_rng(seed)
        k = min(PERCENTILE_CHUNKS, total)
        picks = sorted(int(i) for i in rng.choice(total, size=k, replace=False))
        self.pct_blocks = []
        for j, flat in enumerate(picks):
            idx = tuple(int(i) for i in np.unravel_index(flat, nb))
            blk = data.blocks[idx]
            self.pct_blocks.append(
                blk.map_blocks(_percentile_sample_block, seed=seed + j,
                               n=PERCENTILE_VALUES_PER_CHUNK, channel_axis=c_axis,
                               dtype=object, chunks=(1,) * blk.ndim,
                               meta=np.empty((0,) * blk.ndim, dtype=object))
            )
        self.pct_picks = picks


def _pack_blocks(block: np.ndarray) -> np.ndarray:
    """``(n_stats, *block)`` -> a 1-element object array holding one float64 array per stat."""
    out = np.empty((1,) * (block.ndim - 1), dtype=object)
    out.flat[0] = tuple(np.asarray(b, dtype=np.float64) for b in block)
    return out


def _cell_block(block: np.ndarray, *mask: np.ndarray, ps: tuple[int, ...], n_spatial: int,
                c_axis: int | None, ref: int, sets: tuple[str, ...], border: str,
                dims: tuple[str, ...], block_info: Any = None) -> np.ndarray:
    """The cell partials of one cell-aligned block, as a 1-element object array holding a dict."""
    res: dict[str, np.ndarray] = {}
    if "base" in sets:
        res["partials"] = _cell_partials(block, ps, n_spatial)
    if "moments" in sets:
        x = np.take(block, ref, axis=c_axis) if c_axis is not None else block
        lead = x.shape[: x.ndim - n_spatial]
        s, m2 = cell_moments(x, ps, border)  # type: ignore[arg-type]
        res["ref_sum"] = s.reshape((*lead, *s.shape[1:]))
        res["ref_m2"] = m2.reshape((*lead, *m2.shape[1:]))
    if "mask" in sets:
        m = mask[0] if c_axis is None else np.take(mask[0], 0, axis=c_axis)
        if m.dtype.kind != "b":
            origin = ({d: int(lo) for d, (lo, _) in zip(dims, block_info[0]["array-location"])
                       if d != "c"} if block_info else {})
            check_mask_values(m, what=f"mask block at {origin}")
        lead = m.shape[: m.ndim - n_spatial]
        nz, _ = cell_int_sums(m != 0, ps)
        res["nonzero"] = nz.reshape((*lead, *nz.shape[1:])).astype(np.float64)
    out = np.empty((1,) * block.ndim, dtype=object)
    out.flat[0] = res
    return out


def _percentile_sample_block(block: np.ndarray, seed: int, n: int,
                             channel_axis: int | None) -> np.ndarray:
    out = np.empty((1,) * block.ndim, dtype=object)
    out.flat[0] = _percentile_sample(block, seed, n, channel_axis)
    return out


def _open_mask(cfg: Any, volume: Any, storage_options: Mapping[str, Any] | None) -> Any:
    """The mask of a MaskPatchFilterConfig as a DataArray matching the volume minus 'c'."""
    import dask.array as da
    import xarray as xr

    from patchsieve.volume import open_volume

    mask = cfg.mask
    dims = [d for d in volume.dims if d != "c"]
    shape = tuple(volume.sizes[d] for d in dims)
    if mask is None:
        raise ConfigError("MaskPatchFilterConfig.mask is not set. Fix: pass mask=<array or path>.")
    if isinstance(mask, xr.DataArray):
        m = mask
    elif isinstance(mask, (str, os.PathLike)):
        m = open_volume(str(mask), axes="".join(dims).upper() if len(dims) else None,
                        storage_options=storage_options)
    else:
        arr = mask if isinstance(mask, da.Array) else np.asarray(mask)
        m = xr.DataArray(arr if isinstance(arr, da.Array) else da.from_array(arr),
                         dims=dims[-arr.ndim:] if arr.ndim <= len(dims) else None)
    if tuple(m.shape) != shape:
        raise ConfigError(
            f"mask shape {tuple(m.shape)} does not match the volume's shape without channels "
            f"{shape} (dims {dims}). Fix: pass a mask of the same shape as the data."
        )
    return m


def _cell_plan(stats: Sequence[str], dtype: Any,
               status: Mapping[str, str]) -> tuple[list[str], list[str], list[str]]:
    """Split the side-car's statistics: (region-block stats to compute, cell-derived stats to
    derive, cell partial sets to compute)."""
    derived = [s for s in stats if cell_stats_supported(s, dtype)]
    region_todo = [s for s in stats if s not in derived
                   and status.get(f"stats/{s}") != "complete"]
    derived_todo = [s for s in derived if status.get(f"stats/{s}") != "complete"]
    need = {"base"}
    if any(s in ("mean", "std") for s in derived_todo) and not _small_int(dtype):
        need.add("moments")
    if "mask_coverage" in derived_todo:
        need.add("mask")
    sets = [k for k in CELL_SETS if k in need and status.get(CELL_SETS[k]) != "complete"]
    return region_todo, derived_todo, sets


def _small_int(dtype: Any) -> bool:
    dt = np.dtype(dtype)
    return dt.kind in "ui" and dt.itemsize <= 2
