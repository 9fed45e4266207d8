"""The static structure of a streamed plan (private to :mod:`patchsieve.sampling`): region
kinds and their groups, one CAREamics packing per sample, the packing's *pieces* (runs of bins
with the same contents) and *cells* (runs of bins whose members lie in the same tiles).

A region's *kind* is its area class and status (kept, background, and for ``fixed_subset``
chosen or unchosen background); its adjusted area depends on the kind only, so regions of the
same adjusted area form a *group* and CAREamics' packing works on group counts
(:func:`~patchsieve.sampling._packing.pack_groups`). Group members are enumerated tile by tile
in canonical order (C order inside a tile): this is the region order the packing sees.

A *cell* is a run of bins of one piece such that every bin holds, per tile, the same number of
members of the same groups: all bins of a cell land in a tile (or are "rest" draws) with the
same probabilities, so an epoch draws per cell one multinomial of counts, not one draw per bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.sampling._packing import pack_groups

KEPT, BACKGROUND, CHOSEN, UNCHOSEN = 0, 1, 2, 3


def sequential_subtract(total: float, step: float, n: int) -> float:
    """``total - step - step - ...`` (``n`` times), left to right as CAREamics' loop does.

    Examples
    --------
    >>> sequential_subtract(16.0, 0.9, 10) == 16.0 - 0.9 - 0.9 - 0.9 - 0.9 - 0.9 - 0.9 - 0.9 - 0.9 - 0.9 - 0.9
    True
    """
    n = int(n)
    if n <= 0 or step == 0.0:
        return float(total)
    chunk = min(n, 1 << 20)
    buf = np.full(chunk + 1, float(step))
    while n > 0:
        k = min(n, chunk)
        buf[0] = total
        total = float(np.subtract.reduce(buf[: k + 1]))
        n -= k
    return float(total)


@dataclass(frozen=True)
class Kinds:
    """Region kinds (area class x status) with their adjusted areas and groups."""

    alpha: NDArray[np.int64]
    status: NDArray[np.int64]
    value: NDArray[np.float64]
    is_int: NDArray[np.bool_]
    group: NDArray[np.int64]  # -1 where the value is 0 (never drawn)
    group_value: NDArray[np.float64]  # strictly decreasing

    @classmethod
    def build(cls, class_areas: Sequence[int], statuses: Sequence[int], weight: float) -> Kinds:
        """Kinds of every area class x status; ``weight`` is the background weight."""
        alpha, status, value, is_int = [], [], [], []
        for j, area in enumerate(class_areas):
            for st in statuses:
                alpha.append(j)
                status.append(st)
                v = {KEPT: float(area), BACKGROUND: float(area) * float(weight),
                     CHOSEN: float(area) * 1.0, UNCHOSEN: 0.0}[st]
                value.append(v)
                is_int.append(st == KEPT)
        val = np.asarray(value, np.float64)
        gv = np.unique(val[val > 0])[::-1].copy()
        group = np.full(val.size, -1, np.int64)
        pos = val > 0
        group[pos] = np.searchsorted(-gv, -val[pos])
        return cls(np.asarray(alpha, np.int64), np.asarray(status, np.int64), val,
                   np.asarray(is_int, bool), group, gv)

    @property
    def n_groups(self) -> int:
        return int(self.group_value.size)


@dataclass
class Packed:
    """One sample's packing as pieces: bins ``[start, end)`` holding, per covering segment,
    ``t`` members of group ``group`` starting at rank ``r0`` for the first bin (and ``t`` ranks
    further for each following bin)."""

    n_bins: int
    bin_size: int
    start: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    end: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    cov_ptr: NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))
    cov_group: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    cov_t: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    cov_r0: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    fill: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, np.float64))

    @property
    def n_pieces(self) -> int:
        return int(self.start.size)


def pack_sample(group_value: NDArray[np.float64], group_int: NDArray[np.bool_],
                group_count: NDArray[np.int64], n_bins: int, n_regions: int,
                int_mode: bool) -> Packed:
    """CAREamics' packing of one sample (groups with a count > 0 only) as pieces."""
    n_bins = int(n_bins)
    present = np.flatnonzero(group_count > 0)
    if n_bins <= 0 or present.size == 0:
        return Packed(max(n_bins, 0), 0)
    values = group_value[present]
    if n_regions <= n_bins:  # CAREamics: one region per bin; any order of the groups will do
        bin_size = int(math.ceil(float(values.max())))
        starts = np.concatenate([[0], np.cumsum(group_count[present])]).astype(np.int64)
        segs = [(int(g), 0, 1, [(int(a), int(b))])
                for g, a, b in zip(present, starts[:-1], starts[1:], strict=True)]
    else:
        cap, segments = pack_groups(values.tolist(), group_int[present].tolist(),
                                    group_count[present].tolist(), n_bins, int_mode=int_mode)
        bin_size = int(math.ceil(cap))
        segs = [(int(present[s.group]), s.start, s.t, s.bins.pairs) for s in segments]
    return _pieces(segs, n_bins, bin_size, group_value)


def _pieces(segs: list[tuple[int, int, int, list[tuple[int, int]]]], n_bins: int, bin_size: int,
            group_value: NDArray[np.float64]) -> Packed:
    """Cut the bins into pieces of equal contents (a sweep over the segments' intervals)."""
    a_, b_, g_, t_, r_ = [], [], [], [], []
    for g, start, t, pairs in segs:
        j = 0
        for a, b in pairs:
            a_.append(a)
            b_.append(b)
            g_.append(g)
            t_.append(t)
            r_.append(start + j * t)  # rank of the first member of bin a
            j += b - a
    a = np.asarray(a_, np.int64)
    b = np.asarray(b_, np.int64)
    bounds = np.unique(np.concatenate([a, b, [0, n_bins]]))
    bounds = bounds[(bounds >= 0) & (bounds <= n_bins)]
    lo, hi = bounds[:-1], bounds[1:]
    starts, ends, cov_ptr = [], [], [0]
    cg, ct, cr = [], [], []
    prev: tuple[int, ...] | None = None
    for x, y in zip(lo.tolist(), hi.tolist(), strict=True):
        active = tuple(np.flatnonzero((a <= x) & (x < b)).tolist())
        if prev is not None and active == prev and starts:
            ends[-1] = y  # same intervals continue: one piece
            continue
        prev = active
        starts.append(x)
        ends.append(y)
        for k in active:
            cg.append(g_[k])
            ct.append(t_[k])
            cr.append(r_[k] + (x - a_[k]) * t_[k])
        cov_ptr.append(len(cg))
    cov_group = np.asarray(cg, np.int64)
    cov_t = np.asarray(ct, np.int64)
    ptr = np.asarray(cov_ptr, np.int64)
    w = cov_t * group_value[cov_group] if cov_group.size else np.zeros(0)
    piece_of = np.repeat(np.arange(len(starts)), np.diff(ptr))
    fill = np.bincount(piece_of, weights=w, minlength=len(starts)) / max(bin_size, 1)
    return Packed(n_bins, bin_size, np.asarray(starts, np.int64), np.asarray(ends, np.int64),
                  ptr, cov_group, cov_t, np.asarray(cr, np.int64), fill)


@dataclass
class Cells:
    """Cells of one sample: ``n`` bins of piece ``piece`` from local bin ``i0`` of the piece;
    entries ``ptr[c]:ptr[c+1]`` give the (local) tiles its bins' members lie in and the summed
    adjusted area of those members per bin."""

    piece: NDArray[np.int64]
    i0: NDArray[np.int64]
    n: NDArray[np.int64]
    ptr: NDArray[np.int64]
    tile: NDArray[np.int64]
    weight: NDArray[np.float64]


def sample_cells(packed: Packed, gcum: NDArray[np.int64], group_value: NDArray[np.float64]) -> Cells:
    """The cells of one sample; ``gcum[k, g]`` is the rank of group ``g``'s first member in
    (local canonical) tile ``k`` (``gcum[-1]`` the group sizes)."""
    parts: dict[str, list[Any]] = {k: [] for k in ("piece", "i0", "n", "cell", "tile", "weight")}
    n_cells = 0
    inner = gcum[1:-1]  # first ranks of the tiles after the first: where a group changes tile
    bounds = [inner[np.flatnonzero(np.diff(inner[:, g], prepend=-1) != 0), g]
              for g in range(gcum.shape[1])]
    for p in range(packed.n_pieces):
        length = int(packed.end[p] - packed.start[p])
        covs = range(int(packed.cov_ptr[p]), int(packed.cov_ptr[p + 1]))
        cuts = [np.array([0, length], np.int64)]
        for c in covs:
            g, t, r0 = int(packed.cov_group[c]), int(packed.cov_t[c]), int(packed.cov_r0[c])
            x = bounds[g]
            x = x[np.searchsorted(x, r0, side="right"):np.searchsorted(x, r0 + length * t)]
            i, rem = np.divmod(x - r0, t)
            cuts += [i, i[rem != 0] + 1]
        cut = np.unique(np.clip(np.concatenate(cuts), 0, length))
        i0, n = cut[:-1], np.diff(cut)
        ids = n_cells + np.arange(i0.size)
        parts["piece"].append(np.full(i0.size, p, np.int64))
        parts["i0"].append(i0)
        parts["n"].append(n)
        for c in covs:
            g, t, r0 = int(packed.cov_group[c]), int(packed.cov_t[c]), int(packed.cov_r0[c])
            cum = gcum[:, g]
            lo = r0 + i0 * t
            k0 = np.searchsorted(cum, lo, side="right") - 1
            k1 = np.searchsorted(cum, lo + t - 1, side="right") - 1
            span = k1 - k0 + 1
            which = np.repeat(np.arange(i0.size), span)
            k = k0[which] + (np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span))
            members = (np.minimum(lo[which] + t, cum[k + 1]) - np.maximum(lo[which], cum[k]))
            keep = members > 0
            parts["cell"].append(ids[which][keep])
            parts["tile"].append(k[keep])
            parts["weight"].append(members[keep] * float(group_value[g]))
        n_cells += i0.size
    return _collect_cells(parts, n_cells, len(gcum) - 1)


def _collect_cells(parts: dict[str, list[Any]], n_cells: int, n_tiles: int) -> Cells:
    def cat(key: str, dtype: Any) -> NDArray[Any]:
        return np.concatenate(parts[key]).astype(dtype) if parts[key] else np.zeros(0, dtype)

    cell, tile, weight = cat("cell", np.int64), cat("tile", np.int64), cat("weight", np.float64)
    code = cell * max(n_tiles, 1) + tile  # entries of one cell in one tile are summed
    uniq, inv = np.unique(code, return_inverse=True)
    w = np.bincount(inv, weights=weight, minlength=uniq.size)
    ucell, utile = np.divmod(uniq, max(n_tiles, 1))
    ptr = np.searchsorted(ucell, np.arange(n_cells + 1)).astype(np.int64)
    return Cells(cat("piece", np.int64), cat("i0", np.int64), cat("n", np.int64), ptr,
                 utile.astype(np.int64), w)
