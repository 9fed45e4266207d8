"""numba kernels for the hot region statistics (optional: numpy fallbacks in ``_kernels``).

Compiled lazily on first use with ``cache=True`` (the cache lives next to this file, or
in ``NUMBA_CACHE_DIR``). :data:`AVAILABLE` is False when numba cannot be imported; set
``PATCHSIEVE_DISABLE_JIT=1`` to force the numpy kernels.
"""

from __future__ import annotations

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

try:  # pragma: no cover - exercised through AVAILABLE
    if os.environ.get("PATCHSIEVE_DISABLE_JIT", "") not in ("", "0"):
        raise ImportError("disabled by PATCHSIEVE_DISABLE_JIT")
    from numba import njit

    AVAILABLE = True
except ImportError as _err:  # pragma: no cover
    logger.debug("numba unavailable (%s); using numpy kernels", _err)
    AVAILABLE = False

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        def deco(f):
            return f

        return deco


_NBINS = 1024


@njit(cache=True, nogil=True)
def _cell_prefix_suffix_rows(g, p, pre, suf):  # pragma: no cover - compiled
    """Prefix/suffix maxima along axis 1 of ``g`` (D, Y, X) within cells of ``p`` rows."""
    D, Y, X = g.shape
    for d in range(D):
        for c0 in range(0, Y, p):
            for x in range(X):
                pre[d, c0, x] = g[d, c0, x]
            for i in range(c0 + 1, c0 + p):
                for x in range(X):
                    a = pre[d, i - 1, x]
                    b = g[d, i, x]
                    pre[d, i, x] = a if a > b else b
            last = c0 + p - 1
            for x in range(X):
                suf[d, last, x] = g[d, last, x]
            for i in range(last - 1, c0 - 1, -1):
                for x in range(X):
                    a = suf[d, i + 1, x]
                    b = g[d, i, x]
                    suf[d, i, x] = a if a > b else b


@njit(cache=True, nogil=True)
def _select_kth_largest_weighted(vals, cnts, m, k, lo, hi, bins):  # pragma: no cover
    """Exact k-th largest of the multiset {vals[i] x cnts[i]} (i < m), min/max lo/hi.

    One 1024-bin weighted histogram finds the bin holding the k-th largest (the bin is a
    non-decreasing function of the value); the few items in that bin are sorted."""
    if lo == hi:
        return hi
    counts = np.zeros(_NBINS, np.int64)
    scale = (_NBINS - 1) / (np.float64(hi) - np.float64(lo))
    for i in range(m):
        b = np.int32((np.float64(vals[i]) - lo) * scale)
        b = min(max(b, 0), _NBINS - 1)
        bins[i] = b
        counts[b] += cnts[i]
    cum = 0
    b = _NBINS - 1
    while b > 0 and cum + counts[b] < k:
        cum += counts[b]
        b -= 1
    r = k - cum
    nb = 0
    first = -1
    same = True
    for i in range(m):
        if bins[i] == b:
            nb += 1
            if first < 0:
                first = i
            elif vals[i] != vals[first]:
                same = False
    if same:  # one value in the bin (integer data): it is the k-th largest
        return vals[first]
    sel_v = np.empty(nb, vals.dtype)
    sel_c = np.empty(nb, np.int64)
    j = 0
    for i in range(m):
        if bins[i] == b:
            sel_v[j] = vals[i]
            sel_c[j] = cnts[i]
            j += 1
    order = np.argsort(sel_v)
    acc = 0
    for q in range(nb - 1, -1, -1):
        acc += sel_c[order[q]]
        if acc >= r:
            return sel_v[order[q]]
    return sel_v[order[0]]


@njit(cache=True, nogil=True)
def _profile_rle(hp, hs, ca, cb, p, h, vals, cnts, t, lo):  # pragma: no cover - compiled
    """Run-length encode one region row's clipped max-filter profile (length 2p) straight
    from the x prefix/suffix maxima ``hp``/``hs`` of the row (cells start at ``ca``, ``cb``).

    The profile is ``hp[ca+p-h-1+j]`` (j < h), then ``max(hs[ca+u], hp[cb+u-1])`` for
    ``u`` in ``[0, p)`` (``u = 0``: ``hs[ca]``), then ``hs[cb+j]`` (j < p-h). Runs of equal
    consecutive values are appended to (vals, cnts) at ``t``; returns ``(t, lo)`` with
    ``lo`` the running minimum.
    """
    cur = hp[ca + p - h - 1] if h > 0 else hs[ca]
    c = 0
    for j in range(h):
        v = hp[ca + p - h - 1 + j]
        if v == cur:
            c += 1
        else:
            vals[t] = cur
            cnts[t] = c
            t += 1
            lo = cur if cur < lo else lo
            cur = v
            c = 1
    for u in range(p):
        v = hs[ca + u]
        if u > 0:
            q = hp[cb + u - 1]
            v = v if v > q else q
        if v == cur:
            c += 1
        else:
            vals[t] = cur
            cnts[t] = c
            t += 1
            lo = cur if cur < lo else lo
            cur = v
            c = 1
    for j in range(p - h):
        v = hs[cb + j]
        if v == cur:
            c += 1
        else:
            vals[t] = cur
            cnts[t] = c
            t += 1
            lo = cur if cur < lo else lo
            cur = v
            c = 1
    vals[t] = cur
    cnts[t] = c
    lo = cur if cur < lo else lo
    return t + 1, lo


@njit(cache=True, nogil=True)
def _vmax(a, b, out):  # pragma: no cover - compiled
    for x in range(out.shape[0]):
        u = a[x]
        v = b[x]
        out[x] = u if u > v else v


@njit(cache=True, nogil=True)
def _cell_pre_suf(src, pre, suf):  # pragma: no cover - compiled
    """Running max of ``src`` forwards into ``pre`` and backwards into ``suf`` (two
    independent chains in one loop; slices from 0 keep numba's index checks out)."""
    n = src.shape[0]
    a = src[0]
    b = src[n - 1]
    for t in range(n):
        v = src[t]
        w = src[n - 1 - t]
        a = a if a > v else v
        b = b if b > w else w
        pre[t] = a
        suf[n - 1 - t] = b


@njit(cache=True, nogil=True)
def max_coverage_stack(g, p1, p2, n1, n2, k, out):  # pragma: no cover - compiled
    """:func:`max_coverage_stack_ws` with freshly allocated work arrays."""
    D, Y, X = g.shape
    m = D * 2 * p1 * 2 * p2
    max_coverage_stack_ws(
        g, p1, p2, n1, n2, k, out, np.empty_like(g), np.empty_like(g),
        np.empty((D, 2 * p1, X), g.dtype), np.empty((D, 2 * p1, X), g.dtype),
        np.empty((D, 2 * p1, X), g.dtype), np.empty(m, g.dtype), np.empty(m, np.int64),
        np.empty(m, np.int32),
    )


@njit(cache=True, nogil=True)
def max_coverage_stack_ws(g, p1, p2, n1, n2, k, out, pre, suf, hrow, hpre, hsuf, vals, cnts,
                          bins):  # pragma: no cover - compiled
    """Max-coverage value of every region of a stack ``g`` (D, (n1+1)*p1, (n2+1)*p2).

    ``D`` is the (already filtered) extent of the regions along a leading axis (1 in 2D).
    Region ``(a, b)`` covers rows ``[a*p1, a*p1 + 2p1)`` and columns ``[b*p2, b*p2 + 2p2)``;
    the size-``p`` max filter is clipped to the region (= scipy's reflect mode there) and
    ``out[a, b]`` receives the ``k``-th largest filtered value. The work arrays: ``pre``,
    ``suf`` like ``g``; ``hrow``, ``hpre``, ``hsuf`` (D, 2p1, X) of g's dtype; ``vals``,
    ``cnts`` (int64), ``bins`` (int32) of ``D*2p1*2p2`` entries.
    """
    D, Y, X = g.shape
    h1 = p1 // 2
    h2 = p2 // 2
    R1 = 2 * p1
    _cell_prefix_suffix_rows(g, p1, pre, suf)
    for a in range(n1):
        r0 = a * p1
        r1 = r0 + p1
        for d in range(D):
            # y pass: the clipped column max of each row of region row a
            for i in range(h1):
                hrow[d, i, :] = pre[d, r0 + i + p1 - h1 - 1, :]
            hrow[d, h1, :] = suf[d, r0, :]
            for i in range(h1 + 1, p1):
                _vmax(suf[d, r0 + i - h1], pre[d, r1 + i - h1 - 1], hrow[d, i])
            for j in range(h1):
                _vmax(suf[d, r0 + p1 - h1 + j], pre[d, r1 + p1 - h1 + j - 1], hrow[d, p1 + j])
            for j in range(p1 - h1):
                hrow[d, p1 + h1 + j, :] = suf[d, r1 + j, :]
            # x prefix/suffix within cells of p2 columns
            for i in range(R1):
                hr = hrow[d, i]
                hp = hpre[d, i]
                hs = hsuf[d, i]
                for c0 in range(0, X, p2):
                    _cell_pre_suf(hr[c0:c0 + p2], hp[c0:c0 + p2], hs[c0:c0 + p2])
        for b in range(n2):
            c0 = b * p2
            c1 = c0 + p2
            t = 0
            lo = np.float32(np.inf)
            hi = np.float32(-np.inf)
            for d in range(D):
                for i in range(R1):
                    hp = hpre[d, i]
                    hs = hsuf[d, i]
                    # the profile's max is the max of its two cells
                    m = hs[c0] if hs[c0] > hp[c1 + p2 - 1] else hp[c1 + p2 - 1]
                    hi = m if m > hi else hi
                    # the filtered values come in long plateaus: keep (value, run) pairs
                    t, lo = _profile_rle(hp, hs, c0, c1, p2, h2, vals, cnts, t, lo)
            out[a, b] = _select_kth_largest_weighted(vals, cnts, t, k, lo, hi, bins)


@njit(cache=True, nogil=True)
def _radix_sort_pairs(keys, vals):  # pragma: no cover - compiled
    """Stable LSD radix sort of uint32 ``keys`` carrying int32 ``vals`` (3 x 11 bits)."""
    n = keys.shape[0]
    k2 = np.empty_like(keys)
    v2 = np.empty_like(vals)
    src_k, src_v, dst_k, dst_v = keys, vals, k2, v2
    for shift in (0, 11, 22):
        counts = np.zeros(2049, np.int64)
        for i in range(n):
            counts[((src_k[i] >> shift) & 2047) + 1] += 1
        for b in range(1, 2049):
            counts[b] += counts[b - 1]
        for i in range(n):
            b = (src_k[i] >> shift) & 2047
            j = counts[b]
            dst_k[j] = src_k[i]
            dst_v[j] = src_v[i]
            counts[b] = j + 1
        src_k, src_v, dst_k, dst_v = dst_k, dst_v, src_k, src_v
    return src_k, src_v


_HASH_BITS = 22


@njit(cache=True, nogil=True)
def _repeated_keys(keys, p0, p1, p2, C0, C1, C2):  # pragma: no cover - compiled
    """Keys (and their cell index) that may occur more than once: a saturating hash count
    drops every key seen once in the whole slab (no false negatives)."""
    L, Z, Y, X = keys.shape
    seen = np.zeros(1 << _HASH_BITS, np.uint8)
    mult = np.uint64(2654435761)
    sh = np.uint64(32 - _HASH_BITS)
    mask32 = np.uint64(0xFFFFFFFF)
    for li in range(L):
        for z in range(Z):
            for y in range(Y):
                for x in range(X):
                    h = ((np.uint64(keys[li, z, y, x]) * mult) & mask32) >> sh
                    if seen[h] < 2:
                        seen[h] += 1
    ck = np.empty(L * Z * Y * X, np.uint32)
    cc = np.empty(L * Z * Y * X, np.int32)
    m = 0
    for li in range(L):
        for z in range(Z):
            for y in range(Y):
                base = ((li * C0 + z // p0) * C1 + y // p1) * C2
                for x in range(X):
                    k = keys[li, z, y, x]
                    h = ((np.uint64(k) * mult) & mask32) >> sh
                    if seen[h] >= 2:
                        ck[m] = k
                        cc[m] = base + x // p2
                        m += 1
    return ck[:m], cc[:m]


@njit(cache=True, nogil=True)
def _add_run(sc, s, e, nd, cstr, rstr, n_shape, rc, touched, coord, table, out):  # pragma: no cover
    """Spread one run of equal keys (cells ``sc[s:e]``) onto its regions' ``sum c log c``."""
    nt = 0
    i = s
    while i < e:
        c = sc[i]
        j = i + 1
        while j < e and sc[j] == c:
            j += 1
        cnt = j - i
        rem = c
        for a in range(nd + 1):
            coord[a] = rem // cstr[a]
            rem = rem % cstr[a]
        for o in range(1 << nd):
            r = coord[0] * rstr[0]
            ok = True
            for a in range(nd):
                g = coord[a + 1] - ((o >> (nd - 1 - a)) & 1)
                if g < 0 or g >= n_shape[a + 1]:
                    ok = False
                    break
                r += g * rstr[a + 1]
            if ok:
                if rc[r] == 0:
                    touched[nt] = r
                    nt += 1
                rc[r] += cnt
        i = j
    for q in range(nt):
        r = touched[q]
        out[r] += table[rc[r]]
        rc[r] = 0


@njit(cache=True, nogil=True)
def entropy_sum_xlogx(keys, p0, p1, p2, cells_shape, n_shape, table, out):  # pragma: no cover
    """Per region: sum over distinct values of ``c * log2(c)`` (``c`` = count in region).

    ``keys`` (L, Z, Y, X) holds uint32 value keys of the zero-padded slab (2D data: Z = 1,
    ``p0`` = 1, ``cells_shape`` = (L, C1, C2)); ``cells_shape`` = (L, C0, C1[, C2]) and
    ``n_shape`` = (L, n0, n1[, n2]), ``C = n + 1``. A value seen once in a region adds 0,
    so keys seen once in the whole slab are dropped first; the rest are radix-sorted and
    every run of equal keys is spread over the ``2**ndim`` regions containing each of its
    cells. ``out`` (flat, regions in C order) is added to.
    """
    nd = len(cells_shape) - 1
    C0 = cells_shape[1] if nd == 3 else 1
    ck, cc = _repeated_keys(keys, p0, p1, p2, C0, cells_shape[nd - 1], cells_shape[nd])
    sk, sc = _radix_sort_pairs(ck, cc)
    m = sk.shape[0]
    rc = np.zeros(out.shape[0], np.int64)
    touched = np.empty(out.shape[0], np.int64)
    cstr = np.ones(nd + 1, np.int64)
    rstr = np.ones(nd + 1, np.int64)
    for a in range(nd - 1, -1, -1):
        cstr[a] = cstr[a + 1] * cells_shape[a + 1]
        rstr[a] = rstr[a + 1] * n_shape[a + 1]
    coord = np.zeros(nd + 1, np.int64)
    s = 0
    while s < m:
        e = s + 1
        while e < m and sk[e] == sk[s]:
            e += 1
        if e - s >= 2:
            _add_run(sc, s, e, nd, cstr, rstr, n_shape, rc, touched, coord, table, out)
        s = e


@njit(cache=True, nogil=True)
def cell_moments(x, p0, p1, p2, C0, C1, C2, careamics, n_out, s_out, m2_out):  # pragma: no cover
    """Per cell of ``x`` (L, Z, Y, X) float32: pixel count, sum and sum of squared
    deviations from the cell mean (two passes in float64, cell data stays in cache).

    Cells of ``p0*p1*p2`` pixels tile ``(C0*p0, C1*p1, C2*p2)``; pixels beyond ``x`` are
    zero padding (``careamics`` True: counted as zeros) or ignored (False).
    """
    L, Z, Y, X = x.shape
    full = p0 * p1 * p2
    for li in range(L):
        for a in range(C0):
            z0 = a * p0
            z1 = min(z0 + p0, Z)
            for b in range(C1):
                y0 = b * p1
                y1 = min(y0 + p1, Y)
                for c in range(C2):
                    x0 = c * p2
                    x1 = min(x0 + p2, X)
                    n = max(z1 - z0, 0) * max(y1 - y0, 0) * max(x1 - x0, 0)
                    s = 0.0
                    for z in range(z0, z1):
                        for y in range(y0, y1):
                            for xx in range(x0, x1):
                                s += x[li, z, y, xx]
                    cnt = full if careamics else n
                    m = s / cnt if cnt > 0 else 0.0
                    m2 = 0.0
                    for z in range(z0, z1):
                        for y in range(y0, y1):
                            for xx in range(x0, x1):
                                d = x[li, z, y, xx] - m
                                m2 += d * d
                    if careamics:
                        m2 += (full - n) * m * m
                    n_out[li, a, b, c] = cnt
                    s_out[li, a, b, c] = s
                    m2_out[li, a, b, c] = m2


@njit(cache=True, nogil=True)
def cell_histograms(x, lo, p0, p1, p2, careamics, pad_bin, hist):  # pragma: no cover
    """Per-cell value histograms of integer-valued ``x`` (L, Z, Y, X), any numeric dtype.

    ``hist`` (L, C0, C1, C2, nbins) int32, zeroed by the caller, receives the count of value
    ``lo + b`` in bin ``b`` for every cell of ``p0*p1*p2`` pixels. Pixels of a cell beyond
    ``x`` are zero padding: with ``careamics`` they are counted in ``pad_bin``.
    """
    L, Z, Y, X = x.shape
    _, C0, C1, C2, _ = hist.shape
    cx = np.empty(X, np.int64)
    for xx in range(X):
        cx[xx] = xx // p2
    for li in range(L):
        for z in range(Z):
            a = z // p0
            if a >= C0:
                break
            for y in range(Y):
                b = y // p1
                if b >= C1:
                    break
                row = x[li, z, y]
                h = hist[li, a, b]
                for xx in range(min(X, C2 * p2)):
                    h[cx[xx], np.int64(row[xx]) - lo] += 1
    if careamics:
        full = p0 * p1 * p2
        for li in range(L):
            for a in range(C0):
                nz = max(min(Z - a * p0, p0), 0)
                for b in range(C1):
                    ny = max(min(Y - b * p1, p1), 0)
                    for c in range(C2):
                        nx = max(min(X - c * p2, p2), 0)
                        miss = full - nz * ny * nx
                        if miss > 0:
                            hist[li, a, b, c, pad_bin] += miss


@njit(cache=True, nogil=True)
def region_sum_xlogx(hist, nd, table, out):  # pragma: no cover - compiled
    """Per region: sum over bins of ``table[count]``, counts summed over the region's
    ``2**nd`` cells of ``hist`` (L, C0, C1, C2, nbins) (2D: C0 = 1, ``nd`` = 2).
    ``out`` is (L, n0, n1, n2) with ``n = C - 1`` on the last ``nd`` cell axes."""
    L, C0, C1, C2, nb = hist.shape
    o0 = 1 if nd == 3 else 0
    for li in range(L):
        for a in range(out.shape[1]):
            for b in range(out.shape[2]):
                for c in range(out.shape[3]):
                    s = 0.0
                    for v in range(nb):
                        cnt = hist[li, a, b, c, v] + hist[li, a, b, c + 1, v] \
                            + hist[li, a, b + 1, c, v] + hist[li, a, b + 1, c + 1, v]
                        if o0:
                            cnt += hist[li, a + 1, b, c, v] + hist[li, a + 1, b, c + 1, v] \
                                + hist[li, a + 1, b + 1, c, v] + hist[li, a + 1, b + 1, c + 1, v]
                        if cnt > 1:
                            s += table[cnt]
                    out[li, a, b, c] = s


@njit(cache=True, nogil=True)
def cell_int_sums(x, p0, p1, p2, s_out, q_out):  # pragma: no cover - compiled
    """Exact per-cell sum and sum of squares (int64) of small-integer ``x`` (L, Z, Y, X).

    Cells of ``p0*p1*p2`` pixels tile ``x`` from its origin (the last ones may be partial);
    ``s_out``/``q_out`` (L, C0, C1, C2) int64 are zeroed by the caller.
    """
    L, Z, Y, X = x.shape
    C2 = s_out.shape[3]
    for li in range(L):
        for z in range(Z):
            a = z // p0
            for y in range(Y):
                b = y // p1
                row = x[li, z, y]
                for c in range(C2):
                    x0 = c * p2
                    x1 = min(x0 + p2, X)
                    s = np.int64(0)
                    q = np.int64(0)
                    for xx in range(x0, x1):
                        v = np.int64(row[xx])
                        s += v
                        q += v * v
                    s_out[li, a, b, c] += s
                    q_out[li, a, b, c] += q


@njit(cache=True, nogil=True)
def z_clipped_max_profiles(x, p, out, pre, suf):  # pragma: no cover - compiled
    """Size-``p`` max filter along axis 0 of ``x`` (Z, Y, X), clipped to each region.

    ``out`` (n, 2p, Yp, Xp) float32: region ``g`` covers rows ``[g*p, g*p + 2p)`` of ``x``
    zero-padded (or cropped) to ``((n+1)*p, Yp, Xp)``. The window of local row ``i`` is
    ``[i - p//2, i - p//2 + p - 1]`` clipped to the region (scipy's reflect mode there);
    prefix/suffix maxima per cell of ``p`` rows (van Herk / Gil-Werman) give every window.
    ``pre``/``suf`` are float32 work arrays ``((n+1)*p, Xp)`` (one y row at a time).
    """
    n, R, Yp, Xp = out.shape
    Z, Y, X = x.shape
    h = p // 2
    Zp = (n + 1) * p
    m = min(X, Xp)
    for y in range(Yp):
        for z in range(Zp):
            r = pre[z]
            if z < Z and y < Y:
                for xx in range(m):
                    r[xx] = np.float32(x[z, y, xx])
                for xx in range(m, Xp):
                    r[xx] = 0.0
            else:
                r[:] = 0.0
        suf[:] = pre
        for c0 in range(0, Zp, p):
            for z in range(c0 + 1, c0 + p):
                _vmax(pre[z - 1], pre[z], pre[z])
            for z in range(c0 + p - 2, c0 - 1, -1):
                _vmax(suf[z + 1], suf[z], suf[z])
        for g in range(n):
            A = g * p
            B = A + p
            for i in range(h):
                out[g, i, y] = pre[A + p - h - 1 + i]
            out[g, h, y] = suf[A]
            for i in range(h + 1, p + h):
                _vmax(suf[A + i - h], pre[B + i - h - 1], out[g, i, y])
            for i in range(p + h, 2 * p):
                out[g, i, y] = suf[B + i - h - p]


@njit(cache=True, nogil=True)
def cell_moments_int(x, p0, p1, p2, C0, C1, C2, careamics, n_out, s_out, m2_out):  # pragma: no cover
    """:func:`cell_moments` for small-integer ``x`` (|value| < 2**16): one pass of exact
    int64 sums of values and squares per cell; ``M2 = sumsq - sum**2 / count`` with its
    integer part ``sumsq - (sum // count) * sum`` exact."""
    L, Z, Y, X = x.shape
    full = p0 * p1 * p2
    for li in range(L):
        for a in range(C0):
            z0 = a * p0
            z1 = min(z0 + p0, Z)
            for b in range(C1):
                y0 = b * p1
                y1 = min(y0 + p1, Y)
                for c in range(C2):
                    x0 = c * p2
                    x1 = min(x0 + p2, X)
                    n = max(z1 - z0, 0) * max(y1 - y0, 0) * max(x1 - x0, 0)
                    s = np.int64(0)
                    q = np.int64(0)
                    for z in range(z0, z1):
                        for y in range(y0, y1):
                            row = x[li, z, y]
                            for xx in range(x0, x1):
                                v = np.int64(row[xx])
                                s += v
                                q += v * v
                    cnt = full if careamics else n
                    if cnt > 0:
                        qd = s // cnt
                        r = s - qd * cnt
                        m2 = np.float64(q - qd * s) - np.float64(r) * np.float64(s) / cnt
                        m2 = max(m2, 0.0)
                    else:
                        m2 = 0.0
                    n_out[li, a, b, c] = cnt
                    s_out[li, a, b, c] = s
                    m2_out[li, a, b, c] = m2


# --------------------------------------------------------------------------- Max coverage, keys
_U = np.uint64  # unsigned indices: no negative-index wraparound code, loops vectorise


@njit(cache=True, nogil=True)
def _vmax16(a, b, out):  # pragma: no cover - compiled
    for x in range(out.shape[0]):
        u = a[x]
        v = b[x]
        out[x] = u if u > v else v


@njit(cache=True, nogil=True)
def _shift_max(src, dst, rows, Xp, s, m, fwd):  # pragma: no cover - compiled
    """``dst[r, x] = max(src[r, x], src[r, x - s] & m[x])`` (``x + s`` if not ``fwd``) on
    flat rows of ``Xp``; entries without a partner keep ``src``. ``m`` (0 or 0xFFFF) cuts
    the rows into cells (keys are >= 0, so a masked partner never wins). Unsigned indices
    spare numba's negative-index checks, so the loops vectorise."""
    Xu = _U(Xp)
    su = _U(s)
    for r in range(rows):
        base = _U(r) * Xu
        if fwd:
            for x in range(s):
                i = base + _U(x)
                dst[i] = src[i]
            for x in range(Xp - s):
                i = base + su + _U(x)
                u = src[i]
                v = src[i - su] & m[su + _U(x)]
                dst[i] = u if u > v else v
        else:
            for x in range(Xp - s, Xp):
                i = base + _U(x)
                dst[i] = src[i]
            for x in range(Xp - s):
                i = base + _U(x)
                u = src[i]
                v = src[i + su] & m[_U(x)]
                dst[i] = u if u > v else v


@njit(cache=True, nogil=True)
def _cell_scan(src, rows, Xp, p, fwd, t1, t2, m):  # pragma: no cover - compiled
    """Running max within cells of ``p`` along flat rows of ``Xp`` (forwards: prefix,
    else suffix) by ``ceil(log2 p)`` vectorised shift-max steps; returns ``src``, ``t1`` or
    ``t2`` (the one holding the result)."""
    s = 1
    cur = src
    dst = t1
    while s < p:
        for x in range(Xp):
            j = x % p
            ok = (j >= s) if fwd else (j < p - s)
            m[x] = np.uint16(0xFFFF) if ok else np.uint16(0)
        _shift_max(cur, dst, rows, Xp, s, m, fwd)
        cur = dst
        dst = t2 if dst is t1 else t1
        s *= 2
    return cur


@njit(cache=True, nogil=True)
def _x_clipped_planes(keys, zreal, pad, p2, n2, w1, w2, w3, w4, m, xf):  # pragma: no cover
    """Size-``p2`` max filter along x clipped to every region column, for every row.

    ``keys`` (>= zreal, Yp, (n2+1)*p2) uint16 (padded in y and x); ``xf`` (Zp, Yp, n2*2p2)
    receives the
    ``2p2`` filtered values of region column ``b`` of each row at ``[b*2p2, (b+1)*2p2)``.
    The window of local column ``i`` is ``[i - p2//2, i - p2//2 + p2 - 1]`` clipped to the
    region, from prefix/suffix maxima per cell (van Herk / Gil-Werman). ``w1..w4``: work
    planes of ``Yp*Xp``; ``m``: a work row of ``Xp``. Planes ``z >= zreal`` are all
    ``pad`` (zero padding below the image) and stay so.
    """
    Y = keys.shape[1]
    Xp = keys.shape[2]
    h = p2 // 2
    R = 2 * p2
    W = n2 * R
    for z in range(xf.shape[0]):
        if z >= zreal:
            xf[z] = pad
            continue
        A = keys[z].reshape(Y * Xp)
        pre = _cell_scan(A, Y, Xp, p2, True, w1, w2, m)
        suf = _cell_scan(A, Y, Xp, p2, False, w3, w4, m)
        out = xf[z].reshape(Y * W)
        hu = _U(h)
        pu = _U(p2)
        for y in range(Y):
            for b in range(n2):
                c0 = _U(y * Xp + b * p2)
                c1 = c0 + pu
                o = _U(y * W + b * R)
                for j in range(h):
                    out[o + _U(j)] = pre[c0 + pu - hu - _U(1) + _U(j)]
                out[o + hu] = suf[c0]
                for u in range(1, p2):
                    v = suf[c0 + _U(u)]
                    q = pre[c1 + _U(u) - _U(1)]
                    out[o + hu + _U(u)] = v if v > q else q
                for j in range(p2 - h):
                    out[o + pu + hu + _U(j)] = suf[c1 + _U(j)]


@njit(cache=True, nogil=True)
def _clipped_band(src, r0, p, pre, suf, dst):  # pragma: no cover - compiled
    """Rows ``[r0, r0 + 2p)`` of ``src`` (R, W) max-filtered (size ``p``) along axis 0,
    clipped to the band, into ``dst`` (2p, W); ``pre``/``suf`` are (2p, W) work arrays.

    Output row ``i`` has the window ``[i - p//2, i - p//2 + p - 1]`` clipped to the band:
    rows ``i < p//2`` are prefix maxima of the first cell, rows ``i >= p + p//2`` suffix
    maxima of the second, the rest ``max(suffix of cell 0, prefix of cell 1)``. The prefix
    and suffix chains write those output rows in place (no copies)."""
    h = p // 2
    s0 = r0
    s1 = r0 + p
    # prefix of cell 0, rows 0..p-2 (row p-h-1+i is output row i < h)
    prev = pre[0]
    for i in range(p - 1):
        tgt = dst[i - (p - h - 1)] if i >= p - h - 1 else pre[i]
        if i == 0:
            tgt[:] = src[s0]
        else:
            _vmax16(prev, src[s0 + i], tgt)
        prev = tgt
    # prefix of cell 1, rows 0..p-2
    for i in range(p - 1):
        if i == 0:
            pre[p, :] = src[s1]
        else:
            _vmax16(pre[p + i - 1], src[s1 + i], pre[p + i])
    # suffix of cell 0 (row 0 is output row h)
    for t in range(p):
        i = p - 1 - t
        tgt = dst[h] if i == 0 else suf[i]
        if t == 0:
            tgt[:] = src[s0 + i]
        else:
            _vmax16(prev, src[s0 + i], tgt)
        prev = tgt
    # suffix of cell 1 (row j < p-h is output row p+h+j)
    for t in range(p):
        i = p - 1 - t
        tgt = dst[p + h + i] if i < p - h else suf[p + i]
        if t == 0:
            tgt[:] = src[s1 + i]
        else:
            _vmax16(prev, src[s1 + i], tgt)
        prev = tgt
    for i in range(h + 1, p + h):
        _vmax16(suf[i - h], pre[p + i - h - 1], dst[i])


@njit(cache=True, nogil=True)
def _count_segments(M, r_step, R2, thr, active, cnt):  # pragma: no cover - compiled
    """``cnt[b]`` = number of entries ``>= thr[b]`` in column segment ``b`` (``[b*R2,
    (b+1)*R2)``) of every ``r_step``-th row of ``M``, for the ``active`` segments."""
    n2 = cnt.shape[0]
    for b in range(n2):
        cnt[b] = 0
    for r in range(0, M.shape[0], r_step):
        row = M[r]
        for b in range(n2):
            if not active[b]:
                continue
            o = _U(b * R2)
            v = thr[b]
            if R2 < 65536:  # a uint16 accumulator vectorises ~2.5x better than int64
                c = np.uint16(0)
                for x in range(R2):
                    c = np.uint16(c + np.uint16(row[o + _U(x)] >= v))
                cnt[b] += np.int64(c)
            else:
                c64 = 0
                for x in range(R2):
                    c64 += row[o + _U(x)] >= v
                cnt[b] += c64


@njit(cache=True, nogil=True)
def _search(M, r_step, R2, k, lo, hi, guess, thr, active, cnt, st, bisect):  # pragma: no cover
    """Exact ``k``-th largest key of each column segment (every ``r_step``-th row of ``M``)
    given brackets ``lo <= answer <= hi`` (int64, updated in place to ``lo == hi``).

    Each round counts all undecided segments in one pass. The first probe is ``guess``;
    while only one side of the answer has been probed the step doubles away from it
    (galloping), then the bracket is bisected (``st``: 0 none, 1 a success, 2 a failure,
    3 both; ``bisect``: bisect from the start); returns the number of counting passes.
    Correct for any guess: ``count(>= lo) >= k > count(>= hi + 1)`` always holds, and the
    largest ``v`` with ``count(>= v) >= k`` is a key of the segment."""
    n2 = lo.shape[0]
    step = np.ones(n2, np.int64)
    for b in range(n2):
        st[b] = 3 if bisect else 0
    rounds = 0
    while True:
        any_active = False
        for b in range(n2):
            active[b] = lo[b] < hi[b]
            if not active[b]:
                continue
            any_active = True
            if st[b] == 0:
                t = min(max(guess[b], lo[b] + 1), hi[b])
            elif st[b] == 1:
                t = min(lo[b] + step[b], hi[b])
            elif st[b] == 2:
                t = max(hi[b] + 1 - step[b], lo[b] + 1)
            else:
                t = (lo[b] + hi[b] + 1) // 2
            thr[b] = t
        if not any_active:
            return rounds
        rounds += 1
        _count_segments(M, r_step, R2, thr, active, cnt)
        for b in range(n2):
            if not active[b]:
                continue
            t = np.int64(thr[b])
            if cnt[b] >= k:
                lo[b] = t
                st[b] = st[b] | 1
            else:
                hi[b] = t - 1
                st[b] = st[b] | 2
            step[b] *= 2


@njit(cache=True, nogil=True)
def _select_segments(M, R2, k, out, lo, hi, guess, thr, active, cnt, st):  # pragma: no cover
    """``out[b]`` = ``k``-th largest key of column segment ``b`` of all rows of ``M``
    (rows, n2*R2). Many rows: the same rank in every 8th row (bisection between that
    sample's min and max) is the first guess of a galloping :func:`_search` over all rows
    in ``[0, 65535]``; few rows: bisection between the min and max of all rows."""
    n2 = out.shape[0]
    rows = M.shape[0]
    r_step = 8 if rows >= 64 else 1
    for b in range(n2):
        lo[b] = 65535
        hi[b] = 0
    for r in range(0, rows, r_step):
        row = M[r]
        for b in range(n2):
            o = _U(b * R2)
            a = row[o]
            z = row[o]
            for x in range(R2):
                v = row[o + _U(x)]
                a = a if a < v else v
                z = z if z > v else v
            lo[b] = min(lo[b], np.int64(a))
            hi[b] = max(hi[b], np.int64(z))
    if r_step > 1:
        ns = ((rows + r_step - 1) // r_step) * R2
        ks = max(1, min(ns, (k * ns + rows * R2 // 2) // (rows * R2)))
        _search(M, r_step, R2, ks, lo, hi, guess, thr, active, cnt, st, True)
        for b in range(n2):
            guess[b] = lo[b]
            lo[b] = 0
            hi[b] = 65535
        _search(M, 1, R2, k, lo, hi, guess, thr, active, cnt, st, False)
    else:
        _search(M, 1, R2, k, lo, hi, guess, thr, active, cnt, st, True)
    for b in range(n2):
        out[b] = lo[b]


@njit(cache=True, nogil=True)
def max_coverage_keys(keys, zreal, pad, p0, p1, p2, n0, n1, n2, k, out, w1, w2, w3, w4, m,
                      xf, bpre, bsuf, band, zpre, zsuf, zb):  # pragma: no cover - compiled
    """Max-coverage key of every region of uint16 ``keys`` (>= zreal, Yp, Xp), padded to
    ``((n0+1)p0, (n1+1)p1, (n2+1)p2)`` = ``(Zp, Yp, Xp)`` (planes from ``zreal`` on are
    ``pad`` and need not be in ``keys``); 2D data: ``Zp = 1``, ``p0 = 0``, ``n0 = 1``.

    Separable clipped max filter, x first (:func:`_x_clipped_planes`), then y per region
    row (a band of ``2p1`` rows) and z per region layer, all on uint16 rows of
    ``W = n2*2p2`` (region column ``b`` at ``[b*2p2, (b+1)*2p2)``); the ``k``-th largest
    key of each region is then found exactly by counting passes
    (:func:`_select_segments`). ``out`` (n0, n1, n2) int64. Work arrays (uint16):
    ``w1..w4`` (Yp*Xp,), ``m`` (Xp,), ``xf`` (Zp, Yp, W), ``bpre``, ``bsuf`` (2p1, W),
    ``band`` (Zp, 2p1, W), ``zpre``, ``zsuf``, ``zb`` (2p0, 2p1*W) (unused in 2D). The
    all-``pad`` planes ``z >= zreal`` are not filtered.
    """
    Zp = band.shape[0]
    R1 = 2 * p1
    R2 = 2 * p2
    W = n2 * R2
    lo = np.empty(n2, np.int64)
    hi = np.empty(n2, np.int64)
    guess = np.empty(n2, np.int64)
    thr = np.empty(n2, np.uint16)
    active = np.empty(n2, np.bool_)
    cnt = np.empty(n2, np.int64)
    st = np.empty(n2, np.int64)
    res = np.empty(n2, np.int64)
    _x_clipped_planes(keys, zreal, pad, p2, n2, w1, w2, w3, w4, m, xf)
    for z in range(zreal, Zp):
        band[z] = pad
    for a in range(n1):
        r0 = a * p1
        for z in range(min(zreal, Zp)):
            _clipped_band(xf[z], r0, p1, bpre, bsuf, band[z])
        if p0 == 0:
            _select_segments(band[0], R2, k, res, lo, hi, guess, thr, active, cnt, st)
            out[0, a, :] = res
            continue
        bz = band.reshape((Zp, R1 * W))
        for gz in range(n0):
            _clipped_band(bz, gz * p0, p0, zpre, zsuf, zb)
            _select_segments(zb.reshape((2 * p0 * R1, W)), R2, k, res, lo, hi, guess, thr,
                             active, cnt, st)
            out[gz, a, :] = res
