"""What a filter pass computes, block by block, and in which order (private to the filter pass).

A *block* is one source chunk (all channels): the regions and the cells whose origin lies in
it, read with the one-patch halo the regions reach into the next chunk. :class:`BlockPlan` holds
only per-axis tables (chunk bounds, region and cell ranges), so its size follows the number of
chunks along each axis, never the number of blocks. It walks the blocks lazily in *tiles*:
``T`` blocks along each spatial axis but the first, all the way along the first (z in 3D, y in
2D), so the chunks a block's halo reaches (the next plane of the same tile) are the ones the
next blocks read anyway, and a worker's cache of decoded chunks of two tile planes serves every
halo but the tile's border (see :data:`CACHE_BYTES`). The side-car's arrays get chunks aligned
to the tiles, so the results of a tile fill few side-car chunks at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchsieve.errors import ConfigError
from patchsieve.filters.kernels import cell_stats_supported
from patchsieve.grid import VolumeGeometry, cell_extent

#: number of chunks sampled (seeded) for the per-channel percentiles
PERCENTILE_CHUNKS = 16
PERCENTILE_VALUES_PER_CHUNK = 65536
PERCENTILES = (0.1, 99.9)
#: cell partial sets -> their status key in the side-car attrs
CELL_SETS = {"base": "cells", "moments": "cells/moments", "mask": "cells/mask"}
#: decoded chunks a worker process keeps for the halos of the next blocks (bytes); sets the tile
CACHE_BYTES = 256 * 2**20
#: source bytes one task reads at most (a group of neighbouring blocks of one tile)
TASK_BYTES = 16 * 2**20
#: most blocks in one task (resume and progress granularity of small chunks)
MAX_GROUP = 16
#: values per chunk of the side-car arrays the pass writes (tile-aligned)
SIDECAR_CHUNK_VALUES = 1 << 16


@dataclass(frozen=True)
class _Axis:
    """Blocks along one dim: chunk bounds, and for spatial dims the region and cell ranges."""

    dim: str
    bounds: tuple[int, ...]
    regions: tuple[tuple[int, int], ...] = ()
    cells: tuple[tuple[int, int], ...] = ()
    patch: int = 0
    size: int = 0

    @property
    def n(self) -> int:
        return len(self.bounds) - 1


def _origin_ranges(bounds: Sequence[int], patch: int, n: int) -> tuple[tuple[int, int], ...]:
    """Per chunk, the range of items (regions or cells, at stride ``patch``, ``n`` in all)
    whose origin lies in the chunk."""
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo = min(-(-a // patch), n)
        hi = min(-(-b // patch), n) if b < bounds[-1] else n
        out.append((lo, max(lo, hi)))
    return tuple(out)


@dataclass(frozen=True)
class Block:
    """One block: its index (block dims) and what to read and write."""

    index: tuple[int, ...]
    #: source pixels to read, canonical dims incl. ``c`` (all channels)
    read: tuple[slice, ...]
    #: region statistics: regions per spatial axis and the slab inside ``read`` (None: none)
    n_regions: tuple[int, ...] | None
    stats_local: tuple[slice, ...] | None
    #: side-car slices (sample dims + region ranges / cell ranges)
    region_out: tuple[slice, ...] | None
    cells_local: tuple[slice, ...] | None
    cell_out: tuple[slice, ...] | None
    #: percentile samples taken with this block: (pick number, the pick's chunk region)
    pct: tuple[tuple[int, tuple[slice, ...]], ...] = ()


class BlockPlan:
    """The blocks of a volume, their geometry and their order.

    Parameters
    ----------
    volume : xarray.DataArray
        The volume (only dims, shape, chunks and dtype are used).
    geom : VolumeGeometry
    region_todo : sequence of str
        Statistics computed on halo'd region blocks (Max, Shannon).
    cell_sets : sequence of str
        Cell partial sets to compute (``"base"``, ``"moments"``, ``"mask"``).
    seed : int
        Seed of the percentile sample.
    """

    def __init__(self, volume: Any, geom: VolumeGeometry, region_todo: Sequence[str],
                 cell_sets: Sequence[str], seed: int):
        self.geom = geom
        self.stats = list(region_todo)
        self.cell_sets = list(cell_sets)
        self.dims = tuple(volume.dims)
        self.shape = tuple(int(n) for n in volume.shape)
        self.chunks = tuple(int(c[0]) for c in volume.data.chunks)
        self.dtype = np.dtype(volume.dtype)
        self.c_axis = self.dims.index("c") if "c" in self.dims else None
        self.block_dims = tuple(d for d in self.dims if d != "c")
        self.sample_dims = geom.sample_dims
        axes = []
        for d in self.block_dims:
            n, c = self.shape[self.dims.index(d)], self.chunks[self.dims.index(d)]
            bounds = tuple(min(i * c, n) for i in range(-(-n // c) + 1))
            if d in geom.spatial_dims:
                p = geom.patch_by_dim[d]
                g = geom.grid_shape[geom.spatial_dims.index(d)]
                axes.append(_Axis(d, bounds, _origin_ranges(bounds, p, g),
                                  _origin_ranges(bounds, p, cell_extent(n, p)), p, n))
            else:
                axes.append(_Axis(d, bounds))
        self.axes = tuple(axes)
        self.numblocks = tuple(a.n for a in self.axes)
        self.n_blocks = int(math.prod(self.numblocks))
        c_size = self.shape[self.c_axis] if self.c_axis is not None else 1
        self.chunk_bytes = int(math.prod(
            c for d, c in zip(self.dims, self.chunks) if d != "c")) * c_size * self.dtype.itemsize
        self.halo = bool(self.stats) or any(
            a.bounds[1] % a.patch for a in self.axes if a.patch and a.n > 1)
        self._tiling()
        self._percentile_picks(volume.data.numblocks, seed)

    # ---- geometry of one block
    def block(self, index: Sequence[int], *, stats: bool = True, cells: bool = True,
              pct: bool = False) -> Block:
        """The :class:`Block` at ``index``: what to read, with or without its stats/cells (a
        block whose chunk holds no region or no cell origin has none of them)."""
        spatial = [(ax, i) for ax, i in zip(self.axes, index) if ax.patch]
        do_s = stats and bool(self.stats) and all(ax.regions[i][1] > ax.regions[i][0]
                                                  for ax, i in spatial)
        do_c = cells and bool(self.cell_sets) and all(ax.cells[i][1] > ax.cells[i][0]
                                                      for ax, i in spatial)
        read: list[slice] = []
        sl_s: list[slice] = []
        sl_c: list[slice] = []
        out_r: list[slice] = []
        out_c: list[slice] = []
        n_r: list[int] = []
        for ax, i in zip(self.axes, index):
            lo, hi = ax.bounds[i], ax.bounds[i + 1]
            if not ax.patch:
                for lst in (read, out_r, out_c):
                    lst.append(slice(lo, hi))
                sl_s.append(slice(0, hi - lo))
                sl_c.append(slice(0, hi - lo))
                continue
            p = ax.patch
            (r0, r1), (c0, c1) = ax.regions[i], ax.cells[i]
            rlo, rhi = r0 * p, min((r1 + 1) * p, ax.size)
            clo, chi = c0 * p, min(c1 * p, ax.size)
            spans = ([(rlo, rhi)] if do_s else []) + ([(clo, chi)] if do_c else [])
            a = min((s[0] for s in spans), default=lo)
            b = max((s[1] for s in spans), default=lo)
            read.append(slice(a, b))
            sl_s.append(slice(rlo - a, rhi - a))
            sl_c.append(slice(clo - a, chi - a))
            out_r.append(slice(r0, r1))
            out_c.append(slice(c0, c1))
            n_r.append(r1 - r0)
        if self.c_axis is not None:
            read.insert(self.c_axis, slice(0, self.shape[self.c_axis]))
        picks = self.pct_in_read(tuple(int(i) for i in index), read) if pct else ()
        return Block(tuple(int(i) for i in index), tuple(read),
                     tuple(n_r) if do_s else None, tuple(sl_s) if do_s else None,
                     tuple(out_r) if do_s else None, tuple(sl_c) if do_c else None,
                     tuple(out_c) if do_c else None, picks)

    def pct_in_read(self, index: tuple[int, ...], read: Sequence[slice]
                    ) -> tuple[tuple[int, tuple[slice, ...]], ...]:
        """The percentile picks in the chunk of block ``index``, with their chunk's region
        (the task cuts it from the block's pixels, or reads it through its cache)."""
        return tuple((j, self.pct_regions[j]) for j in self.pct_by_block.get(index, ()))

    # ---- order
    def _tiling(self) -> None:
        """Tiles of ``T`` blocks along the spatial axes but the first, sized so that the decoded
        chunks of two tile planes (plus their halo border) fit in :data:`CACHE_BYTES`."""
        sp = [self.block_dims.index(d) for d in self.geom.spatial_dims]
        self.axis0 = sp[0]
        self.tiled = sp[1:]
        n_t = [self.numblocks[a] for a in self.tiled]
        planes = 2 if self.numblocks[self.axis0] > 1 else 1
        budget = max(1, CACHE_BYTES // max(1, self.chunk_bytes * planes))
        t = 1
        while True:
            nxt = t + 1
            need = math.prod(min(nxt, n) + (1 if nxt < n else 0) for n in n_t)
            if need > budget or all(t >= n for n in n_t):
                break
            t = nxt
        self.tile = tuple(min(t, n) for n in n_t)
        self.n_tiles = tuple(-(-n // k) for n, k in zip(n_t, self.tile))
        self.sample_axes = [self.block_dims.index(d) for d in self.sample_dims]
        units = [self.numblocks[a] for a in self.sample_axes] + list(self.n_tiles)
        self.units = tuple(units)
        self.n_units = int(math.prod(units))
        g = max(1, min(MAX_GROUP, TASK_BYTES // max(1, self.chunk_bytes)))
        self.group = g

    def unit_box(self, u: int) -> tuple[slice, ...]:
        """Block slices of traversal unit ``u`` (one sample block x one tile, whole axis 0)."""
        coords = np.unravel_index(u, self.units) if self.units else ()
        box = [slice(None)] * len(self.numblocks)
        ns = len(self.sample_axes)
        for a, c in zip(self.sample_axes, coords[:ns]):
            box[a] = slice(int(c), int(c) + 1)
        for a, c, k in zip(self.tiled, coords[ns:], self.tile):
            box[a] = slice(int(c) * k, min((int(c) + 1) * k, self.numblocks[a]))
        return tuple(box)

    def walk(self, pending: np.ndarray, units: Iterator[int] | None = None
             ) -> Iterator[tuple[int, list[tuple[int, ...]]]]:
        """Groups of pending blocks in traversal order: ``(unit, [block index, ...])``.

        ``pending`` is a bool array over the block grid; units and planes without pending
        blocks are skipped without looking at their blocks one by one.
        """
        for u in (range(self.n_units) if units is None else units):
            box = self.unit_box(u)
            sub = pending[box]
            if not sub.any():
                continue
            starts = [s.start or 0 for s in box]
            group: list[tuple[int, ...]] = []
            for i0 in range(sub.shape[self.axis0]):
                plane = np.take(sub, i0, axis=self.axis0)
                if not plane.any():
                    continue
                for rel in np.argwhere(plane):
                    rel = list(rel)
                    rel.insert(self.axis0, i0)
                    group.append(tuple(int(s + r) for s, r in zip(starts, rel)))
                    if len(group) >= self.group:
                        yield u, group
                        group = []
            if group:
                yield u, group

    # ---- side-car chunks
    def sidecar_chunks(self, kind: str, lead: Sequence[int] = ()) -> tuple[int, ...]:
        """Chunks of a side-car array of ``kind`` (``"regions"``, ``"cells"`` or ``"blocks"``):
        aligned to the tiles, grown along axis 0 (then the sample dims when a tile covers the
        whole plane) up to :data:`SIDECAR_CHUNK_VALUES` values; ``lead`` are leading axes kept
        whole (channels)."""
        per, extent = [], []
        for ax in self.axes:
            if kind == "blocks":
                per.append(1)
                extent.append(ax.n)
            elif not ax.patch:
                per.append(ax.bounds[1] - ax.bounds[0])
                extent.append(ax.size if ax.size else ax.bounds[-1])
            else:
                rng = ax.regions if kind == "regions" else ax.cells
                per.append(max(1, max(b - a for a, b in rng)))
                extent.append(rng[-1][1])
        chunks = list(per)
        for a, k in zip(self.tiled, self.tile):
            chunks[a] = min(per[a] * k, extent[a])
        base = math.prod(lead) if lead else 1

        def grow(a: int) -> None:
            rest = base * math.prod(chunks) // chunks[a]
            k = max(1, SIDECAR_CHUNK_VALUES // max(1, rest * per[a]))
            chunks[a] = max(chunks[a], min(per[a] * k, extent[a]))

        grow(self.axis0)
        whole_plane = all(k >= n for k, n in zip(self.tile, (self.numblocks[a] for a in self.tiled)))
        if whole_plane and chunks[self.axis0] >= extent[self.axis0]:
            for a in reversed(self.sample_axes):
                grow(a)
        return (*lead, *(max(1, c) for c in chunks))

    # ---- percentiles
    def _percentile_picks(self, numblocks: Sequence[int], seed: int) -> None:
        # a pick is a block: one chunk position over every channel (channel-chunked sources
        # included), so each pick samples every channel
        numblocks = [1 if a == self.c_axis else int(n) for a, n in enumerate(numblocks)]
        total = int(np.prod(numblocks, dtype=np.int64))
        rng = np.random.default_rng(seed)
        k = min(PERCENTILE_CHUNKS, total)
        self.pct_picks = sorted(int(i) for i in rng.choice(total, size=k, replace=False))
        self.pct_blocks = [tuple(int(i) for i in np.unravel_index(f, tuple(numblocks)))
                           for f in self.pct_picks]
        #: the chunk of each pick (canonical dims incl. c) and the picks of each block
        self.pct_regions = [tuple(slice(0, n) if a == self.c_axis
                                  else slice(i * c, min((i + 1) * c, n))
                                  for a, (i, c, n) in enumerate(zip(idx, self.chunks, self.shape)))
                            for idx in self.pct_blocks]
        self.pct_by_block: dict[tuple[int, ...], list[int]] = {}
        for j, idx in enumerate(self.pct_blocks):
            bidx = tuple(i for a, i in enumerate(idx) if a != self.c_axis)
            self.pct_by_block.setdefault(bidx, []).append(j)


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
    return m.transpose(*dims)


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
