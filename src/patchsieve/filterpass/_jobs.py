"""The jobs of a filter pass: what each block's result becomes in the side-car, and what is
derived once every block is there (private to the filter pass).

Everything here works side-car chunk by side-car chunk: the derived region statistics (mean,
std, mask coverage from the cell partials) read one window of cells (plus the one cell of halo a
region reaches) per chunk of the statistic's array.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from patchsieve.filterpass._plan import (
    PERCENTILE_VALUES_PER_CHUNK,
    PERCENTILES,
    BlockPlan,
    _small_int,
)
from patchsieve.filters.kernels import moments_from_sums, regions_from_cells
from patchsieve.grid import VolumeGeometry
from patchsieve.sidecar import (
    CELL_MASK_NONZERO,
    CELL_REF_M2,
    CELL_REF_SUM,
    CELL_SUM,
    CELL_SUMSQ,
    BlockLog,
    SidecarWriter,
    canonical_hash,
    chunk_boxes,
    progress_key,
    stats_key,
)

logger = logging.getLogger(__name__)


class StatsJob:
    """Region statistics of the halo'd blocks into ``stats/<s>``."""

    def __init__(self, writer: SidecarWriter, plan: BlockPlan, geom: VolumeGeometry,
                 todo_stats: list[str]):
        self.stats = todo_stats
        region_shape = list(geom.region_shape)
        chunks = plan.sidecar_chunks("regions")
        arrays = {s: writer.array(stats_key(s), region_shape, chunks, "float64",
                                  fill_value=np.nan, grow=False) for s in todo_stats}
        # one marker array per set of stats computed together
        mkey = progress_key("stats_" + canonical_hash(sorted(todo_stats))[:8])
        marker = writer.array(mkey, plan.numblocks, plan.sidecar_chunks("blocks"), "uint8",
                              grow=False)
        self.log: BlockLog = writer.block_log(arrays, marker)
        logger.info("region statistics %s: %d of %d blocks to compute", todo_stats,
                    int(np.count_nonzero(self.log.done == 0)), self.log.done.size)

    def put(self, block: Any, result: Mapping[str, Any]) -> None:
        if block.region_out is None:
            self.log.mark(block.index)
        else:
            self.log.put(block.index, block.region_out, dict(zip(self.stats, result["stats"])))


class CellsJob:
    """Cell partials (sum and sum of squares of every channel, the reference channel's moments,
    the mask's non-zero counts) into ``cells/*``."""

    def __init__(self, writer: SidecarWriter, plan: BlockPlan, geom: VolumeGeometry):
        n_c = geom.n_channels
        cshape = [n_c, *geom.sample_shape, *geom.cell_shape]
        chunks = plan.sidecar_chunks("cells")
        arrays: dict[str, zarr.Array] = {}

        def arr(key: str, lead: bool) -> zarr.Array:
            return writer.array(key, cshape if lead else cshape[1:],
                                (n_c, *chunks) if lead else chunks, "float64", grow=False)

        if "base" in plan.cell_sets:
            arrays["sum"], arrays["sumsq"] = arr(CELL_SUM, True), arr(CELL_SUMSQ, True)
        if "moments" in plan.cell_sets:
            arrays["ref_sum"], arrays["ref_m2"] = arr(CELL_REF_SUM, False), arr(CELL_REF_M2, False)
        if "mask" in plan.cell_sets:
            arrays["nonzero"] = arr(CELL_MASK_NONZERO, False)
        # one marker array per set of partials computed together
        mkey = progress_key("cells" if plan.cell_sets == ["base"] else
                            "cells_" + "_".join(plan.cell_sets))
        marker = writer.array(mkey, plan.numblocks, plan.sidecar_chunks("blocks"), "uint8",
                              grow=False)
        self.log = writer.block_log(arrays, marker, prefix={"sum": 1, "sumsq": 1})
        self.c_axis = plan.c_axis
        logger.info("cell partials %s: %d of %d blocks to compute", plan.cell_sets,
                    int(np.count_nonzero(self.log.done == 0)), self.log.done.size)

    def put(self, block: Any, result: Mapping[str, Any]) -> None:
        if block.cell_out is None:
            self.log.mark(block.index)
            return
        res = result["cells"]
        values: dict[str, np.ndarray] = {}
        if "partials" in res:
            # partial: (2, *block dims incl. c, *cells) -> channel first
            partial = res["partials"]
            partial = partial[:, None] if self.c_axis is None else \
                np.moveaxis(partial, 1 + self.c_axis, 1)
            values["sum"], values["sumsq"] = partial[0], partial[1]
        for k in ("ref_sum", "ref_m2", "nonzero"):
            if k in res:
                values[k] = res[k]
        self.log.put(block.index, block.cell_out, values)


def derive_cell_stats(writer: SidecarWriter, plan: BlockPlan, geom: VolumeGeometry,
                      todo: Sequence[str], border: str, dtype: Any) -> None:
    """Write ``stats/<s>`` of the cell statistics from the (complete) cell partials, one chunk
    of the statistic's array at a time (its regions' cells plus one cell of halo)."""
    if not todo:
        return
    g = writer.group
    region_shape = list(geom.region_shape)
    n_s = len(geom.sample_shape)
    arrays = {st: writer.array(stats_key(st), region_shape, plan.sidecar_chunks("regions"),
                               "float64", fill_value=np.nan, grow=False) for st in todo}
    first = arrays[todo[0]]
    for box in chunk_boxes(first):
        vals = cell_window_stats(g, geom, todo, box[:n_s], box[n_s:], border, dtype)
        for st in todo:
            arrays[st][box] = vals[st]


def cell_window_stats(g: Any, geom: VolumeGeometry, todo: Sequence[str], samples: Sequence[slice],
                      regions: Sequence[slice], border: str, dtype: Any) -> dict[str, np.ndarray]:
    """Region values of the cell statistics ``todo`` over a window of regions (bit for bit
    those of the whole-image computation: a region only combines its own cells)."""
    ps = list(geom.patch_size)
    n_sp = len(ps)
    r0 = [int(s.start) for s in regions]
    n_w = [int(s.stop - s.start) for s in regions]
    c_end = [min(a + n + 1, c) for a, n, c in zip(r0, n_w, geom.cell_shape)]
    cell_box = tuple(slice(a, b) for a, b in zip(r0, c_end))
    # the pixels of the window's cells, from its first cell (partial cells at the image end):
    # the counts of the whole-image computation, cut to the window
    window_px = [min(n - a * p, (b - a) * p)
                 for n, a, b, p in zip(geom.spatial_shape, r0, c_end, ps)]
    sel = (*samples, *cell_box)
    cells: dict[str, np.ndarray] = {}
    if any(s in ("mean", "std") for s in todo):
        if _small_int(dtype):
            # exact integer sums (stored as float64, all < 2**53)
            s = np.asarray(g[CELL_SUM][(geom.ref_channel, *sel)]).astype(np.int64)
            q = np.asarray(g[CELL_SUMSQ][(geom.ref_channel, *sel)]).astype(np.int64)
            cells["sum"] = s.astype(np.float64)
            cells["m2"] = moments_from_sums(s, q, ps, window_px, border)  # type: ignore[arg-type]
        else:
            cells["sum"] = np.asarray(g[CELL_REF_SUM][sel])
            cells["m2"] = np.asarray(g[CELL_REF_M2][sel])
    if "mask_coverage" in todo:
        cells["nonzero"] = np.asarray(g[CELL_MASK_NONZERO][sel])
    lead = [int(s.stop - s.start) for s in samples]
    flat = {k: v.reshape((-1, *v.shape[v.ndim - n_sp:])) for k, v in cells.items()}
    out = {}
    for st in todo:
        vals = regions_from_cells(st, flat, patch_size=ps, spatial_shape=window_px,
                                  grid_shape=n_w, border=border)  # type: ignore[arg-type]
        out[st] = vals.reshape((*lead, *n_w))
    return out


def percentiles(samples: Sequence[np.ndarray], n_channels: int, plan: BlockPlan,
                seed: int) -> dict[str, Any]:
    """The side-car's ``percentiles`` attrs from the seeded chunk samples."""
    allv = np.concatenate(list(samples), axis=1) if samples else np.zeros((n_channels, 0))
    pct = {f"p{q:g}": [float(np.percentile(c, q)) if c.size else float("nan") for c in allv]
           for q in PERCENTILES}
    return {**pct, "n_sampled_chunks": len(plan.pct_picks),
            "values_per_chunk": PERCENTILE_VALUES_PER_CHUNK,
            "sampled_chunks": plan.pct_picks, "seed": int(seed)}


def record_fill(writer: SidecarWriter, meta: dict[str, Any], status: dict[str, str],
                todo_stats: Sequence[str], extra: Mapping[str, Any] | None = None) -> None:
    """Mark ``todo_stats`` complete in the side-car's attrs."""
    for s in todo_stats:
        status[stats_key(s)] = "complete"
    meta["status"] = status
    if extra:
        meta.setdefault("timing", {}).update(extra)
    writer.set_meta(meta)


def sample_windows(shape: Sequence[int], max_values: int) -> Iterator[tuple[slice, ...]]:
    """C-order slabs of an array of ``shape`` (leading axes split) of at most ``max_values``."""
    shape = [int(n) for n in shape]
    if not shape:
        yield ()
        return
    rest = math.prod(shape[1:]) or 1
    step = max(1, max_values // rest)
    for a in range(0, shape[0], step):
        yield (slice(a, min(a + step, shape[0])),)
