"""What the four filters share: the :class:`PatchFilter` protocol and :class:`RegionFilter`,
the base class holding CAREamics' static methods once (region values, filter map, apply,
plot) for filters scored by one region statistic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from patchsieve.filters.stats import (
    Ties,
    as_image,
    check_border,
    expand_region_values,
    image_stats,
    threshold_map,
)
from patchsieve.grid import Border

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@runtime_checkable
class PatchFilter(Protocol):
    """What every patchsieve filter offers (CAREamics' ``PatchFilter`` interface)."""

    def filter_out(self, patch: NDArray[np.generic]) -> bool:
        """True if the region ``patch`` is background."""
        ...


class RegionFilter:
    """Base of the filters scored by one region statistic (``STAT``).

    Subclasses set ``STAT`` (the statistic's name, see :mod:`patchsieve.filters.stats`),
    ``MAP_TITLE`` and ``MAP_LABEL`` (of :meth:`plot_filter_map`) and ``IS_MASK`` (the input is
    a binary mask), and implement ``filter_out``; they override a method where CAREamics'
    signature differs (Max takes a coverage, MeanStd stacks two maps).
    """

    STAT: ClassVar[str]
    MAP_TITLE: ClassVar[str]
    MAP_LABEL: ClassVar[str] = "threshold"
    IS_MASK: ClassVar[bool] = False

    @classmethod
    def region_values(
        cls, image: ArrayLike, patch_size: Sequence[int], *, border: Border = "careamics"
    ) -> NDArray[np.float64]:
        """The region statistic of every region of a (Z)YX image, shape ``grid_shape``."""
        img = as_image(image, what="mask" if cls.IS_MASK else "image", mask=cls.IS_MASK)
        return image_stats(img, patch_size, [cls.STAT], check_border(border))[cls.STAT]

    @classmethod
    def filter_map(
        cls, image: ArrayLike, patch_size: Sequence[int], *, border: Border = "careamics"
    ) -> NDArray[np.float64]:
        """Per-pixel map of the region values, exactly as CAREamics' ``filter_map``."""
        img = np.asarray(image)
        vals = cls.region_values(img, patch_size, border=border)
        return expand_region_values(vals, img.shape, patch_size)

    @staticmethod
    def apply_filter(
        filter_map: ArrayLike, threshold: float, *, ties: Ties = "careamics"
    ) -> NDArray[np.bool_]:
        """Keep-mask ``filter_map > threshold`` (``>=`` with ``ties="keep"``)."""
        return threshold_map(filter_map, threshold, ties)

    @classmethod
    def plot_filter_map(
        cls, image: ArrayLike, filter_map: ArrayLike, z_idx: int | None = None, **kwargs: Any
    ) -> Figure:
        """Plot the filter map over the image (3D: slice ``z_idx``, default middle)."""
        from patchsieve.plotting import plot_filter_map

        return plot_filter_map(image, filter_map, z_idx, title=cls.MAP_TITLE,
                               label=cls.MAP_LABEL, **kwargs)
