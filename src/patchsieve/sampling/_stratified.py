"""CAREamics ``StratifiedPatching`` epoch plans, vectorised (private to :mod:`patchsieve.sampling`;
the sampling model is described in the package docstring)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from patchsieve.errors import ConfigError
from patchsieve.grid import grid_extent
from patchsieve.sampling._packing import expand_segments, pack_groups

logger = logging.getLogger(__name__)

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
        g = np.arange(grid_extent(s, p), dtype=np.int64)
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
    int_mode = bool(sints[0])  # the first largest region (stable order)
    edges = np.flatnonzero(np.diff(svals)) + 1
    starts = np.concatenate([[0], edges])
    counts = np.diff(np.concatenate([starts, [n]]))
    group_int = np.logical_and.reduceat(sints, starts)
    cap, segments = pack_groups(svals[starts].tolist(), group_int.tolist(), counts.tolist(),
                                int(n_bins), int_mode=int_mode)
    bin_of_region = np.empty(n, dtype=np.int64)
    bin_of_region[order] = np.concatenate(expand_segments(segments, counts.tolist()))
    return int(math.ceil(cap)), bin_of_region


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
