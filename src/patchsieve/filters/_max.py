"""CAREamics' ``MaxPatchFilter`` (``careamics/dataset/patch_filter/max_patch_filter.py``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import maximum_filter

from patchsieve.config import MaxPatchFilterConfig, resolve_coverage
from patchsieve.filters._base import RegionFilter
from patchsieve.filters.stats import (
    Ties,
    as_image,
    as_patch,
    check_border,
    check_coverage,
    check_threshold,
    check_ties,
    expand_region_values,
    image_stats,
    max_stat_name,
)
from patchsieve.grid import Border

logger = logging.getLogger(__name__)


def _patch_ndim(patch: np.ndarray) -> int:
    """Spatial ndim of a CAREamics region patch ``(1, *spatial)`` or ``(*spatial)``."""
    if patch.ndim == 4 or (patch.ndim == 3 and patch.shape[0] == 1):
        return patch.ndim - 1
    return patch.ndim


class MaxPatchFilter(RegionFilter):
    """Filter regions on the maximum filter of the reference channel (CSBDeep-inspired).

    A region is kept when at least ``coverage`` of its max-filtered pixels exceed
    ``threshold``.

    Parameters
    ----------
    threshold : float
        Max-filter threshold.
    coverage : float or None, default None
        Minimum fraction of max-filtered pixels above ``threshold``. ``None`` means
        ``0.5**ndim`` (0.25 in 2D, 0.125 in 3D), the value CAREamics' training path and
        ``filter_map`` use; CAREamics' bare class defaults to 0.25 in 3D too (quirk B6).
    ties : {"careamics", "keep", "drop"}, default "careamics"
        Decision at equality. Max drops a region whose count of values *strictly* above
        the threshold is short (CAREamics), which equals ``"drop"``; ``"keep"`` keeps
        regions whose Max value equals the threshold.

    Notes
    -----
    The region value (``filter_map``) is the largest ``v`` with
    ``count(maximum_filter(region, patch_size) >= v) / region.size >= coverage``; a region
    is kept iff ``value > threshold``, the same decision as CAREamics' ``filter_out`` for
    non-negative data. For data with negative values CAREamics' ``filter_out`` pads with 0
    while ``filter_map`` reflects (quirk B4a); :meth:`filter_out` reproduces the former,
    the region statistics the latter.

    Examples
    --------
    >>> img = np.zeros((128, 128), np.float32); img[:64, :64] = 500
    >>> float(MaxPatchFilter.filter_map(img, (64, 64))[0, 0])
    500.0
    """

    MAP_TITLE = "Maximum Filter Map"

    def __init__(
        self, threshold: float, coverage: float | None = None, *, ties: Ties = "careamics"
    ) -> None:
        self.threshold = check_threshold("threshold", threshold)
        self.coverage = None if coverage is None else check_coverage(coverage)
        self.ties = check_ties(ties)

    def __repr__(self) -> str:
        return f"MaxPatchFilter(threshold={self.threshold!r}, coverage={self.coverage!r})"

    @classmethod
    def from_config(cls, config: MaxPatchFilterConfig) -> MaxPatchFilter:
        """Build the filter from its config (defaults come from the config)."""
        return cls(threshold=config.threshold, coverage=config.coverage)

    def resolved_coverage(self, ndim: int) -> float:
        """The coverage used for ``ndim`` spatial dims."""
        return resolve_coverage(self.coverage, ndim)

    def filter_out(self, patch: ArrayLike) -> bool:
        """True if the region ``patch`` (``(1, *2*patch_size)`` as CAREamics passes it) is
        background: ``max < threshold`` or too few max-filtered pixels above it.

        Reproduces CAREamics exactly, including its constant-zero padding and its
        footprint ``patch.shape // 2`` (quirks B4a, B4b).
        """
        p = as_patch(patch)
        p = p.astype(np.float32, copy=False) if p.dtype.kind != "f" else p
        cov = self.resolved_coverage(_patch_ndim(p))
        thr = self.threshold
        if np.max(p) < thr:
            return True
        footprint = [(s // 2 if s > 1 else 1) for s in p.shape]
        filtered = maximum_filter(p, footprint, mode="constant")
        frac = float(np.mean(filtered >= thr if self.ties == "keep" else filtered > thr))
        return frac < cov

    @classmethod
    def region_values(  # type: ignore[override] - CAREamics' signature takes the coverage
        cls,
        image: ArrayLike,
        patch_size: Sequence[int],
        coverage: float | None = None,
        *,
        border: Border = "careamics",
    ) -> NDArray[np.float64]:
        """Max filter value of every region of a (Z)YX image, shape ``grid_shape``."""
        img = as_image(image)
        cov = resolve_coverage(coverage, img.ndim)
        name = max_stat_name(cov)
        return image_stats(img, patch_size, [name], check_border(border))[name]

    @classmethod
    def filter_map(  # type: ignore[override] - CAREamics' signature takes the coverage
        cls,
        image: ArrayLike,
        patch_size: Sequence[int],
        coverage: float | None = None,
        *,
        border: Border = "careamics",
    ) -> NDArray[np.float64]:
        """Per-pixel map of the region values, exactly as CAREamics' ``filter_map``.

        Parameters
        ----------
        image : array_like, (Z)YX
        patch_size : sequence of int
        coverage : float or None
            ``None``: ``0.5**ndim``.
        border : {"careamics", "valid"}
            ``"valid"`` scores only in-image pixels instead of zero-padding (B7).

        Returns
        -------
        numpy.ndarray of float64, shape of ``image``
        """
        img = np.asarray(image)
        vals = cls.region_values(img, patch_size, coverage, border=border)
        return expand_region_values(vals, img.shape, patch_size)
