"""Procedural volumes: read-only Zarr v3 arrays of any size, served chunk by chunk from a seed.

A URL ``procedural://SHAPE?chunks=CHUNKS&dtype=DTYPE&seed=SEED`` (e.g.
``procedural://4096x40960x32768?chunks=16x256x256``: 11 TB) names a plain Zarr v3 array whose
``zarr.json`` and chunk objects are made up on request by :class:`ProceduralFileSystem`, an
fsspec filesystem registered for the ``procedural`` protocol (entry point ``fsspec.specs`` in
``pyproject.toml``), so every process that resolves fsspec URLs -- Dask workers, DataLoader
workers -- opens it like any other store: :func:`patchsieve.open_volume`, ``patchsieve compute``,
:class:`patchsieve.PatchDataset` and :func:`patchsieve.volume.open_zarr_array` all work on it.
Nothing is stored on disk.

How a chunk is made
-------------------
Each process builds, on first use, a *bank* of :data:`BANK_SIZE` tiles of the chunk shape --
bright blobs (:class:`~patchsieve.demo.BlobField`) on a Poisson-like background, with structure
fractions from 0 (pure background) to 0.9 -- and encodes them once with the array's own codec
pipeline (zarr writes them into a memory store). A chunk request picks a tile by a hash of the
seed and the chunk coordinates and returns its encoded bytes: serving costs microseconds, while
a reader still decodes every chunk, as it would on real data. The same URL always serves the
same bytes in every process.

Counting
--------
With ``storage_options={"counts": DIR}`` every served chunk is appended (8 bytes per coordinate,
one ``write`` with ``O_APPEND``) to a file of the serving process in ``DIR``; a killed process
loses nothing it has written. :func:`served_chunks` adds the files of every process up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import threading
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from fsspec.asyn import AsyncFileSystem

from patchsieve.errors import ConfigError

logger = logging.getLogger(__name__)

PROTOCOL = "procedural"
#: number of distinct pre-encoded tiles a process holds per procedural array
BANK_SIZE = 16
#: structure fraction of each tile of the bank (0 = background only)
BANK_FRACTIONS = (0.0, 0.0, 0.0, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_DEFAULT_AXES = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx", 6: "stczyx"}
_CODECS = ("zstd", "blosc", "none")


def procedural_url(shape: Sequence[int], chunks: Sequence[int] | None = None, *,
                   dtype: str = "uint16", seed: int = 0, axes: str | None = None,
                   codec: str = "zstd") -> str:
    """The URL of a procedural volume.

    Parameters
    ----------
    shape : sequence of int
        Array shape, e.g. ``(4096, 40960, 32768)``.
    chunks : sequence of int, optional
        Chunk shape (default: 16 x 256 x 256 style, clipped to the shape).
    dtype : str
        ``uint8``, ``uint16`` (default), ``int16``, ``float32``, ...
    seed : int
        Which volume of this shape: other seeds serve other tiles in other places.
    axes : str, optional
        Dimension names, one letter per axis (default ``yx``, ``zyx``, ``czyx`` ...).
    codec : {"zstd", "blosc", "none"}
        How chunks are encoded (zstd: zarr's default).

    Examples
    --------
    >>> procedural_url((64, 1024, 1024), (16, 256, 256))
    'procedural://64x1024x1024?chunks=16x256x256&dtype=uint16&seed=0'
    """
    spec = _Spec.build(tuple(int(n) for n in shape), chunks, dtype, seed, axes, codec)
    return f"{PROTOCOL}://{spec.root}"


class _Spec:
    """The parameters of one procedural array (parsed from the root of its URL)."""

    def __init__(self, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype,
                 seed: int, axes: str, codec: str):
        self.shape, self.chunks, self.dtype = shape, chunks, dtype
        self.seed, self.axes, self.codec = seed, axes, codec
        query = {"chunks": "x".join(map(str, chunks)), "dtype": dtype.name, "seed": str(seed)}
        if axes != _DEFAULT_AXES.get(len(shape)):
            query["axes"] = axes
        if codec != "zstd":
            query["codec"] = codec
        self.root = "x".join(map(str, shape)) + "?" + "&".join(f"{k}={v}" for k, v in query.items())
        self.digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]

    @classmethod
    def build(cls, shape: tuple[int, ...], chunks: Sequence[int] | None, dtype: Any, seed: int,
              axes: str | None, codec: str) -> _Spec:
        nd = len(shape)
        if nd < 2 or nd > 6 or any(n < 1 for n in shape):
            raise ConfigError(f"procedural volume shape must have 2 to 6 positive sizes; got "
                              f"{shape}. Fix: e.g. 64x1024x1024.")
        if chunks is None:
            default = (1,) * max(0, nd - 3) + (16, 256, 256)[-min(nd, 3):]
            chunks = tuple(min(c, n) for c, n in zip(default, shape))
        chunks = tuple(int(c) for c in chunks)
        if len(chunks) != nd or any(c < 1 for c in chunks):
            raise ConfigError(f"procedural chunks {chunks} must have {nd} positive sizes (shape "
                              f"{shape}). Fix: e.g. chunks=16x256x256.")
        try:
            dt = np.dtype(dtype)
        except TypeError as err:
            raise ConfigError(f"procedural dtype {dtype!r} is not a numpy dtype.") from err
        if dt.kind not in "uif":
            raise ConfigError(f"procedural dtype must be an integer or float type; got {dt}.")
        axes = (axes or _DEFAULT_AXES[nd]).lower()
        if len(axes) != nd or len(set(axes)) != nd or not set(axes) <= set("stczyx"):
            raise ConfigError(f"procedural axes {axes!r} must name {nd} distinct dims among "
                              "s, t, c, z, y, x. Fix: e.g. axes=zyx.")
        if codec not in _CODECS:
            raise ConfigError(f"procedural codec must be one of {_CODECS}; got {codec!r}.")
        return cls(shape, chunks, dt, int(seed), axes, codec)

    @classmethod
    def parse(cls, root: str) -> _Spec:
        shape_text, _, query = root.partition("?")
        try:
            shape = tuple(int(n) for n in shape_text.split("x"))
            q = dict(urllib.parse.parse_qsl(query, strict_parsing=bool(query)))
            chunks = tuple(int(n) for n in q["chunks"].split("x")) if "chunks" in q else None
            seed = int(q.get("seed", 0))
        except (ValueError, KeyError) as err:
            raise ConfigError(
                f"bad procedural URL {PROTOCOL}://{root!r} ({err}). Fix: use "
                f"{PROTOCOL}://64x1024x1024?chunks=16x256x256&dtype=uint16&seed=0 (see "
                "patchsieve.demo.procedural_url).") from err
        unknown = set(q) - {"chunks", "dtype", "seed", "axes", "codec"}
        if unknown:
            raise ConfigError(f"procedural URL {root!r}: unknown parameter(s) {sorted(unknown)}; "
                              "known: chunks, dtype, seed, axes, codec.")
        return cls.build(shape, chunks, q.get("dtype", "uint16"), seed, q.get("axes"),
                         q.get("codec", "zstd"))


class _Bank:
    """The metadata document and the pre-encoded tiles of one procedural array (the tiles are
    made on the first chunk request)."""

    def __init__(self, spec: _Spec):
        import zarr

        self.spec = spec
        self.codecs: dict[str, Any] = {}
        if spec.codec == "none":
            self.codecs["compressors"] = None
        elif spec.codec == "blosc":
            self.codecs["compressors"] = zarr.codecs.BloscCodec(cname="lz4", clevel=5,
                                                                shuffle="bitshuffle")
        store = zarr.storage.MemoryStore()
        zarr.create_array(store, shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype,
                          dimension_names=tuple(spec.axes), fill_value=0,
                          attributes={"procedural": {"seed": spec.seed, "bank": BANK_SIZE}},
                          **self.codecs)
        self.metadata = bytes(store._store_dict["zarr.json"].to_bytes())
        self.tiles: list[bytes] = []
        self.lock = threading.Lock()

    def make_tiles(self) -> list[bytes]:
        """Generate and encode the tiles (once), with the array's own codec pipeline."""
        with self.lock:
            if self.tiles:
                return self.tiles
            import zarr

            from patchsieve.demo._fields import BlobField, blob_chunk

            spec = self.spec
            store = zarr.storage.MemoryStore()
            tile = zarr.create_array(store, shape=spec.chunks, chunks=spec.chunks,
                                     dtype=spec.dtype, dimension_names=tuple(spec.axes),
                                     fill_value=0, config={"write_empty_chunks": True},
                                     **self.codecs)
            key = tile.metadata.encode_chunk_key((0,) * len(spec.chunks))
            origin = (0,) * len(spec.chunks)
            tiles = []
            for k, frac in enumerate(BANK_FRACTIONS[:BANK_SIZE]):
                field: Any = _Flat(spec.chunks) if frac == 0.0 else \
                    BlobField(spec.chunks, seed=spec.seed * 1000 + k, frac=frac)
                tile[...] = _as_dtype(blob_chunk(field, spec.seed, k, origin, spec.chunks),
                                      spec.dtype)
                tiles.append(bytes(store._store_dict[key].to_bytes()))
            self.tiles = tiles
            logger.debug("procedural tiles of %s made (%d)", spec.root, len(tiles))
            return tiles

    def pick(self, coords: Sequence[int]) -> bytes:
        """The encoded tile served at chunk ``coords`` (a hash of the seed and the coords)."""
        h = (self.spec.seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
        for c in coords:
            h = ((h ^ (int(c) + 0x9E3779B9)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
            h ^= h >> 31
        return self.tiles[h % len(self.tiles)]


class _Flat:
    """A structure field that is zero everywhere (background-only tiles)."""

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(shape)

    def block(self, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        return np.zeros(tuple(b - a for a, b in zip(start, stop)), np.float32)


def _as_dtype(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint16:
        return data
    if dtype.kind == "f":
        return data.astype(dtype)
    info = np.iinfo(dtype)
    scale = 4 if info.max < 1024 else 1  # uint8/int8: counts / 4, as a camera with gain
    return np.clip(data // scale, max(info.min, 0), info.max).astype(dtype)


_BANKS: dict[str, _Bank] = {}
_BANK_LOCK = threading.Lock()


def _bank_now(spec: _Spec, tiles: bool = False) -> _Bank:
    """The bank of ``spec`` (with its tiles made when ``tiles``), once per process; zarr's sync
    API is used, so this runs outside zarr's event loop."""
    bank = _BANKS.get(spec.root)
    if bank is None:
        with _BANK_LOCK:
            bank = _BANKS.get(spec.root)
            if bank is None:
                bank = _BANKS[spec.root] = _Bank(spec)
    if tiles and not bank.tiles:
        bank.make_tiles()
    return bank


_BUILDER: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None
_BUILDS: dict[tuple[str, bool], concurrent.futures.Future[_Bank]] = {}


def _builder() -> concurrent.futures.ThreadPoolExecutor:
    """The bank-building thread of this process (a forked child makes its own)."""
    global _BUILDER
    if _BUILDER is None or _BUILDER[0] != os.getpid():
        _BUILDER = (os.getpid(), concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="procedural-bank"))
        _BUILDS.clear()
    return _BUILDER[1]


async def _bank(spec: _Spec, tiles: bool = False) -> _Bank:
    """:func:`_bank_now` from inside an event loop: built once, in a thread of its own, while
    the loop keeps running (zarr's calls need it; the loop's default executor may be busy)."""
    bank = _BANKS.get(spec.root)
    if bank is not None and (bank.tiles or not tiles):
        return bank
    with _BANK_LOCK:
        pool = _builder()
        fut = _BUILDS.get((spec.root, tiles))
        if fut is None or (fut.done() and fut.exception() is not None):
            fut = _BUILDS[(spec.root, tiles)] = pool.submit(_bank_now, spec, tiles)
    return await asyncio.wrap_future(fut)


class _Counter:
    """Appends served chunk coordinates (int64) to one file per process and array."""

    def __init__(self, folder: str):
        self.folder = folder
        self.files: dict[str, int] = {}
        self.pid = os.getpid()
        self.lock = threading.Lock()

    def add(self, spec: _Spec, coords: Sequence[int]) -> None:
        rec = np.asarray(coords, dtype="<i8").tobytes()
        with self.lock:
            if self.pid != os.getpid():  # forked: the child writes its own files
                self.files, self.pid = {}, os.getpid()
            fd = self.files.get(spec.digest)
            if fd is None:
                os.makedirs(self.folder, exist_ok=True)
                name = f"{spec.digest}-{len(spec.shape)}-{os.getpid()}-{uuid.uuid4().hex[:8]}.bin"
                fd = self.files[spec.digest] = os.open(
                    os.path.join(self.folder, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, rec)


_COUNTERS: dict[str, _Counter] = {}


def served_chunks(counts: str | os.PathLike[str], url: str | None = None) -> Counter[tuple[int, ...]]:
    """How often each chunk was served, over every process that wrote to ``counts``.

    Parameters
    ----------
    counts : str or path-like
        The ``counts`` folder given in ``storage_options``.
    url : str, optional
        Only chunks of this procedural URL (default: all arrays counted there).

    Returns
    -------
    collections.Counter
        ``{chunk coords: times served}``.

    Examples
    --------
    >>> import tempfile, zarr
    >>> d = tempfile.mkdtemp()
    >>> url = procedural_url((32, 64), (16, 32))
    >>> arr = zarr.open_array(url, mode="r", storage_options={"counts": d})
    >>> _ = arr[:20, :]
    >>> sorted(served_chunks(d, url).items())
    [((0, 0), 1), ((0, 1), 1), ((1, 0), 1), ((1, 1), 1)]
    """
    folder = os.fspath(counts)
    want = None
    if url is not None:
        want = _Spec.parse(ProceduralFileSystem._strip_protocol(url).partition("/")[0]).digest
    out: Counter[tuple[int, ...]] = Counter()
    if not os.path.isdir(folder):
        return out
    for name in sorted(os.listdir(folder)):
        parts = name.split("-")
        if not name.endswith(".bin") or len(parts) < 4 or (want and parts[0] != want):
            continue
        nd = int(parts[1])
        recs = np.fromfile(os.path.join(folder, name), dtype="<i8")
        recs = recs[: recs.size - recs.size % nd].reshape(-1, nd)
        if recs.size:
            uniq, n = np.unique(recs, axis=0, return_counts=True)
            out.update({tuple(int(v) for v in u): int(c) for u, c in zip(uniq, n)})
    return out


class ProceduralFileSystem(AsyncFileSystem):  # type: ignore[misc]
    """Read-only fsspec filesystem serving procedural Zarr v3 arrays (protocol ``procedural``).

    Parameters
    ----------
    counts : str, optional
        Folder where every served chunk is recorded (see :func:`served_chunks`).

    Examples
    --------
    >>> import zarr
    >>> arr = zarr.open_array(procedural_url((8, 64, 64), (4, 32, 32), seed=3), mode="r")
    >>> arr.shape, str(arr.dtype), int(arr[0, 0, 0]) == int(arr[0, 0, 0])
    ((8, 64, 64), 'uint16', True)
    """

    protocol = PROTOCOL
    root_marker = ""
    async_impl = True
    cachable = True

    def __init__(self, counts: str | os.PathLike[str] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.counts = os.fspath(counts) if counts is not None else None

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path)
        if text.startswith(f"{PROTOCOL}://"):
            text = text[len(PROTOCOL) + 3:]
        return text.rstrip("/")

    def _counter(self) -> _Counter | None:
        if self.counts is None:
            return None
        c = _COUNTERS.get(self.counts)
        if c is None:
            c = _COUNTERS.setdefault(self.counts, _Counter(self.counts))
        return c

    def _resolve(self, path: str) -> tuple[_Spec, str]:
        root, _, key = self._strip_protocol(path).partition("/")
        return _Spec.parse(root), key

    async def _serve(self, path: str) -> bytes:
        spec, key = self._resolve(path)
        if key == "zarr.json":
            return (await _bank(spec)).metadata
        parts = key.split("/")
        if len(parts) == len(spec.shape) + 1 and parts[0] == "c":
            try:
                coords = tuple(int(p) for p in parts[1:])
            except ValueError:
                coords = ()
            grid = [-(-n // c) for n, c in zip(spec.shape, spec.chunks)]
            if coords and all(0 <= i < g for i, g in zip(coords, grid)):
                data = (await _bank(spec, tiles=True)).pick(coords)
                counter = self._counter()
                if counter is not None:
                    counter.add(spec, coords)
                return data
        raise FileNotFoundError(f"{PROTOCOL}://{path}")

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None,
                        **kwargs: Any) -> bytes:
        data = await self._serve(path)
        return data if start is None and end is None else data[start:end]

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        spec, key = self._resolve(path)
        if not key:
            return {"name": self._strip_protocol(path), "size": 0, "type": "directory"}
        if key == "zarr.json":
            size = len((await _bank(spec)).metadata)
        else:
            size = len(await self._serve(path))
        return {"name": self._strip_protocol(path), "size": size, "type": "file"}

    async def _exists(self, path: str, **kwargs: Any) -> bool:
        try:
            await self._info(path)
        except (FileNotFoundError, ConfigError):
            return False
        return True

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        spec, key = self._resolve(path)
        if key:
            raise FileNotFoundError(f"{PROTOCOL}://{path}: only the root can be listed")
        name = f"{spec.root}/zarr.json"
        entry = {"name": name, "size": len((await _bank(spec)).metadata), "type": "file"}
        return [entry] if detail else [name]

    async def _pipe_file(self, path: str, value: Any, **kwargs: Any) -> None:
        raise PermissionError(f"{PROTOCOL}://{path} is read-only (a procedural volume)")

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        raise PermissionError(f"{PROTOCOL}://{path} is read-only (a procedural volume)")

    async def _rm(self, path: Any, recursive: bool = False, **kwargs: Any) -> None:
        raise PermissionError(f"{PROTOCOL}://{path} is read-only (a procedural volume)")

    def ukey(self, path: str) -> str:
        return self._strip_protocol(path)


def describe_procedural(url: str) -> Mapping[str, Any]:
    """Shape, chunks, dtype, axes, seed, codec and size in bytes of a procedural URL."""
    spec = _Spec.parse(ProceduralFileSystem._strip_protocol(url).partition("/")[0])
    nbytes = int(np.prod(spec.shape, dtype=np.float64) * spec.dtype.itemsize)
    n_chunks = int(np.prod([-(-n // c) for n, c in zip(spec.shape, spec.chunks)], dtype=np.float64))
    return {"shape": spec.shape, "chunks": spec.chunks, "dtype": spec.dtype.name,
            "axes": spec.axes, "seed": spec.seed, "codec": spec.codec, "nbytes": nbytes,
            "n_chunks": n_chunks}
