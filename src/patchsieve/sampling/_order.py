"""Sharding between DDP ranks and DataLoader workers, the chunk-aware execution order and the
resume position (private to :mod:`patchsieve.sampling`; rules in the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from patchsieve.errors import ConfigError


def shard_positions(
    n_plan: int, *, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
) -> NDArray[np.int64]:
    """Plan positions of one (rank, worker) shard; see the sharding rule in the module docstring.

    Examples
    --------
    >>> shard_positions(7, rank=1, world_size=2, worker=0, num_workers=2).tolist()
    [1, 5]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank must lie in [0, world_size={world_size}); got rank={rank}.")
    nw = max(int(num_workers), 1)
    if not 0 <= worker < nw:
        raise ConfigError(f"worker must lie in [0, num_workers={nw}); got {worker}.")
    n_keep = n_plan - n_plan % world_size
    return np.arange(rank, n_keep, world_size, dtype=np.int64)[worker::nw]


def _morton(coords: NDArray[np.int64]) -> NDArray[np.int64]:
    """Z-order (bit-interleaved) code of integer coordinates, shape (n, ndim)."""
    n, ndim = coords.shape
    code = np.zeros(n, dtype=np.int64)
    bits = max(int(coords.max(initial=0)).bit_length(), 1)
    if bits * ndim > 62:
        raise ConfigError(f"chunk grid too large for a Z-order code ({bits} bits x {ndim} dims).")
    for b in range(bits):
        for d in range(ndim):
            code |= ((coords[:, d] >> b) & 1) << (b * ndim + (ndim - 1 - d))
    return code


def zorder_chunk_ids(
    samples: ArrayLike, chunk_coords: ArrayLike, grid: Sequence[int]
) -> tuple[NDArray[np.int64], int]:
    """Index of chunks along a Z-order curve, sample by sample, and the number of chunks.

    Consecutive indices are spatial neighbours, so a run of ``k`` consecutive chunks
    (:func:`chunk_groups`) is a compact block that holds most of the neighbours that patches
    straddle.

    Examples
    --------
    >>> zorder_chunk_ids([0, 0, 0, 1], [[0, 0], [0, 1], [1, 0], [0, 0]], (2, 3))
    (array([0, 1, 2, 6]), 12)
    """
    grid = [int(g) for g in grid]
    coords = np.asarray(chunk_coords, dtype=np.int64).reshape(-1, len(grid))
    per_sample = int(np.prod(grid))
    all_codes = np.sort(_morton(np.stack(np.unravel_index(np.arange(per_sample), grid), axis=1)))
    rank = np.searchsorted(all_codes, _morton(coords))
    smp = np.asarray(samples, dtype=np.int64)
    n_samples = int(smp.max(initial=0)) + 1
    return smp * per_sample + rank, n_samples * per_sample


def chunk_groups(chunk_ids: ArrayLike, n_chunks: int, window: int) -> NDArray[np.int64] | None:
    """Group of every patch: runs of ``window`` consecutive storage chunks (None: plan order).

    ``chunk_ids`` is the linear index (sample-major, C order) of the storage chunk holding each
    patch origin, in plan order. Chunks are cut into runs of ``window`` neighbouring chunks,
    starting at the chunk of the first patch (so the cut moves with every epoch's plan);
    ``window <= 0`` returns None (no grouping).

    Examples
    --------
    >>> chunk_groups([5, 0, 7, 6, 1], 8, 2).tolist()
    [0, 1, 1, 0, 2]
    """
    ids = np.asarray(chunk_ids, dtype=np.int64)
    if window <= 0:
        return None
    if ids.size == 0:
        return ids.copy()
    return ((ids - ids[0]) % max(int(n_chunks), 1)) // int(window)


def worker_orders(groups: ArrayLike | None, n: int, num_workers: int) -> list[NDArray[np.int64]]:
    """Split a rank's share (``n`` patches, plan order) between workers, in execution order.

    Without groups (``None``): worker ``w`` takes positions ``w, w + W, ...`` in plan order.
    With groups (:func:`chunk_groups`): the share is ordered run by run (runs ranked by their
    first appearance in the plan, the patches of a run in plan order) and cut into ``W``
    consecutive pieces, so that each worker reads its own runs. Either way worker ``w`` gets
    ``len(range(w, n, W))`` patches, the same every epoch, and the workers' positions partition
    ``range(n)``: reordering changes when a patch is read, never which patches are read.

    Examples
    --------
    >>> [o.tolist() for o in worker_orders([1, 0, 1, 0, 2], 5, 2)]
    [[0, 2, 1], [3, 4]]
    """
    nw = max(int(num_workers), 1)
    pos = np.arange(n, dtype=np.int64)
    if groups is None:
        return [pos[w::nw] for w in range(nw)]
    g = np.asarray(groups, dtype=np.int64)
    uniq, first = np.unique(g, return_index=True)
    rank_of = np.empty(uniq.size, np.int64)
    rank_of[np.argsort(first, kind="stable")] = np.arange(uniq.size)
    order = np.lexsort((pos, rank_of[np.searchsorted(uniq, g)]))
    bounds = np.concatenate([[0], np.cumsum([len(range(w, n, nw)) for w in range(nw)])])
    return [order[bounds[w] : bounds[w + 1]] for w in range(nw)]


def worker_positions_from_batches(
    n_batches: int, shard_sizes: Sequence[int], batch_size: int, *, drop_last: bool = False
) -> list[int]:
    """Patches consumed per worker after ``n_batches`` in-order DataLoader batches.

    A DataLoader over an IterableDataset delivers batches round-robin over its workers, skipping
    a worker once it has run out (``torch.utils.data.dataloader``: tasks go to active workers in
    turn and come back in task order). Each worker batches its own shard, so worker ``w`` has
    ``ceil(size_w / batch_size)`` batches (``floor`` with ``drop_last``).

    Examples
    --------
    >>> worker_positions_from_batches(3, [10, 9], 4)
    [8, 4]
    >>> worker_positions_from_batches(5, [2, 9], 2)
    [2, 8]
    """
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive; got {batch_size}.")
    nb = sizes // batch_size if drop_last else -(-sizes // batch_size)
    n_batches = int(min(max(n_batches, 0), int(nb.sum())))
    # after r full rounds every worker w has delivered min(nb_w, r) batches
    rounds = np.arange(int(nb.max(initial=0)) + 1)
    delivered = np.minimum(nb[None, :], rounds[:, None]).sum(axis=1)
    r = int(np.searchsorted(delivered, n_batches, side="right") - 1)
    got = np.minimum(nb, r)
    extra = n_batches - int(delivered[r])
    active = np.flatnonzero(nb > r)[:extra]
    got[active] += 1
    return [int(x) for x in np.minimum(got * batch_size, sizes)]
