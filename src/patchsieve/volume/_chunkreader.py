"""Reading a stored volume's chunks by key from any process (private to the volume package).

:class:`ChunkReader` is what the streaming filter pass ships to its tasks instead of a dask
graph: a few strings and tuples that re-open the source (once per process) and read regions of it
in the canonical dim order. :class:`_BlockReader` maps codec and storage errors of a chunk read
to one clear error naming the chunk key (shared with the dask arrays of :func:`open_volume`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from patchsieve.errors import DataError, StorageError, VolumeError
from patchsieve.volume._stores import open_zarr_array, strip_credentials

_HANDLES: dict[str, tuple[int, Any]] = {}
_HANDLES_LOCK = threading.Lock()


class _BlockReader:
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


class ChunkReader:
    """Reads regions of a stored volume (Zarr or TIFF) in the canonical dim order; picklable.

    Made by :func:`patchsieve.volume.chunk_reader`. Each process re-opens the source once (by
    URL, with the ``storage_options`` it was made with) and keeps the handle; a pickled reader
    carries only the URL, the options and the geometry.

    Attributes
    ----------
    shape, chunks : tuple of int
        Canonical-order shape and storage chunk (dask block) shape.
    dtype : str
    token : str
        Identifies the source and geometry (for caches of decoded chunks).
    """

    def __init__(self, url: str, array_path: str, storage_options: Mapping[str, Any] | None, *,
                 kind: str, perm: Sequence[int], shape: Sequence[int], chunks: Sequence[int],
                 dtype: str, stored: Any = None):
        self.url, self.array_path, self.kind = str(url), str(array_path), str(kind)
        self.storage_options = dict(storage_options or {})
        self.perm = tuple(int(p) for p in perm)
        self.shape = tuple(int(n) for n in shape)
        self.chunks = tuple(int(c) for c in chunks)
        self.dtype = str(dtype)
        self.token = hashlib.sha256(repr((self.url, self.array_path, self.kind, self.perm,
                                          self.shape, self.chunks, self.dtype)).encode()
                                    ).hexdigest()[:24]
        if stored is not None:
            with _HANDLES_LOCK:
                _HANDLES.setdefault(self.token, (os.getpid(), self._wrap(stored)))

    @property
    def numblocks(self) -> tuple[int, ...]:
        """Storage chunks per axis (canonical order)."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks))

    def _wrap(self, stored: Any) -> Any:
        if self.kind == "zarr":
            block = tuple(getattr(stored, "shards", None) or stored.chunks)
            return _BlockReader(stored, strip_credentials(self.url), block)
        return stored

    def _handle(self) -> Any:
        entry = _HANDLES.get(self.token)
        if entry is not None and entry[0] == os.getpid():
            return entry[1]
        with _HANDLES_LOCK:
            entry = _HANDLES.get(self.token)
            if entry is None or entry[0] != os.getpid():
                if self.kind == "zarr":
                    arr = open_zarr_array(self.url, self.array_path,
                                          storage_options=self.storage_options)
                else:
                    from patchsieve.volume._tiff import TiffArray

                    arr = TiffArray(self.url, self.storage_options)
                entry = _HANDLES[self.token] = (os.getpid(), self._wrap(arr))
        return entry[1]

    def read(self, region: Sequence[slice]) -> np.ndarray:
        """The pixels of ``region`` (slices in canonical order), canonical order."""
        stored = [slice(None)] * len(self.perm)
        for j, p in enumerate(self.perm):
            stored[p] = region[j]
        out = np.asarray(self._handle()[tuple(stored)])
        if self.perm != tuple(range(len(self.perm))):
            out = np.transpose(out, self.perm)
        return out

    def block_region(self, index: Sequence[int]) -> tuple[slice, ...]:
        """The slices of storage chunk ``index`` (canonical order)."""
        return tuple(slice(i * c, min((i + 1) * c, n))
                     for i, c, n in zip(index, self.chunks, self.shape))

    def __repr__(self) -> str:
        return (f"<ChunkReader {strip_credentials(self.url)!r} [{self.array_path or '-'}] "
                f"shape={self.shape} chunks={self.chunks} {self.dtype}>")
