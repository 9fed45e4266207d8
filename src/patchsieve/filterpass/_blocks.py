"""What a task of the filter pass does on a worker: read a group of blocks, compute their region
statistics and cell partials (private to the filter pass).

A task gets a :class:`patchsieve.volume.ChunkReader` (the source re-opened by URL once per
process), an in-memory array, or the blocks' pixels computed from a dask graph, plus the list of
its blocks; it returns one small result per block. Halo'd blocks read their chunks through a
per-process cache of decoded chunks (:class:`_ChunkCache`): with the tile order of
:class:`~patchsieve.filterpass._plan.BlockPlan` the chunks a halo reaches are decoded once and
used by every block that needs them, except at the border of a tile.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from patchsieve.filters.kernels import (
    cell_int_sums,
    cell_moments,
    jit_available,
)
from patchsieve.filters.stats import check_mask_values
from patchsieve.grid import chunk_pieces
from patchsieve.regions import region_block_stats
from patchsieve.volume import ChunkReader

_WORK = threading.local()


class _ChunkCache:
    """Decoded chunks of this process, least recently used evicted beyond ``budget`` bytes; a
    chunk two threads ask for at once is decoded once."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.data: OrderedDict[Any, np.ndarray] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()
        self.loading: dict[Any, threading.Event] = {}
        self.decoded = 0
        self.hits = 0

    def get(self, reader: ChunkReader, index: tuple[int, ...]) -> np.ndarray:
        key = (reader.token, index)
        while True:
            with self.lock:
                arr = self.data.get(key)
                if arr is not None:
                    self.data.move_to_end(key)
                    self.hits += 1
                    return arr
                event = self.loading.get(key)
                if event is None:
                    event = self.loading[key] = threading.Event()
                    break
            event.wait()
        try:
            arr = reader.read(reader.block_region(index))
            with self.lock:
                self.data[key] = arr
                self.bytes += arr.nbytes
                self.decoded += 1
                while self.bytes > self.budget and len(self.data) > 1:
                    _, old = self.data.popitem(last=False)
                    self.bytes -= old.nbytes
            return arr
        finally:
            with self.lock:
                self.loading.pop(key, None)
            event.set()


#: the chunk caches of this process, one per run of the filter pass (the newest two kept: a
#: run never sees chunks decoded by an earlier one, which may have read other data)
_CACHES: OrderedDict[str, _ChunkCache] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _cache(run: str, budget: int) -> _ChunkCache:
    with _CACHE_LOCK:
        c = _CACHES.get(run)
        if c is None:
            c = _CACHES[run] = _ChunkCache(budget)
            while len(_CACHES) > 2:
                _CACHES.popitem(last=False)
        return c


def cache_stats() -> dict[str, int]:
    """Chunks decoded and cache hits of the newest run in this process (for benchmarks)."""
    with _CACHE_LOCK:
        c = next(reversed(_CACHES.values()), None)
    return {"decoded": c.decoded, "hits": c.hits, "bytes": c.bytes} if c else \
        {"decoded": 0, "hits": 0, "bytes": 0}


def _buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread scratch array (reused by the next block of the same shape: fresh pages of
    large arrays cost more than the copy into them)."""
    buf = getattr(_WORK, "buf", None)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = _WORK.buf = np.empty(shape, dtype)
    return buf


def read_region(source: Any, region: Sequence[slice], cache: _ChunkCache | None) -> np.ndarray:
    """The pixels ``region`` of ``source`` (a ChunkReader or an array), through ``cache``."""
    if not isinstance(source, ChunkReader):
        return np.asarray(source[tuple(region)])
    if cache is None:
        return source.read(region)
    ranges = []
    for sl, c in zip(region, source.chunks):
        lo, hi = int(sl.start), int(sl.stop)
        ranges.append(range(lo // c, max(lo // c, (hi - 1) // c) + 1))
    if all(len(r) == 1 for r in ranges):
        idx = tuple(r[0] for r in ranges)
        chunk = cache.get(source, idx)
        return chunk[tuple(slice(sl.start - i * c, sl.stop - i * c)
                           for sl, i, c in zip(region, idx, source.chunks))]
    shape = tuple(int(sl.stop - sl.start) for sl in region)
    out = _buffer(shape, np.dtype(source.dtype))
    for cidx, in_chunk, in_region in chunk_pieces(region, source.chunks):
        out[in_region] = cache.get(source, cidx)[in_chunk]
    return out


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
    sp = x.shape[x.ndim - n_spatial:]
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


def cell_results(block: np.ndarray, mask: np.ndarray | None, spec: Mapping[str, Any],
                 origin: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The cell partials of one cell-aligned block (all channels) and its mask block."""
    ps, n_sp, c_axis = spec["patch_size"], spec["n_spatial"], spec["c_axis"]
    sets = spec["cell_sets"]
    res: dict[str, np.ndarray] = {}
    if "base" in sets:
        res["partials"] = _cell_partials(block, ps, n_sp)
    if "moments" in sets:
        x = np.take(block, spec["ref"], axis=c_axis) if c_axis is not None else block
        lead = x.shape[: x.ndim - n_sp]
        s, m2 = cell_moments(x, ps, spec["border"])
        res["ref_sum"] = s.reshape((*lead, *s.shape[1:]))
        res["ref_m2"] = m2.reshape((*lead, *m2.shape[1:]))
    if "mask" in sets:
        m = np.asarray(mask)
        if m.dtype.kind != "b":
            check_mask_values(m, what=f"mask block at {dict(origin)}")
        lead = m.shape[: m.ndim - n_sp]
        nz, _ = cell_int_sums(m != 0, ps)
        res["nonzero"] = nz.reshape((*lead, *nz.shape[1:])).astype(np.float64)
    return res


def run_group(source: Any, spec: Mapping[str, Any], blocks: Sequence[Any],
              pixels: Sequence[np.ndarray] | None = None, mask: Any = None,
              mask_pixels: Sequence[np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Compute a group of blocks (the task of the filter pass).

    Parameters
    ----------
    source : ChunkReader, array or None
        Where the pixels are read (None: ``pixels`` holds each block's read region).
    spec : mapping
        What to compute (patch size, stats, border, dims, cell sets, cache budget ...).
    blocks : sequence of Block
    mask, mask_pixels : optional
        The mask source (or its pixels per block) of the mask cell partials.

    Returns
    -------
    list of dict
        Per block: ``"stats"`` (float64 ``(n_stats, *sample, *n_regions)``) and/or
        ``"cells"`` (dict of cell partials).
    """
    cache = _cache(spec["run"], spec["cache_bytes"]) \
        if spec["halo"] and isinstance(source, ChunkReader) else None
    dims, c_axis = spec["block_dims"], spec["c_axis"]
    out = []
    for k, blk in enumerate(blocks):
        res: dict[str, Any] = {}
        if blk.n_regions is None and blk.cells_local is None and not blk.pct:
            out.append(res)
            continue
        data = pixels[k] if pixels is not None else read_region(source, blk.read, cache)
        if blk.pct:
            from patchsieve.filterpass._plan import _percentile_sample

            res["pct"] = {j: _percentile_sample(_cut(data, blk.read, region, source, cache),
                                                spec["seed"] + j, spec["pct_n"], c_axis)
                          for j, region in blk.pct}
        starts = [int(s.start) for i, s in enumerate(blk.read) if i != c_axis]
        if blk.n_regions is not None:
            ref = np.take(data, spec["ref"], axis=c_axis) if c_axis is not None else data
            slab = ref[blk.stats_local]
            origin = tuple(a + int(s.start or 0) for a, s in zip(starts, blk.stats_local))
            res["stats"] = region_block_stats(
                slab, patch_size=spec["patch_size"], n=blk.n_regions, stats=spec["stats"],
                border=spec["border"], n_sample_dims=spec["n_sample_dims"], origin=origin,
                dims=dims)
        if blk.cells_local is not None:
            loc = list(blk.cells_local)
            if c_axis is not None:
                loc.insert(c_axis, slice(None))
            cell = data[tuple(loc)]
            m = None
            if "mask" in spec["cell_sets"]:
                region = tuple(slice(a + int(s.start), a + int(s.stop))
                               for a, s in zip(starts, blk.cells_local))
                m = mask_pixels[k] if mask_pixels is not None else read_region(mask, region,
                                                                                None)
            origin_c = {d: a + int(s.start) for d, a, s in zip(dims, starts, blk.cells_local)}
            res["cells"] = cell_results(cell, m, spec, origin_c)
        out.append(res)
    return out


def _cut(data: np.ndarray, read: Sequence[slice], region: Sequence[slice], source: Any,
         cache: _ChunkCache | None) -> np.ndarray:
    """``region`` from a block's pixels ``data`` (read at ``read``), or read (cached)."""
    if all(r.start <= c.start and c.stop <= r.stop for r, c in zip(read, region)):
        return data[tuple(slice(c.start - r.start, c.stop - r.start)
                          for r, c in zip(read, region))]
    return read_region(source, region, cache)


def percentile_task(source: Any, region: Sequence[slice], seed: int, n: int,
                    channel_axis: int | None, pixels: np.ndarray | None = None) -> np.ndarray:
    """A seeded subsample of one source chunk's values, ``(n_channels, k)`` float64."""
    from patchsieve.filterpass._plan import _percentile_sample

    data = pixels if pixels is not None else read_region(source, region, None)
    return _percentile_sample(data, seed, n, channel_axis)


def _small_int(dtype: Any) -> bool:
    dt = np.dtype(dtype)
    return dt.kind in "ui" and dt.itemsize <= 2
