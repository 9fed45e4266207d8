"""Per-cell partial statistics (private to :mod:`patchsieve.filters`; public through
:mod:`patchsieve.filters.kernels`).

*Cells* are the patch-sized tiles at stride ``patch`` from the image origin; a region is
``2**ndim`` neighbouring cells. Mean, std and mask coverage of every region are exact functions
of per-cell sums, so the filter pass computes the cells of each storage chunk once (no halo) and
:func:`regions_from_cells` combines them, bit for bit equal to the region kernels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.errors import ConfigError
from patchsieve.filters import _jit
from patchsieve.filters._kernels import combine_cells, combine_moments, valid_counts
from patchsieve.grid import Border


def jit_available() -> bool:
    """Whether the numba kernels are in use (numba installed and importable)."""
    return bool(_jit.AVAILABLE)


#: statistics that are exact functions of per-cell partials (cells = the patch-sized tiles at
#: stride patch from the origin; a region is 2**ndim neighbouring cells)
CELL_STATS: tuple[str, ...] = ("mean", "std", "mask_coverage")


def cell_stats_supported(stat: str, dtype: Any) -> bool:
    """Whether :func:`regions_from_cells` reproduces ``stat`` bit for bit for ``dtype`` data.

    Mean/std need the numba kernels (the numpy fallback of :func:`region_stats` sums whole
    regions, not cells); mask coverage is an exact integer count either way.
    """
    if stat == "mask_coverage":
        return True
    return stat in ("mean", "std") and _jit.AVAILABLE and np.dtype(dtype).kind in "uif"


def _small_int(dtype: Any) -> bool:
    dt = np.dtype(dtype)
    return dt.kind in "ui" and dt.itemsize <= 2


def _as_l3(x: np.ndarray, n_spatial: int) -> np.ndarray:
    """``(*lead, *spatial)`` -> contiguous ``(L, Z, Y, X)`` (2D gets Z = 1)."""
    sp = x.shape[x.ndim - n_spatial:]
    return np.ascontiguousarray(x).reshape((-1, *(1,) * (3 - n_spatial), *sp))


def cell_moments(
    block: np.ndarray, patch_size: Sequence[int], border: Border = "careamics"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-cell sum and sum of squared deviations (M2) of a cell-aligned block.

    The block ``(*lead, *spatial)`` starts on a cell boundary; its last cells may be partial
    (image end). The values are those the MeanStd region kernel computes for the same cells,
    so :func:`regions_from_cells` gives :func:`region_stats`' mean/std bit for bit.

    Returns
    -------
    sum, m2 : ndarray of float64, shape ``(L, *cells)`` with ``L = prod(lead)``
    """
    ps = tuple(int(p) for p in patch_size)
    nd = len(ps)
    x = np.asarray(block)
    sp = x.shape[x.ndim - nd:]
    cells = tuple(-(-n // p) for n, p in zip(sp, ps))
    if _small_int(x.dtype):
        s, q = cell_int_sums(x, ps)
        return s.astype(np.float64), moments_from_sums(s, q, ps, sp, border)
    x4 = _as_l3(x.astype(np.float32, copy=False), nd)
    ps3 = (1,) * (3 - nd) + ps
    c3 = (1,) * (3 - nd) + cells
    shape = (x4.shape[0], *c3)
    cnt, s, m2 = np.empty(shape), np.empty(shape), np.empty(shape)
    _jit.cell_moments(x4, *ps3, *c3, border == "careamics", cnt, s, m2)
    out = (x4.shape[0], *cells)
    return s.reshape(out), m2.reshape(out)


def cell_int_sums(block: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Exact int64 per-cell sum and sum of squares of a small-integer (or bool) block.

    Returns two int64 arrays ``(L, *cells)``.
    """
    ps = tuple(int(p) for p in patch_size)
    nd = len(ps)
    x = np.asarray(block)
    if x.dtype.kind == "b":
        x = x.view(np.uint8)
    sp = x.shape[x.ndim - nd:]
    cells = tuple(-(-n // p) for n, p in zip(sp, ps))
    if _jit.AVAILABLE:
        x4 = _as_l3(x, nd)
        c3 = (x4.shape[0], *(1,) * (3 - nd), *cells)
        s = np.zeros(c3, dtype=np.int64)
        q = np.zeros(c3, dtype=np.int64)
        _jit.cell_int_sums(x4, *((1,) * (3 - nd)), *ps, s, q)
        return s.reshape((-1, *cells)), q.reshape((-1, *cells))
    xl = x.reshape((-1, *sp)).astype(np.int64)
    pad = [(0, 0)] + [(0, c * p - n) for c, p, n in zip(cells, ps, sp)]
    xl = np.pad(xl, pad)
    shape = [xl.shape[0]]
    for c, p in zip(cells, ps):
        shape += [c, p]
    v = xl.reshape(shape)
    axes = tuple(2 + 2 * i for i in range(nd))
    return v.sum(axis=axes), (v * v).sum(axis=axes)


def _cell_counts_in(spatial: Sequence[int], patch_size: Sequence[int]) -> NDArray[np.int64]:
    """In-block pixel count of each cell of a block of size ``spatial``."""
    out = np.ones((), dtype=np.int64)
    for n, p in zip(spatial, patch_size):
        c = -(-n // p)
        a = np.minimum(np.arange(1, c + 1) * p, n) - np.arange(c) * p
        out = np.multiply.outer(out, a)
    return out


def moments_from_sums(
    s: np.ndarray, q: np.ndarray, patch_size: Sequence[int], spatial: Sequence[int],
    border: Border = "careamics",
) -> NDArray[np.float64]:
    """M2 per cell from exact int64 sums, with the integer MeanStd kernel's arithmetic.

    ``M2 = (q - (s // n) * s) - (s - (s // n) * n) * s / n`` with ``n`` the cell's pixel count
    (the full cell size for ``border="careamics"``, zero padding included).
    """
    s = np.asarray(s, dtype=np.int64)
    q = np.asarray(q, dtype=np.int64)
    full = int(np.prod(patch_size))
    if border == "careamics":
        cnt = np.full(s.shape, full, dtype=np.int64)
    else:
        cnt = np.broadcast_to(_cell_counts_in(spatial, patch_size), s.shape)
    safe = np.where(cnt > 0, cnt, 1)
    qd = s // safe
    r = s - qd * safe
    with np.errstate(invalid="ignore"):
        m2 = (q - qd * s).astype(np.float64) - r.astype(np.float64) * s.astype(np.float64) / safe
    return np.where(cnt > 0, np.maximum(m2, 0.0), 0.0)


def _pad_cells(a: np.ndarray, n: Sequence[int], fill: float) -> np.ndarray:
    """Crop or pad ``(L, *cells)`` to ``(L, *(n + 1))`` with ``fill``."""
    want = tuple(int(g) + 1 for g in n)
    if a.shape[1:] == want:
        return a
    out = np.full((a.shape[0], *want), fill, dtype=a.dtype)
    sl = tuple(slice(0, min(s, w)) for s, w in zip(a.shape[1:], want))
    out[(slice(None), *sl)] = a[(slice(None), *sl)]
    return out


def regions_from_cells(
    stat: str,
    cells: Mapping[str, np.ndarray],
    *,
    patch_size: Sequence[int],
    spatial_shape: Sequence[int],
    grid_shape: Sequence[int],
    border: Border = "careamics",
) -> NDArray[np.float64]:
    """Region values of a :data:`CELL_STATS` statistic from whole-image cell partials.

    Parameters
    ----------
    stat : {"mean", "std", "mask_coverage"}
    cells : mapping
        ``"sum"`` and ``"m2"`` (mean/std, from :func:`cell_moments` or
        :func:`moments_from_sums`) or ``"nonzero"`` (mask coverage, int counts), each
        ``(L, *cells)`` over the whole image's cell grid (``ceil(size / patch)`` per axis).
    patch_size, spatial_shape, grid_shape : sequence of int
    border : {"careamics", "valid"}

    Returns
    -------
    ndarray of float64, ``(L, *grid_shape)``: equal, bit for bit, to :func:`region_stats`.
    """
    ps = tuple(int(p) for p in patch_size)
    n = tuple(int(g) for g in grid_shape)
    if stat == "mask_coverage":
        c = _pad_cells(np.asarray(cells["nonzero"], dtype=np.int64), n, 0)
        if border == "careamics":
            cnt: Any = float(int(np.prod([2 * p for p in ps])))
        else:
            cnt = valid_counts(spatial_shape, ps, n)
        return combine_cells(c).astype(np.float64) / np.maximum(cnt, 1)
    if stat not in ("mean", "std"):
        raise ConfigError(f"stat {stat!r} is not a cell statistic; choose from {CELL_STATS}.")
    full = float(np.prod(ps))
    if border == "careamics":
        counts = np.full(tuple(int(g) + 1 for g in n), full)
    else:
        counts = _pad_cells(_cell_counts_in(spatial_shape, ps)[None].astype(np.float64), n, 0.0)[0]
    s = _pad_cells(np.asarray(cells["sum"], dtype=np.float64), n, 0.0)
    m2 = _pad_cells(np.asarray(cells["m2"], dtype=np.float64), n, 0.0)
    cnt_a = np.ascontiguousarray(np.broadcast_to(counts, s.shape))
    mean, std = combine_moments(cnt_a, s, m2, n)  # the in-memory kernel's own combination
    return mean if stat == "mean" else std
