"""Deterministic synthetic demo datasets, written as OME-Zarr chunk by chunk.

Datasets (``kind``)
-------------------
``"hagen2d"``
    Hagen-like 2D stack, dims ``("s", "y", "x")``, full size ``(79, 1024, 1024)`` float32 holding
    integer photon counts, ``Poisson(100 + 900 * structure) + rint(Normal(0, 5))``, as camera data
    does. Coarse "cells" with a finer texture inside cover ~27 % of the area; the rest is dim
    noisy background. Shannon entropy over 128 x 128 regions (CAREamics' Shannon filter with
    patch 64) separates them around 7.5 bits: background regions ~5.5-6.1 bits, regions that
    are mostly structure > 8 bits (measured on the full stack: max 6.06 / min 8.20).
``"vol3d2c"``
    3D two-channel uint16 volume, dims ``("c", "z", "y", "x")``, full size ``(2, 64, 512, 512)``,
    3-level pyramid (z, y and x halved per level). Channel 0 is sparse (~8 % structure), channel 1
    denser (~45 %, partly correlated with channel 0).
``"vol3d2c_mask"``
    Written with ``"vol3d2c"``: a binary uint8 mask ``("z", "y", "x")`` of channel 0's structure
    (1 keep / 0 drop) for mask-based filtering demos.

The generators (``_fields``) are shared with the benchmarks (``benchmarks/data.py``), which also
use the CAREamics reference stack :func:`reference_slices` and the large-volume generator
:class:`BlobField`. Every block is generated from its own seeded
:class:`numpy.random.Generator`, so the output is deterministic and the full-size data never sits
in memory at once. Sample stacks use the
``{"name": "s", "type": "custom"}`` NGFF axis (see :mod:`patchsieve.volume`).

Procedural volumes (``_procedural``): :func:`procedural_url` names a read-only Zarr array of any
size (10 TB and beyond) served chunk by chunk by :class:`ProceduralFileSystem` (fsspec protocol
``procedural://``, registered through the ``fsspec.specs`` entry point), with per-process serve
counters read by :func:`served_chunks`; see ``docs/scaling.md``.
"""

from __future__ import annotations

from patchsieve.demo._fields import (
    BlobField,
    blob_chunk,
    hagen_signal,
    poisson_blobs,
    reference_slices,
    two_channel_volume,
)
from patchsieve.demo._procedural import (
    ProceduralFileSystem,
    describe_procedural,
    procedural_url,
    served_chunks,
)
from patchsieve.demo._write import DEMO_KINDS, DEMO_SIZES, write_demo_data, write_ome_zarr

__all__ = [
    "DEMO_KINDS",
    "DEMO_SIZES",
    "BlobField",
    "ProceduralFileSystem",
    "blob_chunk",
    "describe_procedural",
    "hagen_signal",
    "poisson_blobs",
    "procedural_url",
    "reference_slices",
    "served_chunks",
    "two_channel_volume",
    "write_demo_data",
    "write_ome_zarr",
]
