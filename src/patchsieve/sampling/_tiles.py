"""Tiles of the region grid and the per-tile region counts of a streamed plan (private to
:mod:`patchsieve.sampling`).

A *tile* is a box of regions of one sample, about one or a few storage chunks wide; the tiles
of a sample are enumerated in Z order (the *canonical order*), samples one after the other.
Regions are classified by their *area class* ``alpha`` (per axis: 1 on the grid's last row,
whose selectable length is ``(size + 1) % patch``, else 0) and their background flag; a tile
stores how many background regions of each area class it holds (the only data-dependent
numbers a streamed plan keeps), read once, slab by slab, from the ``filter_out`` decisions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.errors import SidecarMismatchError
from patchsieve.sampling._order import _morton

#: at most this many tiles (all samples together): bounds the plan state
MAX_TILES = 1 << 15
#: tiles grow to at least this many regions (or a whole sample): a tile's patches are drawn
#: with a few dozen array operations, whatever its size
MIN_TILE_REGIONS = 1 << 12
#: regions read at once while counting (bounds the memory of the scan)
SCAN_REGIONS = 1 << 23

#: ``read(sample, lo, hi)`` -> bool array of the regions ``[lo, hi)`` of one (flat) sample
BackgroundReader = Callable[[int, Sequence[int], Sequence[int]], NDArray[np.bool_]]


def area_classes(ndim: int) -> list[tuple[int, ...]]:
    """Every area class of ``ndim`` axes, ``(0, ..., 0)`` (interior) first."""
    return list(itertools.product((0, 1), repeat=ndim))


def choose_tile_shape(grid_shape: Sequence[int], n_samples: int, patch_size: Sequence[int],
                      chunk_shape: Sequence[int] | None, max_tiles: int = MAX_TILES) -> tuple[int, ...]:
    """Regions per tile and axis: the regions of one storage chunk (at least 1), doubled along
    the axis with the most tiles until there are at most ``max_tiles`` tiles and a tile holds
    :data:`MIN_TILE_REGIONS` regions (or one tile is the whole sample).

    Examples
    --------
    >>> choose_tile_shape((16, 16), 79, (64, 64), (512, 512))
    (16, 16)
    >>> choose_tile_shape((500, 500), 1, (64, 64), (256, 256))
    (64, 64)
    >>> choose_tile_shape((400, 500, 500), 1, (16, 64, 64), (16, 256, 256))
    (16, 16, 16)
    """
    grid = [max(1, int(g)) for g in grid_shape]
    chunks = chunk_shape if chunk_shape is not None else patch_size
    t = [min(g, max(1, int(c) // int(p))) for g, c, p in zip(grid, chunks, patch_size, strict=True)]

    def n_tiles() -> int:
        return int(n_samples) * math.prod(-(-g // s) for g, s in zip(grid, t, strict=True))

    while ((n_tiles() > max_tiles or math.prod(t) < MIN_TILE_REGIONS)
           and any(s < g for s, g in zip(t, grid, strict=True))):
        along = [-(-g // s) if s < g else 0 for g, s in zip(grid, t, strict=True)]
        d = max(range(len(t)), key=lambda i: (along[i], i))
        t[d] = min(grid[d], 2 * t[d])
    return tuple(t)


class TileGrid:
    """Tiles of ``tile_shape`` regions over a region grid, per sample, in canonical order.

    Tile ``u`` is tile ``u % per_sample`` (canonical index) of sample ``u // per_sample``.

    Examples
    --------
    >>> tg = TileGrid((5, 6), 2, (2, 4))
    >>> tg.per_sample, tg.n_tiles, tg.box(1)
    (6, 12, ((0, 4), (2, 6)))
    """

    def __init__(self, grid_shape: Sequence[int], n_samples: int, tile_shape: Sequence[int]):
        self.grid_shape = tuple(int(g) for g in grid_shape)
        self.tile_shape = tuple(int(t) for t in tile_shape)
        self.n_samples = int(n_samples)
        self.counts = tuple(-(-g // t) for g, t in zip(self.grid_shape, self.tile_shape, strict=True))
        self.per_sample = math.prod(self.counts)
        self.n_tiles = self.n_samples * self.per_sample
        c_coords = np.stack(np.unravel_index(np.arange(self.per_sample), self.counts), axis=1)
        order = np.argsort(_morton(c_coords.astype(np.int64)), kind="stable")
        #: tile coordinates (in tiles) of canonical index k
        self.coords = c_coords[order].astype(np.int64)
        #: canonical index of the tile with C-order index i
        self.canonical = np.empty(self.per_sample, np.int64)
        self.canonical[order] = np.arange(self.per_sample)
        t = np.asarray(self.tile_shape, np.int64)
        g = np.asarray(self.grid_shape, np.int64)
        self.lo = self.coords * t
        self.hi = np.minimum(self.lo + t, g)

    def box(self, k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(lo, hi)`` region coordinates of canonical tile ``k`` (of any sample)."""
        k = int(k) % self.per_sample
        return tuple(self.lo[k].tolist()), tuple(self.hi[k].tolist())

    def class_totals(self) -> NDArray[np.int64]:
        """Regions of every area class in every canonical tile, ``(per_sample, 2**ndim)``."""
        nd = len(self.grid_shape)
        g = np.asarray(self.grid_shape, np.int64)
        last = self.hi == g  # the tile holds the grid's last row along that axis
        rows = {1: last.astype(np.int64), 0: (self.hi - self.lo) - last}
        out = np.ones((self.per_sample, 2**nd), np.int64)
        for j, alpha in enumerate(area_classes(nd)):
            for d, a in enumerate(alpha):
                out[:, j] *= rows[a][:, d]
        return out


def _segment_sums(x: NDArray[Any], a: int, t: int, axis: int, dtype: Any) -> NDArray[Any]:
    """Sums of ``x`` along ``axis`` over the tiles of ``t`` cells it touches, ``x`` starting
    at cell ``a`` (a ragged first and last tile; the others summed through a reshape, which is
    many times faster than ``reduceat``)."""
    n = x.shape[axis]

    def part(lo: int, hi: int) -> NDArray[Any]:
        return x[(slice(None),) * axis + (slice(lo, hi),)]

    first_end = min(n, t - a % t)
    out = [part(0, first_end).sum(axis=axis, keepdims=True, dtype=dtype)]
    m = (n - first_end) // t
    if m:
        mid = part(first_end, first_end + m * t)
        shape = mid.shape[:axis] + (m, t) + mid.shape[axis + 1:]
        out.append(mid.reshape(shape).sum(axis=axis + 1, dtype=dtype))
    rest = first_end + m * t
    if rest < n:
        out.append(part(rest, n).sum(axis=axis, keepdims=True, dtype=dtype))
    return np.concatenate(out, axis=axis) if len(out) > 1 else out[0]


def _tile_sums(block: NDArray[np.bool_], lo: Sequence[int], tile_shape: Sequence[int]
               ) -> tuple[NDArray[np.int64], list[int]]:
    """Sums of ``block`` (placed at region ``lo``) per tile it touches, and the first tile
    coordinate per axis."""
    if 0 in block.shape:
        return np.zeros([0] * block.ndim, np.int64), [0] * block.ndim
    out: NDArray[Any] = block.view(np.uint8)
    for d, (a, t) in enumerate(zip(lo, tile_shape, strict=True)):
        small = d == 0 and t < (1 << 16)  # the pass over every region: narrow accumulators
        out = _segment_sums(out, int(a), int(t), d, np.uint16 if small else np.int64)
    return out.astype(np.int64), [int(a) // int(t) for a, t in zip(lo, tile_shape, strict=True)]


def scan_background(read: BackgroundReader, tiles: TileGrid, slab_rows: int | None = None
                    ) -> NDArray[np.int64]:
    """Background regions per tile and area class, ``(n_tiles, 2**ndim)`` (canonical order).

    ``read`` is called slab by slab (whole rows along the last axes, about
    :data:`SCAN_REGIONS` regions), each slab a multiple of ``slab_rows`` (the decisions'
    storage chunk along the first axis), so each stored chunk is decoded once.
    """
    grid, ts = tiles.grid_shape, tiles.tile_shape
    nd = len(grid)
    row = math.prod(grid[1:])
    unit = max(int(slab_rows or 1), 1)  # whole storage chunks of the decisions per read
    rows = max(unit, (SCAN_REGIONS // max(row, 1)) // unit * unit)
    counts = np.zeros((tiles.n_tiles, 2**nd), np.int64)
    classes = area_classes(nd)
    for s in range(tiles.n_samples):
        base = s * tiles.per_sample
        for z0 in range(0, grid[0], rows):
            z1 = min(grid[0], z0 + rows)
            block = np.asarray(read(s, (z0, *[0] * (nd - 1)), (z1, *grid[1:])), dtype=bool)
            if block.shape != (z1 - z0, *grid[1:]):
                raise SidecarMismatchError(
                    f"the decisions of sample {s}, rows {z0}..{z1} have shape {block.shape}; "
                    f"the region grid needs {(z1 - z0, *grid[1:])}. Fix: pass the side-car of "
                    "this volume and patch size.")
            for j, alpha in enumerate(classes):
                sel, lo = [], []
                for d, a in enumerate(alpha):
                    b0, b1 = (z0, z1) if d == 0 else (0, grid[d])
                    r0, r1 = (grid[d] - 1, grid[d]) if a else (0, grid[d] - 1)
                    r0, r1 = max(r0, b0), min(r1, b1)
                    sel.append(slice(r0 - b0, max(r0, r1) - b0))
                    lo.append(r0)
                sums, first = _tile_sums(block[tuple(sel)], lo, ts)
                if sums.size == 0:
                    continue
                coords = np.stack(np.meshgrid(*[np.arange(f, f + n) for f, n in
                                                zip(first, sums.shape, strict=True)],
                                              indexing="ij"), axis=-1).reshape(-1, nd)
                c_index = np.ravel_multi_index(tuple(coords.T), tiles.counts)
                counts[base + tiles.canonical[c_index], j] += sums.ravel()
    return counts
