"""Matplotlib figures of filter maps (matplotlib is imported inside the functions).

Fixes CAREamics quirks B1 (3D with ``z_idx=None`` did not slice: now the middle slice) and
B2 (MeanStd in 3D never sliced). The figures otherwise match CAREamics' layout.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from patchsieve.errors import ConfigError, DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["plot_filter_map", "plot_meanstd_filter_map", "select_slice"]


def select_slice(
    image: ArrayLike, filter_maps: list[np.ndarray], z_idx: int | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pick the z slice (default: middle) of a ZYX image and its maps; 2D passes through."""
    img = np.asarray(image)
    if img.ndim == 2:
        return img, filter_maps
    if img.ndim != 3:
        raise DataError(f"image must be YX or ZYX to plot; got shape {img.shape}.")
    z = img.shape[0] // 2 if z_idx is None else int(z_idx)
    if not -img.shape[0] <= z < img.shape[0]:
        raise ConfigError(f"z_idx must be in [0, {img.shape[0]}); got {z_idx}.")
    maps = [m[z] if m.ndim == 3 else m for m in filter_maps]
    return img[z], maps


def _check_shape(img: np.ndarray, fm: np.ndarray) -> None:
    if fm.shape != img.shape:
        raise DataError(
            f"filter_map shape {fm.shape} does not match the image slice {img.shape}. "
            "Fix: pass the filter_map computed from this image."
        )


def plot_filter_map(
    image: ArrayLike,
    filter_map: ArrayLike,
    z_idx: int | None = None,
    *,
    title: str = "Filter Map",
    label: str = "threshold",
    ax: Any = None,
) -> Figure:
    """Overlay one filter map (magma, alpha 0.5) on the image (gray) with a colour bar.

    Parameters
    ----------
    image : array_like, YX or ZYX
    filter_map : array_like, same shape as ``image``
    z_idx : int, optional
        Slice shown for 3D data; the middle slice when ``None``.
    title, label : str
        Figure title and colour-bar label.
    ax : matplotlib Axes, optional
        Draw into this axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    img, (fm,) = select_slice(image, [np.asarray(filter_map)], z_idx)
    _check_shape(img, fm)
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 8), constrained_layout=True)
    else:
        fig = ax.figure
    ax.imshow(img, "gray")
    m = ax.imshow(fm, "magma", alpha=0.5)
    cbar = fig.colorbar(m, ax=ax)
    cbar.ax.set_ylabel(label)
    fig.suptitle(title)
    return fig


def plot_meanstd_filter_map(
    image: ArrayLike, filter_map: ArrayLike, z_idx: int | None = None
) -> Figure:
    """Mean and std maps side by side (``filter_map`` is the stacked ``(2, ...)`` map)."""
    import matplotlib.pyplot as plt

    fm = np.asarray(filter_map)
    if fm.shape[0] != 2:
        raise DataError(
            f"filter_map must be the stacked (2, ...) mean/std map; got shape {fm.shape}."
        )
    img, maps = select_slice(image, [fm[0], fm[1]], z_idx)
    fig, axes = plt.subplots(1, 2, figsize=(16, 8), constrained_layout=True)
    for ax, m, title, label in zip(
        axes, maps, ("Mean Filter Map", "Standard-Deviation Filter Map"),
        ("mean_threshold", "std_threshold"),
    ):
        _check_shape(img, m)
        ax.imshow(img, "gray")
        im = ax.imshow(m, "magma", alpha=0.5)
        cbar = fig.colorbar(im, ax=ax)
        cbar.ax.set_ylabel(label)
        ax.set_title(title)
    fig.suptitle("Mean-Std Filter Map")
    return fig
