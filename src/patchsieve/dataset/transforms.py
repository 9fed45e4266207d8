"""CAREamics-style patch augmentations: random flips and 90-degree rotations in the YX plane.

CAREamics (``careamics/transforms/xy_flip.py``, ``xy_random_rotate90.py``) flips along Y
and/or X with probability 0.5 each and rotates by ``k * 90`` degrees (``k`` uniform in 0..3)
in the YX plane, the same operation on the input and the target. Here both act on numpy
arrays ``(C, [Z,] Y, X)`` as :class:`patchsieve.dataset.PatchDataset` passes them
(``transform(x, y) -> (x, y)``). Pure numpy; the generator is reseeded per DataLoader worker
and epoch by the dataset (:meth:`RandomFlipRotate.reseed`), so augmentations are reproducible.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from patchsieve.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["RandomFlipRotate"]


class RandomFlipRotate:
    """Random Y/X flips and YX-plane 90-degree rotations, applied alike to input and target.

    Parameters
    ----------
    flip_y, flip_x : bool
        Flip along Y / X, each with probability ``p_flip``.
    rotate_90 : bool
        Rotate by ``k * 90`` degrees, ``k`` uniform in {0, 1, 2, 3}; needs square YX patches.
    p_flip : float
        Probability of each flip.
    seed : int, optional
        Seed of the generator (the dataset reseeds it per worker and epoch).

    Examples
    --------
    >>> t = RandomFlipRotate(seed=0)
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    >>> y, _ = t(x, None)
    >>> sorted(y.ravel().tolist()) == sorted(x.ravel().tolist())
    True
    """

    def __init__(
        self,
        flip_y: bool = True,
        flip_x: bool = True,
        rotate_90: bool = True,
        p_flip: float = 0.5,
        seed: int | None = None,
    ):
        if not 0.0 <= float(p_flip) <= 1.0:
            raise ConfigError(f"p_flip must lie in [0, 1]; got {p_flip}.")
        self.flip_y, self.flip_x, self.rotate_90 = bool(flip_y), bool(flip_x), bool(rotate_90)
        self.p_flip = float(p_flip)
        self.rng = np.random.default_rng(seed)

    def reseed(self, rng: np.random.Generator) -> None:
        """Use a generator derived from ``rng`` (called by the dataset per worker and epoch)."""
        self.rng = np.random.default_rng(rng.integers(0, 2**63))

    def __call__(
        self, x: NDArray[np.floating], y: NDArray[np.floating] | None = None
    ) -> tuple[NDArray[np.floating], NDArray[np.floating] | None]:
        """Apply one random draw to ``x`` (and ``y``): arrays ``(C, [Z,] Y, X)``."""
        if x.ndim < 3:
            raise ConfigError(f"transform input must be (C, [Z,] Y, X); got shape {x.shape}.")
        ops: list[tuple[str, int]] = []
        if self.flip_y and self.rng.random() < self.p_flip:
            ops.append(("flip", -2))
        if self.flip_x and self.rng.random() < self.p_flip:
            ops.append(("flip", -1))
        if self.rotate_90:
            if x.shape[-1] != x.shape[-2]:
                raise ConfigError(
                    f"rotate_90 needs square YX patches; got {x.shape[-2:]}. Fix: use a square "
                    "patch_size in Y and X, or rotate_90=False."
                )
            k = int(self.rng.integers(0, 4))
            if k:
                ops.append(("rot", k))
        return self._apply(x, ops), (None if y is None else self._apply(y, ops))

    @staticmethod
    def _apply(a: NDArray[np.floating], ops: list[tuple[str, int]]) -> NDArray[np.floating]:
        for op, arg in ops:
            a = np.flip(a, axis=arg) if op == "flip" else np.rot90(a, k=arg, axes=(-2, -1))
        return np.ascontiguousarray(a)

    def __repr__(self) -> str:
        return (
            f"RandomFlipRotate(flip_y={self.flip_y}, flip_x={self.flip_x}, "
            f"rotate_90={self.rotate_90}, p_flip={self.p_flip})"
        )
