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
        self._units = self._plan_units() if self.window <= 0 else self._run_units()
        self._buf: list[tuple[int, NDArray[Any]]] = []  # (first local position, patches)
        self._next = self.start  # local position the producer reaches next
        self._gen: Iterator[NDArray[Any]] | None = None

    def __len__(self) -> int:
        return self.total - self.start

    # ---- units of work: (id, first tile, end tile, first rank-sequence position, count)
    def _plan_units(self) -> list[tuple[int, int, int, int, int]]:
        order = self.plan_order[self.rank_n[self.plan_order] > 0]
        counts = self.rank_n[order]
        firsts = np.cumsum(counts) - counts
        return [(u, u, u + 1, f, c) for u, f, c in
                zip(order.tolist(), firsts.tolist(), counts.tolist(), strict=True)]

    def _tiles_per_run(self) -> int:
        tiles = self.sp.tiles
        per_tile = math.prod(-(-t * p // c) for t, p, c in
                             zip(tiles.tile_shape, self.sp.patch_size, self.chunk_shape, strict=True))
        return max(1, self.window // max(per_tile, 1))

    def _run_units(self) -> list[tuple[int, int, int, int, int]]:
        n_tiles = self.sp.tiles.n_tiles
        tpr = self._tiles_per_run()
        shift = int(key(self.sp.seed, self.epoch, TAG_RUNS) % tpr)
        run_of = (np.arange(n_tiles) + shift) // tpr
        n_runs = int(run_of[-1]) + 1 if n_tiles else 0
        counts = np.bincount(run_of, weights=self.rank_n, minlength=n_runs).astype(np.int64)
        bounds = np.searchsorted(run_of, np.arange(n_runs + 1))
        order = self._striped(counts, key(self.sp.seed, self.epoch, self.rank, TAG_RUNS))
        order = order[counts[order] > 0]
        firsts = np.cumsum(counts[order]) - counts[order]
        lo, hi, cnt = bounds[order].tolist(), bounds[order + 1].tolist(), counts[order].tolist()
        return list(zip(order.tolist(), lo, hi, firsts.tolist(), cnt, strict=True))

    def _striped(self, counts: NDArray[np.int64], k: int) -> NDArray[np.int64]:
        """Runs (canonical order, ``counts`` patches each) in execution order: cut into ``W``
        spatial stripes of about equal patch counts, stripe after stripe, the runs of a stripe in
        a random order except that a stripe's runs next to its neighbours come last / first.
        The workers' consecutive pieces then cover the same stripe every epoch (a persistent
        worker finds its chunks still decoded) and exchange only runs at stripe borders."""
        n_runs = counts.size
        total = max(int(counts.sum()), 1)
        mid = np.cumsum(counts) - counts / 2.0
        stripe = np.minimum((mid * self.nw // total).astype(np.int64), self.nw - 1)
        place = np.empty(n_runs, np.float64)
        place[KeyedPermutation(n_runs, k).order] = np.arange(n_runs)
        for w in range(self.nw):
            runs = np.flatnonzero(stripe == w)
            if runs.size > 1 and w > 0:
                place[runs[0]] = -1.0  # next to the previous stripe: first
            if runs.size > 1 and w < self.nw - 1:
                place[runs[-1]] = float(n_runs)  # next to the following stripe: last
        return np.lexsort((place, stripe))

    # ---- realisation
    def _rank_patches(self, u: int) -> tuple[NDArray[Any], NDArray[np.int64]]:
        """This rank's patches of tile ``u`` (plan order) and their rank-local indices."""
        arr = self.sp.realize(self.epoch, u)
        pos = int(self.plan_pos[u]) + np.arange(arr.size)
        keep = (pos < self.n_keep) & (pos % self.ws == self.rank)
        return arr[keep], (pos[keep] - self.rank) // self.ws

    def _unit(self, t0: int, t1: int, unit_id: int) -> NDArray[Any]:
        """The rank's patches of tiles ``t0 .. t1 - 1``, in execution order."""
        parts = [self._rank_patches(u) for u in range(t0, t1) if self.rank_n[u] > 0]
        if not parts:
            return np.zeros(0, plan_dtype(len(self.sp.patch_size)))
        arr = np.concatenate([p[0] for p in parts])
        if self.window <= 0:
            return arr
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
        lo, hi = self.first + self.start, self.first + self.total
        if self.window <= 0:
            yield from self._produce_interleaved()
            return
        for unit_id, t0, t1, f, c in self._units:
            if f + c <= lo or c == 0:
                continue
            if f >= hi:
                return
            arr = self._unit(t0, t1, unit_id)
            yield arr[max(lo - f, 0) : min(hi - f, c)]

    def _produce_interleaved(self) -> Iterator[NDArray[Any]]:
        """``window=0``: plan order; worker ``w`` takes rank-local indices ``w (mod W)``."""
        done = 0  # this worker's patches before the current unit
        for u, _, _, f, c in self._units:
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
