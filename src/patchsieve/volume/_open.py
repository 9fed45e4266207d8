"""Open chunked volumes as lazy, dask-backed :class:`xarray.DataArray` objects with named dims.

Sources
-------
``open_volume`` accepts OME-Zarr images (NGFF 0.4 on zarr v2, metadata in ``attrs["multiscales"]``;
NGFF 0.5 on zarr v3, metadata in ``attrs["ome"]["multiscales"]``), plain Zarr arrays (v2 and v3),
TIFF files (read lazily through :func:`tifffile.TiffFile.aszarr`), numpy and dask arrays, zarr
``Array``/``Group``/store objects, local paths and any fsspec URL (``s3://``, ``gs://``,
``memory://``, ``file://``) with ``storage_options``. Opening reads metadata only; chunks are
read when the returned array is computed. Dask chunks are the storage chunks (the shards of a
sharded zarr v3 array, the pages/tiles of a TIFF): nothing is rechunked at open time.

Dims
----
Dims are lowercase names in the order ``("s", "t", "c", "z", "y", "x")`` (absent ones dropped);
data stored in another order (e.g. CAREamics ``"XY"`` or ``"ZCYX"``) is transposed lazily.
Axes strings follow CAREamics 0.3.x (``careamics/config/validators/axes_validators.py``): letters
from ``STCZYX`` (any case), no repeats, ``Y`` and ``X`` present and adjacent, 2 to 6 letters; the
order is otherwise free, as in CAREamics.

The sample axis ``s``
---------------------
NGFF has no axis type for CAREamics' sample axis ``S``. patchsieve's choice:

* **Writing** (demo data, test helpers): a sample stack is an OME-Zarr image whose first axis is
  ``{"name": "s", "type": "custom"}``. ome-zarr 0.18 accepts this for NGFF 0.4 and 0.5 together
  with channel and space axes (``"syx"``, ``"sczyx"``). It refuses a time axis anywhere but first,
  so stacks that have both ``S`` and ``T`` are written as plain Zarr v3 arrays with
  ``dimension_names`` (e.g. ``("s", "t", "c", "z", "y", "x")``).
* **Reading**: an NGFF axis named ``"s"`` (type ``custom``, absent or anything but a spatial,
  time or channel type) is the sample axis; the same holds for a ``dimension_names`` entry ``"s"``.

Attributes
----------
Every returned array carries ``attrs`` ``source`` (URL or path with credentials stripped;
``"<numpy>"``, ``"<dask>"`` or ``"<zarr>"`` for in-memory objects), ``array_path``, ``level``,
``format`` (``"ome-zarr-0.4"``, ``"ome-zarr-0.5"``, ``"zarr-v2"``, ``"zarr-v3"``, ``"tiff"``,
``"numpy"``, ``"dask"``), ``scale``, ``translation`` and ``units`` (dicts keyed by dim) and
``n_levels``. Spatial and time coords are physical (``translation + scale * index``); ``s`` and
``c`` coords are integer indices. ``storage_options`` never enter ``attrs``.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.abc.store import Store

from patchsieve.errors import AxesError, DataError, VolumeError
from patchsieve.grid import DIM_ORDER
from patchsieve.volume._axes import example_axes, parse_axes
from patchsieve.volume._chunkreader import ChunkReader, _BlockReader
from patchsieve.volume._ngff import Multiscale, parse_multiscales
from patchsieve.volume._stores import (
    open_zarr_node,
    source_store,
    split_url,
    strip_credentials,
)
from patchsieve.volume._tiff import TIFF_SUFFIXES, TiffArray

logger = logging.getLogger(__name__)

_INDEX_DIMS = ("s", "c")


@dataclass
class _Image:
    """What an opened source resolved to, before conversion to a DataArray."""

    data: da.Array
    dims: tuple[str, ...]
    source: str
    fmt: str
    array_path: str = ""
    level: int = 0
    n_levels: int = 1
    scale: tuple[float, ...] | None = None
    translation: tuple[float, ...] | None = None
    units: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: the zarr array or TIFF series behind ``data`` (None for in-memory sources)
    stored: Any = None


def _dask_from_zarr(arr: zarr.Array, label: str = "<zarr>") -> da.Array:
    """Dask array with one block per storage chunk (per shard when sharded)."""
    from dask.base import tokenize

    shards = getattr(arr, "shards", None)
    block = tuple(shards or arr.chunks)
    name = "zarr-" + tokenize(str(arr.store), arr.path, arr.shape, str(arr.dtype), block)
    return da.from_array(_BlockReader(arr, label, block), chunks=block, name=name, lock=False,
                         asarray=False, fancy=False,
                         meta=np.empty((0,) * arr.ndim, dtype=arr.dtype))


def _zarr_format(arr: zarr.Array | zarr.Group) -> int:
    return int(arr.metadata.zarr_format)


def _array_dims(arr: zarr.Array, axes: str | Sequence[str] | None, label: str) -> tuple[str, ...]:
    """Dims of a plain zarr array from ``axes=``, ``dimension_names`` or ``_ARRAY_DIMENSIONS``."""
    if axes is not None:
        return parse_axes(axes, arr.ndim)
    names = getattr(arr.metadata, "dimension_names", None)
    if names is None:
        names = arr.attrs.get("_ARRAY_DIMENSIONS")
    if names and all(isinstance(n, str) for n in names):
        try:
            return parse_axes(list(names), arr.ndim)
        except AxesError as err:
            raise AxesError(
                f"{label}: the array's dimension names {tuple(names)} are not CAREamics axes "
                f"({err}). Fix: pass axes=, e.g. axes='ZYX'."
            ) from err
    raise AxesError(
        f"{label}: a plain Zarr array (shape {arr.shape}) without dimension names needs axes=. "
        f"Fix: pass axes with one letter per dim, e.g. axes={example_axes(arr.ndim)!r}."
    )



def _plain_array_image(
    arr: zarr.Array, axes: str | Sequence[str] | None, label: str, level: int
) -> _Image:
    _require_level0(level, label)
    return _Image(
        data=_dask_from_zarr(arr, label),
        dims=_array_dims(arr, axes, label),
        source=label,
        fmt=f"zarr-v{_zarr_format(arr)}",
        array_path=arr.path,
        stored=arr,
    )


def _require_level0(level: int, label: str) -> None:
    if level != 0:
        raise VolumeError(
            f"level={level} does not exist: {label} is not a multiscale OME-Zarr image and has "
            f"only level 0. Fix: pass level=0."
        )


def _ome_image(
    group: zarr.Group,
    ms: Multiscale,
    level: int,
    axes: str | Sequence[str] | None,
    label: str,
) -> _Image:
    n_levels = len(ms.levels)
    if (
        isinstance(level, bool)
        or not isinstance(level, (int, np.integer))
        or not (0 <= level < n_levels)
    ):
        raise VolumeError(
            f"level={level!r} does not exist in {label}: it has {n_levels} level(s) "
            f"{[lv.path for lv in ms.levels]}. Fix: pass level in 0..{n_levels - 1}."
        )
    lvl = ms.levels[int(level)]
    try:
        arr = group[lvl.path]
    except KeyError as err:
        raise VolumeError(
            f"{label}: broken multiscales metadata: datasets[{level}].path={lvl.path!r} does not "
            f"exist in the group."
        ) from err
    if not isinstance(arr, zarr.Array) or arr.ndim != len(ms.dims):
        raise VolumeError(
            f"{label}: broken multiscales metadata: {lvl.path!r} is not an array with "
            f"{len(ms.dims)} dims {ms.dims}."
        )
    dims = ms.dims if axes is None else parse_axes(axes, arr.ndim)
    units = {new: ms.units[old] for old, new in zip(ms.dims, dims, strict=True) if old in ms.units}
    extra = {"channel_names": list(ms.channel_names)} if ms.channel_names else {}
    return _Image(
        data=_dask_from_zarr(arr, label),
        dims=dims,
        source=label,
        fmt=f"ome-zarr-{ms.version}",
        array_path=arr.path,
        level=int(level),
        n_levels=n_levels,
        scale=lvl.scale,
        translation=lvl.translation,
        units=units,
        extra=extra,
        stored=arr,
    )


def _group_image(
    group: zarr.Group, level: int, axes: str | Sequence[str] | None, label: str
) -> tuple[_Image, zarr.Group | None]:
    """Resolve a group: OME-Zarr image, bioformats2raw container, or single-array group.

    Returns the image and the group holding its ``multiscales`` (None for a plain array).
    """
    ms = parse_multiscales(group, label)
    if ms is not None:
        return _ome_image(group, ms, level, axes, label), group
    if "bioformats2raw.layout" in group.attrs and "0" in group:
        inner = group["0"]
        if isinstance(inner, zarr.Group):
            return _group_image(inner, level, axes, f"{label}/0")
    arrays = [name for name, node in group.members() if isinstance(node, zarr.Array)]
    if axes is not None and len(arrays) == 1:
        return _plain_array_image(group[arrays[0]], axes, label, level), None
    raise VolumeError(
        f"{label} is a Zarr group but not an OME-Zarr image (no 'multiscales' in its attributes)."
        f" Fix: open one of its arrays {arrays[:5]} by path (e.g. '{label}/<array>') with "
        f"axes=, or pass axes= for a group holding a single array."
    )


def _check_dtype(dtype: np.dtype, label: str) -> None:
    if np.dtype(dtype).kind not in "iuf":
        raise DataError(
            f"{label}: dtype {dtype} is not supported; patchsieve filters integer and float "
            f"data. Fix: convert the data to uint8/uint16/float32 first."
        )


def _check_data(data: da.Array, label: str) -> None:
    _check_dtype(data.dtype, label)
    if data.size == 0:
        raise DataError(
            f"{label}: the volume is empty (shape {data.shape}). Fix: check the source."
        )


def _to_dataarray(img: _Image) -> xr.DataArray:
    """Build the canonical-order DataArray with physical coords and attrs."""
    _check_data(img.data, img.source)
    ndim = len(img.dims)
    scale = dict(zip(img.dims, img.scale or (1.0,) * ndim, strict=True))
    translation = dict(zip(img.dims, img.translation or (0.0,) * ndim, strict=True))
    arr = xr.DataArray(img.data, dims=img.dims).rename(None)  # not dask's graph key
    order = [d for d in DIM_ORDER if d in img.dims]
    if list(img.dims) != order:
        arr = arr.transpose(*order)
    coords = {}
    for dim in order:
        n = arr.sizes[dim]
        if dim in _INDEX_DIMS:
            coords[dim] = np.arange(n)
        else:
            coords[dim] = translation[dim] + scale[dim] * np.arange(n, dtype=np.float64)
    arr = arr.assign_coords(coords)
    arr.attrs = {
        "source": img.source,
        "array_path": img.array_path,
        "level": img.level,
        "format": img.fmt,
        "scale": {d: scale[d] for d in order},
        "translation": {d: translation[d] for d in order},
        "units": {d: img.units[d] for d in order if d in img.units},
        "n_levels": img.n_levels,
        **img.extra,
    }
    return arr


def _select_channel(arr: xr.DataArray, channel: int | Sequence[int] | None) -> xr.DataArray:
    """Select channels: an int drops ``c``, a sequence keeps it."""
    if channel is None:
        return arr
    label = arr.attrs["source"]
    if "c" not in arr.dims:
        raise VolumeError(
            f"channel={channel!r} given but {label} has no channel axis (dims {arr.dims}). "
            f"Fix: pass channel=None."
        )
    n = arr.sizes["c"]
    single = isinstance(channel, (int, np.integer)) and not isinstance(channel, bool)
    if isinstance(channel, np.ndarray):
        channel = channel.tolist()
    picks = [channel] if single else list(channel) if isinstance(channel, Sequence) else None
    if not picks or not all(
        isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < n for c in picks
    ):
        raise VolumeError(
            f"channel={channel!r} is out of range for {label}: it has {n} channel(s). "
            f"Fix: pass an int or a non-empty list of ints in 0..{n - 1}."
        )
    names = arr.attrs.get("channel_names")
    if single:
        out = arr.isel(c=int(channel)).drop_vars("c")
        out.attrs["channel"] = int(channel)
        if names:
            out.attrs["channel_names"] = [names[int(channel)]]
    else:
        out = arr.isel(c=[int(c) for c in picks])
        out.attrs["channel"] = [int(c) for c in picks]
        if names:
            out.attrs["channel_names"] = [names[int(c)] for c in picks]
    out.attrs["scale"] = {d: v for d, v in arr.attrs["scale"].items() if d in out.dims}
    out.attrs["translation"] = {d: v for d, v in arr.attrs["translation"].items() if d in out.dims}
    out.attrs["units"] = {d: v for d, v in arr.attrs["units"].items() if d in out.dims}
    return out


# ----------------------------------------------------------------------------- public openers
def _resolve(
    source: object,
    *,
    axes: str | Sequence[str] | None,
    level: int,
    storage_options: Mapping[str, Any] | None,
) -> tuple[_Image, Any]:
    """Open ``source`` at ``level``; returns the image and a handle to reopen other levels."""
    if isinstance(source, xr.DataArray):
        raise VolumeError(
            "source is already an xarray.DataArray. Fix: pass source.data with axes=, or use it "
            "directly."
        )
    if isinstance(source, np.ndarray | da.Array):
        kind = "numpy" if isinstance(source, np.ndarray) else "dask"
        _require_level0(level, f"<{kind}>")
        if axes is None:
            raise AxesError(
                f"axes is required for {kind} arrays (shape {source.shape}). "
                f"Fix: pass e.g. axes='ZYX'."
            )
        dims = parse_axes(axes, source.ndim)
        _check_dtype(source.dtype, f"<{kind}>")
        data = source if kind == "dask" else _numpy_to_dask(source, dims)
        return _Image(data=data, dims=dims, source=f"<{kind}>", fmt=kind), None
    if isinstance(source, zarr.Array):
        return _plain_array_image(source, axes, "<zarr>", level), None
    if isinstance(source, zarr.Group):
        return _group_image(source, level, axes, "<zarr>")
    if isinstance(source, Store):
        node = open_zarr_node(source, "", "<zarr store>")
        return _resolve(node, axes=axes, level=level, storage_options=None)
    if not isinstance(source, str | os.PathLike):
        raise VolumeError(
            f"source of type {type(source).__name__} is not supported. Fix: pass a path or URL "
            f"(OME-Zarr, Zarr, TIFF), a zarr Array/Group/store, a numpy or a dask array."
        )
    text = os.fspath(source)
    label = strip_credentials(text)
    protocol, path = split_url(text)
    suffix = Path(urllib.parse.urlsplit(text).path if protocol else path).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        _require_level0(level, label)
        tiff = TiffArray(text, storage_options)
        tiff_axes = axes if axes is not None else tiff.axes
        if tiff_axes is None:
            raise AxesError(
                f"{label}: the TIFF does not declare its axes; pass axes= with one letter per dim "
                f"(shape {tiff.shape}), e.g. axes={example_axes(tiff.ndim)!r}."
            )
        data = da.from_array(
            tiff, chunks=tiff.chunks, asarray=False, meta=np.empty((0,) * tiff.ndim, tiff.dtype)
        )
        return _Image(
            data=data, dims=parse_axes(tiff_axes, tiff.ndim), source=label, fmt="tiff",
            stored=tiff,
        ), None
    if protocol is None and os.path.isfile(path):
        raise VolumeError(
            f"source={label!r}: unsupported file type {suffix or '(no suffix)'!r}. Fix: pass an "
            f"OME-Zarr/Zarr directory or URL, a TIFF file ({', '.join(TIFF_SUFFIXES)}), or load "
            f"the data yourself and pass a numpy/dask array with axes=."
        )
    node = open_zarr_node(source_store(text, storage_options), "", label)
    if isinstance(node, zarr.Array):
        return _plain_array_image(node, axes, label, level), None
    return _group_image(node, level, axes, label)


def _numpy_to_dask(array: np.ndarray, dims: tuple[str, ...]) -> da.Array:
    """Chunk a numpy array one plane per non-spatial index, spatial dims 'auto'."""
    chunks = {i: (1 if d in ("s", "t", "c") else "auto") for i, d in enumerate(dims)}
    return da.from_array(array, chunks=chunks)


def open_volume(
    source: Any,
    *,
    axes: str | Sequence[str] | None = None,
    level: int = 0,
    channel: int | Sequence[int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Open a volume lazily as a dask-backed DataArray with dims among ``s, t, c, z, y, x``.

    Parameters
    ----------
    source : str, path-like, zarr Array/Group/store, numpy.ndarray or dask.array.Array
        OME-Zarr image (NGFF 0.4/0.5), plain Zarr array (v2/v3), TIFF file, local path or
        fsspec URL (``s3://``, ``gs://``, ``memory://``, ``file://``), or an in-memory array.
    axes : str or sequence of str, optional
        CAREamics-style axes (``"SYX"``, ``"CZYX"`` ...). Required for numpy/dask arrays and for
        Zarr arrays without ``dimension_names``; overrides the names of OME-Zarr axes when given.
    level : int
        Pyramid level (OME-Zarr only; 0 for other sources).
    channel : int or sequence of int, optional
        An int selects one channel and drops ``c``; a sequence selects several and keeps ``c``.
    storage_options : mapping, optional
        fsspec options for URLs (``key``, ``secret``, ``endpoint_url`` ...). Never stored in attrs.

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims in the order ``("s", "t", "c", "z", "y", "x")`` (absent ones dropped),
        one dask block per storage chunk; coords and attrs as described in the module docstring.

    Raises
    ------
    AxesError
        Invalid axes, or axes needed but missing.
    VolumeNotFoundError
        The path or URL does not exist.
    VolumeError
        Unsupported file type, non-OME group without ``axes=``, bad ``level`` or ``channel``,
        broken ``multiscales`` metadata.
    DataError
        Unsupported dtype (complex, bool, object ...) or zero-size data.

    Examples
    --------
    >>> import numpy as np
    >>> vol = open_volume(np.zeros((2, 8, 16), dtype="uint16"), axes="ZYX")
    >>> vol.dims, vol.attrs["format"]
    (('z', 'y', 'x'), 'numpy')
    """
    image, _ = _resolve(source, axes=axes, level=level, storage_options=storage_options)
    out = _select_channel(_to_dataarray(image), channel)
    logger.debug(
        "opened %s level %d: dims %s shape %s", image.source, image.level, out.dims, out.shape
    )
    return out


def chunk_reader(
    volume: xr.DataArray,
    *,
    storage_options: Mapping[str, Any] | None = None,
    axes: str | Sequence[str] | None = None,
) -> ChunkReader | None:
    """A picklable reader of ``volume``'s storage, or None when its data is not plain storage.

    ``volume`` must be what :func:`open_volume` returns for its ``attrs["source"]`` (same
    ``level`` and ``axes``): the source is opened again (metadata only) and its dask graph
    name compared, so a selected, transposed or computed DataArray gets None (read it through
    its dask graph instead). In-memory sources (numpy, dask, zarr objects) get None too.

    Parameters
    ----------
    volume : xarray.DataArray
        A volume from :func:`open_volume`.
    storage_options : mapping, optional
        fsspec options of the source (kept by the reader: workers re-open with them).
    axes : str, optional
        The ``axes=`` the volume was opened with.

    Examples
    --------
    >>> import tempfile, os, zarr, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "v.zarr")
    >>> a = zarr.create_array(path, shape=(4, 6), chunks=(2, 3), dtype="uint16",
    ...                       dimension_names=("x", "y"))
    >>> a[...] = np.arange(24).reshape(4, 6)
    >>> vol = open_volume(path)
    >>> r = chunk_reader(vol)
    >>> vol.dims, r.chunks, r.read((slice(0, 2), slice(1, 3))).tolist()
    (('y', 'x'), (3, 2), [[6, 12], [7, 13]])
    """
    url = str(volume.attrs.get("source", "<"))
    if url.startswith("<"):
        return None
    try:
        image, _ = _resolve(url, axes=axes, level=int(volume.attrs.get("level", 0) or 0),
                            storage_options=storage_options)
        fresh = _to_dataarray(image)
    except Exception:  # noqa: BLE001 - anything that does not reopen is read through dask
        return None
    if image.stored is None or getattr(volume.data, "name", None) != fresh.data.name \
            or tuple(volume.dims) != tuple(fresh.dims):
        return None
    kind = "tiff" if image.fmt == "tiff" else "zarr"
    perm = tuple(image.dims.index(d) for d in fresh.dims)
    return ChunkReader(url, image.array_path, storage_options, kind=kind, perm=perm,
                       shape=tuple(int(n) for n in fresh.shape),
                       chunks=tuple(int(c[0]) for c in fresh.data.chunks),
                       dtype=str(fresh.dtype), stored=image.stored)


def open_pyramid(
    source: Any,
    *,
    storage_options: Mapping[str, Any] | None = None,
    channel: int | Sequence[int] | None = None,
    axes: str | Sequence[str] | None = None,
) -> list[xr.DataArray]:
    """Open every pyramid level of a volume (one level for non-OME-Zarr sources).

    Parameters
    ----------
    source, storage_options, channel, axes
        As for :func:`open_volume`.

    Returns
    -------
    list of xarray.DataArray
        Level 0 first; each as :func:`open_volume` would return it.

    Raises
    ------
    AxesError, VolumeNotFoundError, VolumeError, DataError
        As for :func:`open_volume`.
    """
    first, group = _resolve(source, axes=axes, level=0, storage_options=storage_options)
    levels = [first]
    if group is not None:
        ms = parse_multiscales(group, first.source)
        for i in range(1, first.n_levels if ms is not None else 1):
            levels.append(_ome_image(group, ms, i, axes, first.source))
    return [_select_channel(_to_dataarray(img), channel) for img in levels]
