"""The filter pass: volume -> region statistics -> decisions & weights -> side-car (resumable).

One call, :func:`compute` (``patchsieve.compute``), streams the volume through Dask, evaluates one
or more filter configs on the reference channel and writes everything a sampler needs to a Zarr
side-car (:mod:`patchsieve.sidecar`); :func:`ensure_sidecar` reuses a complete one.

How it streams, stays out-of-core and resumable
-----------------------------------------------
* A *block* is one source chunk (all channels): the regions and the patch-sized cells whose
  origin lies in it. Max and Shannon read the block with the one-patch halo its last regions
  reach into the next chunks; mean, std and mask coverage are exact functions of per-cell
  partials (sums of every channel for normalisation too) and are derived from them at the end,
  chunk of the side-car by chunk, without a halo.
* Planning holds per-axis tables only: blocks are generated lazily in *tiles* (``T`` blocks
  across, the whole first spatial axis deep) and submitted as small tasks with at most
  :data:`~patchsieve.filterpass._scheduler.TASKS_PER_THREAD` tasks per worker thread in flight.
  A task carries a :class:`patchsieve.volume.ChunkReader` (the source re-opened by URL in each
  worker process) and its blocks, never a graph; a per-process cache of decoded chunks serves the
  halos (each chunk is decoded once inside a tile). Start-up and memory do not grow with the
  volume (``docs/scaling.md``).
* Workers never write to the side-car: results come back to the client, which writes them chunk
  by chunk of the side-car and then sets the blocks' markers
  (:class:`patchsieve.sidecar.BlockLog`). A run killed at any point leaves markers only for
  blocks whose values are on disk; a rerun computes only blocks without a marker; Ctrl-C
  writes every block handed back before it stops.
* Decisions, weights, totals, normalisation and labels are derived from the stored statistics,
  chunk by chunk; the root ``complete`` flag is set last
  (:meth:`patchsieve.sidecar.SidecarWriter.finalize`).

Modules: ``_pass`` (:func:`compute`, :func:`ensure_sidecar`, the run), ``_plan`` (blocks, tiles,
side-car chunks), ``_scheduler`` (the bounded-window stream of tasks, progress), ``_blocks``
(what a task does on a worker, the chunk cache), ``_source`` (where tasks get pixels),
``_jobs`` (block results into the side-car, derived statistics).
"""

from __future__ import annotations

from patchsieve.filterpass._pass import compute, ensure_sidecar

__all__ = ["compute", "ensure_sidecar"]
