"""Decisions, weights, per-sample totals and normalisation derived from a side-car's statistics.

Used by :class:`~patchsieve.sidecar.SidecarWriter` after a filter pass and after a threshold
change; the volume is never read here.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
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


def chunk_boxes(arr: Any, lead: int = 0) -> Iterator[tuple[slice, ...]]:
    """The chunk boxes of a zarr array (all axes but the first ``lead``), in C order.

    Examples
    --------
    >>> import zarr
    >>> a = zarr.create_array(zarr.storage.MemoryStore(), shape=(5, 4), chunks=(3, 4), dtype="u1")
    >>> list(chunk_boxes(a))
    [(slice(0, 3, None), slice(0, 4, None)), (slice(3, 5, None), slice(0, 4, None))]
    """
    shape, chunks = tuple(arr.shape)[lead:], tuple(arr.chunks)[lead:]
    for idx in itertools.product(*(range(-(-n // c)) for n, c in zip(shape, chunks))):
        yield tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, chunks, shape))


def keep_cells_window(fo: Any, samples: Sequence[slice], cells: Sequence[slice],
                      grid_shape: Sequence[int]) -> np.ndarray:
    """:func:`cover_cells` of ``~fo`` over one window of cells, reading only the regions that
    cover it (cell ``c`` is covered by regions ``c - 1`` and ``c``).

    ``fo`` is the region-level ``filter_out`` array (``(*sample_shape, *grid_shape)``, zarr or
    numpy); the result is bool ``(*samples, *cells)``.
    """
    lo = [max(int(c.start) - 1, 0) for c in cells]
    hi = [min(int(c.stop), int(g)) for c, g in zip(cells, grid_shape)]
    keep = ~np.asarray(fo[(*samples, *(slice(a, max(a, b)) for a, b in zip(lo, hi)))], bool)
    n_lead = len(samples)
    lead = keep.shape[:n_lead]
    size = [int(c.stop - c.start) for c in cells]
    # regions c0 - 1 .. c1 - 1 of the window, False outside the grid
    padded = np.zeros((*lead, *(n + 1 for n in size)), dtype=bool)
    dst = tuple(slice(a - (int(c.start) - 1), a - (int(c.start) - 1) + max(0, b - a))
                for a, b, c in zip(lo, hi, cells))
    padded[(slice(None),) * n_lead + dst] = keep
    out = np.zeros((*lead, *size), dtype=bool)
    for offs in itertools.product((0, 1), repeat=len(cells)):
        sl = tuple(slice(1 - o, 1 - o + n) for o, n in zip(offs, size))
        out |= padded[(slice(None),) * n_lead + sl]
    return out


def _window_counts(geometry: VolumeGeometry, cells: Sequence[slice]) -> np.ndarray:
    """In-image pixels of the cells of a window (:meth:`VolumeGeometry.cell_counts`, cut)."""
    out = np.ones((), dtype=np.float64)
    for n, p, c in zip(geometry.spatial_shape, geometry.patch_size, cells):
        idx = np.arange(int(c.start), int(c.stop))
        out = np.multiply.outer(out, np.minimum((idx + 1) * p, n) - idx * p).astype(np.float64)
    return out


def normalizations(group: Any, geometry: VolumeGeometry, filter_out: Mapping[str, Any],
                   meta: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Per-channel mean/std over the whole volume, and over the cells each filter keeps.

    One pass over the cell sums, chunk by chunk (``filter_out``: the filters' region-level
    decisions). Returns the whole-volume statistics (with the percentiles of ``meta``) and
    ``{filter: {kept_mean, kept_std, kept_n_pixels}}``.
    """
    s_arr, q_arr = group[CELL_SUM], group[CELL_SUMSQ]
    n_c = int(s_arr.shape[0])
    n_s = len(geometry.sample_shape)
    acc = {None: [np.zeros(n_c), np.zeros(n_c), 0.0]}
    for name in filter_out:
        acc[name] = [np.zeros(n_c), np.zeros(n_c), 0.0]
    for box in chunk_boxes(s_arr, lead=1):
        s = np.asarray(s_arr[(slice(None), *box)]).reshape(n_c, -1)
        q = np.asarray(q_arr[(slice(None), *box)]).reshape(n_c, -1)
        cnt = np.broadcast_to(_window_counts(geometry, box[n_s:]),
                              tuple(int(b.stop - b.start) for b in box)).reshape(-1)
        a = acc[None]
        a[0] += s.sum(axis=1)
        a[1] += q.sum(axis=1)
        a[2] += float(cnt.sum())
        for name, fo in filter_out.items():
            sel = keep_cells_window(fo, box[:n_s], box[n_s:], geometry.grid_shape).reshape(-1)
            a = acc[name]
            a[0] += s[:, sel].sum(axis=1)
            a[1] += q[:, sel].sum(axis=1)
            a[2] += float(cnt[sel].sum())

    def mean_std(key: str | None) -> tuple[list[float], list[float], int]:
        ss, qq, n = acc[key]
        means, stds = [], []
        for c in range(n_c):
            m = ss[c] / n if n else float("nan")
            var = max(qq[c] / n - m * m, 0.0) if n else float("nan")
            means.append(float(m))
            stds.append(float(math.sqrt(var)) if n else float("nan"))
        return means, stds, int(n)

    base: dict[str, Any] = {}
    base["mean"], base["std"], base["n_pixels"] = mean_std(None)
    base.update(meta.get("percentiles", {}))
    kept = {}
    for name in filter_out:
        k: dict[str, Any] = {}
        k["kept_mean"], k["kept_std"], k["kept_n_pixels"] = mean_std(name)
        kept[name] = k
    return base, kept


def n_patches_per_epoch(n_background: np.ndarray, filtered_patch_prob: float,
                        spatial_shape: Sequence[int], patch_size: Sequence[int]) -> np.ndarray:
    """:func:`epoch_patches` from the per-sample background counts alone (the same numbers as
    :func:`patchsieve.sampling.careamics_n_patches`; a test holds them together).

    CAREamics subtracts ``1 - p`` per background region, in region order, from
    ``prod(shape / patch)``; every background region has the same ``p``, so the order does not
    matter and the subtraction runs in pieces of a million (bit for bit the same fold, without a
    per-region array).
    """
    # no region with a selectable origin -> 0 (region_areas' rule, one axis at a time: the area
    # of the grid is the product of the per-axis sums)
    for n, p in zip(spatial_shape, patch_size):
        g = np.arange((int(n) + 1) // int(p))
        if int(np.clip(np.minimum(p, n - (g + 1) * p + 1), 0, None).sum()) == 0:
            return np.zeros(np.shape(n_background), dtype=np.int64)
    fpp = float(filtered_patch_prob)
    out = np.zeros(np.shape(n_background), dtype=np.int64)
    for idx in np.ndindex(*np.shape(n_background)):
        k = int(np.asarray(n_background)[idx]) if fpp != 1.0 else 0
        total = np.prod(np.array(spatial_shape) / np.array(patch_size))
        while k > 0:
            step = min(k, 1 << 20)
            total = np.subtract.reduce(np.concatenate([[total], np.full(step, 1.0 - fpp)]))
            k -= step
        out[idx] = max(int(np.ceil(total)), 0)
    return out


def update_decisions(writer: _Writes, geometry: VolumeGeometry,
                     configs: Mapping[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """(Re)compute decisions, weights, totals and normalisation from the stored statistics,
    one chunk of the statistics at a time."""
    from patchsieve.regions import filter_out_from_stats, required_stats

    g = writer.group
    region_shape = list(geometry.region_shape)
    n_s = len(geometry.sample_shape)
    sshape = list(geometry.sample_shape) or [1]
    axes = tuple(range(n_s, n_s + geometry.ndim))
    decided: dict[str, Any] = {}
    for name, cfg in configs.items():
        needed = required_stats(cfg, geometry.ndim)
        missing = [s for s in needed if meta["status"].get(stats_key(s)) != "complete"]
        if missing:
            raise SidecarIncompleteError(
                f"statistics {missing} for filter {name!r} are not complete in {writer.path!r}. "
                "Fix: rerun compute on the same output.")
        src = {s: g[stats_key(s)] for s in needed}
        first = src[needed[0]]
        fo_arr = writer.array(decision_key(name, "filter_out"), region_shape, first.chunks,
                              "bool", grow=False)
        w_arr = writer.array(decision_key(name, "weight"), region_shape, first.chunks,
                             "float64", grow=False)
        fpp = float(cfg.filtered_patch_prob)
        n_bg = np.zeros(geometry.sample_shape, dtype=np.int64)
        for box in chunk_boxes(first):
            values = {s: np.asarray(a[box]) for s, a in src.items()}
            fo = np.asarray(filter_out_from_stats(cfg, values), dtype=bool)
            fo_arr[box] = fo
            w_arr[box] = np.where(fo, fpp, 1.0)
            n_bg[box[:n_s]] += fo.sum(axis=axes).astype(np.int64)
        n_reg = np.full(geometry.sample_shape, geometry.n_regions, dtype=np.int64)
        totals = {
            "n_regions": n_reg,
            "n_background": n_bg,
            "weight_sum": (n_reg - n_bg).astype(np.float64) + n_bg * fpp,
            "n_patches_per_epoch": n_patches_per_epoch(n_bg, fpp, geometry.spatial_shape,
                                                       geometry.patch_size),
        }
        for key in SAMPLE_TOTALS:
            dtype = "float64" if key == "weight_sum" else "int64"
            a = writer.array(decision_key(name, key), sshape, sshape, dtype)
            a[...] = np.asarray(totals[key]).reshape(sshape)
        decided[name] = fo_arr
        meta["status"][f"decisions/{name}"] = "complete"
    if CELL_SUM in g:
        base, kept = normalizations(g, geometry, decided, meta)
        base["kept"] = kept
        if len(kept) == 1:
            base.update(next(iter(kept.values())))
        meta["normalization"] = base
    meta["timing"] = {**meta.get("timing", {}), "finalized_at": time.time()}
    return meta
