"""The jobs of a filter pass: what each block's result becomes in the side-car, and what is
derived once every block is there (private to the filter pass)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from patchsieve.filterpass._plan import (
    PERCENTILE_VALUES_PER_CHUNK,
    PERCENTILES,
    _Plan,
    _small_int,
)
from patchsieve.filterpass._scheduler import _Job
from patchsieve.filters.kernels import moments_from_sums, regions_from_cells
from patchsieve.grid import VolumeGeometry
from patchsieve.sidecar import (
    CELL_MASK_NONZERO,
    CELL_REF_M2,
    CELL_REF_SUM,
    CELL_SUM,
    CELL_SUMSQ,
    SidecarWriter,
    block_slices,
    canonical_hash,
    progress_key,
    stats_key,
)

logger = logging.getLogger(__name__)


def _stats_job(writer: SidecarWriter, plan: _Plan, geom: VolumeGeometry,
               todo_stats: list[str]) -> _Job:
    region_shape = list(geom.region_shape)
    arrays = {s: writer.array(stats_key(s), region_shape, plan.stat_chunks, "float64",
                              fill_value=np.nan) for s in todo_stats}
    # one marker array per set of stats computed together
    mkey = progress_key("stats_" + canonical_hash(sorted(todo_stats))[:8])
    marker = writer.array(mkey, plan.stat_numblocks, [max(1, n) for n in plan.stat_numblocks],
                          "uint8")
    mirror = writer.block_log(arrays, marker)
    todo = mirror.todo()
    logger.info("region statistics %s: %d of %d blocks to compute", todo_stats, len(todo),
                mirror.done.size)

    def on_stat(idx: tuple[int, ...], values: tuple[np.ndarray, ...]) -> None:
        sl = block_slices(idx, plan.stat_chunks, region_shape)
        mirror.put(idx, sl, dict(zip(todo_stats, values)))

    return _Job("region statistics", plan.stat_blocks, todo, on_stat, mirror.flush)


def _cells_job(writer: SidecarWriter, plan: _Plan, geom: VolumeGeometry) -> _Job:
    n_c = geom.n_channels
    cshape = [n_c, *geom.sample_shape, *geom.cell_shape]
    cchunks = [n_c, *plan.cell_chunks]
    arrays: dict[str, zarr.Array] = {}
    if "base" in plan.cell_sets:
        arrays["sum"] = writer.array(CELL_SUM, cshape, cchunks, "float64")
        arrays["sumsq"] = writer.array(CELL_SUMSQ, cshape, cchunks, "float64")
    if "moments" in plan.cell_sets:
        arrays["ref_sum"] = writer.array(CELL_REF_SUM, cshape[1:], cchunks[1:], "float64")
        arrays["ref_m2"] = writer.array(CELL_REF_M2, cshape[1:], cchunks[1:], "float64")
    if "mask" in plan.cell_sets:
        arrays["nonzero"] = writer.array(CELL_MASK_NONZERO, cshape[1:], cchunks[1:],
                                         "float64")
    # one marker array per set of partials computed together
    mkey = progress_key("cells" if plan.cell_sets == ["base"] else
                        "cells_" + "_".join(plan.cell_sets))
    marker = writer.array(mkey, plan.cell_numblocks,
                          [max(1, n) for n in plan.cell_numblocks], "uint8")
    mirror = writer.block_log(arrays, marker, prefix={"sum": 1, "sumsq": 1})
    todo = mirror.todo()
    dims = plan.dims
    c_axis = dims.index("c") if "c" in dims else None

    def on_cell(idx: tuple[int, ...], res: Mapping[str, np.ndarray]) -> None:
        idx_wo_c = [i for d, i in zip(dims, idx) if d != "c"]
        sl = block_slices(idx_wo_c, plan.cell_chunks, cshape[1:])
        values: dict[str, np.ndarray] = {}
        if "partials" in res:
            # partial: (2, *block dims incl. c, *cells)
            partial = res["partials"]
            partial = partial[:, None] if c_axis is None else np.moveaxis(partial, 1 + c_axis, 1)
            values["sum"], values["sumsq"] = partial[0], partial[1]
        for k in ("ref_sum", "ref_m2", "nonzero"):
            if k in res:
                values[k] = res[k]
        mirror.put(idx, sl, values)

    return _Job("cell partials", plan.cell_blocks, todo, on_cell, mirror.flush)


def _derive_cell_stats(writer: SidecarWriter, geom: VolumeGeometry, todo: Sequence[str],
                       chunks: Sequence[int], border: str, dtype: Any) -> None:
    """Write ``stats/<s>`` of the cell statistics from the (complete) cell partials."""
    if not todo:
        return
    g = writer.group
    ref = geom.ref_channel
    ps = list(geom.patch_size)
    n_sp = len(ps)
    cells: dict[str, np.ndarray] = {}
    if any(s in ("mean", "std") for s in todo):
        if _small_int(dtype):
            # exact integer sums (stored as float64, all < 2**53)
            s = np.asarray(g[CELL_SUM][ref]).astype(np.int64)
            q = np.asarray(g[CELL_SUMSQ][ref]).astype(np.int64)
            cells["sum"] = s.astype(np.float64)
            cells["m2"] = moments_from_sums(s, q, ps, geom.spatial_shape, border)  # type: ignore[arg-type]
        else:
            cells["sum"] = np.asarray(g[CELL_REF_SUM][...])
            cells["m2"] = np.asarray(g[CELL_REF_M2][...])
    if "mask_coverage" in todo:
        cells["nonzero"] = np.asarray(g[CELL_MASK_NONZERO][...])
    flat = {k: v.reshape((-1, *v.shape[v.ndim - n_sp:])) for k, v in cells.items()}
    region_shape = list(geom.region_shape)
    for st in todo:
        vals = regions_from_cells(st, flat, patch_size=ps, spatial_shape=geom.spatial_shape,
                                  grid_shape=geom.grid_shape, border=border)  # type: ignore[arg-type]
        arr = writer.array(stats_key(st), region_shape, chunks, "float64", fill_value=np.nan)
        arr[...] = vals.reshape(region_shape)


def _record_fill(writer: SidecarWriter, meta: dict[str, Any], status: dict[str, str],
                 todo_stats: list[str], need_pct: bool,
                 samples: list[np.ndarray], plan: _Plan, geom: VolumeGeometry,
                 seed: int) -> None:
    for s in todo_stats:
        status[stats_key(s)] = "complete"
    if need_pct:
        allv = np.concatenate(samples, axis=1) if samples else np.zeros((geom.n_channels, 0))
        pct = {f"p{q:g}": [float(np.percentile(c, q)) if c.size else float("nan") for c in allv]
               for q in PERCENTILES}
        meta["percentiles"] = {**pct, "n_sampled_chunks": len(plan.pct_blocks),
                               "values_per_chunk": PERCENTILE_VALUES_PER_CHUNK,
                               "sampled_chunks": plan.pct_picks, "seed": int(seed)}
        status["percentiles"] = "complete"
    meta["status"] = status
    writer.set_meta(meta)
