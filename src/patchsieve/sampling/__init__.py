"""Epoch plans of patch origins: CAREamics ``StratifiedPatching`` semantics, vectorised.

This module is pure numpy. It turns the per-region weights of a side-car into one *plan* per
epoch (a compact structured array of patch origins), splits a plan between DDP ranks and
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

Sharding rule: an epoch plan of ``n`` patches is truncated to ``n_keep = n - n % world_size``
(like ``DistributedSampler(drop_last=True)``), rank ``r`` takes plan positions
``r, r + world_size, ...`` (``n_keep // world_size`` patches, the same for every rank), and the
DataLoader workers of a rank split the rank's share (:func:`worker_orders`). The union over all
ranks and workers is the truncated plan whatever ``(world_size, num_workers)``; shards are
disjoint.

Execution order (chunk-aware, bounded shuffle window): the storage chunks are cut into runs of
``window`` neighbouring chunks (:func:`chunk_groups`); a rank's patches are ordered run by run
(runs in order of first appearance in the plan, patches of a run in plan order, i.e. random)
and the workers take consecutive pieces of that order, of the same sizes as the interleaved
split, so batch counts do not change between epochs. A run's decoded
chunks fit the worker's cache, so each chunk is decoded about once per epoch while a batch still
mixes patches of up to ``window`` chunks. Reordering never changes which patches are drawn,
only when and by which worker; ``window=0`` keeps plan order with interleaved workers.

Resume: a worker's position is the number of patches of its execution order already consumed;
skipping that many patches resumes the epoch exactly.
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
