"""Where a side-car lives and which source it belongs to: default location, write checks,
source fingerprints."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from patchsieve.errors import ConfigError, StorageError
from patchsieve.sidecar._format import SUFFIX, WRITE_PROBE, canonical_hash
from patchsieve.volume import (
    delete_key,
    is_remote,
    local_path,
    open_store,
    open_zarr_array,
    read_key,
    safe_message,
    write_key,
)

logger = logging.getLogger(__name__)


def source_stem(url: str) -> str:
    """The source's name without its suffix (and without a URL query, e.g. of a procedural
    volume): what the default side-car is named after.

    Examples
    --------
    >>> source_stem("s3://bucket/img.ome.zarr"), source_stem("procedural://64x512x512?seed=1")
    ('img', '64x512x512')
    """
    name = url.rstrip("/").split("/")[-1].split("?")[0] or "volume"
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "volume"
    return name


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "patchsieve")


def default_output(
    source_url: str,
    source_fingerprint: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    level: int = 0,
) -> str:
    """Default side-car location.

    ``<source name>.patchsieve.zarr`` beside the source when that location is writable (local or
    object storage), else ``$XDG_CACHE_HOME/patchsieve/<fingerprint>/<source name>.patchsieve.zarr``
    (``~/.cache`` when XDG_CACHE_HOME is unset). In-memory sources (numpy/dask) always use the cache.
    Never inside the source store. A pass on pyramid level ``k > 0`` is named
    ``<source name>.level<k>.patchsieve.zarr`` so it sits beside the level-0 side-car.
    """
    stem = source_stem(source_url) + (f".level{level}" if level else "")
    cached = os.path.join(cache_root(), source_fingerprint[:16], stem + SUFFIX)
    if source_url.startswith("<"):
        return cached
    parent = source_url.rstrip("/").rsplit("/", 1)[0] if "/" in source_url.rstrip("/") else "."
    beside = f"{parent}/{stem}{SUFFIX}"
    try:
        require_writable(beside, storage_options)
    except StorageError:
        logger.info("source location not writable; side-car goes to the cache: %s", cached)
        return cached
    return beside


def check_not_inside(output: str, source_url: str) -> None:
    out = output.rstrip("/")
    src = source_url.rstrip("/")
    if src.startswith("<"):
        return
    if not is_remote(out):
        out = os.path.abspath(local_path(out))
    if not is_remote(src):
        src = os.path.abspath(local_path(src))
    if out == src or out.startswith(src + "/"):
        raise ConfigError(
            f"output {output!r} is inside the source store {source_url!r}; patchsieve never writes "
            "into a source. Fix: choose an output beside it (the default is "
            "<source name>.patchsieve.zarr next to the source)."
        )


def source_fingerprint(volume: Any, storage_options: Mapping[str, Any] | None = None, *,
                       url: str | None = None) -> str:
    """Fingerprint of a source: metadata plus checksums of a few raw (encoded) chunks.

    For Zarr sources: array metadata document, shape, chunks, dtype and the sha256 of up to 8 raw
    chunks spread over the array (first, last, evenly between). A change to other chunks that keeps
    the metadata is not detected (documented limitation). For in-memory arrays: shape, dtype and a
    hash of a strided sample of the data.

    ``url`` replaces the source URL that enters the hash (default ``volume.attrs["source"]``),
    while the chunks are still read from where ``volume`` was opened: it checks a source that was
    moved, or is reached by another path, against a side-car's stored fingerprint.
    """
    attrs = dict(volume.attrs)
    head = {
        "url": attrs.get("source") if url is None else url,
        "array_path": attrs.get("array_path", ""),
        "dims": list(volume.dims),
        "shape": list(volume.shape),
        "dtype": str(volume.dtype),
    }
    h = hashlib.sha256(canonical_hash(head).encode())
    where = str(attrs.get("source", "<numpy>"))
    fmt = str(attrs.get("format", ""))
    if where.startswith("<") or fmt == "tiff":
        data = volume.data
        flat_idx = tuple(slice(None, None, max(1, n // 16)) for n in volume.shape)
        sample = np.ascontiguousarray(np.asarray(data[flat_idx]))
        h.update(sample.tobytes())
        if fmt == "tiff" and not where.startswith("<"):
            try:
                st = os.stat(local_path(where))
                h.update(f"{st.st_size}".encode())
            except OSError:
                pass
        return h.hexdigest()[:32]
    arr = open_zarr_array(where, attrs.get("array_path", ""), storage_options=storage_options)
    meta = arr.metadata.to_dict()
    h.update(canonical_hash(meta).encode())
    grid = [math.ceil(n / c) for n, c in zip(arr.shape, arr.chunks)]
    total = int(np.prod(grid))
    picks = sorted({0, total - 1, *(int(i) for i in np.linspace(0, total - 1, 8))}) if total else []
    store = arr.store_path.store
    prefix = arr.store_path.path
    for flat in picks:
        coords = tuple(int(c) for c in np.unravel_index(flat, grid))
        key = arr.metadata.encode_chunk_key(coords)
        full = f"{prefix}/{key}" if prefix else key
        raw = read_key(store, full)
        h.update(full.encode())
        h.update(hashlib.sha256(raw).digest() if raw is not None else b"<missing>")
    return h.hexdigest()[:32]


def require_writable(path: str, storage_options: Mapping[str, Any] | None) -> None:
    """Raise StorageError when ``path`` cannot be written (probe write + delete).

    A local folder created only for the probe is removed again, so a refused run leaves nothing.
    """
    local = None if is_remote(path) else os.path.abspath(local_path(path))
    created = [] if local is None else _missing_parents(local)
    store = open_store(path, storage_options=storage_options, read_only=False)
    key = WRITE_PROBE
    try:
        write_key(store, key, b"probe")
        delete_key(store, key)
    except Exception as err:  # noqa: BLE001 - any backend error means not writable
        raise StorageError(
            f"output location {path!r} is not writable ({type(err).__name__}: {safe_message(err)}). "
            "Fix: pass a writable --output / output= location."
        ) from err
    finally:
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:
                break


def _missing_parents(path: str) -> list[str]:
    """Folders of ``path`` (deepest first) that do not exist yet."""
    out = []
    while path and not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out

