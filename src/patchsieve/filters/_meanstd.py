"""CAREamics' ``MeanStdPatchFilter`` (``careamics/dataset/patch_filter/mean_std_patch_filter.py``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from patchsieve.config import MeanStdPatchFilterConfig
from patchsieve.errors import ConfigError
from patchsieve.filters._base import RegionFilter
from patchsieve.filters.stats import (
    Ties,
    as_image,
    as_patch,
    check_border,
    check_threshold,
    check_ties,
    expand_region_values,
    image_stats,
    keep_mask,
)
from patchsieve.grid import Border

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def _non_negative(name: str, value: float | None, allow_none: bool) -> float | None:
    v = check_threshold(name, value, allow_none=allow_none)
    if v is not None and v < 0:
        raise ConfigError(f"{name} must be non-negative; got {v}.")
    return v


class MeanStdPatchFilter(RegionFilter):
    """Filter regions on the mean and (optionally) the std of the reference channel.

    Parameters
    ----------
    mean_threshold : float
        Minimum region mean (>= 0).
    std_threshold : float or None, default None
        Minimum region std (>= 0); ``None`` disables the std test.
    ties : {"careamics", "keep", "drop"}, default "careamics"
        ``filter_out`` keeps at equality, ``apply_filter`` drops at equality (B3).

    Notes
    -----
    Mean and std are those of the zero-padded float32 region (``np.mean``/``np.std``),
    computed in float64 from per-cell sums (they agree with numpy's float32 results to
    float32 rounding).

    Examples
    --------
    >>> img = np.full((128, 128), 100.0, np.float32)
    >>> MeanStdPatchFilter.filter_map(img, (64, 64))[:, 0, 0]
    array([100.,   0.])
    """

    def __init__(
        self,
        mean_threshold: float,
        std_threshold: float | None = None,
        *,
        ties: Ties = "careamics",
    ) -> None:
        self.mean_threshold = _non_negative("mean_threshold", mean_threshold, False)
        self.std_threshold = _non_negative("std_threshold", std_threshold, True)
        self.ties = check_ties(ties)

    def __repr__(self) -> str:
        return (
            f"MeanStdPatchFilter(mean_threshold={self.mean_threshold!r}, "
            f"std_threshold={self.std_threshold!r})"
        )

    @classmethod
    def from_config(cls, config: MeanStdPatchFilterConfig) -> MeanStdPatchFilter:
        """Build the filter from its config."""
        return cls(mean_threshold=config.mean_threshold, std_threshold=config.std_threshold)

    def filter_out(self, patch: ArrayLike) -> bool:
        """True if ``mean < mean_threshold`` or ``std < std_threshold`` (CAREamics)."""
        p = as_patch(patch)
        p = p.astype(np.float32, copy=False) if p.dtype.kind != "f" else p
        keep = bool(keep_mask(np.mean(p), self.mean_threshold, self.ties, strict_default=False))
        if self.std_threshold is not None:
            keep &= bool(
                keep_mask(np.std(p), self.std_threshold, self.ties, strict_default=False)
            )
        return not keep

    @classmethod
    def region_values(
        cls, image: ArrayLike, patch_size: Sequence[int], *, border: Border = "careamics"
    ) -> NDArray[np.float64]:
        """Mean and std of every region: shape ``(2, *grid_shape)``."""
        img = as_image(image)
        st = image_stats(img, patch_size, ["mean", "std"], check_border(border))
        return np.stack([st["mean"], st["std"]])

    @classmethod
    def filter_map(
        cls, image: ArrayLike, patch_size: Sequence[int], *, border: Border = "careamics"
    ) -> NDArray[np.float64]:
        """Stacked per-pixel mean and std maps ``(2, *image.shape)`` as CAREamics."""
        img = np.asarray(image)
        vals = cls.region_values(img, patch_size, border=border)
        out = np.empty((2, *img.shape), dtype=np.float64)
        for i in range(2):
            expand_region_values(vals[i], img.shape, patch_size, out=out[i])
        return out

    @staticmethod
    def apply_filter(  # type: ignore[override] - CAREamics' signature takes two thresholds
        filter_map: ArrayLike,
        mean_threshold: float,
        std_threshold: float | None = None,
        *,
        ties: Ties = "careamics",
    ) -> NDArray[np.bool_]:
        """Keep-mask ``fm[0] > mean_threshold & fm[1] > std_threshold``."""
        fm = np.asarray(filter_map)
        if fm.ndim < 3 or fm.shape[0] != 2:
            raise ConfigError(
                f"filter_map must be the stacked (2, ...) mean/std map from "
                f"MeanStdPatchFilter.filter_map; got shape {fm.shape}."
            )
        ties = check_ties(ties)
        mt = check_threshold("mean_threshold", mean_threshold)
        assert mt is not None
        keep = keep_mask(fm[0], mt, ties, strict_default=True)
        st = check_threshold("std_threshold", std_threshold, allow_none=True)
        if st is not None:
            keep &= keep_mask(fm[1], st, ties, strict_default=True)
        return keep

    @classmethod
    def plot_filter_map(
        cls, image: ArrayLike, filter_map: ArrayLike, z_idx: int | None = None, **kwargs: Any
    ) -> Figure:
        """Plot mean and std maps side by side (3D: slice ``z_idx``, default middle)."""
        from patchsieve.plotting import plot_meanstd_filter_map

        return plot_meanstd_filter_map(image, filter_map, z_idx, **kwargs)
