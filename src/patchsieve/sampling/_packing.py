"""CAREamics' region bin packing on *groups* of equal items (private to
:mod:`patchsieve.sampling`).

CAREamics 0.3.5 ``_region_bin_packing`` places regions one by one, largest adjusted area first,
into the fullest bin that still fits (best-fit decreasing), growing every bin's capacity when
none fits. Regions with equal adjusted areas are placed consecutively, and a run of equal items
fills bins in a predictable pattern: bins with the same remaining capacity are interchangeable
except for their index, and the loop always picks the lowest index. :func:`pack_groups` runs the
algorithm on ``(value, count)`` groups and sets of bins kept as index *intervals*, so its cost
and its result depend on the number of distinct values and the fragmentation of the bin sets,
not on the number of regions or bins: a region grid of 10**8 regions has a handful of distinct
adjusted areas (interior or edge area, kept or background).

The result is a list of :class:`Segment` s: ``t`` consecutive items (in group order) per bin,
for the bins of an :class:`IntervalSet` in increasing index order. ``pack_regions`` (one value
per region) expands them into the bin of every region.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)


class IntervalSet:
    """A set of bin indices as sorted, disjoint, non-touching ``[start, end)`` intervals.

    Examples
    --------
    >>> s = IntervalSet([(0, 3), (5, 7)])
    >>> len(s), s.take(4)[0].pairs, s.take(4)[1].pairs
    (5, [(0, 3), (5, 6)], [(6, 7)])
    >>> s.union(IntervalSet([(3, 5)])).pairs
    [(0, 7)]
    """

    __slots__ = ("pairs", "size")

    def __init__(self, pairs: Sequence[tuple[int, int]] = ()):
        self.pairs = [(int(a), int(b)) for a, b in pairs if b > a]
        self.size = sum(b - a for a, b in self.pairs)

    def __len__(self) -> int:
        return self.size

    @classmethod
    def range(cls, n: int) -> IntervalSet:
        """``{0, ..., n - 1}``."""
        return cls([(0, int(n))])

    @property
    def first(self) -> int:
        """The lowest index."""
        return self.pairs[0][0]

    def take(self, k: int) -> tuple[IntervalSet, IntervalSet]:
        """(the ``k`` lowest indices, the others)."""
        head: list[tuple[int, int]] = []
        rest: list[tuple[int, int]] = []
        need = int(k)
        for i, (a, b) in enumerate(self.pairs):
            if need <= 0:
                rest = self.pairs[i:]
                break
            if b - a <= need:
                head.append((a, b))
                need -= b - a
            else:
                head.append((a, a + need))
                rest = [(a + need, b), *self.pairs[i + 1:]]
                need = 0
                break
        return IntervalSet(head), IntervalSet(rest)

    def union(self, other: IntervalSet) -> IntervalSet:
        """Union of two disjoint sets."""
        merged = sorted(self.pairs + other.pairs)
        out: list[tuple[int, int]] = []
        for a, b in merged:
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(b, out[-1][1]))
            else:
                out.append((a, b))
        res = IntervalSet()
        res.pairs, res.size = out, self.size + other.size
        return res

    def starts_ends(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Interval starts and ends as arrays."""
        arr = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def to_array(self) -> NDArray[np.int64]:
        """Every index, increasing."""
        if not self.pairs:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.pairs])


@dataclass(frozen=True)
class Segment:
    """Items ``start + j*t .. start + j*t + t - 1`` of group ``group`` (in group order) are in
    the ``j``-th bin of ``bins`` (increasing index), for ``j < len(bins)``."""

    group: int
    start: int
    t: int
    bins: IntervalSet


class _Buckets:
    """Bins grouped by their exact remaining capacity: value -> :class:`IntervalSet`."""

    def __init__(self, value: Any, n_bins: int):
        self.d: dict[Any, IntervalSet] = {value: IntervalSet.range(n_bins)}

    def add(self, value: Any, bins: IntervalSet) -> None:
        if bins.size == 0:
            return
        old = self.d.get(value)
        self.d[value] = bins if old is None else old.union(bins)

    def take(self, value: Any, k: int) -> IntervalSet:
        head, rest = self.d[value].take(k)
        if rest.size:
            self.d[value] = rest
        else:
            del self.d[value]
        return head

    def shift(self, inc: Any) -> None:
        old = self.d
        self.d = {}
        for v, bins in old.items():
            self.add(v + inc, bins)


def pack_groups(
    values: Sequence[float], all_int: Sequence[bool], counts: Sequence[int], n_bins: int,
    *, int_mode: bool,
) -> tuple[Any, list[Segment]]:
    """CAREamics' best-fit-decreasing packing of groups of equal items into ``n_bins`` bins.

    Parameters
    ----------
    values : sequence of float
        Adjusted area of the items of each group, strictly decreasing, all >= 0.
    all_int : sequence of bool
        Whether every item of the group is held as an integer by CAREamics (kept regions).
    counts : sequence of int
        Items per group.
    n_bins : int
        Number of bins (> 0, and fewer than the items: the caller handles the other case).
    int_mode : bool
        Whether CAREamics' capacity array is ``int64``: the first item of the largest value is
        an integer. Every placement then truncates the remaining capacity; a fractional
        capacity growth (where CAREamics 0.3.5 raises) continues in float64.

    Returns
    -------
    capacity : int or float
        The final bin capacity (``int(ceil(capacity))`` is CAREamics' ``bin_size``).
    segments : list of Segment
        Where every item went, in placement order.
    """
    cap: Any = int(values[0]) if int_mode else float(values[0])
    buckets = _Buckets(cap, n_bins)
    segments: list[Segment] = []
    for g, (value, group_int, count) in enumerate(zip(values, all_int, counts, strict=True)):
        a: Any = int(value) if (int_mode and group_int) else float(value)
        cap, int_mode = _pack_group(buckets, segments, g, int(count), a, cap, int_mode)
    return cap, segments


def _sub(v: Any, a: Any, int_mode: bool) -> Any:
    return int(v - a) if int_mode else v - a


def _grow(buckets: _Buckets, a: Any, cap: Any, int_mode: bool) -> tuple[Any, Any, Any, bool]:
    """No bin fits ``a``: grow every capacity by what the roomiest bin lacks (CAREamics)."""
    vmax = max(buckets.d)
    inc = a - vmax
    if int_mode and not isinstance(inc, int):
        logger.debug("bin packing: fractional capacity growth; continuing in float64")
        int_mode = False
        buckets.d = {float(v): s for v, s in buckets.d.items()}
        cap, vmax, a, inc = float(cap), float(vmax), float(a), float(a) - float(vmax)
    buckets.shift(inc)
    return cap + inc, vmax + inc, a, int_mode


def _pack_group(buckets: _Buckets, segments: list[Segment], g: int, count: int, a: Any,
                cap: Any, int_mode: bool) -> tuple[Any, bool]:
    pos = 0
    while pos < count:
        q = count - pos
        elig = {v: v - a for v in buckets.d if v - a >= 0}
        if not elig:
            cap, v, a, int_mode = _grow(buckets, a, cap, int_mode)
            j = buckets.take(v, 1)
            buckets.add(_sub(v, a, int_mode), j)
            segments.append(Segment(g, pos, 1, j))
            pos += 1
            continue
        dmin = min(elig.values())
        cands = [v for v, d in elig.items() if d == dmin]
        if len(cands) > 1:  # equal fit from different capacities: lowest bin index wins
            v = min(cands, key=lambda c: buckets.d[c].first)
            j = buckets.take(v, 1)
            buckets.add(_sub(v, a, int_mode), j)
            segments.append(Segment(g, pos, 1, j))
            pos += 1
            continue
        v = cands[0]
        seq = [v]  # successive capacities of one bin filled from v: seq[k] after k items
        if a == 0:  # zero-area items all go to the best-fitting bin, changing nothing
            t = q
        else:
            while len(seq) - 1 < q and seq[-1] - a >= 0:
                seq.append(_sub(seq[-1], a, int_mode))
            t = len(seq) - 1
        m = len(buckets.d[v])
        full = min(m, q // t)
        if full:
            bins = buckets.take(v, full)
            segments.append(Segment(g, pos, t, bins))
            pos += full * t
            buckets.add(seq[t] if a != 0 else v, bins)
        rest = count - pos
        if full < m and 0 < rest < t:
            j = buckets.take(v, 1)
            segments.append(Segment(g, pos, rest, j))
            pos += rest
            buckets.add(seq[rest] if a != 0 else v, j)
    return cap, int_mode


def expand_segments(segments: Sequence[Segment], counts: Sequence[int]) -> list[NDArray[np.int64]]:
    """Bin of every item, per group (in group order)."""
    out = [np.full(int(c), -1, np.int64) for c in counts]
    for s in segments:
        bins = s.bins.to_array()
        out[s.group][s.start : s.start + bins.size * s.t] = np.repeat(bins, s.t)
    return out
