"""Chunk-by-chunk access to a side-car's arrays (what the threshold tools and the decision step
use at scale: a side-car of an 11 TB volume holds arrays of ~84 million regions)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr

from patchsieve.errors import SidecarError, SidecarIncompleteError
from patchsieve.sidecar._decisions import chunk_boxes
from patchsieve.volume import safe_message


def stored_array(sidecar: Any, key: str) -> zarr.Array:
    """The zarr array ``key`` of a :class:`~patchsieve.sidecar.Sidecar` (nothing read).

    Raises
    ------
    SidecarIncompleteError
        The side-car has no such array.
    """
    try:
        arr = sidecar._group[key]
    except KeyError as err:
        raise SidecarIncompleteError(
            f"side-car {sidecar.path!r} lacks array {key!r}. Fix: rerun `patchsieve compute` "
            "on the same output to complete it.") from err
    if not isinstance(arr, zarr.Array):
        raise SidecarError(f"side-car {sidecar.path!r}: {key!r} is not an array.")
    return arr


def iter_chunks(arr: Any, lead: int = 0) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """``(box, values)`` for every chunk of ``arr`` (all axes but the first ``lead``), in C
    order of the chunk grid; a chunk that cannot be read is one :class:`SidecarError`.

    Examples
    --------
    >>> a = zarr.create_array(zarr.storage.MemoryStore(), shape=(3, 2), chunks=(2, 2), dtype="u1")
    >>> [v.shape for _, v in iter_chunks(a)]
    [(2, 2), (1, 2)]
    """
    for box in chunk_boxes(arr, lead):
        yield box, read_stored(arr, (*(slice(None),) * lead, *box),
                               f"side-car array {arr.path!r} at {box}")


def read_stored(arr: zarr.Array, sel: Any, what: str) -> np.ndarray:
    """``arr[sel]`` as numpy; a codec or storage error (a damaged side-car) becomes one
    :class:`SidecarError` naming ``what`` and the fix."""
    try:
        return np.asarray(arr[sel])
    except Exception as err:  # noqa: BLE001 - codec / storage errors of a damaged side-car
        raise SidecarError(
            f"{what} cannot be read ({type(err).__name__}: {safe_message(err)}). Fix: "
            "recompute it with `patchsieve compute ... --overwrite`.") from err
