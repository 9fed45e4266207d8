"""Earlier path of :mod:`patchsieve.dataset.lightning` (needs ``lightning``), a thin alias."""

from __future__ import annotations

from patchsieve.dataset.lightning import PatchDataModule

__all__ = ["PatchDataModule"]
