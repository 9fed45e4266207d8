"""Region statistics as a Dask graph over a chunked ``xarray.DataArray``.

:func:`region_stats` builds, lazily, one float64 variable per statistic with dims
``(*sample dims among s/t, [region_z,] region_y, region_x)``. Region blocks follow the
volume's storage chunks: a block holds the regions whose origin lies in one chunk and reads
that data plus the patch of halo the last regions reach into the next chunk. Nothing is
materialised beyond one block. :func:`filter_out_from_stats` turns statistics into CAREamics'
``filter_out`` decisions and :func:`filter_map_from_stats` into CAREamics' per-pixel map.
The numbers are those of the numpy filters in :mod:`patchsieve.filters`.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import ArrayLike, NDArray

from patchsieve.config import (
    MaskPatchFilterConfig,
    MaxPatchFilterConfig,
    MeanStdPatchFilterConfig,
    ShannonPatchFilterConfig,
    parse_filter_config,
    resolve_coverage,
)
from patchsieve.errors import ConfigError, DataError, PatchsieveDeprecationWarning
from patchsieve.filters.stats import (
    Ties,
    check_dtype,
    check_finite,
    check_mask_values,
    check_ties,
    compute_stats,
    expand_region_values,
    keep_mask,
    max_stat_name,
    max_train_stat_name,
    parse_stat,
    stat_values,
)
from patchsieve.grid import (
    DIM_ORDER,
    SAMPLE_DIMS,
    SPATIAL_DIMS,
    Border,
    RegionGrid,
    check_border,
    normalize_patch_size,
    region_chunks,
)

logger = logging.getLogger(__name__)

__all__ = [
    "decide",
    "filter_map_from_stats",
    "filter_out_from_stats",
    "region_block_array",
    "region_block_stats",
    "region_stats",
    "required_stats",
    "stat_names",
]


def required_stats(config: Any, ndim: int) -> list[str]:
    """Names of the region statistics a filter config needs.

    Parameters
    ----------
    config : PatchFilterConfig or mapping
    ndim : int
        Number of spatial dims (2 or 3; resolves the Max coverage).

    Returns
    -------
    list of str
        ``["max_cov0.25", "max", "max_train_cov0.25"]``, ``["mean", "std"]``, ``["entropy"]``
        or ``["mask_coverage"]``; the first is the statistic of the filter map and of
        threshold choices.

    Notes
    -----
    Max decisions follow CAREamics' training path (``filter_background`` ->
    ``MaxPatchFilter.filter_out``: constant-mode maximum filter, and a region whose maximum
    is below the threshold is dropped), hence ``"max"`` and ``"max_train_cov<c>"`` beside the
    filter-map value ``"max_cov<c>"`` (reflect mode). All three agree for data >= 0 (quirk
    B10).

    Examples
    --------
    >>> required_stats(MaxPatchFilterConfig(threshold=1.0), 3)
    ['max_cov0.125', 'max', 'max_train_cov0.125']
    """
    cfg = parse_filter_config(config)
    if isinstance(cfg, MaxPatchFilterConfig):
        cov = resolve_coverage(cfg.coverage, ndim)
        return [max_stat_name(cov), "max", max_train_stat_name(cov)]
    elif isinstance(cfg, MeanStdPatchFilterConfig):
        return ["mean", "std"]
    elif isinstance(cfg, ShannonPatchFilterConfig):
        return ["entropy"]
    elif isinstance(cfg, MaskPatchFilterConfig):
        return ["mask_coverage"]
    else:  # pragma: no cover
        raise ConfigError(f"unknown filter config {config!r}")


# --------------------------------------------------------------------------- volume checks
def _check_dims(volume: xr.DataArray, what: str) -> None:
    dims = tuple(volume.dims)
    unknown = [d for d in dims if d not in DIM_ORDER]
    if unknown or len(set(dims)) != len(dims):
        raise ConfigError(
            f"{what} dims must be distinct names among {DIM_ORDER}; got {dims}. "
            "Fix: open it with patchsieve.volume.open_volume or rename the dims."
        )
    if "y" not in dims or "x" not in dims:
        raise ConfigError(f"{what} must have 'y' and 'x' dims; got {dims}.")
    if any(volume.sizes[d] == 0 for d in dims):
        raise DataError(f"{what} is empty (sizes {dict(volume.sizes)}).")


def _select_channel(volume: xr.DataArray, ref_channel: int) -> xr.DataArray:
    if isinstance(ref_channel, bool) or not isinstance(ref_channel, (int, np.integer)):
        raise ConfigError(f"ref_channel must be a non-negative int; got {ref_channel!r}.")
    if ref_channel < 0:
        raise ConfigError(f"ref_channel must be >= 0; got {ref_channel}.")
    if "c" in volume.dims:
        n = volume.sizes["c"]
        if ref_channel >= n:
            raise ConfigError(
                f"ref_channel={ref_channel} is out of range: the volume has {n} channel(s) "
                f"along 'c'. Fix: use 0..{n - 1}."
            )
        return volume.isel(c=int(ref_channel), drop=True)
    if ref_channel > 0:
        raise ConfigError(
            f"ref_channel={ref_channel} but the volume has no 'c' dim (single channel). "
            "Fix: use ref_channel=0."
        )
    return volume


def _as_dask(volume: xr.DataArray) -> da.Array:
    data = volume.data
    if isinstance(data, da.Array):
        return data
    chunks = tuple(1 if d in SAMPLE_DIMS else -1 for d in volume.dims)
    return da.from_array(np.asarray(data), chunks=chunks)


# --------------------------------------------------------------------------- block kernel
def _block_stats(
    block: np.ndarray,
    *,
    patch_size: tuple[int, ...],
    n: tuple[int, ...],
    stats: tuple[str, ...],
    border: Border,
    n_sample_dims: int,
    origin: tuple[int, ...],
    dims: tuple[str, ...],
    is_mask: bool,
) -> NDArray[np.float64]:
    """Stats of one region block: returns ``(n_stats, *sample_block, *n)``."""
    sample_shape = block.shape[:n_sample_dims]
    what = "mask" if is_mask else "volume"
    if is_mask:
        check_mask_values(block, what=f"{what} block at {dict(zip(dims, origin))}")
    if block.dtype.kind in "ui" and block.dtype.itemsize <= 2:
        x = block  # exact in float32: the kernels take it as is (no converted copy)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            x = block.astype(np.float32, copy=False)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        where = {d: int(o + i) for d, o, i in zip(dims, origin, bad)}
        check_finite(x[tuple(bad)][None], what=f"{what} at {where}")
    slab = x.reshape((-1, *x.shape[n_sample_dims:]))
    res = compute_stats(slab, patch_size, n, list(stats), border)
    out = np.stack([res[s].reshape((*sample_shape, *n)) for s in stats])
    return out


def region_block_stats(
    block: np.ndarray,
    *,
    patch_size: tuple[int, ...],
    n: tuple[int, ...],
    stats: Sequence[str],
    border: Border = "careamics",
    n_sample_dims: int = 0,
    origin: tuple[int, ...] = (),
    dims: tuple[str, ...] = (),
) -> NDArray[np.float64]:
    """Statistics of one region block: the pixels of ``n`` regions per spatial axis.

    ``block`` is ``(*sample, *spatial)`` and starts at the origin of its first region; it holds
    the regions' pixels up to the image end (zero padding beyond, as CAREamics). This is what
    each task of :func:`region_block_array` (and of the streaming filter pass) computes; NaN/inf
    values are reported with their position (``origin`` + index, by ``dims``).

    Returns
    -------
    numpy.ndarray of float64, ``(len(stats), *sample, *n)``

    Examples
    --------
    >>> blk = np.arange(32, dtype="uint16").reshape(4, 8)
    >>> region_block_stats(blk, patch_size=(2, 4), n=(2, 1), stats=["mean"]).tolist()
    [[[15.5], [11.75]]]
    """
    return _block_stats(block, patch_size=tuple(int(p) for p in patch_size),
                        n=tuple(int(k) for k in n), stats=tuple(stats), border=border,
                        n_sample_dims=int(n_sample_dims), origin=tuple(origin),
                        dims=tuple(dims), is_mask=False)


def _blocks_for(
    data: da.Array,
    n_sample: int,
    patch_size: tuple[int, ...],
    grid_shape: tuple[int, ...],
    spatial_shape: tuple[int, ...],
) -> tuple[tuple[tuple[int, ...], ...], list[list[tuple[int, int]]]]:
    sample_chunks = tuple(data.chunks[:n_sample])
    rchunks = [
        region_chunks(data.chunks[n_sample + i], p, g)
        for i, (p, g) in enumerate(zip(patch_size, grid_shape))
    ]
    ranges = []
    for rc in rchunks:
        starts = np.concatenate([[0], np.cumsum(rc)[:-1]]).astype(int)
        ranges.append([(int(s), int(s + c)) for s, c in zip(starts, rc)])
    return sample_chunks + tuple(tuple(r) for r in rchunks), ranges


def _prepare(volume, ref_channel, what, *, is_mask):
    if not isinstance(volume, xr.DataArray):
        raise ConfigError(
            f"{what} must be an xarray.DataArray with named dims; got {type(volume).__name__}. "
            "Fix: wrap it, e.g. xr.DataArray(arr, dims=('s', 'y', 'x'))."
        )
    _check_dims(volume, what)
    vol = _select_channel(volume, ref_channel) if not is_mask else volume
    if is_mask and "c" in vol.dims:
        if vol.sizes["c"] != 1:
            raise DataError(f"mask must have no 'c' dim (or size 1); got {vol.sizes['c']}.")
        vol = vol.isel(c=0, drop=True)
    order = [d for d in DIM_ORDER if d in vol.dims]
    vol = vol.transpose(*order)
    check_dtype(np.empty(0, vol.dtype), what=what, allow_bool=is_mask)
    return vol


def region_stats(
    volume: xr.DataArray,
    patch_size: Sequence[int] | Mapping[str, int],
    stats: Sequence[str],
    *,
    ref_channel: int = 0,
    mask: xr.DataArray | None = None,
    border: Border = "careamics",
) -> xr.Dataset:
    """Lazy per-region statistics of a chunked volume.

    Parameters
    ----------
    volume : xarray.DataArray
        Dims among ``("s", "t", "c", "z", "y", "x")``, dask- or numpy-backed.
    patch_size : sequence of int or mapping
        Patch size in spatial order or by dim name.
    stats : sequence of str
        Stat names (:func:`required_stats`): ``"max_cov<c>"``, ``"mean"``, ``"std"``,
        ``"entropy"``, ``"mask_coverage"`` (computed on ``mask``), ``"max"``.
    ref_channel : int, default 0
        Channel scored when the volume has a ``c`` dim.
    mask : xarray.DataArray, optional
        Binary mask with the volume's dims (no ``c``) and sizes; needed for
        ``"mask_coverage"``.
    border : {"careamics", "valid"}
        Zero-padded edge regions (CAREamics) or in-image pixels only.

    Returns
    -------
    xarray.Dataset
        One float64 dask-backed variable per stat, dims ``(*sample dims, region_*)``,
        coords ``region_*`` = region origins in pixels. Attrs: ``patch_size``,
        ``grid_shape``, ``border``, ``spatial_dims``.

    Raises
    ------
    ConfigError
        Bad dims, patch size, stat name or ``ref_channel``; ``"mask_coverage"`` without
        a mask.
    DataError
        Unsupported dtype, empty volume, mask shape mismatch; NaN/inf or non-binary mask
        values are reported when the block holding them is computed.
    """
    border = check_border(border)
    stats = list(dict.fromkeys(stats))
    if not stats:
        raise ConfigError("stats must name at least one statistic; got [].")
    for s in stats:
        parse_stat(s)
    vol = _prepare(volume, ref_channel, "volume", is_mask=False)
    spatial = tuple(d for d in SPATIAL_DIMS if d in vol.dims)
    sample_dims = tuple(d for d in SAMPLE_DIMS if d in vol.dims)
    ps = normalize_patch_size(patch_size, spatial)
    spatial_shape = tuple(vol.sizes[d] for d in spatial)
    grid = RegionGrid(spatial_shape, tuple(ps.values()))
    sources: list[tuple[xr.DataArray, list[str], bool]] = []
    data_stats = [s for s in stats if s != "mask_coverage"]
    if data_stats:
        sources.append((vol, data_stats, False))
    if "mask_coverage" in stats:
        if mask is None:
            raise ConfigError(
                "stat 'mask_coverage' needs mask=; got None. Fix: pass the binary mask as "
                "an xarray.DataArray with the volume's dims."
            )
        m = _prepare(mask, 0, "mask", is_mask=True)
        expect = {d: vol.sizes[d] for d in vol.dims}
        if tuple(m.dims) != tuple(vol.dims) or dict(m.sizes) != expect:
            raise DataError(
                f"mask shape mismatch: mask has sizes {dict(m.sizes)}, the volume (without "
                f"'c') {expect}. Fix: pass a mask of the same shape as the data."
            )
        sources.append((m, ["mask_coverage"], True))
    variables: dict[str, tuple[tuple[str, ...], da.Array]] = {}
    out_dims = sample_dims + tuple(f"region_{d}" for d in spatial)
    for src, names, is_mask in sources:
        arr = _region_array(src, sample_dims, grid, names, border, is_mask)
        for i, name in enumerate(names):
            variables[name] = (out_dims, arr[i])
    coords: dict[str, Any] = {
        f"region_{d}": (f"region_{d}", o) for d, o in zip(spatial, grid.origins())
    }
    for d in sample_dims:
        if d in vol.coords:
            coords[d] = vol.coords[d]
    ds = xr.Dataset({k: variables[k] for k in stats}, coords=coords)
    ds.attrs.update(
        patch_size=list(grid.patch_size),
        grid_shape=list(grid.grid_shape),
        border=border,
        spatial_dims=list(spatial),
    )
    return ds


def region_block_array(
    volume: xr.DataArray,
    patch_size: Sequence[int] | Mapping[str, int],
    stats: Sequence[str],
    *,
    ref_channel: int = 0,
    border: Border = "careamics",
) -> da.Array:
    """The raw Dask array behind :func:`region_stats` for data statistics (not mask coverage).

    Shape ``(len(stats), *sample, *region grid)``, one chunk along the first axis; each block is
    one task reading its storage chunks (plus halo) directly. For callers that consume blocks
    themselves (the filter pass) and do not need a named ``xarray.Dataset``.
    """
    border = check_border(border)
    stats = list(dict.fromkeys(stats))
    for s in stats:
        if parse_stat(s)[0] == "mask_coverage":
            raise ConfigError("region_block_array computes data statistics; use region_stats "
                              "with mask= for 'mask_coverage'.")
    vol = _prepare(volume, ref_channel, "volume", is_mask=False)
    spatial = tuple(d for d in SPATIAL_DIMS if d in vol.dims)
    sample_dims = tuple(d for d in SAMPLE_DIMS if d in vol.dims)
    ps = normalize_patch_size(patch_size, spatial)
    grid = RegionGrid(tuple(vol.sizes[d] for d in spatial), tuple(ps.values()))
    return _region_array(vol, sample_dims, grid, stats, border, False)


def _region_array(
    vol: xr.DataArray,
    sample_dims: tuple[str, ...],
    grid: RegionGrid,
    names: list[str],
    border: Border,
    is_mask: bool,
) -> da.Array:
    """One task per region block; it reads the storage chunks its pixels touch directly
    (no intermediate slicing/concatenation tasks), so the graph stays small."""
    data = _as_dask(vol)
    ns = len(sample_dims)
    ps, gs = grid.patch_size, grid.grid_shape
    chunks, ranges = _blocks_for(data, ns, ps, gs, grid.spatial_shape)
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in data.chunks]
    dims = tuple(vol.dims)
    token = tokenize(data.name, ps, gs, tuple(names), border, is_mask)
    name = f"patchsieve-region-stats-{token}"
    func = functools.partial(
        _block_task, patch_size=ps, stats=tuple(names), border=border, n_sample_dims=ns,
        dims=dims, is_mask=is_mask,
    )
    dsk: dict[Any, Any] = {}
    for s_idx in np.ndindex(*data.numblocks[:ns]):
        for r_idx in np.ndindex(*[len(r) for r in ranges]):
            rr = [ranges[a][i] for a, i in enumerate(r_idx)]
            n = tuple(b - a for a, b in rr)
            px = [
                (a * p, min((b + 1) * p, size))
                for (a, b), p, size in zip(rr, ps, grid.spatial_shape)
            ]
            # storage chunks touched along each spatial axis, and the slice inside them
            cidx, local = [], []
            for ax, (lo, hi) in enumerate(px):
                bd = bounds[ns + ax]
                first = int(np.searchsorted(bd, lo, side="right") - 1)
                last = int(np.searchsorted(bd, hi, side="left") - 1)
                cidx.append(range(first, last + 1))
                local.append(slice(int(lo - bd[first]), int(hi - bd[first])))
            keys = _nested_keys(data.name, tuple(int(i) for i in s_idx), cidx)
            origin = tuple(int(bounds[a][i]) for a, i in enumerate(s_idx)) + tuple(
                lo for lo, _ in px
            )
            dsk[(name, 0, *s_idx, *r_idx)] = (func, keys, tuple(local), n, origin)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[data])
    return da.Array(graph, name, chunks=((len(names),), *chunks), dtype=np.float64)


def _nested_keys(name: str, s_idx: tuple[int, ...], cidx: list[range]) -> Any:
    if not cidx:
        return (name, *s_idx)
    if len(cidx) == 1:
        return [(name, *s_idx, i) for i in cidx[0]]
    return [_nested_keys(name, (*s_idx, i), cidx[1:]) for i in cidx[0]]


def _block_task(
    parts: Any,
    local: tuple[slice, ...],
    n: tuple[int, ...],
    origin: tuple[int, ...],
    **kwargs: Any,
) -> NDArray[np.float64]:
    """Assemble a block from its storage chunks, cut its pixels and compute its stats."""
    return _block_stats(_assemble(parts, local), n=n, origin=origin, **kwargs)


_WORK = threading.local()


def _assemble(parts: Any, local: tuple[slice, ...]) -> np.ndarray:
    """The pixels ``local`` of the nested-list block of chunks ``parts``.

    A single chunk is cut without a copy; neighbour chunks are copied, only where ``local``
    reaches them, into a per-thread buffer reused by the next block of the same shape
    (the stats do not keep it; fresh pages of large arrays are costly).
    """
    if not isinstance(parts, list):
        return np.asarray(parts)[(Ellipsis, *local)]
    nd = len(local)
    leaves: list[tuple[tuple[int, ...], np.ndarray]] = []

    def walk(p: Any, idx: tuple[int, ...]) -> None:
        if isinstance(p, list):
            for i, q in enumerate(p):
                walk(q, (*idx, i))
        else:
            leaves.append((idx, np.asarray(p)))

    walk(parts, ())
    if len(leaves) == 1:
        return leaves[0][1][(Ellipsis, *local)]
    depth = len(leaves[0][0])
    if depth > nd:  # nesting beyond the cut axes: np.block's general rules
        return np.block(parts)[(Ellipsis, *local)]
    # as np.block: the nesting levels concatenate the trailing axes
    leaves = [((0,) * (nd - depth) + idx, arr) for idx, arr in leaves]
    first = leaves[0][1]
    lead = first.shape[: first.ndim - nd]
    sizes: list[dict[int, int]] = [{} for _ in range(nd)]
    for idx, arr in leaves:
        for a in range(nd):
            sizes[a].setdefault(idx[a], arr.shape[first.ndim - nd + a])
    offsets = [np.concatenate([[0], np.cumsum([s[i] for i in range(len(s))])]) for s in sizes]
    bounds = [(sl.start or 0, sl.stop) for sl in local]
    shape = (*lead, *(hi - lo for lo, hi in bounds))
    bufs = _WORK.__dict__.setdefault("bufs", {})
    key = (shape, first.dtype)
    out = bufs.get("block")
    if out is None or (out.shape, out.dtype) != key:
        out = bufs["block"] = np.empty(shape, first.dtype)
    for idx, arr in leaves:
        src, dst = [], []
        for a in range(nd):
            o = int(offsets[a][idx[a]])
            lo = max(bounds[a][0], o)
            hi = min(bounds[a][1], o + arr.shape[first.ndim - nd + a])
            if hi <= lo:
                break
            src.append(slice(lo - o, hi - o))
            dst.append(slice(lo - bounds[a][0], hi - bounds[a][0]))
        else:
            out[(Ellipsis, *dst)] = arr[(Ellipsis, *src)]
    return out


# --------------------------------------------------------------------------- decisions
def filter_out_from_stats(
    config: Any,
    stats: Mapping[str, ArrayLike] | xr.Dataset,
    *,
    ndim: int | None = None,
    ties: Ties = "careamics",
) -> NDArray[np.bool_]:
    """Per-region ``filter_out`` decisions (True = background) from region statistics.

    With ``ties="careamics"`` the result equals CAREamics' ``filter_out`` on each region:
    Max drops when ``value <= threshold``, MeanStd, Shannon and Mask drop when
    ``value < threshold`` (they keep at equality, quirk B3). ``"keep"`` keeps every filter
    at equality, ``"drop"`` drops at equality.

    Max follows CAREamics' training path when ``stats`` hold its statistics (``"max"`` and
    ``"max_train_cov<c>"``, see :func:`required_stats`): kept iff the constant-mode value
    exceeds the threshold and the region maximum is not below it. Without them it applies
    the filter-map value ``"max_cov<c>"``, which gives the same decisions for data >= 0
    (quirk B10; side-cars written before these statistics existed).

    Parameters
    ----------
    config : PatchFilterConfig or mapping
    stats : mapping of stat name to array, or xarray.Dataset from :func:`region_stats`
    ndim : int, optional
        Spatial ndim, to resolve a Max ``coverage=None``; inferred from the single
        ``max_cov*`` stat present when omitted.
    ties : {"careamics", "keep", "drop"}

    Returns
    -------
    numpy.ndarray of bool
        Shape of the stat arrays.
    """
    cfg = parse_filter_config(config)
    ties = check_ties(ties)
    if isinstance(cfg, MaxPatchFilterConfig):
        name = _max_name(cfg, stats, ndim)
        train = "max_train_cov" + name[len("max_cov"):]
        if train in stats and "max" in stats:
            keep = keep_mask(stat_values(stats, train), cfg.threshold, ties, strict_default=True)
            keep &= keep_mask(stat_values(stats, "max"), cfg.threshold, ties, strict_default=False)
        else:
            keep = keep_mask(stat_values(stats, name), cfg.threshold, ties, strict_default=True)
    elif isinstance(cfg, MeanStdPatchFilterConfig):
        keep = keep_mask(stat_values(stats, "mean"), cfg.mean_threshold, ties,
                         strict_default=False)
        if cfg.std_threshold is not None:
            keep &= keep_mask(stat_values(stats, "std"), cfg.std_threshold, ties,
                              strict_default=False)
    elif isinstance(cfg, ShannonPatchFilterConfig):
        keep = keep_mask(stat_values(stats, "entropy"), cfg.threshold, ties,
                         strict_default=False)
    elif isinstance(cfg, MaskPatchFilterConfig):
        keep = keep_mask(stat_values(stats, "mask_coverage"), cfg.coverage, ties,
                         strict_default=False)
    else:  # pragma: no cover
        raise ConfigError(f"unknown filter config {config!r}")
    return ~np.asarray(keep, dtype=bool)


def _max_name(cfg: MaxPatchFilterConfig, stats: Mapping[str, Any], ndim: int | None) -> str:
    if ndim is not None or cfg.coverage is not None:
        if ndim is None:
            return max_stat_name(float(cfg.coverage))  # type: ignore[arg-type]
        return max_stat_name(resolve_coverage(cfg.coverage, ndim))
    keys = [k for k in stats if str(k).startswith("max_cov")]
    if len(keys) != 1:
        raise ConfigError(
            f"cannot infer the Max coverage: coverage=None and stats hold {keys}. "
            "Fix: pass ndim= (coverage = 0.5**ndim) or set coverage in the config."
        )
    return str(keys[0])


def filter_map_from_stats(
    values: ArrayLike,
    spatial_shape: Sequence[int],
    patch_size: Sequence[int] | Mapping[str, int],
) -> NDArray[np.float64]:
    """CAREamics' per-pixel filter map from region values.

    Parameters
    ----------
    values : array_like, shape ``(..., *grid_shape)``
        Region values (one stat); leading dims are samples.
    spatial_shape : sequence of int
        Image size per spatial dim.
    patch_size : sequence of int or mapping

    Returns
    -------
    numpy.ndarray of float64, shape ``(..., *spatial_shape)``

    Notes
    -----
    Each pixel is the max over the ``2**ndim`` regions covering it, regions outside the
    grid counting as 0 (CAREamics' zero-initialised layers).
    """
    shape = tuple(int(s) for s in spatial_shape)
    ps = tuple(normalize_patch_size(patch_size, SPATIAL_DIMS[-len(shape):]).values())
    grid = RegionGrid(shape, ps)
    v = np.asarray(values, dtype=np.float64)
    nd = len(shape)
    if v.shape[-nd:] != grid.grid_shape:
        raise DataError(
            f"values have grid shape {v.shape[-nd:]}, expected {grid.grid_shape} for an "
            f"image {shape} with patch {ps}."
        )
    lead = v.shape[:-nd]
    flat = v.reshape((-1, *grid.grid_shape))
    out = np.stack([expand_region_values(x, shape, ps) for x in flat])
    return out.reshape((*lead, *shape))


def decide(*args: Any, **kwargs: Any) -> NDArray[np.bool_]:
    """Deprecated name of :func:`filter_out_from_stats` (removed after one release)."""
    warnings.warn("patchsieve.decide is renamed filter_out_from_stats; the old name will be "
                  "removed after one release.", PatchsieveDeprecationWarning, stacklevel=2)
    return filter_out_from_stats(*args, **kwargs)


def stat_names(config: Any, ndim: int) -> list[str]:
    """Deprecated name of :func:`required_stats` (removed after one release)."""
    warnings.warn("patchsieve.stat_names is renamed required_stats; the old name will be "
                  "removed after one release.", PatchsieveDeprecationWarning, stacklevel=2)
    return required_stats(config, ndim)
