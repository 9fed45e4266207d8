"""Epoch plans of patch origins: CAREamics ``StratifiedPatching`` semantics, vectorised.

This module is pure numpy. It turns the per-region weights of a side-car into one *plan* per
epoch (a compact structured array of patch origins), splits a plan between DDP ranks and
DataLoader workers, orders a shard so that neighbouring patches share decoded storage chunks,
and defines the resume position.

Sampling model (``mode="per_epoch"``, the default) -- CAREamics 0.3.5
``careamics/dataset/patching/stratified_patching.py`` reproduced for every sample:

* the region grid has ``(size + 1) // patch`` regions per spatial axis; region ``g`` selects
  patch origins in ``[g*patch, g*patch + min(patch, size - (g+1)*patch + 1))`` per axis, so
  every patch fits the image (the *selectable area* ``a_i`` is the number of such origins);
* background regions (``filter_out`` True) get the relative probability ``p``
  (``filtered_patch_prob``), kept regions 1; the epoch has
  ``N = ceil(prod(size / patch) - sum_bg (1 - p))`` patches per sample (the subtraction is
  sequential in region order, as CAREamics' loop does, so the ceil sees the same rounding);
* regions are bin-packed by their adjusted area ``a_i * p_i`` into ``N`` bins with CAREamics'
  best-fit-decreasing algorithm (same order, same tie-breaks, same capacity growth, including
  the integer truncation that CAREamics' ``int64`` capacity array applies when the largest
  region is a kept one); patch index ``b`` draws region ``i`` of its bin with probability
  ``a_i p_i / bin_size`` and spreads the bin's unused capacity over all regions of the sample in
  proportion to ``a_i p_i``; the origin is then uniform in the region's selectable box.

The bin packing only stratifies an epoch (which regions appear together); the expected number
of visits of region ``i`` per epoch is ``N * a_i p_i / sum_j a_j p_j`` whatever the packing.

Expected share of background patches per epoch (``expected_background_fraction``):

* ``per_epoch``: ``sum_s N_s * B_s / A_s / sum_s N_s`` with ``A_s = sum_i a_i p_i`` and
  ``B_s`` the same sum over background regions; on a grid of equal areas this is the region-unit
  formula ``p N_bg / (N_fg + p N_bg)``.
* ``with_replacement``: ``epoch_length`` i.i.d. draws with ``P(i) = a_i p_i / sum_j a_j p_j``
  over all samples: ``sum_bg a p / sum a p`` (again ``p N_bg / (N_fg + p N_bg)`` in region
  units), with binomial spread between epochs.
* ``fixed_subset``: ``k_s = floor(sum_bg p + 0.5)`` background regions per sample are chosen once
  (from ``seed`` only) and then sampled like kept regions in every epoch, the others never:
  ``k / (N_fg + k)`` in region units, identical in every epoch.

Sharding rule: an epoch plan of ``n`` patches is truncated to ``n_keep = n - n % world_size``
(like ``DistributedSampler(drop_last=True)``), rank ``r`` takes plan positions
``r, r + world_size, ...`` (``n_keep // world_size`` patches, the same for every rank), and the
DataLoader workers of a rank split the rank's share (:func:`worker_orders`). The union over all
ranks and workers is the truncated plan whatever ``(world_size, num_workers)``; shards are
disjoint.

Execution order (chunk-aware, bounded shuffle window): the storage chunks are cut into runs of
``window`` neighbouring chunks (:func:`chunk_groups`); a rank's patches are ordered run by run
(runs in order of first appearance in the plan, patches of a run in plan order, i.e. random)
and the workers take consecutive pieces of that order, of the same sizes as the interleaved
split, so batch counts do not change between epochs. A run's decoded
chunks fit the worker's cache, so each chunk is decoded about once per epoch while a batch still
mixes patches of up to ``window`` chunks. Reordering never changes which patches are drawn,
only when and by which worker; ``window=0`` keeps plan order with interleaved workers.

Resume: a worker's position is the number of patches of its execution order already consumed;
skipping that many patches resumes the epoch exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from patchsieve.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "SamplingMode",
    "StratifiedPatching",
    "careamics_n_patches",
    "chunk_groups",
    "pack_regions",
    "plan_dtype",
    "region_areas",
    "shard_positions",
    "worker_orders",
    "worker_positions_from_batches",
    "zorder_chunk_ids",
]

SamplingMode = Literal["per_epoch", "with_replacement", "fixed_subset"]
MODES: tuple[str, ...] = ("per_epoch", "with_replacement", "fixed_subset")


def plan_dtype(ndim: int) -> np.dtype:
    """Structured dtype of an epoch plan with ``ndim`` spatial dims.

    Fields: ``sample`` (flat sample index), ``region`` (flat region index in the sample's grid,
    C order), ``origin`` (patch origin per spatial dim, pixels), ``weight`` (the region's
    relative probability ``p``), ``background`` (the region's ``filter_out`` decision).

    Examples
    --------
    >>> plan_dtype(2).names
    ('sample', 'region', 'origin', 'weight', 'background')
    """
    return np.dtype(
        [
            ("sample", np.int64),
            ("region", np.int64),
            ("origin", np.int64, (ndim,)),
            ("weight", np.float64),
            ("background", np.bool_),
        ]
    )


def _check_geometry(
    spatial_shape: Sequence[int], patch_size: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = tuple(int(s) for s in spatial_shape)
    ps = tuple(int(p) for p in patch_size)
    if len(ps) not in (2, 3) or len(shape) != len(ps):
        raise ConfigError(
            f"patch_size must have one entry per spatial dim of spatial_shape {shape}; got {ps}. "
            "Fix: pass e.g. (64, 64) for YX data or (16, 64, 64) for ZYX data."
        )
    if any(p <= 0 for p in ps):
        raise ConfigError(f"patch_size entries must be positive; got {ps}.")
    if any(p > s for p, s in zip(ps, shape, strict=True)):
        raise ConfigError(
            f"patch_size {ps} is larger than the spatial shape {shape}. Fix: use a patch size "
            "no larger than the image."
        )
    return shape, ps


def region_areas(
    spatial_shape: Sequence[int], patch_size: Sequence[int]
) -> tuple[NDArray[np.int64], list[NDArray[np.int64]]]:
    """Selectable area of every region of the CAREamics grid.

    Parameters
    ----------
    spatial_shape : sequence of int
        Spatial sizes, (Z)YX.
    patch_size : sequence of int
        Patch size per spatial dim.

    Returns
    -------
    areas : numpy.ndarray of int64, shape ``grid_shape``
        Number of selectable patch origins per region.
    lengths : list of numpy.ndarray of int64
        Per spatial axis, the number of selectable origins of each grid row
        (``min(patch, size - (g + 1) * patch + 1)``).

    Examples
    --------
    >>> a, lengths = region_areas((5, 6), (2, 2))
    >>> a.shape, [x.tolist() for x in lengths]
    ((3, 3), [[2, 2, 0], [2, 2, 1]])
    """
    shape, ps = _check_geometry(spatial_shape, patch_size)
    lengths = []
    for s, p in zip(shape, ps, strict=True):
        g = np.arange((s + 1) // p, dtype=np.int64)
        lengths.append(np.clip(s - (g + 1) * p + 1, 0, p))
    areas = lengths[0]
    for ln in lengths[1:]:
        areas = np.multiply.outer(areas, ln)
    return np.asarray(areas, dtype=np.int64), lengths


def careamics_n_patches(
    spatial_shape: Sequence[int],
    patch_size: Sequence[int],
    relative_probs: ArrayLike,
    background: ArrayLike,
) -> int:
    """Number of patches per epoch of one sample, exactly as CAREamics computes it.

    ``ceil(prod(shape / patch) - sum_bg (1 - p))``, subtracting in region order, clamped at 0;
    0 when no region has a selectable origin.

    Examples
    --------
    >>> bg = np.zeros((4, 4), bool); bg[0] = True
    >>> careamics_n_patches((256, 256), (64, 64), np.where(bg, 0.1, 1.0), bg)
    13
    """
    areas, _ = region_areas(spatial_shape, patch_size)
    if int(areas.sum()) == 0:
        return 0
    total = np.prod(np.array(spatial_shape) / np.array(patch_size))
    p = np.asarray(relative_probs, dtype=np.float64).ravel()[np.asarray(background, bool).ravel()]
    if p.size:
        total = np.subtract.reduce(np.concatenate([[total], 1.0 - p]))
    return max(int(np.ceil(total)), 0)


# --------------------------------------------------------------------------- bin packing
class _Buckets:
    """Bins grouped by their (exact) remaining capacity: value -> sorted bin indices."""

    def __init__(self, value: float, n_bins: int):
        self.d: dict[Any, NDArray[np.int64]] = {value: np.arange(n_bins, dtype=np.int64)}

    def add(self, value: Any, bins: NDArray[np.int64]) -> None:
        if bins.size == 0:
            return
        old = self.d.get(value)
        self.d[value] = bins if old is None else np.sort(np.concatenate([old, bins]), kind="stable")

    def take(self, value: Any, k: int) -> NDArray[np.int64]:
        arr = self.d[value]
        out, rest = arr[:k], arr[k:]
        if rest.size:
            self.d[value] = rest
        else:
            del self.d[value]
        return out

    def shift(self, inc: Any) -> None:
        old = self.d
        self.d = {}
        for v, arr in old.items():
            self.add(v + inc, arr)


def pack_regions(adjusted: ArrayLike, is_int: ArrayLike, n_bins: int) -> tuple[int, NDArray[np.int64]]:
    """CAREamics' ``_region_bin_packing`` (best-fit decreasing, growing capacity), vectorised.

    Parameters
    ----------
    adjusted : array_like of float
        Adjusted selectable area ``a_i * p_i`` of every region, in region (C) order.
    is_int : array_like of bool
        True where CAREamics holds the area as an integer (kept regions: no relative
        probability set). When the first largest region is such a region, CAREamics' capacity
        array is ``int64`` and every placement truncates the remaining capacity; this is
        reproduced.
    n_bins : int
        Number of bins (patches per epoch of the sample).

    Returns
    -------
    bin_size : int
        ``int(ceil(capacity))`` as CAREamics returns it.
    bin_of_region : numpy.ndarray of int64
        Bin of every region (-1 when ``n_bins <= 0``).

    Notes
    -----
    Equal-area regions are placed in bulk: bins with the same exact remaining capacity are kept
    in one bucket, and a run of equal items fills the best-fitting bucket bin by bin in index
    order, which is what the item-by-item loop does. Where CAREamics 0.3.5 would raise (growing
    an ``int64`` capacity array by a fractional amount), the packing continues in float64.

    Examples
    --------
    >>> pack_regions([4.0, 4.0, 1.0, 1.0], [True, True, True, True], 3)
    (4, array([0, 1, 2, 2]))
    """
    values = np.asarray(adjusted, dtype=np.float64).ravel()
    ints = np.asarray(is_int, dtype=bool).ravel()
    n = values.size
    if n_bins <= 0 or n == 0:
        return 0, np.full(n, -1, dtype=np.int64)
    if n <= n_bins:
        return int(np.ceil(values.max())), np.arange(n, dtype=np.int64)
    order = np.argsort(-values, kind="stable")
    svals = values[order]
    sints = ints[order]
    int_mode = bool(ints[int(np.flatnonzero(values == values.max())[0])])
    cap: Any = int(svals[0]) if int_mode else float(svals[0])
    buckets = _Buckets(cap, n_bins)
    assign = np.empty(n, dtype=np.int64)
    edges = np.flatnonzero(np.diff(svals)) + 1
    starts = np.concatenate([[0], edges]).tolist()
    ends = np.concatenate([edges, [n]]).tolist()
    for start, end in zip(starts, ends, strict=True):
        group_int = bool(sints[start:end].all())
        a: Any = int(svals[start]) if (int_mode and group_int) else float(svals[start])
        cap, int_mode = _pack_group(buckets, assign, start, end, a, cap, int_mode, group_int)
    bin_of_region = np.empty(n, dtype=np.int64)
    bin_of_region[order] = assign
    return int(math.ceil(cap)), bin_of_region


def _sub(v: Any, a: Any, int_mode: bool) -> Any:
    return int(v - a) if int_mode else v - a


def _pack_group(
    buckets: _Buckets,
    assign: NDArray[np.int64],
    pos: int,
    end: int,
    a: Any,
    cap: Any,
    int_mode: bool,
    group_int: bool,
) -> tuple[Any, bool]:
    while pos < end:
        q = end - pos
        diffs = {v: v - a for v in buckets.d}
        elig = {v: d for v, d in diffs.items() if d >= 0}
        if not elig:  # grow the capacity of every bin (CAREamics: argmax of remaining capacity)
            vmax = max(buckets.d)
            inc = a - vmax
            if int_mode and not isinstance(inc, int):
                logger.debug("bin packing: fractional capacity growth; continuing in float64")
                int_mode = False
                buckets.d = {float(v): arr for v, arr in buckets.d.items()}
                cap, vmax, a, inc = float(cap), float(vmax), float(a), float(a) - float(vmax)
            cap = cap + inc
            buckets.shift(inc)
            v = vmax + inc
            j = buckets.take(v, 1)
            buckets.add(_sub(v, a, int_mode), j)
            assign[pos] = j[0]
            pos += 1
            continue
        dmin = min(elig.values())
        cands = [v for v, d in elig.items() if d == dmin]
        if len(cands) > 1:  # equal fit from different capacities: lowest bin index wins
            v = min(cands, key=lambda c: buckets.d[c][0])
            j = buckets.take(v, 1)
            buckets.add(_sub(v, a, int_mode), j)
            assign[pos] = j[0]
            pos += 1
            continue
        v = cands[0]
        # successive capacities of one bin filled from v: seq[k] after k items
        seq = [v]
        if a == 0:
            seq.append(v)
            t = q
        else:
            while len(seq) - 1 < q and seq[-1] - a >= 0:
                seq.append(_sub(seq[-1], a, int_mode))
            t = len(seq) - 1
        m = buckets.d[v].size
        full = min(m, q // t)
        if full:
            bins = buckets.take(v, full)
            assign[pos : pos + full * t] = np.repeat(bins, t)
            pos += full * t
            buckets.add(seq[t] if a != 0 else v, bins)
        rest = end - pos
        if full < m and 0 < rest < t:
            j = buckets.take(v, 1)
            assign[pos : pos + rest] = j[0]
            pos += rest
            buckets.add(seq[rest] if a != 0 else v, j)
    return cap, int_mode


# --------------------------------------------------------------------------- sampler
class StratifiedPatching:
    """Epoch plans over a region grid with CAREamics ``StratifiedPatching`` semantics.

    Parameters
    ----------
    spatial_shape : sequence of int
        Spatial sizes of every sample, (Z)YX.
    patch_size : sequence of int
        Patch size per spatial dim.
    weights : array_like, shape ``(n_samples, *grid_shape)`` or ``grid_shape``, optional
        Relative probability of every region (1 kept, ``filtered_patch_prob`` background).
        Default: all 1.
    background : array_like of bool, same shape as ``weights``, optional
        The ``filter_out`` decisions. Default: ``weights < 1``.
    mode : {"per_epoch", "with_replacement", "fixed_subset"}
        See the module docstring for the semantics and the expected background fraction.
    seed : int
        Seed of every epoch plan (``SeedSequence([seed, epoch])``) and of the fixed subset.
    epoch_length : int, optional
        Patches per epoch for ``with_replacement`` (default: the CAREamics count).

    Examples
    --------
    >>> w = np.ones((1, 4, 4)); w[0, 0] = 0.1
    >>> sp = StratifiedPatching((256, 256), (64, 64), w, seed=1)
    >>> sp.epoch_length, len(sp.epoch_plan(0))
    (13, 13)
    """

    def __init__(
        self,
        spatial_shape: Sequence[int],
        patch_size: Sequence[int],
        weights: ArrayLike | None = None,
        *,
        background: ArrayLike | None = None,
        mode: SamplingMode = "per_epoch",
        seed: int = 0,
        epoch_length: int | None = None,
    ):
        self.spatial_shape, self.patch_size = _check_geometry(spatial_shape, patch_size)
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}; got {mode!r}.")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative int; got {seed!r}.")
        self.mode, self.seed = mode, int(seed)
        self.areas, self.lengths = region_areas(self.spatial_shape, self.patch_size)
        self.grid_shape = self.areas.shape
        w = np.ones((1, *self.grid_shape)) if weights is None else np.asarray(weights, np.float64)
        if w.shape == self.grid_shape:
            w = w[None]
        if w.shape[1:] != self.grid_shape:
            raise ConfigError(
                f"weights must have shape (n_samples, *{self.grid_shape}) for spatial shape "
                f"{self.spatial_shape} and patch_size {self.patch_size}; got {w.shape}."
            )
        if not np.all(np.isfinite(w)) or (w < 0).any() or (w > 1).any():
            raise ConfigError("weights must lie in [0, 1] (relative region probabilities).")
        if background is not None and np.size(background) != w.size:
            raise ConfigError(
                f"background has shape {np.shape(background)} but the weights have shape "
                f"{w.shape}. Fix: pass one flag per region (the side-car's filter_out)."
            )
        bg = (w < 1) if background is None else np.asarray(background, bool).reshape(w.shape)
        self.weights, self.background = w, bg
        self.n_samples = w.shape[0]
        eff = self._fixed_subset(w, bg) if mode == "fixed_subset" else w
        self.effective_weights = eff
        # CAREamics sets a relative probability on background regions only; a region whose
        # weight is not 1 is treated the same way (its area becomes a float)
        self._build(eff, bg | (eff != 1))
        if epoch_length is not None and (int(epoch_length) <= 0):
            raise ConfigError(f"epoch_length must be a positive int; got {epoch_length!r}.")
        if mode == "with_replacement":
            self.epoch_length = int(epoch_length) if epoch_length else int(self.n_patches_per_sample.sum())
        else:
            if epoch_length is not None:
                raise ConfigError(
                    f"epoch_length applies to mode='with_replacement' only; mode={mode!r} fixes "
                    "the epoch length as CAREamics does. Fix: drop epoch_length."
                )
            self.epoch_length = int(self.n_patches_per_sample.sum())

    # ---- construction
    def _fixed_subset(self, w: NDArray[np.float64], bg: NDArray[np.bool_]) -> NDArray[np.float64]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5EB5E7]))
        eff = np.where(bg, 0.0, w).reshape(self.n_samples, -1)
        flat_bg, flat_w = bg.reshape(self.n_samples, -1), w.reshape(self.n_samples, -1)
        for s in range(self.n_samples):  # one draw per sample, not per region
            idx = np.flatnonzero(flat_bg[s])
            k = int(math.floor(math.fsum(flat_w[s, idx].tolist()) + 0.5))
            if k:
                eff[s, rng.choice(idx, size=k, replace=False)] = 1.0
        return eff.reshape(w.shape)

    def _build(self, w: NDArray[np.float64], prob_set: NDArray[np.bool_]) -> None:
        n_s, n_r = self.n_samples, self.areas.size
        areas = self.areas.ravel().astype(np.float64)
        ps = prob_set.reshape(n_s, n_r)
        wf = w.reshape(n_s, n_r)
        adj = np.where(ps, areas[None, :] * wf, areas[None, :])
        is_int = ~ps
        self.adjusted = adj
        n_patches = np.zeros(n_s, np.int64)
        bin_size = np.zeros(n_s, np.int64)
        bin_of = np.full((n_s, n_r), -1, np.int64)
        cache: dict[bytes, tuple[int, int, NDArray[np.int64]]] = {}
        for s in range(n_s):  # per sample; identical region multisets share one packing
            if adj[s].sum() <= 0:
                if areas.sum() > 0:
                    logger.warning("sample %d has no region with a positive weight: 0 patches", s)
                continue
            n = careamics_n_patches(self.spatial_shape, self.patch_size, wf[s], ps[s])
            order = np.argsort(-adj[s], kind="stable")
            key = np.int64(n).tobytes() + adj[s][order].tobytes() + is_int[s][order].tobytes()
            if n_r <= n:  # CAREamics: one region per bin, in region order
                n_patches[s], bin_size[s] = n, int(np.ceil(adj[s].max()))
                bin_of[s] = np.arange(n_r)
                continue
            if key not in cache:
                size, bins = pack_regions(adj[s][order], is_int[s][order], n)
                cache[key] = (n, size, bins)
            n, size, bins_sorted = cache[key]
            n_patches[s], bin_size[s] = n, size
            bin_of[s, order] = bins_sorted
        self.n_patches_per_sample, self.bin_size, self.bin_of_region = n_patches, bin_size, bin_of
        self._build_tables()

    def _build_tables(self) -> None:
        n_s = self.n_samples
        bin_off = np.concatenate([[0], np.cumsum(self.n_patches_per_sample)])
        nb = int(bin_off[-1])
        self._bin_sample = np.repeat(np.arange(n_s), self.n_patches_per_sample)
        sel = (self.adjusted > 0) & (self.bin_of_region >= 0)
        s_idx, r_idx = np.nonzero(sel)
        gbin = bin_off[s_idx] + self.bin_of_region[s_idx, r_idx]
        order = np.lexsort((r_idx, gbin))
        s_idx, r_idx, gbin = s_idx[order], r_idx[order], gbin[order]
        prob = self.adjusted[s_idx, r_idx] / self.bin_size[s_idx].astype(np.float64)
        self._csr_sample, self._csr_region = s_idx, r_idx
        cum = np.cumsum(prob)
        cum0 = np.concatenate([[0.0], cum])  # cum0[i] = mass before CSR entry i
        self._cum = cum
        lo = np.searchsorted(gbin, np.arange(nb), side="left")
        hi = np.searchsorted(gbin, np.arange(nb), side="right")
        self._bin_lo, self._bin_hi = lo, hi
        self._bin_cum0 = cum0[lo]
        self._bin_fill = cum0[hi] - cum0[lo]
        s_lo = np.searchsorted(s_idx, np.arange(n_s), side="left")
        s_hi = np.searchsorted(s_idx, np.arange(n_s), side="right")
        self._s_lo, self._s_hi = s_lo, s_hi
        self._s_cum0 = cum0[s_lo]
        self._s_total = cum0[s_hi] - cum0[s_lo]
        adj = self.adjusted.ravel()
        self._flat_nz = np.flatnonzero(adj > 0)
        self._flat_cum = np.cumsum(adj[self._flat_nz])

    # ---- expectations
    def expected_visits(self) -> NDArray[np.float64]:
        """Expected visits per region and epoch, shape ``(n_samples, *grid_shape)``."""
        adj = self.adjusted
        tot = adj.sum(axis=1, keepdims=True)
        if self.mode == "with_replacement":
            v = self.epoch_length * adj / max(adj.sum(), 1e-300)
        else:
            v = np.where(tot > 0, adj * self.n_patches_per_sample[:, None] / np.where(tot > 0, tot, 1), 0.0)
        return v.reshape(self.n_samples, *self.grid_shape)

    def expected_background_fraction(self) -> float:
        """Expected share of patches drawn from background regions (module docstring)."""
        v = self.expected_visits()
        total = float(v.sum())
        return float(v[self.background].sum()) / total if total else 0.0

    # ---- plans
    def rng(self, epoch: int) -> np.random.Generator:
        """The generator of one epoch: ``default_rng(SeedSequence([seed, epoch]))``."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)]))

    def epoch_plan(self, epoch: int) -> NDArray[Any]:
        """The plan of one epoch: a shuffled structured array of ``plan_dtype(ndim)``.

        Deterministic in ``(seed, epoch)``; independent of ranks and workers.
        """
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0; got {epoch}.")
        rng = self.rng(epoch)
        if self.mode == "with_replacement":
            sample, region = self._draw_iid(rng)
        else:
            sample, region = self._draw_stratified(rng)
            perm = rng.permutation(sample.size)
            sample, region = sample[perm], region[perm]
        return self._make_plan(rng, sample, region)

    def _draw_stratified(self, rng: np.random.Generator) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        nb = self._bin_sample.size
        if nb == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        u = rng.random(nb)
        fill = self._bin_fill
        in_bin = u < fill
        s = self._bin_sample
        rest = np.where(fill < 1, (u - fill) / np.where(fill < 1, 1 - fill, 1), 0.0)
        target = np.where(in_bin, self._bin_cum0 + u, self._s_cum0[s] + rest * self._s_total[s])
        k = np.searchsorted(self._cum, target, side="right")
        lo = np.where(in_bin, self._bin_lo, self._s_lo[s])
        hi = np.where(in_bin, self._bin_hi, self._s_hi[s]) - 1
        k = np.clip(k, lo, hi)
        return self._csr_sample[k], self._csr_region[k]

    def _draw_iid(self, rng: np.random.Generator) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        if self._flat_cum.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        target = rng.random(self.epoch_length) * self._flat_cum[-1]
        k = np.minimum(np.searchsorted(self._flat_cum, target, side="right"), self._flat_cum.size - 1)
        flat = self._flat_nz[k]
        return flat // self.areas.size, flat % self.areas.size

    def _make_plan(
        self, rng: np.random.Generator, sample: NDArray[np.int64], region: NDArray[np.int64]
    ) -> NDArray[Any]:
        ndim = len(self.patch_size)
        plan = np.empty(sample.size, dtype=plan_dtype(ndim))
        plan["sample"], plan["region"] = sample, region
        coords = np.unravel_index(region, self.grid_shape)
        for d in range(ndim):
            length = self.lengths[d][coords[d]]
            plan["origin"][:, d] = coords[d] * self.patch_size[d] + rng.integers(0, np.maximum(length, 1))
        flat_w = self.weights.reshape(self.n_samples, -1)
        flat_bg = self.background.reshape(self.n_samples, -1)
        plan["weight"] = flat_w[sample, region]
        plan["background"] = flat_bg[sample, region]
        return plan

    def __repr__(self) -> str:
        return (
            f"StratifiedPatching(spatial_shape={self.spatial_shape}, patch_size={self.patch_size}, "
            f"n_samples={self.n_samples}, mode={self.mode!r}, epoch_length={self.epoch_length})"
        )


# --------------------------------------------------------------------------- sharding & order
def shard_positions(
    n_plan: int, *, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
) -> NDArray[np.int64]:
    """Plan positions of one (rank, worker) shard; see the sharding rule in the module docstring.

    Examples
    --------
    >>> shard_positions(7, rank=1, world_size=2, worker=0, num_workers=2).tolist()
    [1, 5]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank must lie in [0, world_size={world_size}); got rank={rank}.")
    nw = max(int(num_workers), 1)
    if not 0 <= worker < nw:
        raise ConfigError(f"worker must lie in [0, num_workers={nw}); got {worker}.")
    n_keep = n_plan - n_plan % world_size
    return np.arange(rank, n_keep, world_size, dtype=np.int64)[worker::nw]


def _morton(coords: NDArray[np.int64]) -> NDArray[np.int64]:
    """Z-order (bit-interleaved) code of integer coordinates, shape (n, ndim)."""
    n, ndim = coords.shape
    code = np.zeros(n, dtype=np.int64)
    bits = max(int(coords.max(initial=0)).bit_length(), 1)
    if bits * ndim > 62:
        raise ConfigError(f"chunk grid too large for a Z-order code ({bits} bits x {ndim} dims).")
    for b in range(bits):
        for d in range(ndim):
            code |= ((coords[:, d] >> b) & 1) << (b * ndim + (ndim - 1 - d))
    return code


def zorder_chunk_ids(
    samples: ArrayLike, chunk_coords: ArrayLike, grid: Sequence[int]
) -> tuple[NDArray[np.int64], int]:
    """Index of chunks along a Z-order curve, sample by sample, and the number of chunks.

    Consecutive indices are spatial neighbours, so a run of ``k`` consecutive chunks
    (:func:`chunk_groups`) is a compact block that holds most of the neighbours that patches
    straddle.

    Examples
    --------
    >>> zorder_chunk_ids([0, 0, 0, 1], [[0, 0], [0, 1], [1, 0], [0, 0]], (2, 3))
    (array([0, 1, 2, 6]), 12)
    """
    grid = [int(g) for g in grid]
    coords = np.asarray(chunk_coords, dtype=np.int64).reshape(-1, len(grid))
    per_sample = int(np.prod(grid))
    all_codes = np.sort(_morton(np.stack(np.unravel_index(np.arange(per_sample), grid), axis=1)))
    rank = np.searchsorted(all_codes, _morton(coords))
    smp = np.asarray(samples, dtype=np.int64)
    n_samples = int(smp.max(initial=0)) + 1
    return smp * per_sample + rank, n_samples * per_sample


def chunk_groups(chunk_ids: ArrayLike, n_chunks: int, window: int) -> NDArray[np.int64] | None:
    """Group of every patch: runs of ``window`` consecutive storage chunks (None: plan order).

    ``chunk_ids`` is the linear index (sample-major, C order) of the storage chunk holding each
    patch origin, in plan order. Chunks are cut into runs of ``window`` neighbouring chunks,
    starting at the chunk of the first patch (so the cut moves with every epoch's plan);
    ``window <= 0`` returns None (no grouping).

    Examples
    --------
    >>> chunk_groups([5, 0, 7, 6, 1], 8, 2).tolist()
    [0, 1, 1, 0, 2]
    """
    ids = np.asarray(chunk_ids, dtype=np.int64)
    if window <= 0:
        return None
    if ids.size == 0:
        return ids.copy()
    return ((ids - ids[0]) % max(int(n_chunks), 1)) // int(window)


def worker_orders(groups: ArrayLike | None, n: int, num_workers: int) -> list[NDArray[np.int64]]:
    """Split a rank's share (``n`` patches, plan order) between workers, in execution order.

    Without groups (``None``): worker ``w`` takes positions ``w, w + W, ...`` in plan order.
    With groups (:func:`chunk_groups`): the share is ordered run by run (runs ranked by their
    first appearance in the plan, the patches of a run in plan order) and cut into ``W``
    consecutive pieces, so that each worker reads its own runs. Either way worker ``w`` gets
    ``len(range(w, n, W))`` patches, the same every epoch, and the workers' positions partition
    ``range(n)``: reordering changes when a patch is read, never which patches are read.

    Examples
    --------
    >>> [o.tolist() for o in worker_orders([1, 0, 1, 0, 2], 5, 2)]
    [[0, 2, 1], [3, 4]]
    """
    nw = max(int(num_workers), 1)
    pos = np.arange(n, dtype=np.int64)
    if groups is None:
        return [pos[w::nw] for w in range(nw)]
    g = np.asarray(groups, dtype=np.int64)
    uniq, first = np.unique(g, return_index=True)
    rank_of = np.empty(uniq.size, np.int64)
    rank_of[np.argsort(first, kind="stable")] = np.arange(uniq.size)
    order = np.lexsort((pos, rank_of[np.searchsorted(uniq, g)]))
    bounds = np.concatenate([[0], np.cumsum([len(range(w, n, nw)) for w in range(nw)])])
    return [order[bounds[w] : bounds[w + 1]] for w in range(nw)]


def worker_positions_from_batches(
    n_batches: int, shard_sizes: Sequence[int], batch_size: int, *, drop_last: bool = False
) -> list[int]:
    """Patches consumed per worker after ``n_batches`` in-order DataLoader batches.

    A DataLoader over an IterableDataset delivers batches round-robin over its workers, skipping
    a worker once it has run out (``torch.utils.data.dataloader``: tasks go to active workers in
    turn and come back in task order). Each worker batches its own shard, so worker ``w`` has
    ``ceil(size_w / batch_size)`` batches (``floor`` with ``drop_last``).

    Examples
    --------
    >>> worker_positions_from_batches(3, [10, 9], 4)
    [8, 4]
    >>> worker_positions_from_batches(5, [2, 9], 2)
    [2, 8]
    """
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive; got {batch_size}.")
    nb = sizes // batch_size if drop_last else -(-sizes // batch_size)
    n_batches = int(min(max(n_batches, 0), int(nb.sum())))
    # after r full rounds every worker w has delivered min(nb_w, r) batches
    rounds = np.arange(int(nb.max(initial=0)) + 1)
    delivered = np.minimum(nb[None, :], rounds[:, None]).sum(axis=1)
    r = int(np.searchsorted(delivered, n_batches, side="right") - 1)
    got = np.minimum(nb, r)
    extra = n_batches - int(delivered[r])
    active = np.flatnonzero(nb > r)[:extra]
    got[active] += 1
    return [int(x) for x in np.minimum(got * batch_size, sizes)]
