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
import re
import threading
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

from patchsieve.errors import AxesError, DataError, StorageError, VolumeError, VolumeNotFoundError

__all__ = [
    "DIM_ORDER",
    "open_pyramid",
    "open_volume",
    "open_zarr_array",
    "parse_axes",
    "strip_credentials",
]

logger = logging.getLogger(__name__)

DIM_ORDER: tuple[str, ...] = ("s", "t", "c", "z", "y", "x")
"""Canonical dim order of every volume returned by :func:`open_volume`."""

_CAREAMICS_LETTERS = "STCZYX"
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8")
_INDEX_DIMS = ("s", "c")
_REOPEN_LOCK = threading.Lock()
_SECRET_QUERY = re.compile(
    r"(key|secret|token|passw|pwd|signature|sig|credential|auth|session|x-amz-)", re.IGNORECASE
)


# ----------------------------------------------------------------------------- axes
def parse_axes(axes: str | Sequence[str], ndim: int | None = None) -> tuple[str, ...]:
    """Validate a CAREamics-style axes string and return lowercase dim names.

    Parameters
    ----------
    axes : str or sequence of str
        Axes such as ``"SYX"``, ``"ZYX"``, ``"CZYX"``, ``"SCZYX"``, ``"TCZYX"`` (any case), or a
        sequence of one-letter names such as ``("z", "y", "x")``.
    ndim : int, optional
        Number of dimensions of the data the axes describe; checked when given.

    Returns
    -------
    tuple of str
        Lowercase dim names in the order given, e.g. ``("c", "z", "y", "x")``.

    Raises
    ------
    AxesError
        Unknown letter, repeated letter, missing or non-adjacent ``Y``/``X``, wrong length.

    Notes
    -----
    Mirrors ``check_axes_validity`` of CAREamics 0.3.x: letters from ``STCZYX``, no duplicates,
    ``YX`` or ``XY`` adjacent, 2 to 6 letters; any order otherwise.

    Examples
    --------
    >>> parse_axes("SYX")
    ('s', 'y', 'x')
    >>> parse_axes("czyx", ndim=4)
    ('c', 'z', 'y', 'x')
    """
    text = _axes_text(axes)
    upper = text.upper()
    unknown = sorted({ch for ch in upper if ch not in _CAREAMICS_LETTERS})
    if unknown:
        raise AxesError(
            f"axes={axes!r} contains unknown letter(s) {unknown}; allowed letters are "
            f"{', '.join(_CAREAMICS_LETTERS)} (CAREamics convention). Fix: e.g. axes='ZYX'."
        )
    repeated = sorted({ch for ch in upper if upper.count(ch) > 1})
    if repeated:
        raise AxesError(
            f"axes={axes!r} repeats axis {repeated}; each letter may appear once. "
            f"Fix: name every dimension once, e.g. axes='SCZYX'."
        )
    missing = [ch for ch in "YX" if ch not in upper]
    if missing:
        raise AxesError(
            f"axes={axes!r} lacks {' and '.join(missing)}; Y and X are required. "
            f"Fix: include both, e.g. axes='{upper}{''.join(missing)}' if the last dims are YX."
        )
    if "YX" not in upper and "XY" not in upper:
        raise AxesError(
            f"axes={axes!r}: Y and X must be adjacent (CAREamics rule). "
            f"Fix: reorder the data so that Y and X are its last two dims, e.g. axes='ZYX'."
        )
    if ndim is not None and len(upper) != ndim:
        raise AxesError(
            f"axes={axes!r} names {len(upper)} dims but the data has ndim={ndim}. "
            f"Fix: give exactly one letter per dimension."
        )
    return tuple(ch.lower() for ch in upper)


def _axes_text(axes: object) -> str:
    """Turn an axes string or a sequence of one-letter names into a string."""
    if isinstance(axes, str):
        text = axes
    elif isinstance(axes, Sequence) and all(isinstance(a, str) and len(a) == 1 for a in axes):
        text = "".join(axes)
    else:
        raise AxesError(
            f"axes must be a string such as 'ZYX' or a sequence of one-letter names; got {axes!r}."
        )
    if not text:
        raise AxesError("axes is empty; Y and X are required. Fix: e.g. axes='YX'.")
    return text


# ----------------------------------------------------------------------------- URLs and stores
def strip_credentials(url: str) -> str:
    """Remove ``user:password@`` and secret-looking query parameters from a URL.

    Parameters
    ----------
    url : str
        A path or URL.

    Returns
    -------
    str
        The URL without credentials (paths are returned unchanged).

    Examples
    --------
    >>> strip_credentials("s3://AKIA:s3cr3t@bucket/img.zarr?token=abc&version=2")
    's3://bucket/img.zarr?version=2'
    """
    if "://" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if not _SECRET_QUERY.search(k)
    ]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(query), parts.fragment)
    )


def _split_url(source: str) -> tuple[str | None, str]:
    """Return ``(protocol, rest)``; protocol is None for local paths and ``file://`` URLs."""
    if "://" not in source:
        return None, source
    protocol, rest = source.split("://", 1)
    if protocol == "file":
        return None, urllib.parse.unquote(urllib.parse.urlsplit(source).path)
    return protocol, rest


def _store_from(source: str, storage_options: Mapping[str, Any] | None) -> Store:
    """A read-only zarr store for a local path or fsspec URL; missing paths raise."""
    protocol, path = _split_url(source)
    if protocol is None:
        if not os.path.exists(path):
            raise VolumeNotFoundError(
                f"source={strip_credentials(source)!r} does not exist. "
                f"Fix: check the path (cwd is {os.getcwd()!r})."
            )
        return zarr.storage.LocalStore(path, read_only=True)
    if "@" in urllib.parse.urlsplit(source).netloc:
        raise VolumeError(
            f"source={strip_credentials(source)!r} carries credentials in the URL (user:secret@). "
            "Fix: remove them from the URL and pass them in storage_options (e.g. {'key': ..., "
            "'secret': ...}), the environment or a profile file."
        )
    try:
        return zarr.storage.FsspecStore.from_url(
            source, storage_options=dict(storage_options or {}), read_only=True
        )
    except (ImportError, ValueError) as err:
        raise VolumeError(
            f"source={strip_credentials(source)!r}: cannot open an fsspec store for protocol "
            f"{protocol!r} ({err}). Fix: install the fsspec backend (e.g. s3fs) and check "
            f"storage_options."
        ) from err


def _is_connection_error(err: BaseException) -> bool:
    """True for the connection failures of fsspec backends (botocore, aiohttp) and the OS."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for c in type(err).__mro__}
    return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                         "ClientConnectionError", "ServerTimeoutError", "ConnectionClosedError"})


def _open_zarr_node(store: Store | str, path: str, label: str) -> zarr.Array | zarr.Group:
    """Open the zarr node at ``path`` read-only, mapping 'not found' to VolumeNotFoundError."""
    where = f"{label}/{path}" if path else label
    try:
        return zarr.open(store, mode="r", path=path)
    except FileNotFoundError as err:  # zarr's NodeNotFoundError, fsspec/s3fs missing keys
        raise VolumeNotFoundError(
            f"source={where!r} holds no Zarr array or group (no zarr.json/.zarray/.zgroup). "
            f"Fix: check the path or URL and storage_options."
        ) from err
    except Exception as err:  # noqa: BLE001 - backend errors are mapped or re-raised
        if _is_connection_error(err):
            raise VolumeNotFoundError(
                f"source={where!r} is not reachable ({type(err).__name__}). Fix: check the URL, "
                "endpoint_url and network."
            ) from None
        if isinstance(err, OSError):  # denied / wrong credentials
            raise StorageError(
                f"reading the metadata object {where.rstrip('/')}/zarr.json (or .zgroup/.zarray) "
                f"failed: {type(err).__name__} (access denied or wrong credentials). Fix: check "
                "the credentials in storage_options / the environment, the endpoint_url and the "
                "bucket policy."
            ) from None
        raise


def open_zarr_array(
    url_or_store: str | os.PathLike[str] | Store,
    path: str = "",
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> zarr.Array:
    """Open one zarr array read-only (used by dataset workers to re-open lazily).

    Parameters
    ----------
    url_or_store : str, path-like or zarr store
        Local path, fsspec URL or store.
    path : str
        Array path inside the store (e.g. ``"s0"``), ``""`` for a root array.
    storage_options : mapping, optional
        fsspec options (credentials, ``endpoint_url`` ...) for URLs.

    Returns
    -------
    zarr.Array
        A read-only array; no chunk is read.

    Raises
    ------
    VolumeNotFoundError
        Nothing exists at the location.
    VolumeError
        The node is a group, not an array.
    """
    if isinstance(url_or_store, Store):
        store, label = url_or_store, "<zarr store>"
    else:
        text = os.fspath(url_or_store)
        store, label = _store_from(text, storage_options), strip_credentials(text)
    node = _open_zarr_node(store, path, label)
    if not isinstance(node, zarr.Array):
        raise VolumeError(
            f"path={path!r} in {label!r} is a Zarr group, not an array. "
            f"Fix: pass the array path, e.g. path='s0'."
        )
    return node


# ----------------------------------------------------------------------------- NGFF metadata
@dataclass(frozen=True)
class _Level:
    """One resolved pyramid level: array path and its transform per dim (input order)."""

    path: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]


@dataclass(frozen=True)
class _Multiscale:
    """Parsed ``multiscales[0]`` of an OME-Zarr image."""

    version: str
    dims: tuple[str, ...]
    units: dict[str, str]
    levels: tuple[_Level, ...]
    channel_names: tuple[str, ...] | None = field(default=None)


def _ngff_attrs(group: zarr.Group) -> tuple[str, Mapping[str, Any], list[Any]] | None:
    """Return ``(version, image attrs, multiscales)`` or None when the group is not OME-Zarr."""
    attrs = group.attrs.asdict()
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:
        return str(ome.get("version", "0.5")), ome, ome["multiscales"]
    if "multiscales" in attrs:
        ms = attrs["multiscales"]
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], Mapping) else {}
        return str(first.get("version", "0.4")), attrs, ms
    return None


def _ngff_dim(axis: object, label: str) -> tuple[str, str | None]:
    """Map one NGFF axis entry to ``(dim name, unit)``."""
    if isinstance(axis, str):  # NGFF 0.3 lists bare names
        name, kind, unit = axis, None, None
    elif isinstance(axis, Mapping) and isinstance(axis.get("name"), str):
        name, kind, unit = axis["name"], axis.get("type"), axis.get("unit")
    else:
        raise VolumeError(f"{label}: broken multiscales metadata: axis entry {axis!r} has no name.")
    lowered = name.lower()
    if lowered in DIM_ORDER and (lowered != "s" or kind not in ("space", "time", "channel")):
        return lowered, unit
    if kind == "channel":
        return "c", unit
    if kind == "time":
        return "t", unit
    raise VolumeError(
        f"{label}: NGFF axis {name!r} (type {kind!r}) is not one of {DIM_ORDER}. "
        f"Fix: pass axes= (e.g. axes='CZYX') to name the dims yourself."
    )


def _compose(transform_lists: Sequence[object], ndim: int, label: str) -> tuple[tuple, tuple]:
    """Compose NGFF scale/translation lists (dataset first, then multiscale-level)."""
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for transforms in transform_lists:
        if transforms is None:
            continue
        if not isinstance(transforms, list):
            raise VolumeError(f"{label}: broken coordinateTransformations {transforms!r}.")
        for tr in transforms:
            kind = tr.get("type") if isinstance(tr, Mapping) else None
            values = tr.get(kind) if isinstance(tr, Mapping) and kind else None
            if kind == "identity":
                continue
            if kind not in ("scale", "translation") or not isinstance(values, list):
                raise VolumeError(
                    f"{label}: unsupported or broken coordinateTransformation {tr!r}; expected "
                    f"{{'type': 'scale'|'translation', <type>: [one number per axis]}}."
                )
            if len(values) != ndim:
                raise VolumeError(
                    f"{label}: broken multiscales metadata: {kind} {values} has {len(values)} "
                    f"entries for {ndim} axes."
                )
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise VolumeError(
                    f"{label}: broken multiscales metadata: {kind} {values!r} must hold numbers. "
                    "Fix: repair the NGFF coordinateTransformations."
                )
            vec = np.asarray(values, dtype=float)
            if kind == "scale":
                scale, translation = scale * vec, translation * vec
            else:
                translation = translation + vec
    return tuple(float(v) for v in scale), tuple(float(v) for v in translation)


def _parse_multiscales(group: zarr.Group, label: str) -> _Multiscale | None:
    """Parse and validate the first multiscale image of ``group``; None when not OME-Zarr."""
    found = _ngff_attrs(group)
    if found is None:
        return None
    version, image_attrs, ms = found
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], Mapping):
        raise VolumeError(f"{label}: broken multiscales metadata: expected a non-empty list.")
    first = ms[0]
    axes, datasets = first.get("axes"), first.get("datasets")
    if not isinstance(axes, list) or not axes:
        raise VolumeError(f"{label}: broken multiscales metadata: 'axes' missing or empty.")
    if not isinstance(datasets, list) or not datasets:
        raise VolumeError(f"{label}: broken multiscales metadata: 'datasets' missing or empty.")
    mapped = [_ngff_dim(ax, label) for ax in axes]
    dims = tuple(name for name, _ in mapped)
    if len(set(dims)) != len(dims):
        raise VolumeError(f"{label}: broken multiscales metadata: repeated axes {dims}.")
    levels = []
    for i, ds in enumerate(datasets):
        if not isinstance(ds, Mapping) or not isinstance(ds.get("path"), str):
            raise VolumeError(f"{label}: broken multiscales metadata: datasets[{i}] has no path.")
        scale, translation = _compose(
            [ds.get("coordinateTransformations"), first.get("coordinateTransformations")],
            len(dims),
            label,
        )
        levels.append(_Level(ds["path"], scale, translation))
    units = {name: str(unit) for name, unit in mapped if unit}
    channels = None
    omero = image_attrs.get("omero")
    if isinstance(omero, Mapping) and isinstance(omero.get("channels"), list):
        if not all(isinstance(ch, Mapping) for ch in omero["channels"]):
            raise VolumeError(
                f"{label}: broken omero metadata: omero.channels must be a list of objects like "
                f"{{'label': 'DAPI'}}; got {omero['channels'][:3]!r}. Fix: repair the NGFF omero "
                "block (or remove it; it is optional)."
            )
        channels = tuple(str(ch.get("label", i)) for i, ch in enumerate(omero["channels"]))
    return _Multiscale(version, dims, units, tuple(levels), channels)


# ----------------------------------------------------------------------------- TIFF
class _TiffArray:
    """Picklable lazy view of one TIFF series; re-opens the file in each process."""

    def __init__(self, source: str, storage_options: Mapping[str, Any] | None) -> None:
        self.source = source
        self._options = dict(storage_options or {})
        self._pid: int | None = None
        self._handles: tuple[Any, ...] = ()
        arr, tif = self._open()
        self.shape: tuple[int, ...] = tuple(arr.shape)
        self.dtype = arr.dtype
        self.ndim = len(self.shape)
        self.chunks: tuple[int, ...] = tuple(arr.chunks)
        self.axes = _tiff_axes(tif)

    def _open(self) -> tuple[zarr.Array, Any]:
        import tifffile

        protocol, path = _split_url(self.source)
        if protocol is None:
            if not os.path.exists(path):
                raise VolumeNotFoundError(
                    f"source={self.source!r} does not exist. Fix: check the path."
                )
            fileobj = None
        else:
            import fsspec

            try:
                fileobj = fsspec.open(self.source, mode="rb", **self._options).open()
            except FileNotFoundError as err:
                raise VolumeNotFoundError(
                    f"source={strip_credentials(self.source)!r} does not exist."
                ) from err
        try:
            tif = tifffile.TiffFile(path if fileobj is None else fileobj)
        except (tifffile.TiffFileError, ValueError) as err:
            raise VolumeError(
                f"source={strip_credentials(self.source)!r} is not a readable TIFF ({err}). "
                f"Fix: check the file or convert it to OME-Zarr."
            ) from err
        try:
            if not tif.series or 0 in tif.series[0].shape:
                raise ValueError("no image series")
            store = tif.aszarr(series=0, level=0, read_only=True)
            arr = zarr.open_array(store, mode="r")
        except (NotImplementedError, KeyError, IndexError, ValueError) as err:
            tif.close()
            raise VolumeError(
                f"source={strip_credentials(self.source)!r} is not a readable TIFF "
                f"({type(err).__name__}: {err}). Fix: check the file or convert it to OME-Zarr."
            ) from err
        self._arr, self._pid, self._handles = arr, os.getpid(), (tif, fileobj, store)
        return arr, tif

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._pid != os.getpid():
            with _REOPEN_LOCK:
                if self._pid != os.getpid():
                    self._open()
        return np.asarray(self._arr[key])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_arr=None, _pid=None, _handles=())
        return state


def _tiff_axes(tif: Any) -> str | None:
    """Axes a TIFF declares explicitly (shaped metadata, ImageJ, OME), else None."""
    series = tif.series[0]
    if tif.is_shaped and tif.shaped_metadata and "axes" in tif.shaped_metadata[0]:
        return str(tif.shaped_metadata[0]["axes"])
    if tif.is_imagej or tif.is_ome:
        axes = str(series.axes)
        if "S" in axes and "C" not in axes:  # tifffile 'S' = colour samples
            axes = axes.replace("S", "C")
        return axes if set(axes) <= set(_CAREAMICS_LETTERS) else None
    return None


# ----------------------------------------------------------------------------- building
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


class _ChunkReader:
    """Read blocks of a zarr array for dask, naming the chunk key when one cannot be read.

    A truncated or corrupt compressed chunk raises :class:`DataError` and an unreadable object
    :class:`StorageError`, each with the store key (e.g. ``s0/c/3/0/1``) and the fix, instead
    of a codec's bare ``RuntimeError``. Missing chunks read as the array's fill value (zarr's
    policy, documented in docs/errors.md).
    """

    def __init__(self, arr: zarr.Array, label: str, block: tuple[int, ...]) -> None:
        self.arr, self.label, self.block = arr, label, block
        self.shape, self.dtype, self.ndim = tuple(arr.shape), arr.dtype, arr.ndim

    def _key(self, key: Any) -> str:
        coords = []
        for sl, c in zip(key, self.block):
            start = sl.start if isinstance(sl, slice) else int(sl)
            coords.append(int(start or 0) // c)
        try:
            inner = self.arr.metadata.encode_chunk_key(tuple(coords))
        except Exception:  # noqa: BLE001 - the key is only for the message
            inner = "/".join(map(str, coords))
        return f"{self.arr.path}/{inner}" if self.arr.path else inner

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self.arr[key]
        except (DataError, StorageError, VolumeError):
            raise
        except OSError as err:
            raise StorageError(
                f"{self.label}: chunk {self._key(key)!r} cannot be read ({type(err).__name__}). "
                "Fix: check the storage (permissions, network) and rerun."
            ) from None
        except Exception as err:  # noqa: BLE001 - codec errors: zstd/blosc RuntimeError etc.
            raise DataError(
                f"{self.label}: chunk {self._key(key)!r} cannot be decoded ({type(err).__name__}: "
                f"{str(err)[:120]}); it is truncated or corrupt. Fix: restore it from a backup "
                "or rewrite the array."
            ) from err


def _dask_from_zarr(arr: zarr.Array, label: str = "<zarr>") -> da.Array:
    """Dask array with one block per storage chunk (per shard when sharded)."""
    from dask.base import tokenize

    shards = getattr(arr, "shards", None)
    block = tuple(shards or arr.chunks)
    name = "zarr-" + tokenize(str(arr.store), arr.path, arr.shape, str(arr.dtype), block)
    return da.from_array(_ChunkReader(arr, label, block), chunks=block, name=name, lock=False,
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
        f"Fix: pass axes with one letter per dim, e.g. axes={_example_axes(arr.ndim)!r}."
    )


def _example_axes(ndim: int) -> str:
    """An example axes string for an error message."""
    return {2: "YX", 3: "ZYX", 4: "CZYX", 5: "SCZYX", 6: "STCZYX"}.get(ndim, "ZYX")


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
    )


def _require_level0(level: int, label: str) -> None:
    if level != 0:
        raise VolumeError(
            f"level={level} does not exist: {label} is not a multiscale OME-Zarr image and has "
            f"only level 0. Fix: pass level=0."
        )


def _ome_image(
    group: zarr.Group,
    ms: _Multiscale,
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
    )


def _group_image(
    group: zarr.Group, level: int, axes: str | Sequence[str] | None, label: str
) -> tuple[_Image, zarr.Group | None]:
    """Resolve a group: OME-Zarr image, bioformats2raw container, or single-array group.

    Returns the image and the group holding its ``multiscales`` (None for a plain array).
    """
    ms = _parse_multiscales(group, label)
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
        node = _open_zarr_node(source, "", "<zarr store>")
        return _resolve(node, axes=axes, level=level, storage_options=None)
    if not isinstance(source, str | os.PathLike):
        raise VolumeError(
            f"source of type {type(source).__name__} is not supported. Fix: pass a path or URL "
            f"(OME-Zarr, Zarr, TIFF), a zarr Array/Group/store, a numpy or a dask array."
        )
    text = os.fspath(source)
    label = strip_credentials(text)
    protocol, path = _split_url(text)
    suffix = Path(urllib.parse.urlsplit(text).path if protocol else path).suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        _require_level0(level, label)
        tiff = _TiffArray(text, storage_options)
        tiff_axes = axes if axes is not None else tiff.axes
        if tiff_axes is None:
            raise AxesError(
                f"{label}: the TIFF does not declare its axes; pass axes= with one letter per dim "
                f"(shape {tiff.shape}), e.g. axes={_example_axes(tiff.ndim)!r}."
            )
        data = da.from_array(
            tiff, chunks=tiff.chunks, asarray=False, meta=np.empty((0,) * tiff.ndim, tiff.dtype)
        )
        return _Image(
            data=data, dims=parse_axes(tiff_axes, tiff.ndim), source=label, fmt="tiff"
        ), None
    if protocol is None and os.path.isfile(path):
        raise VolumeError(
            f"source={label!r}: unsupported file type {suffix or '(no suffix)'!r}. Fix: pass an "
            f"OME-Zarr/Zarr directory or URL, a TIFF file ({', '.join(_TIFF_SUFFIXES)}), or load "
            f"the data yourself and pass a numpy/dask array with axes=."
        )
    node = _open_zarr_node(_store_from(text, storage_options), "", label)
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
        ms = _parse_multiscales(group, first.source)
        for i in range(1, first.n_levels if ms is not None else 1):
            levels.append(_ome_image(group, ms, i, axes, first.source))
    return [_select_channel(_to_dataarray(img), channel) for img in levels]
