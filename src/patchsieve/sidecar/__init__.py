"""The side-car: a Zarr v3 group beside the data holding region statistics, decisions and weights.

This package owns the whole format (version 1, documented in ``docs/sidecar-format.md``)::

    <source name>.patchsieve.zarr/
      zarr.json                       root attrs["patchsieve"]: format, versions, source, fingerprints,
                                      geometry, filters, status, normalization
      stats/<stat>                    float64 (*sample_shape, *grid_shape): one value per region
      cells/sum, cells/sumsq          float64 (n_channels, *sample_shape, *cell_shape): per-cell partial
                                      sums for normalisation statistics under any decision
      progress/<log>                  uint8 block markers (1 = block written), the resume logs
      decisions/<filter>/filter_out   bool    (*sample_shape, *grid_shape), CAREamics ``filter_out``
      decisions/<filter>/weight       float64 (*sample_shape, *grid_shape): 1 kept, p background
      decisions/<filter>/n_background, n_patches_per_epoch, ...   (*sample_shape) totals
      labels/<filter>/                OME-Zarr (NGFF) multiscale label image: 1 = signal, 0 = background

A reader never accepts a side-car whose ``complete`` flag is false (:class:`SidecarIncompleteError`).

Modules: ``_format`` (names and keys), ``_reader`` (:class:`Sidecar`, :func:`open_sidecar`),
``_writer`` (:class:`SidecarWriter`, :class:`BlockLog`), ``_decisions`` (decisions, weights,
totals, normalisation from the statistics, chunk by chunk), ``_chunks`` (chunk-wise reads:
:func:`stored_array`, :func:`iter_chunks`), ``_lock`` (:class:`SidecarLock`), ``_location``
(default location, write checks, source fingerprints), ``_labels`` (label images).
"""

from __future__ import annotations

from patchsieve.sidecar._chunks import iter_chunks, stored_array
from patchsieve.sidecar._decisions import chunk_boxes, cover_cells, epoch_patches, keep_cells_window
from patchsieve.sidecar._format import (
    CELL_MASK_NONZERO,
    CELL_REF_M2,
    CELL_REF_SUM,
    CELL_SUM,
    CELL_SUMSQ,
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_NAME,
    LOCK_STALE_AFTER,
    SAMPLE_TOTALS,
    SUFFIX,
    canonical_hash,
    config_attrs,
    decision_key,
    progress_key,
    stats_key,
)
from patchsieve.sidecar._location import (
    check_not_inside,
    default_output,
    require_writable,
    source_fingerprint,
)
from patchsieve.sidecar._lock import SidecarLock
from patchsieve.sidecar._reader import Sidecar, is_sidecar, open_sidecar
from patchsieve.sidecar._writer import BlockLog, SidecarWriter, block_slices
from patchsieve.volume import is_remote, open_store  # re-exported: earlier paths

__all__ = [
    "CELL_MASK_NONZERO",
    "CELL_REF_M2",
    "CELL_REF_SUM",
    "CELL_SUM",
    "CELL_SUMSQ",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOCK_NAME",
    "LOCK_STALE_AFTER",
    "SAMPLE_TOTALS",
    "SUFFIX",
    "BlockLog",
    "Sidecar",
    "SidecarLock",
    "SidecarWriter",
    "block_slices",
    "chunk_boxes",
    "canonical_hash",
    "check_not_inside",
    "config_attrs",
    "cover_cells",
    "decision_key",
    "default_output",
    "epoch_patches",
    "is_remote",
    "is_sidecar",
    "iter_chunks",
    "keep_cells_window",
    "open_sidecar",
    "open_store",
    "progress_key",
    "require_writable",
    "source_fingerprint",
    "stats_key",
    "stored_array",
]
