"""Shared fixtures: real S3 (moto on 127.0.0.1), memory:// prefixes, volume writers, test arrays.

Fixtures (all cheap; the S3 server is started once per session):

* ``s3_server`` (session) -> :class:`S3Server` with ``endpoint_url`` and ``storage_options``
  (``key``, ``secret``, ``endpoint_url``); ``s3_bucket`` -> :class:`S3Bucket`, a fresh bucket.
  Tests using them carry ``@pytest.mark.s3``.
* ``memory_store`` -> a fresh ``memory://<uuid>`` URL prefix, removed afterwards.
* ``chunk_reads`` -> :class:`ChunkReadCounter`: counts reads through a ``countmem://`` fsspec
  filesystem (same data as ``memory://``) and through ``zarr.storage.LocalStore``.
* writers ``write_ome_zarr``, ``write_plain_zarr``, ``write_tiff`` (fixtures returning functions).
* arrays ``syx_array``, ``zyx_array``, ``czyx_array``, ``nondivisible_array`` (numpy, seeded).
* ``careamics_reference_dir`` -> ``../shared/careamics_reference`` (skips when absent).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import pytest
import zarr
from fsspec.implementations.memory import MemoryFileSystem

REPO_ROOT = Path(__file__).resolve().parents[1]
_METADATA_KEYS = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


# ----------------------------------------------------------------------------- S3 (moto)
@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server on 127.0.0.1."""

    endpoint_url: str
    storage_options: dict[str, Any]


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the moto server; ``url`` is ``s3://<name>``."""

    name: str
    url: str
    storage_options: dict[str, Any]
    fs: Any


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """Start a real moto S3 server on 127.0.0.1 (random port) for the session."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    pytest.importorskip("s3fs", reason="s3fs is not installed")
    env = {
        # region via the environment, never client_kwargs (stack-notes pitfall 7)
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield S3Server(
            endpoint_url=endpoint,
            storage_options={"key": "testing", "secret": "testing", "endpoint_url": endpoint},
        )
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[S3Bucket]:
    """A fresh, empty bucket; objects are removed afterwards."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    yield S3Bucket(name, f"s3://{name}", dict(s3_server.storage_options), fs)
    try:
        fs.rm(name, recursive=True)
    except FileNotFoundError:
        pass
    fs.invalidate_cache()


# ------------------------------------------------------------------------ memory:// and counters
@pytest.fixture
def memory_store() -> Iterator[str]:
    """A fresh ``memory://`` prefix (no trailing slash), deleted after the test."""
    prefix = f"memory://test-{uuid.uuid4().hex[:12]}"
    yield prefix
    fs = fsspec.filesystem("memory")
    root = prefix.removeprefix("memory:/")
    if fs.exists(root):
        fs.rm(root, recursive=True)


class CountingMemoryFileSystem(MemoryFileSystem):
    """``countmem://`` sees the data of ``memory://`` and records every path read."""

    protocol = ("countmem",)
    reads: list[str] = []

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if path.startswith("countmem://"):
            path = "memory://" + path[len("countmem://") :]
        return MemoryFileSystem._strip_protocol(path)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kw: Any
    ) -> bytes:
        CountingMemoryFileSystem.reads.append(self._strip_protocol(path))
        return super().cat_file(path, start, end, **kw)

    def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        if "r" in mode:
            CountingMemoryFileSystem.reads.append(self._strip_protocol(path))
        return super()._open(path, mode, **kw)


fsspec.register_implementation("countmem", CountingMemoryFileSystem, clobber=True)


def is_chunk_key(key: str) -> bool:
    """True for a zarr chunk/shard key, False for metadata documents."""
    return not key.rstrip("/").endswith(_METADATA_KEYS)


@dataclass
class ChunkReadCounter:
    """Records keys read via ``countmem://`` URLs and via any ``LocalStore``."""

    reads: list[str] = field(default_factory=list)

    @staticmethod
    def url(memory_url: str) -> str:
        """The counting twin ``countmem://...`` of a ``memory://...`` URL."""
        return "countmem://" + memory_url.removeprefix("memory://")

    def all_reads(self) -> list[str]:
        """Every key/path read (LocalStore keys, then countmem:// paths)."""
        return self.reads + CountingMemoryFileSystem.reads

    def chunk_reads(self) -> list[str]:
        """Reads of chunk keys (metadata documents excluded)."""
        return [k for k in self.all_reads() if is_chunk_key(k)]

    def clear(self) -> None:
        self.reads.clear()
        CountingMemoryFileSystem.reads.clear()


@pytest.fixture
def chunk_reads(monkeypatch: pytest.MonkeyPatch) -> ChunkReadCounter:
    """Count store reads for ``countmem://`` URLs and local paths (LocalStore) in this test."""
    counter = ChunkReadCounter()
    CountingMemoryFileSystem.reads.clear()
    local = zarr.storage.LocalStore
    original_get, original_partial = local.get, local.get_partial_values

    async def get(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        counter.reads.append(key)
        return await original_get(self, key, *args, **kwargs)

    async def get_partial_values(self: Any, prototype: Any, key_ranges: Any) -> Any:
        key_ranges = list(key_ranges)
        counter.reads.extend(key for key, _ in key_ranges)
        return await original_partial(self, prototype, key_ranges)

    monkeypatch.setattr(local, "get", get)
    monkeypatch.setattr(local, "get_partial_values", get_partial_values)
    return counter


# ----------------------------------------------------------------------------- writers
def _write_ome_zarr(
    path: str | os.PathLike[str],
    data: np.ndarray | da.Array,
    axes: str,
    *,
    version: str = "0.5",
    chunks: Sequence[int] | None = None,
    levels: int = 1,
    scale: Mapping[str, float] | None = None,
    translation: Mapping[str, float] | None = None,
    units: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write ``data`` (axes in s,t,c,z,y,x order) as OME-Zarr with ome-zarr; returns the path."""
    from patchsieve.demo import write_ome_zarr

    return write_ome_zarr(
        path,
        data,
        axes,
        version=version,
        chunks=chunks,
        levels=levels,
        scale=scale,
        translation=translation,
        units=units,
        storage_options=storage_options,
    )


def _write_plain_zarr(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    zarr_format: int = 3,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    dimension_names: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write ``data`` as a plain Zarr array (v2 or v3); returns the path/URL."""
    text = os.fspath(path)
    store: Any = text
    if "://" in text:
        store = zarr.storage.FsspecStore.from_url(text, storage_options=dict(storage_options or {}))
    arr = zarr.create_array(
        store,
        shape=data.shape,
        dtype=data.dtype,
        chunks=tuple(chunks) if chunks else tuple(min(32, n) for n in data.shape),
        shards=tuple(shards) if shards else None,
        dimension_names=tuple(dimension_names) if dimension_names else None,
        zarr_format=zarr_format,
        overwrite=True,
    )
    arr[...] = data
    return text


def _write_tiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    axes: str | None = None,
    tile: tuple[int, int] | None = None,
    compression: str | None = None,
) -> str:
    """Write ``data`` with tifffile (axes stored in shaped metadata when given)."""
    import tifffile

    tifffile.imwrite(
        path, data, metadata={"axes": axes} if axes else None, tile=tile, compression=compression
    )
    return os.fspath(path)


@pytest.fixture
def write_ome_zarr() -> Callable[..., str]:
    """``write_ome_zarr(path, data, axes, *, version="0.5", chunks=None, levels=1, scale=...)``."""
    return _write_ome_zarr


@pytest.fixture
def write_plain_zarr() -> Callable[..., str]:
    """``write_plain_zarr(path, data, *, zarr_format=3, chunks=None, dimension_names=None)``."""
    return _write_plain_zarr


@pytest.fixture
def write_tiff() -> Callable[..., str]:
    """``write_tiff(path, data, *, axes=None, tile=None, compression=None)``."""
    return _write_tiff


# ----------------------------------------------------------------------------- arrays
def _counts(shape: tuple[int, ...], seed: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (
        rng.poisson(100.0, size=shape)
        + rng.integers(0, 800, size=shape) * (rng.random(shape) < 0.2)
    ).astype(dtype)


@pytest.fixture(scope="session")
def syx_array() -> np.ndarray:
    """2D stack ``SYX`` (3, 96, 80) float32 holding integer counts."""
    return _counts((3, 96, 80), 1, "float32")


@pytest.fixture(scope="session")
def zyx_array() -> np.ndarray:
    """3D volume ``ZYX`` (20, 64, 72) uint16."""
    return _counts((20, 64, 72), 2, "uint16")


@pytest.fixture(scope="session")
def czyx_array() -> np.ndarray:
    """Multichannel volume ``CZYX`` (2, 10, 48, 40) uint16."""
    return _counts((2, 10, 48, 40), 3, "uint16")


@pytest.fixture(scope="session")
def nondivisible_array() -> np.ndarray:
    """``SYX`` (1, 100, 90) float32: sizes not divisible by common patch or chunk sizes."""
    return _counts((1, 100, 90), 4, "float32")


# ----------------------------------------------------------------------------- reference vectors
@pytest.fixture(scope="session")
def careamics_reference_dir() -> Path:
    """``../shared/careamics_reference`` next to the repository; skips when absent."""
    path = (REPO_ROOT.parent / "shared" / "careamics_reference").resolve()
    if not (path / "manifest.json").is_file():
        pytest.skip(
            f"CAREamics reference vectors are absent ({path}); they live in "
            f"../shared/careamics_reference beside the repository (not shipped in the sdist)."
        )
    return path

# with --doctest-modules, conftest modules are not collected as doctest modules
collect_ignore = ["conftest.py"]
