"""Earlier path of :mod:`patchsieve.dataset.transforms`, kept as a thin alias."""

from __future__ import annotations

from patchsieve.dataset.transforms import RandomFlipRotate

__all__ = ["RandomFlipRotate"]
