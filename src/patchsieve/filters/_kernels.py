"""Numpy kernels: per-region statistics of the CAREamics region grid, computed from cells.

A *slab* is an array ``(L, *spatial)`` (``L`` flattened sample dims) whose first pixel is
the origin of its first region. It holds ``n`` regions per axis; region ``g`` covers pixels
``[g*p, g*p + 2p)``. Pixels beyond the slab are outside the image: zero (CAREamics,
``border="careamics"``) or ignored (``border="valid"``). The slab is cut into *cells* of
``patch_size``; region ``g`` is the union of the ``2**ndim`` cells ``g + o``, ``o`` in
``{0, 1}**ndim``. Each statistic is reduced per cell once and the cells are combined, so no
pixel is read ``2**ndim`` times (except by the Max-coverage and float entropy kernels, which
need every pixel of every region).

All kernels take float32 data (CAREamics casts to float32) that has been validated (finite,
non-empty); they return float64 arrays ``(L, *n)``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from patchsieve.filters import _jit
from patchsieve.grid import Border

# Entropy via per-cell histograms when cells * value range stays below this many bins.
_HIST_MAX_BINS = 1 << 24


def coverage_rank(coverage: float, n: int) -> int:
    """Smallest ``k`` in ``1..n`` with ``k / n >= coverage`` (CAREamics' float comparison)."""
    k = min(max(1, math.ceil(coverage * n)), n)
    while k > 1 and (k - 1) / n >= coverage:
        k -= 1
    while k < n and k / n < coverage:
        k += 1
    return k


def padded_cells(
    slab: NDArray[np.floating], patch_size: Sequence[int], n: Sequence[int], fill: float
) -> NDArray[np.floating]:
    """Pad or crop ``slab`` (L, *spatial) to ``(n+1)*p`` per axis with ``fill``."""
    target = tuple((ni + 1) * p for ni, p in zip(n, patch_size))
    if slab.shape[1:] == target:
        return slab
    out = np.full((slab.shape[0], *target), fill, dtype=slab.dtype)
    sl = tuple(slice(0, min(s, t)) for s, t in zip(slab.shape[1:], target))
    out[(slice(None), *sl)] = slab[(slice(None), *sl)]
    return out


def _cell_view(padded: NDArray[np.generic], patch_size: Sequence[int]) -> NDArray[np.generic]:
    """View ``(L, *spatial)`` as ``(L, c0, p0, c1, p1[, c2, p2])``."""
    shape: list[int] = [padded.shape[0]]
    for s, p in zip(padded.shape[1:], patch_size):
        shape += [s // p, p]
    return padded.reshape(shape)


def combine_cells(
    cells: NDArray[np.generic], ufunc: np.ufunc = np.add, nd: int | None = None
) -> NDArray[np.generic]:
    """Combine each pair of neighbouring cells along axes ``1..nd`` of ``(L, *cells, ...)``."""
    out = cells
    for ax in range(1, (cells.ndim - 1 if nd is None else nd) + 1):
        lo = [slice(None)] * out.ndim
        hi = [slice(None)] * out.ndim
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        out = ufunc(out[tuple(lo)], out[tuple(hi)])
    return out


def valid_counts(
    slab_shape: Sequence[int], patch_size: Sequence[int], n: Sequence[int]
) -> NDArray[np.float64]:
    """In-image pixel count of each region of a slab, shape ``n``."""
    out = np.ones((), dtype=np.float64)
    for s, p, ni in zip(slab_shape, patch_size, n):
        start = np.arange(ni) * p
        out = np.multiply.outer(out, np.minimum(start + 2 * p, s) - start)
    return out


def _region_size(patch_size: Sequence[int]) -> int:
    return int(np.prod([2 * p for p in patch_size]))


def _counts(
    slab: NDArray[np.floating], patch_size: Sequence[int], n: Sequence[int], border: Border
) -> NDArray[np.float64] | float:
    if border == "careamics":
        return float(_region_size(patch_size))
    return valid_counts(slab.shape[1:], patch_size, n)


def region_mean_std(
    slab: NDArray[np.floating],
    patch_size: Sequence[int],
    n: Sequence[int],
    border: Border = "careamics",
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and (population) std of every region, from per-cell sums in float64."""
    if _jit.AVAILABLE:
        return _mean_std_jit(slab, patch_size, n, border)
    # shift by a float32-representable centre: cancellation-safe, and exact padding in "valid"
    shift = float(np.float32(slab.mean(dtype=np.float64))) if slab.size else 0.0
    fill = 0.0 if border == "careamics" else shift
    x = padded_cells(slab, patch_size, n, fill).astype(np.float64)
    x -= shift
    red_axes = tuple(range(2, 2 * len(patch_size) + 1, 2))
    cv = _cell_view(x, patch_size)
    s1 = combine_cells(cv.sum(axis=red_axes))
    np.square(x, out=x)
    s2 = combine_cells(_cell_view(x, patch_size).sum(axis=red_axes))
    cnt = _counts(slab, patch_size, n, border)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = s1 / cnt
        var = np.maximum(s2 / cnt - m * m, 0.0)
    empty = np.asarray(cnt) == 0  # "valid" regions without in-image pixels (patch 1) -> 0
    return np.where(empty, 0.0, m + shift), np.where(empty, 0.0, np.sqrt(var))


def _lift_3d(x: np.ndarray, patch_size: Sequence[int], n: Sequence[int]
             ) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """``(L, *spatial)`` as ``(L, Z, Y, X)`` for the 3D numba kernels (2D gets Z = 1), with the
    3D patch size and the ``n + 1`` cells per axis of a region block."""
    if len(patch_size) == 2:
        return x[:, None], (1, *patch_size), (1, *(ni + 1 for ni in n))
    return x, tuple(patch_size), tuple(ni + 1 for ni in n)


def _mean_std_jit(slab, patch_size, n, border: Border):
    """Per-cell count/sum/M2 (numba, deterministic per cell whatever the chunking), then
    Chan et al.'s pairwise combination of the ``2**ndim`` cells of each region."""
    small_int = slab.dtype.kind in "ui" and slab.dtype.itemsize <= 2  # exact as float32
    x = np.ascontiguousarray(slab, dtype=None if small_int else np.float32)
    nd = len(patch_size)
    x, ps3, cshape = _lift_3d(x, patch_size, n)
    shape = (x.shape[0], *cshape)
    cnt = np.empty(shape)
    s = np.empty(shape)
    m2 = np.empty(shape)
    kern = _jit.cell_moments_int if small_int else _jit.cell_moments
    kern(x, *ps3, *cshape, border == "careamics", cnt, s, m2)
    if nd == 2:
        cnt, s, m2 = cnt[:, 0], s[:, 0], m2[:, 0]
    return combine_moments(cnt, s, m2, n)


def combine_moments(
    cnt: NDArray[np.float64], s: NDArray[np.float64], m2: NDArray[np.float64], n: Sequence[int]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Region mean and std from per-cell count/sum/M2 ``(L, *(n + 1))``: Chan et al.'s
    combination of the ``2**ndim`` cells of each region (shared by the in-memory kernel and
    the filter pass's cell route, so both give the same bits)."""
    nd = len(n)
    n_r = combine_cells(cnt)
    s_r = combine_cells(s)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s_r / n_r
        cm = np.where(cnt > 0, s / np.where(cnt > 0, cnt, 1), 0.0)
        m2_r = combine_cells(m2)
        for o in np.ndindex(*(2,) * nd):
            sl = (slice(None), *(slice(oi, oi + ni) for oi, ni in zip(o, n)))
            m2_r = m2_r + cnt[sl] * (cm[sl] - mean) ** 2
        std = np.sqrt(np.maximum(m2_r / n_r, 0.0))
    empty = n_r == 0  # "valid" regions without in-image pixels (patch 1) -> 0
    return np.where(empty, 0.0, mean), np.where(empty, 0.0, std)


def region_count_nonzero(
    slab: NDArray[np.generic],
    patch_size: Sequence[int],
    n: Sequence[int],
    border: Border = "careamics",
) -> NDArray[np.float64]:
    """Fraction of non-zero pixels of every region (CAREamics' mask coverage)."""
    nz = padded_cells(slab != 0, patch_size, n, False)
    red_axes = tuple(range(2, 2 * len(patch_size) + 1, 2))
    c = _cell_view(nz, patch_size).sum(axis=red_axes, dtype=np.int64)
    return combine_cells(c).astype(np.float64) / np.maximum(_counts(slab, patch_size, n, border), 1)


def region_max(
    slab: NDArray[np.floating], patch_size: Sequence[int], n: Sequence[int]
) -> NDArray[np.float64]:
    """Plain maximum of every region (zero padding included)."""
    x = padded_cells(slab, patch_size, n, 0.0)
    red_axes = tuple(range(2, 2 * len(patch_size) + 1, 2))
    return combine_cells(_cell_view(x, patch_size).max(axis=red_axes), np.maximum).astype(
        np.float64
    )


# --------------------------------------------------------------------------- Max coverage
def _prefix_suffix_max(xv: NDArray[np.floating], a: int):
    """Running max forwards and backwards along axis ``a`` (vectorised over the others;
    ``ufunc.accumulate`` along a strided axis is much slower)."""
    pre = np.array(xv, copy=True)
    suf = np.array(xv, copy=True)
    p = xv.shape[a]
    idx = [slice(None)] * xv.ndim

    def at(i: int) -> tuple[slice | int, ...]:
        idx[a] = i
        return tuple(idx)

    for i in range(1, p):
        np.maximum(pre[at(i - 1)], pre[at(i)], out=pre[at(i)])
    for i in range(p - 2, -1, -1):
        np.maximum(suf[at(i + 1)], suf[at(i)], out=suf[at(i)])
    return pre, suf


def _clipped_max_profiles(x: NDArray[np.floating], axis: int, p: int) -> NDArray[np.floating]:
    """Per region along ``axis``: the size-``p`` max filter clipped to the ``2p`` region.

    ``x`` has ``(n+1)*p`` entries along ``axis``; the result replaces that axis by two axes
    ``(n, 2p)``. The window of local pixel ``i`` is ``[i - p//2, i - p//2 + p - 1]``
    (scipy's centring), clipped to the region; this equals scipy's ``maximum_filter`` in
    ``reflect`` mode on the region, because a reflected window only repeats values already
    inside it. Prefix/suffix maxima per cell (van Herk / Gil-Werman) give every window.
    """
    h = p // 2
    shp = x.shape
    c = shp[axis] // p
    xv = x.reshape(shp[:axis] + (c, p) + shp[axis + 1:])
    a = axis + 1  # within-cell axis
    pre, suf = _prefix_suffix_max(xv, a)

    def take(arr: NDArray[np.floating], cells: slice, idx: slice) -> NDArray[np.floating]:
        sl = [slice(None)] * arr.ndim
        sl[axis] = cells
        sl[a] = idx
        return arr[tuple(sl)]

    g, g1 = slice(0, c - 1), slice(1, c)
    parts = [take(pre, g, slice(p - h - 1, p - 1))]  # i in [0, h)
    mid_a = take(suf, g, slice(0, p - h))  # i in [h, p): S[g, i-h]
    mid_b = take(pre, g1, slice(0, p - h - 1))  # P[g+1, i-h-1] for i > h
    mid = mid_a.copy()
    mid_rest = [slice(None)] * mid.ndim
    mid_rest[a] = slice(1, None)
    np.maximum(mid[tuple(mid_rest)], mid_b, out=mid[tuple(mid_rest)])
    parts.append(mid)
    if h > 0:
        # i in [p, p+h): max(S[g, p-h+j], P[g+1, p-h+j-1]), j in [0, h)
        parts.append(
            np.maximum(take(suf, g, slice(p - h, p)), take(pre, g1, slice(p - h - 1, p - 1)))
        )
    parts.append(take(suf, g1, slice(0, p - h)))  # i in [p+h, 2p): S[g+1, j-h]
    return np.concatenate(parts, axis=a)


def region_max_coverage(
    slab: NDArray[np.floating],
    patch_size: Sequence[int],
    n: Sequence[int],
    coverage: float,
    border: Border = "careamics",
) -> NDArray[np.float64]:
    """CAREamics' Max filter value of every region.

    ``F = maximum_filter(region, size=patch_size)`` (reflect); the value is the largest
    ``v`` with ``count(F >= v) / F.size >= coverage``, i.e. the ``k``-th largest entry of
    ``F`` with ``k`` = :func:`coverage_rank`. With ``border="valid"`` the padding is
    ``-inf`` (ignored by the max) and only in-image pixels are ranked.

    With numba and zero padding, data whose values fit 16-bit keys ((u)int8/16, or
    integer-valued floats spanning < 2**16) take :func:`_max_coverage_keys` (uint16
    filtering, exact counting search); other data take :func:`_max_coverage_jit`. Both
    return bit-identical values to the numpy path.
    """
    nd = len(patch_size)
    if border == "careamics" and _jit.AVAILABLE:
        keyed = _uint16_keys(slab)
        if keyed is not None:
            return _max_coverage_keys(keyed[0], keyed[1], patch_size, n, coverage)
        return _max_coverage_jit(slab, patch_size, n, coverage)
    slab = np.asarray(slab, dtype=np.float32)
    fill = 0.0 if border == "careamics" else -np.inf
    f = padded_cells(slab, patch_size, n, fill)
    for ax, p in enumerate(patch_size):
        # axis index in f: 1 + 2*ax (previous axes already split into (n, 2p))
        f = _clipped_max_profiles(f, 1 + 2 * ax, p)
    # f: (L, n0, 2p0, n1, 2p1, ...) -> (L, n0, n1, ..., 2p0*2p1*...)
    L = f.shape[0]
    perm = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)]
    f = f.transpose(perm).reshape(L, *n, -1)
    size = f.shape[-1]
    if border == "careamics":
        k = coverage_rank(coverage, size)
        part = np.partition(f, size - k, axis=-1)[..., size - k]
        return part.astype(np.float64)
    # valid: blank the padded pixels, rank among valid ones (k differs per region)
    mask = padded_cells(np.ones((1, *slab.shape[1:]), bool), patch_size, n, False)
    for ax, p in enumerate(patch_size):
        mask = _region_windows_bool(mask, 1 + 2 * ax, p)
    mask = mask.transpose(perm).reshape(1, *n, -1)
    f = np.where(mask, f, -np.inf)
    cnt = valid_counts(slab.shape[1:], patch_size, n)
    out = np.empty((L, *n), dtype=np.float64)
    srt = np.sort(f, axis=-1)
    for idx in np.ndindex(*n):
        if cnt[idx] == 0:  # no in-image pixel (patch size 1 at the end)
            out[(slice(None), *idx)] = 0.0
            continue
        k = coverage_rank(coverage, int(cnt[idx]))
        out[(slice(None), *idx)] = srt[(slice(None), *idx, size - k)]
    return out


def _max_coverage_jit(
    slab: NDArray[np.floating], patch_size: Sequence[int], n: Sequence[int], coverage: float
) -> NDArray[np.float64]:
    """numba path of :func:`region_max_coverage` (zero padding): the leading spatial axis
    of 3D data is filtered with numpy, the last two by :func:`_jit.max_coverage_stack`."""
    k = coverage_rank(coverage, _region_size(patch_size))
    L = slab.shape[0]
    out = np.empty((L, *n), dtype=np.float64)
    p1, p2 = patch_size[-2], patch_size[-1]
    n1, n2 = n[-2], n[-1]
    f32 = np.float32
    if len(patch_size) == 2:
        x = padded_cells(np.ascontiguousarray(slab, dtype=f32), patch_size, n, 0.0)
        Yp, Xp = x.shape[1:]
        R1, m = 2 * p1, 2 * p1 * 2 * p2
        ws2 = (
            _scratch("pre", (1, Yp, Xp), f32), _scratch("suf", (1, Yp, Xp), f32),
            _scratch("hrow", (1, R1, Xp), f32), _scratch("hpre", (1, R1, Xp), f32),
            _scratch("hsuf", (1, R1, Xp), f32), _scratch("vals", (m,), f32),
            _scratch("cnts", (m,), np.int64), _scratch("bins", (m,), np.int32),
        )
        for i in range(L):
            _jit.max_coverage_stack_ws(x[i][None], p1, p2, n1, n2, k, out[i], *ws2)
        return out
    # z filter straight from the slab's dtype into the zero-padded float32 stacks; the
    # large work arrays are reused per thread (fresh pages of big arrays are costly)
    p0 = patch_size[0]
    Yp, Xp = (n1 + 1) * p1, (n2 + 1) * p2
    z = _scratch("z", (n[0], 2 * p0, Yp, Xp), f32)
    zpre = _scratch("zpre", ((n[0] + 1) * p0, Xp), f32)
    zsuf = _scratch("zsuf", ((n[0] + 1) * p0, Xp), f32)
    D, R1, m = 2 * p0, 2 * p1, 2 * p0 * 2 * p1 * 2 * p2
    ws = (
        _scratch("pre", (D, Yp, Xp), f32), _scratch("suf", (D, Yp, Xp), f32),
        _scratch("hrow", (D, R1, Xp), f32), _scratch("hpre", (D, R1, Xp), f32),
        _scratch("hsuf", (D, R1, Xp), f32), _scratch("vals", (m,), f32),
        _scratch("cnts", (m,), np.int64), _scratch("bins", (m,), np.int32),
    )
    for i in range(L):
        _jit.z_clipped_max_profiles(np.ascontiguousarray(slab[i]), p0, z, zpre, zsuf)
        for gz in range(n[0]):
            _jit.max_coverage_stack_ws(z[gz], p1, p2, n1, n2, k, out[i, gz], *ws)
    return out


def _uint16_keys(slab: NDArray[np.generic]) -> tuple[NDArray[np.uint16], int] | None:
    """``(keys, lo)`` with ``slab == keys + lo`` exactly and the zero padding at key ``-lo``,
    when every value (and 0) fits 16-bit keys: (u)int8/16 data, or integer-valued float data
    with ``max - min < 2**16`` and no ``-0.0`` (its bits would not survive). Else None."""
    if slab.size == 0:
        return None
    if slab.dtype == np.uint16:
        return slab, 0  # a view: padded or made contiguous per sample later
    kind = slab.dtype.kind
    if kind == "u" and slab.dtype.itemsize == 1:
        return slab.astype(np.uint16), 0
    if kind in "iu" and slab.dtype.itemsize <= 2:
        lo = min(int(slab.min()), 0)
        return (slab.astype(np.int32) - lo).astype(np.uint16), lo
    if kind != "f" or slab.dtype.itemsize > 4:
        return None
    head = slab.reshape(-1)[:4096]
    if not np.array_equal(head, np.rint(head)):  # most float data stops here
        return None
    lo_f, hi_f = float(slab.min()), float(slab.max())
    lo_f, hi_f = min(lo_f, 0.0), max(hi_f, 0.0)
    if hi_f - lo_f > 65535 or not is_integer_valued(slab):
        return None
    if np.any(np.signbit(slab) & (slab == 0)):
        return None
    lo = int(lo_f)
    return (slab.astype(np.int32) - lo).astype(np.uint16), lo


def _max_coverage_keys(
    keys: NDArray[np.uint16], lo: int, patch_size: Sequence[int], n: Sequence[int],
    coverage: float,
) -> NDArray[np.float64]:
    """numba path of :func:`region_max_coverage` for 16-bit keys (:func:`_uint16_keys`):
    :func:`_jit.max_coverage_keys` per sample on the padded keys, exact counting search."""
    nd = len(patch_size)
    k = coverage_rank(coverage, _region_size(patch_size))
    L = keys.shape[0]
    p1, p2 = patch_size[-2], patch_size[-1]
    n1, n2 = n[-2], n[-1]
    if nd == 3:
        p0, n0 = patch_size[0], n[0]
        Zp = (n0 + 1) * p0
    else:
        p0, n0, Zp = 0, 1, 1
    Yp, Xp = (n1 + 1) * p1, (n2 + 1) * p2
    R1, W = 2 * p1, n2 * 2 * p2
    u16 = np.uint16
    zr = (2 * p0, R1 * W) if nd == 3 else (1, 1)
    ws = (
        _scratch("k_w1", (Yp * Xp,), u16), _scratch("k_w2", (Yp * Xp,), u16),
        _scratch("k_w3", (Yp * Xp,), u16), _scratch("k_w4", (Yp * Xp,), u16),
        _scratch("k_m", (Xp,), u16), _scratch("k_xf", (Zp, Yp, W), u16),
        _scratch("k_bpre", (R1, W), u16), _scratch("k_bsuf", (R1, W), u16),
        _scratch("k_band", (Zp, R1, W), u16), _scratch("k_zpre", zr, u16),
        _scratch("k_zsuf", zr, u16), _scratch("k_zb", zr, u16),
    )
    out = np.empty((L, n0, n1, n2), dtype=np.int64)
    pad = u16(-lo)
    target = (Zp, Yp, Xp)
    for i in range(L):
        x = keys[i] if nd == 3 else keys[i][None]
        zreal = min(x.shape[0], Zp)  # the planes below are zero padding: never read
        if x.shape[1:] != target[1:]:
            xp = _scratch("k_pad", (zreal, *target[1:]), u16)
            xp.fill(pad)
            sl = tuple(slice(0, min(s, t)) for s, t in zip(x.shape, (zreal, *target[1:])))
            xp[sl] = x[sl]
            x = xp
        x = np.ascontiguousarray(x[:zreal])
        _jit.max_coverage_keys(x, zreal, pad, p0, p1, p2, n0, n1, n2, k, out[i], *ws)
    res = out.astype(np.float64)
    if lo:
        res += lo
    return res.reshape((L, *n))


_WORK = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: type) -> NDArray[np.generic]:
    """A per-thread work array (contents undefined), kept while its shape is reused."""
    bufs = _WORK.__dict__.setdefault("bufs", {})
    a = bufs.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = bufs[name] = np.empty(shape, dtype)
    return a


def _region_windows_bool(m: NDArray[np.bool_], axis: int, p: int) -> NDArray[np.bool_]:
    """Expand axis ``(n+1)*p`` into ``(n, 2p)`` region windows (a copy)."""
    shp = m.shape
    c = shp[axis] // p
    mv = m.reshape(shp[:axis] + (c, p) + shp[axis + 1:])
    lo = [slice(None)] * mv.ndim
    hi = [slice(None)] * mv.ndim
    lo[axis] = slice(0, c - 1)
    hi[axis] = slice(1, c)
    return np.concatenate([mv[tuple(lo)], mv[tuple(hi)]], axis=axis + 1)


# --------------------------------------------------------------------------- entropy
def _xlogx_table(nmax: int) -> NDArray[np.float64]:
    c = np.arange(nmax + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = c * np.log2(c)
    t[0] = 0.0
    return t


def _entropy_from_sum(sum_clogc: NDArray[np.float64], cnt: NDArray[np.float64] | float):
    c = np.maximum(cnt, 1)  # a region without pixels ("valid", patch 1) has entropy 0
    return np.log2(c) - sum_clogc / c


def is_integer_valued(x: NDArray[np.floating]) -> bool:
    """True if every value of ``x`` is an integer (checked without a full copy per call)."""
    if x.dtype.kind in "iub":
        return True
    flat = x.reshape(-1)
    step = 1 << 20
    for i in range(0, flat.size, step):
        blk = flat[i : i + step]
        if not np.array_equal(blk, np.rint(blk)):
            return False
    return True


def region_entropy(
    slab: NDArray[np.floating],
    patch_size: Sequence[int],
    n: Sequence[int],
    border: Border = "careamics",
) -> NDArray[np.float64]:
    """Shannon entropy (base 2) of every region, exactly as ``skimage.measure.shannon_entropy``.

    Integer-valued data with a small value range use per-cell histograms summed over the
    ``2**ndim`` cells; other data sort each region's values (as packed integer keys) and
    count runs.
    """
    ncells = int(np.prod([ni + 1 for ni in n])) * slab.shape[0]
    if slab.size and is_integer_valued(slab):
        lo = min(float(slab.min()), 0.0)
        hi = max(float(slab.max()), 0.0)
        nbins = int(hi - lo) + 2
        if ncells * nbins <= _HIST_MAX_BINS:
            return _entropy_hist(slab, patch_size, n, border, lo, nbins)
    return _entropy_sort(slab, patch_size, n, border)


def _entropy_hist(slab, patch_size, n, border: Border, lo: float, nbins: int):
    if _jit.AVAILABLE:
        return _entropy_hist_jit(slab, patch_size, n, border, lo, nbins)
    nd = len(patch_size)
    L = slab.shape[0]
    # bin nbins-1 collects padding in "valid" mode (then dropped)
    pad_bin = (0.0 - lo) if border == "careamics" else float(nbins - 1)
    v = (slab - np.float32(lo)).astype(np.int32) if lo != 0 else slab.astype(np.int32)
    vp = padded_cells(v, patch_size, n, int(pad_bin))
    cells_shape = tuple(ni + 1 for ni in n)
    ncell = int(np.prod(cells_shape))
    cv = _cell_view(vp, patch_size)
    perm = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)]
    cell_idx = np.arange(L * ncell, dtype=np.int64).reshape(L, *cells_shape)
    cell_idx = cell_idx.reshape(cell_idx.shape + (1,) * nd)
    keys = (cv.transpose(perm) + cell_idx * nbins).reshape(-1)
    hist = np.bincount(keys, minlength=L * ncell * nbins).reshape(L, *cells_shape, nbins)
    if border == "valid":
        hist[..., nbins - 1] = 0
    reg = combine_cells(hist, np.add, nd)  # (L, *n, nbins)
    cnt = _counts(slab, patch_size, n, border)
    table = _xlogx_table(int(np.max(cnt)))
    s = table[reg].sum(axis=-1)
    return _entropy_from_sum(s, cnt)


def _entropy_hist_jit(slab, patch_size, n, border: Border, lo: float, nbins: int):
    """numba path of :func:`_entropy_hist`: one pass of per-cell histograms straight from
    the slab's dtype, then each region's ``sum c log2 c`` over its ``2**ndim`` cells."""
    nd = len(patch_size)
    L = slab.shape[0]
    x = slab if slab.flags.c_contiguous else np.ascontiguousarray(slab)
    x, ps3, cshape = _lift_3d(x, patch_size, n)
    ilo = int(lo)
    hist = np.zeros((L, *cshape, nbins), dtype=np.int32)
    _jit.cell_histograms(x, ilo, *ps3, border == "careamics", -ilo, hist)
    cnt = _counts(slab, patch_size, n, border)
    table = _xlogx_table(int(np.max(cnt)))
    s = np.empty((L, *(1,) * (3 - nd), *n), dtype=np.float64)
    _jit.region_sum_xlogx(hist, nd, table, s)
    return _entropy_from_sum(s.reshape(L, *n), cnt)


def _float_keys(x: NDArray[np.floating]) -> NDArray[np.uint32]:
    """Equality-preserving uint32 keys of float32 values (-0.0 and 0.0 share a key)."""
    y = np.asarray(x, dtype=np.float32) + np.float32(0.0)
    return y.view(np.uint32)


def _entropy_sort(slab, patch_size, n, border: Border):
    if border == "careamics" and _jit.AVAILABLE:
        return _entropy_jit(slab, patch_size, n)
    return _entropy_sort_numpy(slab, patch_size, n, border)


def _entropy_jit(slab, patch_size, n):
    """numba path: count repeated values only (see :func:`_jit.entropy_sum_xlogx`)."""
    nd = len(patch_size)
    L = slab.shape[0]
    kp = padded_cells(_float_keys(slab), patch_size, n, np.uint32(0))
    if nd == 2:
        kp = kp[:, None]
        p0 = 1
    else:
        p0 = patch_size[0]
    cells_shape = np.array([L, *(ni + 1 for ni in n)], dtype=np.int64)
    n_shape = np.array([L, *n], dtype=np.int64)
    size = _region_size(patch_size)
    s = np.zeros(L * int(np.prod(n)), dtype=np.float64)
    _jit.entropy_sum_xlogx(
        kp, p0, patch_size[-2], patch_size[-1], cells_shape, n_shape, _xlogx_table(size), s
    )
    return _entropy_from_sum(s.reshape(L, *n), float(size))


def _entropy_sort_numpy(slab, patch_size, n, border: Border):
    nd = len(patch_size)
    L = slab.shape[0]
    keys = _float_keys(slab)
    # padding key: +0.0 (careamics) or a sentinel NaN pattern never produced by valid data
    sentinel = np.uint32(0xFFFFFFFF)
    pad = np.uint32(0) if border == "careamics" else sentinel
    kp = padded_cells(keys, patch_size, n, pad)
    for ax, p in enumerate(patch_size):
        kp = _region_windows_bool(kp, 1 + 2 * ax, p)
    perm = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)]
    kr = kp.transpose(perm).reshape(-1, _region_size(patch_size))
    kr = np.sort(kr, axis=-1)
    R, N = kr.shape
    starts = np.ones((R, N), dtype=bool)
    np.not_equal(kr[:, 1:], kr[:, :-1], out=starts[:, 1:])
    if border == "valid":
        starts &= kr != sentinel
    pos = np.flatnonzero(starts)
    row = pos // N
    ends = np.empty_like(pos)
    ends[:-1] = pos[1:]
    ends[-1] = R * N
    # a run ends at the next start or at its row's end (or where the sentinel block begins)
    row_end = (row + 1) * N
    if border == "valid":
        nvalid = (kr != sentinel).sum(axis=-1)
        row_end = row * N + nvalid[row]
    lengths = np.minimum(ends, row_end) - pos
    cnt = _counts(slab, patch_size, n, border)
    table = _xlogx_table(N)
    s = np.bincount(row, weights=table[lengths], minlength=R).reshape(L, *n)
    return _entropy_from_sum(s, cnt)
