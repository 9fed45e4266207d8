"""In-memory epoch plans served through the streamed sampler interface.

:class:`PlannedPatching` wraps anything with ``epoch_plan(epoch)`` (a
:class:`~patchsieve.sampling.StratifiedPatching`, a fixed validation plan, a plan that avoids
held-out cells, ...) so that :class:`~patchsieve.sampling.ShardStream` and
:class:`~patchsieve.dataset.PatchDataset` can execute it like a
:class:`~patchsieve.sampling.StreamingPatching`: one tile per sample, the whole plan of an
epoch in memory (``O(patches)``), so use it for plans that fit in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.sampling._stratified import plan_dtype


class _SampleTiles:
    """The tile grid of :class:`PlannedPatching`: one tile per sample, the whole region grid."""

    def __init__(self, grid_shape: tuple[int, ...], n_samples: int):
        self.tile_shape = tuple(int(g) for g in grid_shape)
        self.n_tiles = int(n_samples)
        self.per_sample = 1


class PlannedPatching:
    """A sampler with in-memory epoch plans, executed like a streamed one.

    Parameters
    ----------
    plans : object
        Has ``epoch_plan(epoch)`` (a structured array of :func:`plan_dtype`), ``epoch_length``,
        ``spatial_shape``, ``patch_size``, ``grid_shape``, ``n_samples``, ``seed``,
        ``background`` (``(n_samples, *grid_shape)`` bool), ``expected_visits()`` and
        ``expected_background_fraction()``, as :class:`StratifiedPatching` has.

    Examples
    --------
    >>> from patchsieve.sampling import ShardStream, StratifiedPatching
    >>> plans = StratifiedPatching((64, 64), (16, 16), np.ones((4, 4)), seed=0)
    >>> sp = PlannedPatching(plans)
    >>> s = ShardStream(sp, 0)
    >>> len(s) == plans.epoch_length, np.array_equal(np.sort(s[:], order="origin"),
    ...                                               np.sort(plans.epoch_plan(0), order="origin"))
    (True, True)
    """

    mode = "per_epoch"

    def __init__(self, plans: Any):
        self.plans = plans
        self.spatial_shape = tuple(int(s) for s in plans.spatial_shape)
        self.patch_size = tuple(int(p) for p in plans.patch_size)
        self.grid_shape = tuple(int(g) for g in plans.grid_shape)
        self.n_samples = int(plans.n_samples)
        self.seed = int(plans.seed) if plans.seed is not None else 0
        self.epoch_length = int(plans.epoch_length)
        #: the wrapped sampler's patches per sample and epoch (``None`` when it has none)
        self.n_patches_per_sample = getattr(plans, "n_patches_per_sample", None)
        self.tiles = _SampleTiles(self.grid_shape, self.n_samples)
        self._cached: tuple[int, NDArray[Any], NDArray[np.int64]] | None = None

    def _plan(self, epoch: int) -> tuple[NDArray[Any], NDArray[np.int64]]:
        if self._cached is None or self._cached[0] != epoch:
            plan = np.asarray(self.plans.epoch_plan(int(epoch)))
            order = np.argsort(plan["sample"], kind="stable")
            self._cached = (int(epoch), plan[order],
                            np.bincount(plan["sample"], minlength=self.n_samples).astype(np.int64))
        return self._cached[1], self._cached[2]

    def tile_layout(self, epoch: int) -> tuple[NDArray[np.int64], NDArray[np.int64],
                                               NDArray[np.int64]]:
        """``(patches per tile, tiles in plan order, first plan position of each tile)``."""
        _, counts = self._plan(epoch)
        return counts, np.arange(self.n_samples), np.concatenate([[0], np.cumsum(counts)[:-1]])

    def realize(self, epoch: int, u: int) -> NDArray[Any]:
        """The patches of tile (sample) ``u`` in epoch ``epoch``, in plan order."""
        plan, counts = self._plan(epoch)
        a = int(counts[:u].sum())
        out = plan[a:a + int(counts[u])]
        return out.copy() if out.size else np.zeros(0, plan_dtype(len(self.patch_size)))

    def epoch_plan(self, epoch: int) -> NDArray[Any]:
        """The wrapped sampler's plan of ``epoch``."""
        return np.asarray(self.plans.epoch_plan(int(epoch)))

    def tile_box(self, u: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """``(sample, lo, hi)``: the regions of tile ``u`` (all of sample ``u``)."""
        return int(u), (0,) * len(self.grid_shape), self.grid_shape

    def tile_expectations(self, u: int) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
        """Background flags and expected visits per epoch of sample ``u``'s regions."""
        bg = np.asarray(self.plans.background).reshape(self.n_samples, *self.grid_shape)
        ev = np.asarray(self.plans.expected_visits()).reshape(self.n_samples, *self.grid_shape)
        return bg[int(u)], ev[int(u)]

    def expected_background_fraction(self) -> float:
        """Expected share of patches from background regions."""
        return float(self.plans.expected_background_fraction())
