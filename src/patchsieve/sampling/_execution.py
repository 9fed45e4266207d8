"""The execution order of a streamed plan for one (rank, worker) shard (private to
:mod:`patchsieve.sampling`; the rules are in the package docstring).

:class:`ShardStream` yields a worker's patches in execution order, realising the plan's tiles
one *tile run* at a time, so its memory is a few runs, whatever the epoch length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.errors import ConfigError
from patchsieve.sampling._keyed import KeyedPermutation, hashes, key
from patchsieve.sampling._order import _morton
from patchsieve.sampling._stratified import plan_dtype

TAG_RUNS, TAG_SUBRUNS, TAG_SHUFFLE = 0x2A11, 0x5AB2, 0x5F1E


def _below(x: NDArray[np.int64], r: int, ws: int) -> NDArray[np.int64]:
    """How many positions ``i < x`` have ``i % ws == r``."""
    return np.maximum(0, (x - r + ws - 1) // ws)


def rank_tile_counts(tile_n: NDArray[np.int64], plan_pos: NDArray[np.int64], n_keep: int,
                     rank: int, world_size: int) -> NDArray[np.int64]:
    """Patches of rank ``rank`` in every tile: plan positions ``[pos, pos + n)`` below
    ``n_keep`` that are ``rank`` modulo ``world_size``.

    Examples
    --------
    >>> rank_tile_counts(np.array([3, 4]), np.array([4, 0]), 6, 1, 2).tolist()
    [1, 2]
    """
    lo = np.minimum(plan_pos, n_keep)
    hi = np.minimum(plan_pos + tile_n, n_keep)
    return _below(hi, rank, world_size) - _below(lo, rank, world_size)


class ShardStream:
    """One worker's patches of one epoch, in execution order, from position ``start`` on.

    Parameters
    ----------
    sampler : StreamingPatching
        The plan.
    epoch, rank, world_size, worker, num_workers : int
        Which shard (``num_workers=0`` is one worker).
    window : int
        Storage chunks per run of the execution order; 0: plan order, interleaved workers.
    chunk_shape : sequence of int
        Spatial storage chunk of the volume (runs group patches by the chunk of their origin).
    start : int
        Patches of this shard already consumed (resume).

    Notes
    -----
    Supports ``len()``, slicing with increasing starts (the blocks a patch cutter asks for)
    and iteration over blocks (:meth:`blocks`).

    Examples
    --------
    >>> from patchsieve.sampling import StreamingPatching
    >>> sp = StreamingPatching.from_arrays((256, 256), (32, 32), np.zeros((8, 8), bool), seed=1)
    >>> shards = [ShardStream(sp, 0, worker=w, num_workers=2, window=4, chunk_shape=(64, 64))
    ...           for w in range(2)]
    >>> [len(s) for s in shards], sum(len(s[:]) for s in shards) == sp.epoch_length
    ([32, 32], True)
    """

    def __init__(self, sampler: Any, epoch: int, *, rank: int = 0, world_size: int = 1,
                 worker: int = 0, num_workers: int = 0, window: int = 0,
                 chunk_shape: Sequence[int] | None = None, start: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must lie in [0, world_size={world_size}); got rank={rank}.")
        nw = max(int(num_workers), 1)
        if not 0 <= worker < nw:
            raise ConfigError(f"worker must lie in [0, num_workers={nw}); got {worker}.")
        self.sp, self.epoch, self.rank, self.ws = sampler, int(epoch), int(rank), int(world_size)
        self.worker, self.nw, self.window = int(worker), nw, int(window)
        self.chunk_shape = tuple(int(c) for c in (chunk_shape or sampler.patch_size))
        tile_n, self.plan_order, self.plan_pos = sampler.tile_layout(self.epoch)
        self.tile_n = tile_n
        n = int(tile_n.sum())
        self.n_keep = n - n % self.ws
        self.rank_n = rank_tile_counts(tile_n, self.plan_pos, self.n_keep, self.rank, self.ws)
        n_rank = self.n_keep // self.ws
        sizes = [len(range(w, n_rank, nw)) for w in range(nw)]
        self.total = sizes[self.worker]
        self.start = min(max(int(start), 0), self.total)
        self.first = sum(sizes[: self.worker])  # rank-sequence position of this worker's first
        self._parts: tuple[NDArray[np.int64], ...] = ()
        self._units = self._plan_units() if self.window <= 0 else self._run_units()
        self._buf: list[tuple[int, NDArray[Any]]] = []  # (first local position, patches)
        self._next = self.start  # local position the producer reaches next
        self._gen: Iterator[NDArray[Any]] | None = None

    def __len__(self) -> int:
        return self.total - self.start

    # ---- units of work: (id, (a, b): its tiles are ``self._parts[..][a:b]``, first position,
    # count); a tile's rank patches ``first .. end`` (plan order) belong to this worker
    def _plan_units(self) -> list[tuple[int, tuple[int, int], int, int]]:
        """``window=0``: the tiles in plan order (the rank's sequence, workers interleaved)."""
        order = self.plan_order[self.rank_n[self.plan_order] > 0]
        counts = self.rank_n[order]
        firsts = np.cumsum(counts) - counts
        self._parts = (order, np.zeros_like(counts), counts)
        return list(zip(order.tolist(), zip(range(order.size), range(1, order.size + 1)),
                        firsts.tolist(), counts.tolist(), strict=True))

    def _tiles_per_run(self) -> int:
        tiles = self.sp.tiles
        per_tile = math.prod(-(-t * p // c) for t, p, c in
                             zip(tiles.tile_shape, self.sp.patch_size, self.chunk_shape, strict=True))
        return max(1, self.window // max(per_tile, 1))

    def _run_units(self) -> list[tuple[int, tuple[int, int], int, int]]:
        """This worker's runs, in execution order, positions relative to its first patch.

        The rank's patches in canonical (spatial) tile order are cut into the workers' pieces
        (a tile at a border is shared: its patches in plan order, the first ones to the lower
        worker), so a worker covers one spatial stripe, the same every epoch (a persistent
        worker finds its chunks still decoded). The stripe's tiles form runs of about
        ``window`` chunks (boundaries shifted every epoch), in a random order."""
        n_tiles = self.sp.tiles.n_tiles
        cum = np.concatenate([[0], np.cumsum(self.rank_n)])
        lo, hi = self.first, self.first + self.total
        t_lo = int(np.searchsorted(cum, lo, side="right")) - 1
        t_hi = int(np.searchsorted(cum, hi, side="left"))
        tiles = np.arange(max(t_lo, 0), min(t_hi, n_tiles))
        tiles = tiles[self.rank_n[tiles] > 0]
        first = np.maximum(lo - cum[tiles], 0)
        end = np.minimum(hi - cum[tiles], self.rank_n[tiles])
        self._parts = (tiles, first, end)
        if tiles.size == 0 or self.total == 0:
            return []
        tpr = self._tiles_per_run()
        shift = int(key(self.sp.seed, self.epoch, TAG_RUNS) % tpr)
        run_of = (tiles + shift) // tpr
        runs, start = np.unique(run_of, return_index=True)
        stop = np.append(start[1:], tiles.size)
        order = KeyedPermutation(runs.size, key(self.sp.seed, self.epoch, self.rank, self.worker,
                                                TAG_RUNS)).order
        taken = np.concatenate([[0], np.cumsum(end - first)])
        counts = taken[stop[order]] - taken[start[order]]
        firsts = np.cumsum(counts) - counts
        return list(zip(runs[order].tolist(), zip(start[order].tolist(), stop[order].tolist()),
                        firsts.tolist(), counts.tolist(), strict=True))

    # ---- realisation
    def _rank_patches(self, u: int) -> tuple[NDArray[Any], NDArray[np.int64]]:
        """This rank's patches of tile ``u`` (plan order) and their rank-local indices."""
        arr = self.sp.realize(self.epoch, u)
        pos = int(self.plan_pos[u]) + np.arange(arr.size)
        keep = (pos < self.n_keep) & (pos % self.ws == self.rank)
        return arr[keep], (pos[keep] - self.rank) // self.ws

    def _unit(self, span: tuple[int, int], unit_id: int) -> NDArray[Any]:
        """This worker's patches of the tiles ``self._parts[..][a:b]``, in execution order."""
        tiles, first, end = (x[span[0]:span[1]].tolist() for x in self._parts)
        arrs = [self._rank_patches(u)[0][a:b] for u, a, b in zip(tiles, first, end, strict=True)]
        if not arrs:
            return np.zeros(0, plan_dtype(len(self.sp.patch_size)))
        arr = np.concatenate(arrs)
        return arr[self._run_order(arr, unit_id)]

    def _run_order(self, arr: NDArray[Any], unit_id: int) -> NDArray[np.int64]:
        """Sub-runs of ``window`` chunks (by the chunk of the patch origin, Z order) in a random
        order, the patches of a sub-run in a random order."""
        ch = np.asarray(self.chunk_shape, np.int64)
        code = _morton(arr["origin"] // ch)
        span = int(code.max(initial=0)) + 1
        _, rank = np.unique(arr["sample"] * span + code, return_inverse=True)
        group = rank.reshape(-1) // max(self.window, 1)
        n_groups = int(group.max(initial=-1)) + 1
        k = key(self.sp.seed, self.epoch, self.rank, unit_id, TAG_SUBRUNS)
        place = np.empty(n_groups, np.int64)
        place[KeyedPermutation(n_groups, k).order] = np.arange(n_groups)
        shuffle = hashes(key(self.sp.seed, self.epoch, self.rank, unit_id, TAG_SHUFFLE),
                         np.arange(arr.size))
        return np.lexsort((shuffle, place[group]))

    def _produce(self) -> Iterator[NDArray[Any]]:
        """This worker's patches from ``start`` on, unit by unit."""
        if self.window <= 0:
            yield from self._produce_interleaved()
            return
        for unit_id, part, f, c in self._units:
            if f + c <= self.start:
                continue
            yield self._unit(part, unit_id)[max(self.start - f, 0):]

    def _produce_interleaved(self) -> Iterator[NDArray[Any]]:
        """``window=0``: plan order; worker ``w`` takes rank-local indices ``w (mod W)``."""
        done = 0  # this worker's patches before the current unit
        for u, _, f, c in self._units:
            mine = len(range((self.worker - f) % self.nw, c, self.nw))
            if done + mine <= self.start:
                done += mine
                continue
            arr, q = self._rank_patches(u)
            sel = arr[q % self.nw == self.worker]
            yield sel[max(self.start - done, 0):]
            done += mine

    # ---- access
    def blocks(self, size: int) -> Iterator[NDArray[Any]]:
        """Consecutive blocks of ``size`` patches (the last one shorter)."""
        for a in range(0, len(self), int(size)):
            yield self[a : min(a + int(size), len(self))]

    def __getitem__(self, sl: slice) -> NDArray[Any]:
        a, b, _ = sl.indices(len(self))
        a, b = a + self.start, max(a, b) + self.start
        if self._gen is None:
            self._gen = self._produce()
        while self._next < b:
            arr = next(self._gen)
            self._buf.append((self._next, arr))
            self._next += arr.size
        while self._buf and self._buf[0][0] + self._buf[0][1].size <= a:
            self._buf.pop(0)  # sequential access: earlier runs are done
        if self._buf and self._buf[0][0] > a:
            raise IndexError(f"position {a - self.start} was already released (sequential access only)")
        parts = [arr[max(a - f, 0) : max(min(b - f, arr.size), 0)] for f, arr in self._buf
                 if f < b and f + arr.size > a]
        if not parts:
            return np.zeros(0, plan_dtype(len(self.sp.patch_size)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
