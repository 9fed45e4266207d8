"""CAREamics' ``ShannonPatchFilter`` (``careamics/dataset/patch_filter/shannon_patch_filter.py``)."""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import ArrayLike

from patchsieve.config import ShannonPatchFilterConfig
from patchsieve.errors import ConfigError
from patchsieve.filters._base import RegionFilter
from patchsieve.filters.stats import Ties, as_patch, check_threshold, check_ties, keep_mask

logger = logging.getLogger(__name__)


def shannon_entropy(patch: ArrayLike) -> float:
    """Shannon entropy in bits of the values of ``patch`` (``skimage.measure.shannon_entropy``)."""
    _, counts = np.unique(np.asarray(patch), return_counts=True)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log2(p)))


class ShannonPatchFilter(RegionFilter):
    """Filter regions on the Shannon entropy (base 2) of the reference channel.

    Parameters
    ----------
    threshold : float
        Minimum entropy in bits (>= 0), e.g. 7.5.
    ties : {"careamics", "keep", "drop"}, default "careamics"
        ``filter_out`` keeps at equality (CAREamics), ``apply_filter`` drops at equality
        (CAREamics, quirk B3); ``"keep"``/``"drop"`` apply one rule to both.

    Notes
    -----
    On float data nearly every value is unique, so the entropy is about
    ``log2(#pixels)`` except where zero padding dominates (quirk B5); patchsieve warns
    (:class:`~patchsieve.errors.PatchsieveWarning`) when it sees this.

    Examples
    --------
    >>> img = np.arange(128 * 128, dtype=np.float32).reshape(128, 128) % 4
    >>> float(ShannonPatchFilter.filter_map(img, (64, 64))[0, 0])
    2.0
    """

    STAT = "entropy"
    MAP_TITLE = "Shannon Entropy Filter Map"

    def __init__(self, threshold: float, *, ties: Ties = "careamics") -> None:
        thr = check_threshold("threshold", threshold)
        assert thr is not None
        if thr < 0:
            raise ConfigError(f"threshold must be non-negative (entropy in bits); got {thr}.")
        self.threshold = thr
        self.ties = check_ties(ties)

    def __repr__(self) -> str:
        return f"ShannonPatchFilter(threshold={self.threshold!r})"

    @classmethod
    def from_config(cls, config: ShannonPatchFilterConfig) -> ShannonPatchFilter:
        """Build the filter from its config."""
        return cls(threshold=config.threshold)

    def filter_out(self, patch: ArrayLike) -> bool:
        """True if the entropy of ``patch`` is below the threshold (CAREamics)."""
        h = shannon_entropy(as_patch(patch))
        return not bool(keep_mask(h, self.threshold, self.ties, strict_default=False))
