"""Batches from DataLoader workers to a :class:`~patchsieve.dataset.PatchLoader` (private).

Workers write in-dataset batches into reused shared-memory slots (:class:`_BatchRing`) and send
a small :class:`_RingBatch`; the loader copies the batch out and frees the slot.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

RING_WAIT_S = 0.05  # a worker waits this long for a free batch slot, then sends a fresh tensor


def _batch_items(tensors: Sequence[torch.Tensor], meta: Mapping[str, np.ndarray] | None) -> Any:
    """The batch as ``default_collate`` builds it: x, [y,] [metadata dict of tensors]."""
    items: list[Any] = list(tensors)
    if meta is not None:
        items.append({k: torch.from_numpy(v) for k, v in meta.items()})
    return items[0] if len(items) == 1 else items


class _RingBatch:
    """What a worker sends for a batch written into a ring slot: the slot, and the slot's
    shared tensors only until the loader has them."""

    __slots__ = ("meta", "n", "slot", "tensors", "worker")

    def __init__(self, worker: int, slot: int, n: int, meta: Mapping[str, np.ndarray] | None,
                 tensors: list[torch.Tensor] | None):
        self.worker, self.slot, self.n, self.meta, self.tensors = worker, slot, n, meta, tensors

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RingBatch, (self.worker, self.slot, self.n, self.meta, self.tensors))


def _shared_empty(shape: Sequence[int]) -> torch.Tensor:
    """An uninitialised float32 tensor in shared memory (pages are touched only when written;
    ``share_memory_`` would copy a whole new tensor)."""
    shape = [int(s) for s in shape]
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)


class _BatchRing:
    """Reusable shared-memory batch slots from DataLoader workers to a :class:`PatchLoader`.

    Sending a fresh shared-memory tensor per batch (what ``default_collate`` does in workers)
    costs a segment, a file descriptor passed over a socket and a mapping per batch: about
    1 ms here, as long as cutting a 2D batch. Instead each worker writes its batches round robin
    into ``slots`` slots of its own, created on first use and sent once, and afterwards sends
    only the slot number; the loader copies the batch out and frees the slot. ``taken[w, j]``
    is 0 when slot ``j`` of worker ``w`` is free, else the iteration (:attr:`gen`) that wrote
    it: a slot written by an earlier iteration is free again (its batch was dropped when that
    iteration ended early). ``known[w, j]`` says the loader holds the slot's tensors. A worker
    whose next slot is still taken waits up to :data:`RING_WAIT_S`, then sends a fresh tensor
    as usual.
    """

    def __init__(self, num_workers: int, slots: int, shapes: Sequence[tuple[int, ...]]):
        self.slots, self.shapes = int(slots), [tuple(s) for s in shapes]
        self.taken = torch.zeros((num_workers, self.slots), dtype=torch.int64).share_memory_()
        self.known = torch.zeros((num_workers, self.slots), dtype=torch.int8).share_memory_()
        self.gen = torch.ones(1, dtype=torch.int64).share_memory_()
        self._next = 0  # in a worker: the next slot it writes
        self._mine: dict[int, list[torch.Tensor]] = {}  # in a worker: its slots' tensors
        self._theirs: dict[tuple[int, int], list[torch.Tensor]] = {}  # in the loader

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mine": {}, "_theirs": {}, "_next": 0}

    def new_iteration(self) -> None:
        """Called by the loader before each iteration: earlier slots become reusable."""
        self.gen += 1

    def acquire(self, worker: int) -> int | None:
        """A free slot of ``worker`` (marked taken), or None after waiting ``RING_WAIT_S``."""
        j = self._next % self.slots
        taken, gen = self.taken.numpy(), self.gen.numpy()
        deadline = None
        while taken[worker, j] != 0 and taken[worker, j] >= gen[0]:
            now = time.monotonic()
            deadline = now + RING_WAIT_S if deadline is None else deadline
            if now > deadline:
                return None
            time.sleep(0.0005)
        taken[worker, j] = gen[0]
        self._next += 1
        return j

    def view(self, k: int, worker: int, slot: int, n: int) -> torch.Tensor:
        """Batch ``k`` (input, target) of ``slot`` in a worker, ``n`` patches long."""
        if slot not in self._mine:
            self._mine[slot] = [_shared_empty(s) for s in self.shapes]
        return self._mine[slot][k][:n]

    def message(self, worker: int, slot: int, n: int, meta: Mapping[str, np.ndarray] | None
                ) -> _RingBatch:
        """What the worker sends: the slot's tensors ride along until the loader has them."""
        tensors = None if self.known.numpy()[worker, slot] else self._mine[slot]
        return _RingBatch(worker, slot, n, meta, tensors)

    def take(self, msg: _RingBatch) -> Any:
        """The batch of ``msg`` (copied out of its slot, which is freed)."""
        key = (msg.worker, msg.slot)
        if msg.tensors is not None:
            self._theirs[key] = msg.tensors
            self.known[key] = 1
        slot = self._theirs.get(key)
        if slot is None:
            raise RuntimeError(f"batch slot {key} arrived before its tensors (a patchsieve bug)")
        # a numpy copy: torch splits a copy over its intra-op threads, which compete with the
        # workers on a small machine (2 torch threads: 2D epoch at 19k instead of 29k patches/s)
        tensors = [torch.from_numpy(t[: msg.n].numpy().copy()) for t in slot]
        self.taken[key] = 0
        return _batch_items(tensors, msg.meta)
