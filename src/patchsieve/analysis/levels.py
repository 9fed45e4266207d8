"""Filtering on a coarser pyramid level: scale the patch size and map region decisions between
levels through the NGFF scale/translation of each level (metadata only, no volume read)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.analysis._common import _as_sidecar, _candidate_thresholds, threshold_field
from patchsieve.errors import ConfigError
from patchsieve.grid import SPATIAL_DIMS, VolumeGeometry, normalize_patch_size

__all__ = [
    "decisions_at",
    "decisions_at_level0",
    "level0_geometry",
    "level_agreement",
    "level_patch_size",
    "region_index_map",
]


def _level_factors(vol0: Any, volk: Any) -> dict[str, float]:
    """Level-k pixel size in level-0 pixels per spatial dim (NGFF scale, else shape ratio)."""
    out = {}
    for d in (d for d in SPATIAL_DIMS if d in vol0.dims):
        s0 = float(vol0.attrs.get("scale", {}).get(d, 1.0))
        sk = float(volk.attrs.get("scale", {}).get(d, 1.0))
        ratio = vol0.sizes[d] / volk.sizes[d]
        out[d] = sk / s0 if sk != s0 or vol0.sizes[d] == volk.sizes[d] else ratio
    return out


def level_patch_size(
    source: Any,
    patch_size: Sequence[int] | Mapping[str, int],
    level: int,
    *,
    storage_options: Mapping[str, Any] | None = None,
    axes: str | None = None,
) -> dict[str, int]:
    """Convert a patch size in level-0 pixels into pixels of pyramid level ``level``.

    Parameters
    ----------
    source : str or path-like
        OME-Zarr image with a pyramid.
    patch_size : sequence or mapping
        Patch size in level-0 pixels (CAREamics order).
    level : int
        Target pyramid level.

    Returns
    -------
    dict of str -> int
        Patch size per spatial dim at ``level``.

    Raises
    ------
    ConfigError
        A patch size not divisible by the level's downsampling factor.

    Examples
    --------
    The demo volume halves z, y and x per level: ``level_patch_size(path, (16, 64, 64), 1)``
    gives ``{"z": 8, "y": 32, "x": 32}``.
    """
    from patchsieve.volume import open_pyramid

    levels = open_pyramid(source, storage_options=storage_options, axes=axes)
    if not 0 <= int(level) < len(levels):
        raise ConfigError(f"level must be in [0, {len(levels)}) for {source!r}; got {level}.")
    spatial = tuple(d for d in SPATIAL_DIMS if d in levels[0].dims)
    ps = normalize_patch_size(patch_size, spatial)
    fac = _level_factors(levels[0], levels[int(level)])
    out = {}
    for d in spatial:
        val = ps[d] / fac[d]
        if abs(val - round(val)) > 1e-6 or round(val) < 1:
            raise ConfigError(
                f"patch_size[{d!r}]={ps[d]} (level-0 pixels) is not a multiple of level {level}'s "
                f"downsampling factor {fac[d]:g} along {d}. Fix: use a multiple of {fac[d]:g}.")
        out[d] = int(round(val))
    return out


def _geometry_of(obj: Any) -> VolumeGeometry:
    if isinstance(obj, VolumeGeometry):
        return obj
    return _as_sidecar(obj).geometry


def level0_geometry(sidecar: Any, *, storage_options: Mapping[str, Any] | None = None
                    ) -> VolumeGeometry:
    """The level-0 region grid matching a side-car computed on a coarser pyramid level.

    The patch size is the side-car's multiplied by the level's downsampling factor per dim
    (NGFF scales of the two levels; shape ratio without them); only metadata is read.
    """
    from patchsieve.volume import open_volume

    sc = _as_sidecar(sidecar, storage_options)
    g = sc.geometry
    vol0 = open_volume(sc.locate_source(), level=0, storage_options=storage_options)
    patch, shape, scale, trans = [], [], [], []
    for i, d in enumerate(g.spatial_dims):
        shape.append(int(vol0.sizes[d]))
        scale.append(float(vol0.attrs.get("scale", {}).get(d, 1.0)))
        trans.append(float(vol0.attrs.get("translation", {}).get(d, 0.0)))
        gs = g.scale[i] if g.scale is not None else 1.0
        f = gs / scale[i] if gs != scale[i] or shape[i] == g.spatial_shape[i] \
            else shape[i] / g.spatial_shape[i]
        patch.append(max(1, int(round(g.patch_size[i] * f))))
    return g.replace(spatial_shape=tuple(shape), patch_size=tuple(patch), scale=tuple(scale),
                     translation=tuple(trans), level=0)


def region_index_map(src: Any, dst: Any) -> list[NDArray[np.int64]]:
    """For each spatial dim, the ``src`` region whose centre is nearest to each ``dst`` region.

    ``src`` and ``dst`` are side-cars (or :class:`~patchsieve.grid.VolumeGeometry`). Region ``g`` covers
    pixels ``[g*p, g*p + 2p)``; its centre ``g*p + p - 0.5`` (pixel coordinates) is carried to
    physical space with the level's NGFF ``scale`` and ``translation`` and back into the other
    level's pixels. Patch sizes that match through the scale factors (e.g. 64 at level 0, 32 at
    level 1) give a one-to-one map.

    Returns
    -------
    list of numpy.ndarray of int64
        One index array per spatial dim, of length ``dst.grid_shape[i]``.
    """
    a, b = _geometry_of(src), _geometry_of(dst)
    if a.spatial_dims != b.spatial_dims:
        raise ConfigError(f"side-cars have spatial dims {a.spatial_dims} and {b.spatial_dims}.")
    a_scale, b_scale = a.scale or (1.0,) * a.ndim, b.scale or (1.0,) * b.ndim
    a_trans, b_trans = a.translation or (0.0,) * a.ndim, b.translation or (0.0,) * b.ndim
    out = []
    for i in range(a.ndim):
        if a_scale[i] == b_scale[i] and a.spatial_shape[i] != b.spatial_shape[i]:
            # no metadata: the shape ratio
            sa_d, sb_d, ta_d, tb_d = b.spatial_shape[i] / a.spatial_shape[i], 1.0, 0.0, 0.0
        else:
            sa_d, sb_d = a_scale[i], b_scale[i]
            ta_d, tb_d = a_trans[i], b_trans[i]
        pb, pa = b.patch_size[i], a.patch_size[i]
        centre = np.arange(b.grid_shape[i]) * pb + pb - 0.5
        u = (tb_d + sb_d * centre - ta_d) / sa_d
        g = np.rint((u + 0.5) / pa - 1.0).astype(np.int64)
        out.append(np.clip(g, 0, a.grid_shape[i] - 1))
    return out


def decisions_at(src: Any, dst: Any, filter: str,  # noqa: A002
                 values: NDArray[Any] | None = None) -> NDArray[Any]:
    """``src``'s region decisions (or ``values``) resampled onto ``dst``'s region grid.

    ``dst`` is a side-car or a :class:`~patchsieve.grid.VolumeGeometry` (e.g.
    :func:`level0_geometry`).
    Returns an array of shape ``(n_samples, *dst.grid_shape)``; with ``src`` a level-k side-car
    and ``dst`` a level-0 grid, these are the level-k decisions mapped back to level 0.
    """
    a = _as_sidecar(src)
    if not isinstance(dst, VolumeGeometry):
        b = _as_sidecar(dst)
        if a.sample_shape != b.sample_shape:
            raise ConfigError(
                f"side-cars have sample shapes {a.sample_shape} and {b.sample_shape}; "
                "decisions can only be mapped between levels of one source.")
    arr = a.filter_out(a.resolve_filter(filter)) if values is None else np.asarray(values)
    idx = np.ix_(np.arange(arr.shape[0]), *region_index_map(a, dst))
    return arr[idx]


def decisions_at_level0(sidecar: Any, filter: str | None = None, *,  # noqa: A002
                        storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A coarse-level side-car's decisions and weights on the level-0 region grid.

    Returns
    -------
    dict
        ``filter_out`` (bool) and ``weight`` (float64), both ``(n_samples, *grid_shape)`` of the
        level-0 grid, and that grid's ``patch_size`` and ``grid_shape``: what a sampler of
        level-0 patches needs (e.g. ``StratifiedPatching(level-0 shape, patch_size, weight,
        background=filter_out)``).
    """
    sc = _as_sidecar(sidecar, storage_options)
    name = sc.resolve_filter(filter)
    geo = level0_geometry(sc, storage_options=storage_options)
    fo = decisions_at(sc, geo, name)
    p = float(sc.config(name).filtered_patch_prob)
    return {"filter_out": fo, "weight": np.where(fo, p, 1.0), "patch_size": geo.patch_by_dim,
            "grid_shape": geo.grid_shape,
            "shape": dict(zip(geo.spatial_dims, geo.spatial_shape, strict=True))}


def level_agreement(a: Any, b: Any, filters: Sequence[str] | None = None) -> dict[str, Any]:
    """Agreement of region decisions between side-cars of two pyramid levels of one source.

    The coarser side-car's decisions are mapped onto the finer one's grid
    (:func:`decisions_at`) and compared region by region.

    Returns
    -------
    dict
        Per common filter: ``agreement`` (fraction of identical decisions), ``n_regions``,
        ``background_fraction_fine``/``_coarse``, ``coarse_only_background``,
        ``fine_only_background``, ``fine_level``, ``coarse_level`` and
        ``agreement_at_matched_fraction``: the agreement when the coarse threshold is moved so
        that both levels drop the same share of regions (for single-statistic filters; ``None``
        otherwise).
    """
    sa, sb = _as_sidecar(a), _as_sidecar(b)
    fine, coarse = (sa, sb) if sa.level <= sb.level else (sb, sa)
    names = [n for n in (filters or fine.filter_names) if n in coarse.filter_names]
    if not names:
        raise ConfigError(f"the side-cars share no filter name ({fine.filter_names} vs "
                          f"{coarse.filter_names}). Fix: compute both with the same filter names.")
    out = {}
    for name in names:
        f = fine.filter_out(name)
        c = decisions_at(coarse, fine, name)
        res = {"fine_level": fine.level, "coarse_level": coarse.level, "n_regions": int(f.size),
               "agreement": float((f == c).mean()),
               "background_fraction_fine": float(f.mean()),
               "background_fraction_coarse": float(c.mean()),
               "coarse_only_background": float((c & ~f).mean()),
               "fine_only_background": float((f & ~c).mean()),
               "agreement_at_matched_fraction": None}
        cfg = coarse.config(name)
        if not (cfg.name == "mean_std" and cfg.std_threshold is not None):
            stat = threshold_field(cfg, len(coarse.spatial_dims))[1]
            v = decisions_at(coarse, fine, name, coarse.stats[stat]).astype(np.float64)
            thr = _candidate_thresholds(v.ravel(), float(f.mean()))
            res["agreement_at_matched_fraction"] = float(((v < thr) == f).mean())
            res["matched_coarse_threshold"] = thr
        out[name] = res
    return out
