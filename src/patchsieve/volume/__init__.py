"""Open chunked volumes as lazy, dask-backed :class:`xarray.DataArray` objects with named dims.

:func:`open_volume` and :func:`open_pyramid` read OME-Zarr (NGFF 0.4/0.5), plain Zarr (v2/v3),
TIFF, numpy, dask and zarr objects from local paths or any fsspec URL (see ``_open``).

This package also holds the one store/URL layer of patchsieve (``_stores``): :func:`is_remote`,
:func:`local_path`, :func:`open_store`, :func:`open_zarr_array` and the raw-key helpers every
other module uses. Those import zarr and fsspec only; the openers (dask, xarray) are imported on
first use, so a process that only re-opens a store (a DataLoader worker) stays light.

Private modules: ``_axes`` (CAREamics axes strings), ``_stores``, ``_ngff`` (multiscales
metadata), ``_tiff`` (lazy TIFF), ``_open`` (resolution of a source and the DataArray),
``_chunkreader`` (:class:`ChunkReader`: a source's chunks read by key from any process, what
the streaming filter pass ships to its tasks; made by :func:`chunk_reader`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from patchsieve.grid import DIM_ORDER
from patchsieve.volume._axes import parse_axes
from patchsieve.volume._chunkreader import ChunkReader
from patchsieve.volume._stores import (
    delete_key,
    is_remote,
    list_keys,
    local_path,
    open_store,
    open_zarr_array,
    read_key,
    safe_message,
    same_location,
    split_url,
    strip_credentials,
    write_key,
    write_key_if_absent,
)

if TYPE_CHECKING:
    from patchsieve.volume._open import chunk_reader, open_pyramid, open_volume

__all__ = [
    "DIM_ORDER",
    "ChunkReader",
    "chunk_reader",
    "delete_key",
    "is_remote",
    "list_keys",
    "local_path",
    "open_pyramid",
    "open_store",
    "open_volume",
    "open_zarr_array",
    "parse_axes",
    "read_key",
    "safe_message",
    "same_location",
    "split_url",
    "strip_credentials",
    "write_key",
    "write_key_if_absent",
]

#: names served from ``_open`` on first access (it imports dask and xarray)
_LAZY = ("open_volume", "open_pyramid", "chunk_reader")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("patchsieve.volume._open"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'patchsieve.volume' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
