"""Where the tasks of a filter pass get their pixels (private to the filter pass).

A volume opened from storage (Zarr, OME-Zarr, TIFF; local or fsspec) is read by key on the
workers through a :class:`patchsieve.volume.ChunkReader`: a task carries a URL and a few tuples,
never a graph. An in-memory array is scattered to the cluster once. Any other dask array (a
computed or transformed volume) is read through its own graph, one small graph per block, which
is fine for the in-memory sizes such arrays have; only storage-backed volumes scale.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class Source:
    """The pixels of a volume (or mask) as the tasks of a filter pass read them.

    Parameters
    ----------
    client : distributed.Client
    volume : xarray.DataArray
        Canonical-order volume (from :func:`patchsieve.open_volume`) or mask.
    storage_options : mapping, optional
        fsspec options of the source (the reader re-opens it with them on the workers).
    axes : str, optional
        The ``axes=`` the volume was opened with.
    """

    def __init__(self, client: Any, volume: Any, storage_options: Mapping[str, Any] | None,
                 axes: str | None = None):
        from patchsieve.volume import chunk_reader

        self.client = client
        self.reader = chunk_reader(volume, storage_options=storage_options, axes=axes)
        self.array: Any = None
        self.data: Any = None
        if self.reader is not None:
            self.kind = "storage"
        elif isinstance(volume.data, np.ndarray) or volume.attrs.get("format") == "numpy":
            arr = volume.data if isinstance(volume.data, np.ndarray) else \
                volume.data.compute(scheduler="threads")
            self.array = client.scatter(np.asarray(arr), hash=False)
            self.kind = "memory"
        else:
            self.data = volume.data
            self.kind = "dask"
        logger.debug("filter pass source %s: %s", volume.attrs.get("source", "?"), self.kind)

    @property
    def arg(self) -> Any:
        """What a task takes as its source (None: the task gets its pixels instead)."""
        return self.reader if self.reader is not None else self.array

    def pixels(self, regions: Sequence[Sequence[slice]]) -> list[Any] | None:
        """Futures of the pixels of ``regions`` (dask sources only; None otherwise)."""
        if self.data is None:
            return None
        return list(self.client.compute([self.data[tuple(r)] for r in regions]))
