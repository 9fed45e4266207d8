"""Decisions, weights, per-sample totals and normalisation derived from a side-car's statistics.

Used by :class:`~patchsieve.sidecar.SidecarWriter` after a filter pass and after a threshold
change; the volume is never read here.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import zarr

from patchsieve.errors import SidecarIncompleteError
from patchsieve.grid import VolumeGeometry
from patchsieve.sidecar._format import (
    CELL_SUM,
    CELL_SUMSQ,
    SAMPLE_TOTALS,
    decision_key,
    stats_key,
)


class _Writes(Protocol):
    """What the decision step needs of a side-car writer (:class:`SidecarWriter` has it)."""

    path: str

    @property
    def group(self) -> zarr.Group: ...

    def array(self, key: str, shape: Sequence[int], chunks: Sequence[int], dtype: str,
              fill_value: Any = 0) -> zarr.Array: ...


def cover_cells(keep: np.ndarray, cell_shape: Sequence[int]) -> np.ndarray:
    """Cell-level OR of the regions covering each cell (region g covers cells g and g+1).

    ``keep`` is ``(*lead, *grid_shape)``; the result ``(*lead, *cell_shape)``.

    Examples
    --------
    >>> cover_cells(np.array([True, False]), (3,)).tolist()
    [True, True, False]
    """
    n_sp = len(cell_shape)
    lead = keep.shape[: keep.ndim - n_sp]
    out = np.zeros((*lead, *cell_shape), dtype=bool)
    for offs in itertools.product((0, 1), repeat=n_sp):
        sl = [slice(None)] * len(lead)
        for o, g, c in zip(offs, keep.shape[len(lead):], cell_shape):
            sl.append(slice(o, o + min(g, c - o)))
        part = tuple(slice(None) for _ in lead) + tuple(
            slice(0, s.stop - s.start) for s in sl[len(lead):])
        out[tuple(sl)] |= keep[part]
    return out


def epoch_patches(weights: np.ndarray, spatial_shape: Sequence[int],
                  patch_size: Sequence[int]) -> np.ndarray:
    """Patches per sample per epoch, exactly as CAREamics 0.3.5 ``StratifiedPatching``.

    Delegates to :func:`patchsieve.sampling.careamics_n_patches` (the sampler's own rule), so the
    side-car's totals and the dataset's epoch length can never disagree.

    Parameters
    ----------
    weights : ndarray, (n_samples, *grid_shape)
        Relative region probabilities (1 = untouched).
    spatial_shape, patch_size : sequence of int
        Image and patch size per spatial dim.
    """
    from patchsieve.sampling import careamics_n_patches

    flat = weights.reshape(weights.shape[0], -1)
    return np.array([careamics_n_patches(spatial_shape, patch_size, row.reshape(weights.shape[1:]),
                                         row != 1.0) for row in flat], dtype=np.int64)


def normalization(group: Any, geometry: VolumeGeometry, keep_cells: np.ndarray | None,
                  meta: Mapping[str, Any]) -> dict[str, Any]:
    """Per-channel mean/std over the whole volume (and over ``keep_cells``) from cell sums."""
    s = np.asarray(group[CELL_SUM][...])
    q = np.asarray(group[CELL_SUMSQ][...])
    cnt = np.broadcast_to(geometry.cell_counts(), s.shape[1:])
    n_c = s.shape[0]

    def mean_std(sel: np.ndarray | None) -> tuple[list[float], list[float], int]:
        means, stds = [], []
        n = float(cnt.sum() if sel is None else cnt[sel].sum())
        for c in range(n_c):
            ss = s[c].sum() if sel is None else s[c][sel].sum()
            qq = q[c].sum() if sel is None else q[c][sel].sum()
            m = ss / n if n else float("nan")
            var = max(qq / n - m * m, 0.0) if n else float("nan")
            means.append(float(m))
            stds.append(float(math.sqrt(var)) if n else float("nan"))
        return means, stds, int(n)

    out: dict[str, Any] = {}
    out["mean"], out["std"], out["n_pixels"] = mean_std(None)
    if keep_cells is not None:
        out["kept_mean"], out["kept_std"], out["kept_n_pixels"] = mean_std(keep_cells)
    out.update(meta.get("percentiles", {}))
    return out


def update_decisions(writer: _Writes, geometry: VolumeGeometry,
                     configs: Mapping[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """(Re)compute decisions, weights, totals and normalisation from the stored statistics."""
    from patchsieve.regions import filter_out_from_stats, required_stats

    g = writer.group
    region_shape = list(geometry.region_shape)
    n_s = len(geometry.sample_shape)
    sshape = list(geometry.sample_shape) or [1]
    norm_by_filter: dict[str, Any] = {}
    for name, cfg in configs.items():
        needed = required_stats(cfg, geometry.ndim)
        missing = [s for s in needed if meta["status"].get(stats_key(s)) != "complete"]
        if missing:
            raise SidecarIncompleteError(
                f"statistics {missing} for filter {name!r} are not complete in {writer.path!r}. "
                "Fix: rerun compute on the same output.")
        values = {s: np.asarray(g[stats_key(s)][...]) for s in needed}
        fo = np.asarray(filter_out_from_stats(cfg, values), dtype=bool).reshape(region_shape)
        w = np.where(fo, float(cfg.filtered_patch_prob), 1.0)
        chunks = g[stats_key(needed[0])].chunks
        writer.array(decision_key(name, "filter_out"), region_shape, chunks, "bool")[...] = fo
        writer.array(decision_key(name, "weight"), region_shape, chunks, "float64")[...] = w
        axes = tuple(range(n_s, n_s + geometry.ndim))
        totals = {
            "n_regions": np.full(geometry.sample_shape, geometry.n_regions, dtype=np.int64),
            "n_background": fo.sum(axis=axes).astype(np.int64),
            "weight_sum": w.sum(axis=axes),
            "n_patches_per_epoch": epoch_patches(
                w.reshape((-1, *geometry.grid_shape)), geometry.spatial_shape,
                geometry.patch_size).reshape(geometry.sample_shape or ()),
        }
        for key in SAMPLE_TOTALS:
            dtype = "float64" if key == "weight_sum" else "int64"
            a = writer.array(decision_key(name, key), sshape, sshape, dtype)
            a[...] = np.asarray(totals[key]).reshape(sshape)
        if CELL_SUM in g:
            keep_cells = cover_cells(~fo, geometry.cell_shape)
            norm_by_filter[name] = normalization(g, geometry, keep_cells, meta)
        meta["status"][f"decisions/{name}"] = "complete"
    if CELL_SUM in g:
        base = normalization(g, geometry, None, meta)
        base["kept"] = {n: {k: v for k, v in d.items() if k.startswith("kept_")}
                        for n, d in norm_by_filter.items()}
        if len(norm_by_filter) == 1:
            only = next(iter(norm_by_filter.values()))
            base.update({k: v for k, v in only.items() if k.startswith("kept_")})
        meta["normalization"] = base
    meta["timing"] = {"finalized_at": time.time()}
    return meta
