"""TIFF files read lazily through ``tifffile.TiffFile.aszarr`` (private to the volume package)."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from patchsieve.errors import VolumeError, VolumeNotFoundError
from patchsieve.volume._axes import CAREAMICS_LETTERS
from patchsieve.volume._stores import split_url, strip_credentials

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8")
_REOPEN_LOCK = threading.Lock()


class TiffArray:
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
        self.axes = tiff_axes(tif)

    def _open(self) -> tuple[zarr.Array, Any]:
        import tifffile

        protocol, path = split_url(self.source)
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


def tiff_axes(tif: Any) -> str | None:
    """Axes a TIFF declares explicitly (shaped metadata, ImageJ, OME), else None."""
    series = tif.series[0]
    if tif.is_shaped and tif.shaped_metadata and "axes" in tif.shaped_metadata[0]:
        return str(tif.shaped_metadata[0]["axes"])
    if tif.is_imagej or tif.is_ome:
        axes = str(series.axes)
        if "S" in axes and "C" not in axes:  # tifffile 'S' = colour samples
            axes = axes.replace("S", "C")
        return axes if set(axes) <= set(CAREAMICS_LETTERS) else None
    return None

