"""Epoch plans of patch origins: CAREamics ``StratifiedPatching`` semantics, vectorised.

This module is pure numpy. It turns the decisions and weights of a side-car into one *plan* per
epoch (patch origins, materialised or streamed tile by tile), splits a plan between DDP ranks and
DataLoader workers, orders a shard so that neighbouring patches share decoded storage chunks,
and defines the resume position.

Sampling model (``mode="per_epoch"``, the default) -- CAREamics 0.3.5
``careamics/dataset/patching/stratified_patching.py`` reproduced for every sample:

* the region grid has ``(size + 1) // patch`` regions per spatial axis; region ``g`` selects
  patch origins in ``[g*patch, g*patch + min(patch, size - (g+1)*patch + 1))`` per axis, so
  every patch fits the image (the *selectable area* ``a_i`` is the number of such origins);
* background regions (``filter_out`` True) get the relative probability ``p``
  (``filtered_patch_prob``), kept regions 1; the epoch has
  ``N = ceil(prod(size / patch) - sum_bg (1 - p))`` patches per sample (the subtraction is
  sequential in region order, as CAREamics' loop does, so the ceil sees the same rounding);
* regions are bin-packed by their adjusted area ``a_i * p_i`` into ``N`` bins with CAREamics'
  best-fit-decreasing algorithm (same order, same tie-breaks, same capacity growth, including
  the integer truncation that CAREamics' ``int64`` capacity array applies when the largest
  region is a kept one); patch index ``b`` draws region ``i`` of its bin with probability
  ``a_i p_i / bin_size`` and spreads the bin's unused capacity over all regions of the sample in
  proportion to ``a_i p_i``; the origin is then uniform in the region's selectable box.

The bin packing only stratifies an epoch (which regions appear together); the expected number
of visits of region ``i`` per epoch is ``N * a_i p_i / sum_j a_j p_j`` whatever the packing.

Expected share of background patches per epoch (``expected_background_fraction``):

* ``per_epoch``: ``sum_s N_s * B_s / A_s / sum_s N_s`` with ``A_s = sum_i a_i p_i`` and
  ``B_s`` the same sum over background regions; on a grid of equal areas this is the region-unit
  formula ``p N_bg / (N_fg + p N_bg)``.
* ``with_replacement``: ``epoch_length`` i.i.d. draws with ``P(i) = a_i p_i / sum_j a_j p_j``
  over all samples: ``sum_bg a p / sum a p`` (again ``p N_bg / (N_fg + p N_bg)`` in region
  units), with binomial spread between epochs.
* ``fixed_subset``: ``k_s = floor(sum_bg p + 0.5)`` background regions per sample are chosen once
  (from ``seed`` only) and then sampled like kept regions in every epoch, the others never:
  ``k / (N_fg + k)`` in region units, identical in every epoch.

Two implementations of that model:

* :class:`StratifiedPatching` holds per-region arrays and materialises a plan per epoch (a
  uniformly shuffled structured array): the reference, checked against real CAREamics, used
  for analysis of small grids.
* :class:`StreamingPatching` (what :class:`~patchsieve.dataset.PatchDataset` uses) needs only
  region *counts*: its plan state is ``O(tiles)`` (at most ``MAX_TILES`` = 32768 tiles, a
  few MB) whatever the number of regions, and the regions of a tile are read (from the
  side-car, block-wise) only when its patches are drawn. See "Streamed plans" below.

Sharding rule: an epoch plan of ``n`` patches is truncated to ``n_keep = n - n % world_size``
(like ``DistributedSampler(drop_last=True)``), rank ``r`` takes plan positions
``r, r + world_size, ...`` (``n_keep // world_size`` patches, the same for every rank), and the
DataLoader workers of a rank split the rank's share. The union over all ranks and workers is
the truncated plan whatever ``(world_size, num_workers)``; shards are disjoint.

Execution order (chunk-aware, bounded shuffle window): the storage chunks are cut into runs of
``window`` neighbouring chunks; a rank's patches are ordered run by run (runs in a random
order, the patches of a run in a random order) and the workers take consecutive pieces of the
rank's patches, of the same sizes as the interleaved split (``len(range(w, n_rank, W))``), so
batch counts do not change between epochs. A run's decoded chunks fit the worker's cache, so each
chunk is decoded about once per epoch while a batch still mixes patches of up to ``window``
chunks. Reordering never changes which patches are drawn, only when and by which worker;
``window=0`` keeps plan order with interleaved workers.

Resume: a worker's position is the number of patches of its execution order already consumed;
skipping that many patches resumes the epoch exactly.

Streamed plans (:class:`StreamingPatching`, :class:`ShardStream`)
-----------------------------------------------------------------
*Counts, not regions.* A region's adjusted area ``a_i p_i`` depends only on its *kind*: its
area class (per axis, the grid's last row has ``(size + 1) % patch`` selectable origins, the
others ``patch``) and its status (kept, background; ``fixed_subset``: chosen or unchosen
background). Regions of equal adjusted area form a *group*; CAREamics' best-fit-decreasing
packing places a run of equal items in a pattern that depends only on the group counts, so it
is computed on ``(value, count)`` groups with bin sets kept as index intervals
(``pack_regions`` expands the same computation per region). The regions are enumerated *tile
by tile* (tiles: boxes of about one or a few storage chunks, in Z order; C order inside a
tile) instead of in C order: the packing is CAREamics' packing of that enumeration, i.e. the
same bins, bin size and epoch length, up to which regions of equal adjusted area share a bin.
The only data a streamed plan reads at start-up are the background counts per tile and area
class (one pass over the ``filter_out`` decisions, slab by slab).

*Exact per-epoch distribution.* Every bin yields one patch per epoch: with probability
``fill = sum of its members' a_i p_i / bin_size`` one of its members (proportionally to
``a_i p_i``), else (a "rest" draw) any region of the sample proportionally to ``a_i p_i``; then
a uniform origin in the region's selectable box. A *cell* is a run of bins of equal contents
whose members lie in the same tiles; an epoch draws per cell one multinomial (rest, and each
tile its members lie in), assigns the categories to the cell's bins by a keyed permutation,
and draws the rest draws' tiles by one multinomial per sample over the tiles' masses. This is
the same law as one independent draw per bin (bins of a cell are exchangeable), so the epoch
is a draw from CAREamics' distribution; only the random numbers differ.

*Plan.* The plan of an epoch is *tile-blocked*: the tiles in a random order (keyed by
``(seed, epoch)``), each tile's patches contiguous in a random order. Tile counts are known
before any tile is drawn, so every rank and worker computes its positions arithmetically; a
tile's patches are drawn (:meth:`StreamingPatching.realize`) only when needed, from keyed
(counter-based) random numbers, identically in every process and for every
``(world_size, num_workers)``.

*Execution order* (:class:`ShardStream`). The rank's patches in canonical (spatial) tile
order are cut into the workers' pieces of the interleaved sizes (a tile on a border is shared,
its patches in plan order): each worker covers one spatial stripe, the same every epoch, so a
persistent worker finds its decoded chunks again (on the 2D demo stack no chunk is decoded
twice after the first epoch). Inside its stripe a worker runs groups of consecutive tiles
holding about ``window`` chunks (boundaries shifted every epoch) in a random order; a tile
larger than ``window`` chunks is cut into sub-runs of ``window`` chunks by the chunk of the
patch origin (Z order); the patches of a run come in a random order. ``window=0``: plan order,
workers interleaved.

*Randomness of a batch.* A batch is ``batch_size`` consecutive patches of one run: a uniformly
random subset of that run's patches, i.e. from up to ``window`` neighbouring storage chunks
(``benchmarks/bench_dataset.py`` reports the distinct chunks per batch; with the default window
on the 2D demo stack the 64 patches of a batch come from 40 distinct chunks on average; 44
before this design).
Runs and their order change every epoch (keyed by the epoch; run boundaries shift).
"""

from __future__ import annotations

from patchsieve.sampling._execution import ShardStream
from patchsieve.sampling._order import (
    chunk_groups,
    shard_positions,
    worker_orders,
    worker_positions_from_batches,
    zorder_chunk_ids,
)
from patchsieve.sampling._planned import PlannedPatching
from patchsieve.sampling._stratified import (
    MODES,
    SamplingMode,
    StratifiedPatching,
    careamics_n_patches,
    pack_regions,
    plan_dtype,
    region_areas,
)
from patchsieve.sampling._streamed import StreamingPatching

__all__ = [
    "MODES",
    "PlannedPatching",
    "SamplingMode",
    "ShardStream",
    "StratifiedPatching",
    "StreamingPatching",
    "careamics_n_patches",
    "chunk_groups",
    "pack_regions",
    "plan_dtype",
    "region_areas",
    "shard_positions",
    "worker_orders",
    "worker_positions_from_batches",
    "zorder_chunk_ids",
]
