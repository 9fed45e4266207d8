"""Filter-map figures: CAREamics' ``plot_filter_map`` look for every filter of a side-car (its
stored statistics; only the shown slice of the source is read) or of a source (computed in
memory), with the keep mask outlined."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.analysis._common import (
    _as_sidecar,
    _check_channel,
    _sample_index,
    _spatial_patch,
    _spatial_shape,
    _stat_label,
    threshold_field,
)
from patchsieve.config import parse_filter_config
from patchsieve.errors import ConfigError
from patchsieve.filters.stats import as_image, expand_region_values, image_stats
from patchsieve.grid import SAMPLE_DIMS, SPATIAL_DIMS, normalize_patch_size
from patchsieve.regions import filter_out_from_stats, required_stats
from patchsieve.sidecar import Sidecar, is_sidecar

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_filter_maps"]


def _slice_region_map(values: NDArray[Any], spatial_shape: Sequence[int],
                      patch: Sequence[int], z: int | None) -> NDArray[np.float64]:
    """CAREamics' per-pixel map of region values on one z slice (2D: the whole image)."""
    v = np.asarray(values, np.float64)
    if len(spatial_shape) == 2:
        return expand_region_values(v, spatial_shape, patch)
    bz = int(z) // int(patch[0])  # type: ignore[arg-type]
    layers = [v[g] for g in (bz - 1, bz) if 0 <= g < v.shape[0]]
    if not layers:
        return np.zeros(tuple(spatial_shape[1:]), np.float64)
    m = np.maximum.reduce(layers)
    if len(layers) < 2:  # a region outside the grid counts as 0 (CAREamics' zero layers)
        m = np.maximum(m, 0.0)
    return expand_region_values(m, spatial_shape[1:], patch[1:])


@dataclass
class _Panel:
    name: str
    config: Any
    stat: str
    field: str
    values: NDArray[np.float64]
    keep: NDArray[np.bool_] | None
    background_fraction: float | None


def _read_slice(vol: Any, index: Mapping[str, int], channel: int | None, z: int | None,
                zrange: tuple[int, int] | None = None) -> NDArray[Any]:
    sel: dict[str, Any] = dict(index)
    if "c" in vol.dims:
        sel["c"] = channel if channel is not None else 0
    if "z" in vol.dims:
        sel["z"] = slice(*zrange) if zrange is not None else z
    return np.asarray(vol.isel(sel).data.compute())


def _resolve_z(spatial_shape: Sequence[int], z: int | None) -> int | None:
    if len(spatial_shape) == 2:
        if z is not None:
            raise ConfigError("z applies to 3D data only; this volume is 2D. Fix: drop --z.")
        return None
    nz = int(spatial_shape[0])
    zz = nz // 2 if z is None else int(z)
    if not 0 <= zz < nz:
        raise ConfigError(f"z must be in [0, {nz}); got {z}. Fix: pick a slice 0..{nz - 1}.")
    return zz


def _panels_from_sidecar(sc: Sidecar, sample: int, z: int | None,
                         names: Sequence[str] | None) -> list[_Panel]:
    shape, patch = _spatial_shape(sc), _spatial_patch(sc)
    stats = sc.stats
    panels = []
    for name in names or sc.filter_names:
        cfg = sc.config(sc.resolve_filter(name))
        field, stat = threshold_field(cfg, len(shape))
        fo = sc.filter_out(name)[sample]
        panels.append(_Panel(
            name, cfg, stat, field, _slice_region_map(stats[stat][sample], shape, patch, z),
            _slice_region_map((~fo).astype(np.float64), shape, patch, z) > 0.5,
            _slice_background(fo, patch, z)))
    return panels


def _slice_background(fo: NDArray[np.bool_], patch: Sequence[int], z: int | None) -> float:
    """Share of background among the regions that cover the shown slice."""
    if z is None:
        return float(fo.mean())
    bz = int(z) // int(patch[0])
    sub = fo[[g for g in (bz - 1, bz) if 0 <= g < fo.shape[0]]]
    return float(sub.mean()) if sub.size else 0.0


def _panels_from_source(vol: Any, index: Mapping[str, int], z: int | None,
                        filters: Sequence[Any], patch_size: Any) -> list[_Panel]:
    spatial = tuple(d for d in SPATIAL_DIMS if d in vol.dims)
    shape = tuple(int(vol.sizes[d]) for d in spatial)
    if patch_size is None:
        raise ConfigError("patch_size is required to plot filter maps of a source. "
                          "Fix: pass patch_size=(64, 64) / --patch 64,64.")
    patch = tuple(normalize_patch_size(patch_size, spatial).values())
    items = []
    for f in filters:
        if isinstance(f, str):
            kind = f.lower().replace("-", "_").replace("meanstd", "mean_std")
            base = {"max": {"threshold": 0.0}, "mean_std": {"mean_threshold": 0.0},
                    "shannon": {"threshold": 0.0}}
            if kind not in base:
                raise ConfigError(f"filters entries must be max, mean_std or shannon (or a "
                                  f"config with a threshold); got {f!r}.")
            items.append((kind, parse_filter_config({"name": kind, **base[kind]}), False))
        else:
            cfg = parse_filter_config(f)
            if cfg.name == "mask":
                raise ConfigError("a mask filter can only be plotted from a side-car (its "
                                  "coverage is stored there). Fix: compute the side-car first.")
            items.append((cfg.name, cfg, True))
    refs = {int(c.ref_channel) for _, c, _ in items}
    if len(refs) > 1:
        raise ConfigError(f"filters use different ref_channel values {sorted(refs)}.")
    ref = refs.pop() if refs else 0
    z0 = 0
    if z is not None:
        pz = patch[0]
        z0, z1 = max(z // pz - 1, 0) * pz, min((z // pz + 2) * pz, shape[0])
        img = _read_slice(vol, index, ref, None, (z0, z1))
        lshape = (z1 - z0, *shape[1:])
    else:
        img, lshape = _read_slice(vol, index, ref, None), shape
    needed = sorted({s for _, c, _ in items for s in required_stats(c, len(shape))})
    stats = image_stats(as_image(img), patch, needed, "careamics")
    panels = []
    zl = None if z is None else z - z0
    for name, cfg, has_thr in items:
        field, stat = threshold_field(cfg, len(shape))
        values = _slice_region_map(stats[stat], lshape, patch, zl)
        keep = bg = None
        if has_thr:
            fo = np.asarray(filter_out_from_stats(cfg, stats, ndim=len(shape)), bool)
            keep = _slice_region_map((~fo).astype(np.float64), lshape, patch, zl) > 0.5
            bg = _slice_background(fo, patch, zl)
        panels.append(_Panel(name, cfg, stat, field, values, keep, bg))
    return panels


def plot_filter_maps(
    source: Any,
    out: str | os.PathLike[str] | None = None,
    *,
    sample: int = 0,
    z: int | None = None,
    channel: int | None = None,
    filters: Sequence[Any] | None = None,
    patch_size: Any = None,
    axes: str | None = None,
    level: int = 0,
    storage_options: Mapping[str, Any] | None = None,
    dpi: int = 100,
) -> Figure:
    """Image, filter map and keep mask of every filter on one sample (and z slice).

    Parameters
    ----------
    source : str, path-like or Sidecar
        A side-car (region values come from its stored statistics; only the displayed slice of
        its source is read) or a volume (the statistics of the displayed sample, or of the z
        slab the slice needs, are computed in memory).
    out : str or path-like, optional
        Write the figure as PNG.
    sample : int
        Flat sample index (C order over the ``s``/``t`` dims).
    z : int, optional
        z slice of 3D data (default: the middle slice).
    channel : int, optional
        Channel shown (default: the reference channel).
    filters : sequence, optional
        Side-car: filter names (default all). Source: filter configs (map + keep mask) or the
        names ``"max"``, ``"mean_std"``, ``"shannon"`` (map only).
    patch_size : sequence or mapping, optional
        Source only: the patch size.
    axes, level, storage_options : optional
        As for :func:`patchsieve.open_volume`.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per filter: gray image, magma filter map (alpha 0.5) with a colour bar marking
        the threshold, and the outline of the pixels covered by at least one kept region.
    """
    from patchsieve.volume import open_volume

    sc = source if isinstance(source, Sidecar) else None
    if sc is None and isinstance(source, (str, os.PathLike)) and is_sidecar(source, storage_options):
        sc = _as_sidecar(source, storage_options)
    if sc is not None:
        vol = open_volume(sc.locate_source(), level=sc.level, storage_options=storage_options)
        ref = sc.ref_channel
    else:
        vol = open_volume(source, axes=axes, level=level, storage_options=storage_options)
        ref = None
    spatial = tuple(d for d in SPATIAL_DIMS if d in vol.dims)
    sample_dims = tuple(d for d in SAMPLE_DIMS if d in vol.dims)
    sshape = tuple(int(vol.sizes[d]) for d in sample_dims)
    index = dict(zip(sample_dims, _sample_index(sshape, sample)))
    shape = tuple(int(vol.sizes[d]) for d in spatial)
    zz = _resolve_z(shape, z)
    _check_channel(int(vol.sizes.get("c", 1)), channel)
    if sc is not None:
        panels = _panels_from_sidecar(sc, sample, zz, filters)
    else:
        if not filters:
            raise ConfigError("filters is required to plot a source. Fix: pass e.g. "
                              "filters=['shannon'] or [ShannonPatchFilterConfig(threshold=7.5)].")
        panels = _panels_from_source(vol, index, zz, filters, patch_size)
        ref = next((int(p.config.ref_channel) for p in panels), 0)
    shown = channel if channel is not None else ref
    image = _read_slice(vol, index, shown, zz)
    where = [f"{d}={i}" for d, i in index.items()] + ([f"z={zz}"] if zz is not None else []) + \
        ([f"channel {shown}"] if "c" in vol.dims else [])
    name = os.path.basename(str(sc.source if sc is not None else source).rstrip("/"))
    patch = sc.patch_size if sc is not None else patch_size
    fig = _draw_panels(image, panels, f"{name} ({', '.join(where) or 'image'}), patch {patch}")
    if out is not None:
        fig.savefig(out, dpi=dpi)
    return fig


def _draw_panels(image: NDArray[Any], panels: Sequence[_Panel], suptitle: str) -> Figure:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch as MPatch

    n = len(panels)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    h, w = image.shape
    side = 5.5
    fig, axs = plt.subplots(nrows, ncols, figsize=(side * ncols * 1.2, side * nrows * h / w + 0.8),
                            constrained_layout=True, squeeze=False)
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0, 1)
    for ax, p in zip(axs.ravel(), panels):
        ax.imshow(image, "gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        thr = getattr(p.config, p.field, None)
        vals = [float(p.values.min()), float(p.values.max())]
        if p.keep is not None and thr is not None:  # keep the threshold on the colour bar
            vals += [float(thr)]
        vmin, vmax = min(vals), max(vals)
        m = ax.imshow(p.values, "magma", alpha=0.5, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1)
        cbar = fig.colorbar(m, ax=ax, shrink=0.85)
        label = _stat_label(p.stat)
        if p.keep is not None and thr is not None:
            cbar.ax.axhline(float(thr), color="cyan", lw=2)
            label += f"  (cyan line: {p.field} {float(thr):g})"
            if p.keep.any() and not p.keep.all():
                ax.contour(p.keep.astype(float), levels=[0.5], colors="cyan", linewidths=1.2)
            if not p.keep.all():
                with plt.rc_context({"hatch.color": "0.8", "hatch.linewidth": 0.8}):
                    ax.contourf(p.keep.astype(float), levels=[-0.5, 0.5], colors="none",
                                hatches=["//"])
            title = (f"{p.name}: {p.field} {float(thr):g}\n"
                     f"kept {p.keep.mean():.1%} of pixels; {p.background_fraction:.1%} of "
                     "regions background")
            ax.legend(handles=[Line2D([], [], color="cyan", lw=1.5, label="edge of kept area"),
                               MPatch(facecolor="0.35", edgecolor="0.8", hatch="//",
                                      label="background (no kept region)")],
                      loc="lower right", fontsize=8, framealpha=0.85)
        else:
            title = f"{p.name}: filter map (no threshold)"
        cbar.ax.set_ylabel(label)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axs.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=11)
    return fig
