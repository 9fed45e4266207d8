"""CAREamics' ``MaskPatchFilter`` (``careamics/dataset/patch_filter/mask_patch_filter.py``)."""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import ArrayLike

from patchsieve.config import MaskPatchFilterConfig
from patchsieve.filters._base import RegionFilter
from patchsieve.filters.stats import Ties, as_patch, check_coverage, check_ties, keep_mask

logger = logging.getLogger(__name__)


class MaskPatchFilter(RegionFilter):
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

    STAT = "mask_coverage"
    MAP_TITLE = "Mask Filter Map"
    MAP_LABEL = "coverage"
    IS_MASK = True

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
