"""CAREamics' ``MaskPatchFilter`` (``careamics/dataset/patch_filter/mask_patch_filter.py``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from patchsieve.config import MaskPatchFilterConfig
from patchsieve.filters._base import (
    Border,
    Ties,
    apply_threshold,
    as_image,
    as_patch,
    check_border,
    check_coverage,
    check_ties,
    expand_region_values,
    image_stats,
    keep_mask,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


class MaskPatchFilter:
    """Filter regions on the fraction of mask pixels (1/True = keep, 0 = background).

    Parameters
    ----------
    coverage : float, default 0.25
        Minimum fraction of mask pixels in a region to keep it, in ``[0, 1]``.
    ties : {"careamics", "keep", "drop"}, default "careamics"
        ``filter_out`` keeps at equality, ``apply_filter`` drops at equality (B3).

    Examples
    --------
    >>> m = np.zeros((128, 128), bool); m[:64, :64] = True
    >>> MaskPatchFilter(0.25).filter_out(m[None])
    False
    """

    def __init__(self, coverage: float = 0.25, *, ties: Ties = "careamics") -> None:
        self.coverage = check_coverage(coverage)
        self.ties = check_ties(ties)

    def __repr__(self) -> str:
        return f"MaskPatchFilter(coverage={self.coverage!r})"

    @classmethod
    def from_config(cls, config: MaskPatchFilterConfig) -> MaskPatchFilter:
        """Build the filter from its config (CAREamics cannot: quirk B8)."""
        return cls(coverage=config.coverage)

    def filter_out(self, patch: ArrayLike) -> bool:
        """True if the fraction of non-zero mask pixels is below ``coverage``."""
        p = as_patch(patch, mask=True)
        frac = np.count_nonzero(p) / p.size
        return not bool(keep_mask(frac, self.coverage, self.ties, strict_default=False))

    @staticmethod
    def region_values(
        image: ArrayLike, patch_size: Sequence[int], *, border: Border = "careamics"
    ) -> NDArray[np.float64]:
        """Mask coverage of every region of a (Z)YX mask, shape ``grid_shape``."""
        img = as_image(image, what="mask", mask=True)
        return image_stats(img, patch_size, ["mask_coverage"], check_border(border))[
            "mask_coverage"
        ]

    @staticmethod
    def filter_map(
        image: ArrayLike, patch_size: Sequence[int], *, border: Border = "careamics"
    ) -> NDArray[np.float64]:
        """Per-pixel coverage map of a (Z)YX mask, exactly as CAREamics' ``filter_map``."""
        img = np.asarray(image)
        vals = MaskPatchFilter.region_values(img, patch_size, border=border)
        return expand_region_values(vals, img.shape, patch_size)

    @staticmethod
    def apply_filter(
        filter_map: ArrayLike, threshold: float, *, ties: Ties = "careamics"
    ) -> NDArray[np.bool_]:
        """Keep-mask ``filter_map > threshold`` (``>=`` with ``ties="keep"``)."""
        return apply_threshold(filter_map, threshold, ties)

    @staticmethod
    def plot_filter_map(
        image: ArrayLike, filter_map: ArrayLike, z_idx: int | None = None, **kwargs: Any
    ) -> Figure:
        """Plot the filter map over the image (3D: slice ``z_idx``, default middle)."""
        from patchsieve.plotting import plot_filter_map

        return plot_filter_map(
            image, filter_map, z_idx, title="Mask Filter Map", label="coverage", **kwargs
        )
