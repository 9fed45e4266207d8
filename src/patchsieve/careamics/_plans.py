"""CAREamics' validation patches as patchsieve epoch plans (private; pure numpy).

Without validation data CAREamics 0.3.5 holds ``n_val_patches`` grid-aligned patches out of the
training data (``careamics/dataset/factory/val_split.py``): it draws them with
``default_rng(data_config.seed)``, validates on them every epoch (``FixedPatching``) and excludes
every training patch that would overlap them (``exclude_patches``: the training epoch has
``n_val_patches`` fewer patches). :func:`careamics_val_cells` repeats its draws call for call, so
the same seed selects the same cells; :class:`HeldOutPatching` gives training plans without
overlap (rejection: the same distribution as CAREamics' shrunken sampling areas) and
:class:`FixedPlan` the validation plan. With validation data CAREamics uses
``FixedRandomPatching`` (``careamics/dataset/patching/random_patching.py``):
:func:`fixed_random_plan` draws the same way, seeded with the configuration's seed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.errors import ConfigError
from patchsieve.sampling import StratifiedPatching, plan_dtype

logger = logging.getLogger(__name__)

#: plans drawn per epoch at most (rejection of patches over held-out cells) before the rest is
#: drawn from the remaining sampling areas directly
MAX_TOP_UPS = 4


def careamics_val_cells(n_patches: Sequence[int], grid_shape: Sequence[int], n_val: int,
                        seed: int) -> list[tuple[int, tuple[int, ...]]]:
    """The ``(sample, cell)`` pairs CAREamics' ``create_val_split`` holds out.

    Parameters
    ----------
    n_patches : sequence of int
        Training patches per sample and epoch (after the patch filter).
    grid_shape : sequence of int
        The region grid of a sample; cell ``g`` is ``[g * patch, (g + 1) * patch)``.
    n_val : int
        ``data_config.n_val_patches``.
    seed : int
        ``data_config.seed`` (CAREamics' ``CareamicsDataModule.rng``).

    Examples
    --------
    >>> cells = careamics_val_cells([4, 4], (2, 2), 2, seed=1)
    >>> len(cells), all(s in (0, 1) for s, _ in cells)
    (2, True)
    """
    n = np.array([int(v) for v in n_patches])
    if n_val >= int(n.sum()):
        raise ConfigError(
            f"n_val_patches={n_val} must be smaller than the {int(n.sum())} training patches per "
            "epoch. Fix: lower data_config.n_val_patches, or pass val_source=.")
    rng = np.random.default_rng(seed=seed)
    grid_index = {g: i for i, g in enumerate(itertools.product(*[range(s) for s in grid_shape]))}
    # CAREamics lists the included cells as a set difference (hash order, as it does)
    coords = list(set(grid_index.keys()).difference(set()))
    chosen = np.zeros_like(n)
    for _ in range(n_val):
        probs = n / n.sum()
        k = rng.choice(np.arange(len(n)), p=probs)
        chosen[k] += 1
        n[k] -= 1
    out: list[tuple[int, tuple[int, ...]]] = []
    for s, k in enumerate(chosen):
        idx = rng.choice(len(coords), k, replace=False)
        out.extend((s, tuple(int(c) for c in coords[i])) for i in idx)
    return out


def _flat_cells(sample: NDArray[np.int64], cells: NDArray[np.int64],
                cell_shape: Sequence[int]) -> NDArray[np.int64]:
    return sample * int(np.prod(cell_shape)) + np.ravel_multi_index(cells.T, tuple(cell_shape))


class HeldOutPatching(StratifiedPatching):
    """:class:`~patchsieve.sampling.StratifiedPatching` whose epoch plans contain no patch that
    overlaps a held-out cell.

    Each sample's epoch has as many patches fewer as it has held-out cells (CAREamics'
    ``n_patches`` after ``exclude_patches``). Patches that overlap a cell are dropped and
    replaced by non-overlapping draws of further plans of the same epoch (deterministic in
    ``(seed, epoch)``), i.e. the training distribution conditioned on avoiding the cells.

    Parameters
    ----------
    *args, **kwargs
        As :class:`~patchsieve.sampling.StratifiedPatching`.
    held_out : sequence of (sample, cell)
        The held-out cells (:func:`careamics_val_cells`).
    """

    def __init__(self, *args: Any, held_out: Sequence[tuple[int, Sequence[int]]] = (),
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        nd = len(self.patch_size)
        self.cell_shape = tuple(-(-s // p) + 1 for s, p in zip(self.spatial_shape, self.patch_size))
        samples = np.array([s for s, _ in held_out], np.int64)
        cells = np.array([list(c) for _, c in held_out], np.int64).reshape(-1, nd)
        self.held_out = list(zip(samples.tolist(), map(tuple, cells.tolist())))
        self._held = np.unique(_flat_cells(samples, cells, self.cell_shape))
        per_sample = np.bincount(samples, minlength=self.n_samples)[: self.n_samples]
        self.quota = np.maximum(self.n_patches_per_sample - per_sample, 0)
        self.epoch_length = int(self.quota.sum())

    def overlaps(self, plan: NDArray[Any]) -> NDArray[np.bool_]:
        """Whether each patch of ``plan`` overlaps a held-out cell."""
        ps = np.asarray(self.patch_size, np.int64)
        first = plan["origin"] // ps
        partial = (plan["origin"] % ps) != 0  # the patch reaches into the next cell too
        hit = np.zeros(len(plan), bool)
        for off in itertools.product((0, 1), repeat=len(ps)):
            o = np.asarray(off, np.int64)
            reach = np.all(partial | (o == 0), axis=1)
            flat = _flat_cells(plan["sample"], first + o, self.cell_shape)
            hit |= reach & np.isin(flat, self._held)
        return hit

    def epoch_plan(self, epoch: int) -> NDArray[Any]:
        """This epoch's plan without the held-out cells (shuffled; deterministic)."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0; got {epoch}.")
        if not len(self._held):
            return super().epoch_plan(epoch)
        need = self.quota.copy()
        parts = []
        for k in range(MAX_TOP_UPS):
            plan = super().epoch_plan(epoch * MAX_TOP_UPS + k)
            plan = plan[~self.overlaps(plan)]
            rank = _rank_within(plan["sample"], self.n_samples)
            take = rank < need[plan["sample"]]
            parts.append(plan[take])
            need -= np.bincount(plan["sample"][take], minlength=self.n_samples)
            if not need.any():
                break
        rng = self.rng(epoch)
        for s in np.flatnonzero(need):  # small volumes: most patches touch a held-out cell
            parts.append(self._remaining_draws(int(s), int(need[s]), rng))
        out = np.concatenate(parts)
        return out[rng.permutation(len(out))]

    def _remaining_draws(self, s: int, k: int, rng: np.random.Generator) -> NDArray[Any]:
        """``k`` i.i.d. patches of sample ``s`` from the sampling areas left by the held-out cells.

        As CAREamics' ``_SamplingRegion``: the origins of region ``g`` are split per axis into
        offset 0 and offsets ``1..length-1``; a held-out cell ``g + q`` removes the boxes that
        overlap its orthant (offset ``>= 1`` along the axes where ``q = 1``). A box is drawn with
        probability ``weight(region) * box area``, then an origin uniformly inside it.
        """
        nd = len(self.patch_size)
        grid = self.grid_shape
        held = {tuple(c) for ss, c in self.held_out if ss == s}
        w = self.effective_weights[s]
        regions, boxes, masses = [], [], []
        for g in itertools.product(*[range(n) for n in grid]):
            lens = [int(self.lengths[d][g[d]]) for d in range(nd)]
            for b in itertools.product((0, 1), repeat=nd):
                area = int(np.prod([1 if bd == 0 else ln - 1 for bd, ln in zip(b, lens)]))
                if area <= 0 or min(lens) <= 0:
                    continue
                if any(tuple(gi + qi for gi, qi in zip(g, q)) in held
                       and all(qd == 0 or bd == 1 for qd, bd in zip(q, b))
                       for q in itertools.product((0, 1), repeat=nd)):
                    continue
                regions.append(g)
                boxes.append((b, lens))
                masses.append(float(w[g]) * area)
        mass = np.asarray(masses)
        if not len(mass) or mass.sum() <= 0:
            raise ConfigError(
                f"the held-out validation cells leave no training patch in sample {s}. Fix: "
                "lower data_config.n_val_patches, or pass val_source=.")
        pick = rng.choice(len(mass), size=k, p=mass / mass.sum())
        plan = np.empty(k, dtype=plan_dtype(nd))
        plan["sample"] = s
        for i, j in enumerate(pick):
            (b, lens), g = boxes[j], regions[j]
            off = [0 if bd == 0 else int(rng.integers(1, ln)) for bd, ln in zip(b, lens)]
            plan["origin"][i] = [gi * p + o for gi, p, o in zip(g, self.patch_size, off)]
            plan["region"][i] = np.ravel_multi_index(g, grid)
        flat = plan["region"]
        plan["weight"] = self.weights[s].reshape(-1)[flat]
        plan["background"] = self.background[s].reshape(-1)[flat]
        return plan


def _rank_within(groups: NDArray[np.int64], n_groups: int) -> NDArray[np.int64]:
    """Position of every entry among the entries of its group, in array order."""
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(groups), np.int64)
    rank[order] = np.arange(len(groups)) - starts[groups[order]]
    return rank


class FixedPlan:
    """The same plan every epoch (CAREamics' ``FixedPatching``): validation patches.

    It offers what :class:`~patchsieve.dataset.PatchDataset` asks of its sampler.

    Parameters
    ----------
    sample : array_like of int
        Flat sample index of every patch.
    origin : array_like of int, (n, ndim)
        Patch origins in pixels.
    like : StratifiedPatching
        The training sampler of the same volume (geometry, weights, decisions).
    """

    mode = "per_epoch"

    def __init__(self, sample: Any, origin: Any, like: StratifiedPatching):
        self.spatial_shape, self.patch_size = like.spatial_shape, like.patch_size
        self.grid_shape, self.n_samples, self.seed = like.grid_shape, like.n_samples, like.seed
        self.weights, self.background = like.weights, like.background
        origin = np.asarray(origin, np.int64).reshape(-1, len(self.patch_size))
        plan = np.empty(len(origin), dtype=plan_dtype(len(self.patch_size)))
        plan["sample"] = np.asarray(sample, np.int64)
        plan["origin"] = origin
        cells = np.minimum(origin // np.asarray(self.patch_size), np.asarray(self.grid_shape) - 1)
        plan["region"] = np.ravel_multi_index(cells.T, self.grid_shape) if len(origin) else 0
        flat_w = self.weights.reshape(self.n_samples, -1)
        plan["weight"] = flat_w[plan["sample"], plan["region"]]
        plan["background"] = self.background.reshape(self.n_samples, -1)[plan["sample"],
                                                                          plan["region"]]
        self.plan = plan
        self.epoch_length = len(plan)

    def epoch_plan(self, epoch: int) -> NDArray[Any]:
        """The fixed plan (a copy)."""
        return self.plan.copy()

    def expected_visits(self) -> NDArray[np.float64]:
        """Visits per region and epoch, shape ``(n_samples, *grid_shape)``."""
        v = np.zeros(self.n_samples * int(np.prod(self.grid_shape)))
        np.add.at(v, self.plan["sample"] * int(np.prod(self.grid_shape)) + self.plan["region"], 1)
        return v.reshape(self.n_samples, *self.grid_shape)

    def expected_background_fraction(self) -> float:
        """Share of the plan's patches in background regions."""
        return float(self.plan["background"].mean()) if len(self.plan) else 0.0


def held_out_plan(held_out: Sequence[tuple[int, Sequence[int]]],
                  like: StratifiedPatching) -> FixedPlan:
    """The validation plan of held-out cells: one patch at each cell's origin."""
    ps = np.asarray(like.patch_size, np.int64)
    sample = [s for s, _ in held_out]
    origin = np.array([list(c) for _, c in held_out], np.int64).reshape(-1, len(ps)) * ps
    return FixedPlan(sample, origin, like)


def fixed_random_plan(like: StratifiedPatching, seed: int | None) -> FixedPlan:
    """CAREamics' ``FixedRandomPatching``: ``prod(ceil(shape / patch))`` patches per sample at
    uniform random origins, drawn once with ``default_rng(seed)``."""
    rng = np.random.default_rng(seed=seed)
    shape, ps = np.asarray(like.spatial_shape), np.asarray(like.patch_size)
    n = int(np.prod(np.ceil(shape / ps)))
    sample, origin = [], []
    for s in range(like.n_samples):
        for _ in range(n):
            origin.append(rng.integers(np.zeros(len(ps), dtype=int), np.clip(shape - ps, 0, None),
                                       endpoint=True, dtype=int).tolist())
            sample.append(s)
    return FixedPlan(sample, origin, like)
