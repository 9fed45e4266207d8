"""The filter pass: volume -> region statistics -> decisions & weights -> side-car (resumable).

One call, :func:`compute` (``patchsieve.compute``), streams the volume through Dask, evaluates one
or more filter configs on the reference channel and writes everything a sampler needs to a Zarr
side-car (:mod:`patchsieve.sidecar`); :func:`ensure_sidecar` reuses a complete one.

How it stays out-of-core and resumable
--------------------------------------
* The graph is built from :func:`patchsieve.regions.region_block_array` (the statistics that need
  overlapping regions, Max and Shannon: read chunk by chunk with a one-patch halo) and from per-cell
  partials of cell-aligned blocks (sums of every channel for normalisation, plus what MeanStd and
  Mask need: their region values are exact functions of the cells and are derived from them at the
  end, without a halo). Each output block is tiny (one value per patch-sized cell or region).
* Only blocks whose progress marker is unset are computed: the graph is culled to the keys of the
  missing blocks, so a restarted run reads only the data those blocks need.
* Workers never write to the side-car: results come back to the client, which writes them and then
  sets the block's marker (:class:`patchsieve.sidecar.BlockLog`). A run killed at any point leaves
  markers only for blocks whose values are on disk.
* Decisions, weights, totals, normalisation and labels are derived from the stored statistics; the
  root ``complete`` flag is set last (:meth:`patchsieve.sidecar.SidecarWriter.finalize`).

Modules: ``_pass`` (:func:`compute`, :func:`ensure_sidecar`), ``_plan`` (the graphs),
``_scheduler`` (the block scheduler: waves, groups, results), ``_jobs`` (block results into the
side-car).
"""

from __future__ import annotations

from patchsieve.filterpass._pass import compute, ensure_sidecar

__all__ = ["compute", "ensure_sidecar"]
