"""Earlier path of the filter pass, kept as a thin alias: use :func:`patchsieve.compute` (defined
in :mod:`patchsieve.filterpass`); locations and fingerprints are in :mod:`patchsieve.sidecar`."""

from __future__ import annotations

from patchsieve.filterpass import compute
from patchsieve.sidecar import default_output, epoch_patches, source_fingerprint

__all__ = ["compute", "default_output", "epoch_patches", "source_fingerprint"]
