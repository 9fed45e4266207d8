"""``PatchLoader``: the DataLoader of a :class:`~patchsieve.dataset.PatchDataset` (private
module): epoch advance, exact resume state, batches received through the batch ring."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch.utils.data import DataLoader

from patchsieve.dataset._batches import _BatchRing, _RingBatch
from patchsieve.errors import ConfigError
from patchsieve.sampling import worker_positions_from_batches

RING_EXTRA_SLOTS = 1  # batch slots per worker beyond the loader's prefetch_factor


@runtime_checkable
class _PlannedDataset(Protocol):
    """What a :class:`PatchLoader` needs of its dataset (:class:`PatchDataset` has it all)."""

    batch_size: int | None
    drop_last: bool
    channels: list[int]
    target_channels: list[int]
    patch_size: tuple[int, ...]
    seed: int
    mode: str

    @property
    def epoch(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def shard_sizes(self, num_workers: int) -> list[int]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class PatchLoader(DataLoader):
    """A DataLoader that advances the epoch and tracks the exact resume position.

    Each new iteration uses the next epoch unless :meth:`PatchDataset.set_epoch` or
    :meth:`load_state_dict` chose one; :meth:`state_dict` converts the batches consumed so far
    into per-worker positions (``worker_positions_from_batches``).

    With ``batch_size`` and no ``collate_fn`` the dataset cuts whole batches (as
    ``PatchDataset(batch_size=...)`` does): the same batches as ``default_collate`` stacks,
    with fewer copies; :attr:`batch_size` is then None, as the DataLoader batches nothing. Pass
    ``collate_fn=torch.utils.data.default_collate`` to collate patch by patch instead.
    """

    dataset: _PlannedDataset

    def __init__(self, dataset: _PlannedDataset, **kwargs: Any):
        if not isinstance(dataset, _PlannedDataset):
            raise ConfigError("PatchLoader needs a PatchDataset.")
        for bad in ("shuffle", "sampler", "batch_sampler"):
            if kwargs.get(bad):
                raise ConfigError(f"{bad} does not apply: PatchDataset plans and shuffles itself.")
        if dataset.batch_size is not None:
            bs = kwargs.pop("batch_size", None)
            if bs is not None and int(bs) != dataset.batch_size:
                raise ConfigError(
                    f"the dataset collates batches of batch_size={dataset.batch_size}; the loader "
                    f"got batch_size={bs}. Fix: pass the batch size to one of them only."
                )
            if kwargs.pop("drop_last", dataset.drop_last) != dataset.drop_last:
                raise ConfigError(
                    f"the dataset batches with drop_last={dataset.drop_last}; pass drop_last to "
                    "the dataset only."
                )
            kwargs["batch_size"] = None
        self._auto_batching: tuple[int, bool] | None = None
        if (dataset.batch_size is None and kwargs.get("collate_fn") is None
                and kwargs.get("batch_size", 1) is not None):
            # the dataset cuts the batches (same batches as default_collate, fewer copies)
            bs = kwargs.pop("batch_size", 1)
            if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or int(bs) <= 0:
                raise ConfigError(
                    f"batch_size must be a positive integer or None; got {bs!r}. Fix: e.g. "
                    "loader(batch_size=64), or batch_size=None for single patches."
                )
            self._auto_batching = (int(bs), bool(kwargs.pop("drop_last", False)))
            kwargs["batch_size"] = None
        super().__init__(dataset, **kwargs)
        self._iterated = False
        self._epoch_seen = dataset.epoch
        self._batches = 0
        self._base: list[int] = []
        self._ring: _BatchRing | None = None
        self.ring_batches = 0  # batches received through the ring (the rest: fresh tensors)

    def __iter__(self) -> Iterator[Any]:
        ds = self.dataset
        if self._iterated and ds.epoch == self._epoch_seen:
            ds.set_epoch(ds.epoch + 1)
        self._iterated, self._epoch_seen, self._batches = True, ds.epoch, 0
        nw = self.num_workers
        self._base = ds._state.pending_positions(max(nw, 1))
        ring = self._batch_ring()
        if ring is not None:
            ring.new_iteration()
            ds._ring = ring  # the workers started (or resumed) below take it with the dataset
        ds._loader_batching = self._auto_batching  # so do the workers and iter(ds) at nw0
        try:
            batches = super().__iter__()
        finally:
            ds._ring, ds._loader_batching = None, None
        for batch in batches:
            if isinstance(batch, _RingBatch):
                if ring is None:
                    raise RuntimeError("a worker sent a ring batch to a loader without a ring")
                batch = ring.take(batch)
                self.ring_batches += 1
            self._batches += 1
            yield batch

    def _batch_ring(self) -> _BatchRing | None:
        """The ring the workers write batches into (in-dataset batches, workers, no pinning)."""
        ds = self.dataset
        bs = ds.batch_size or (self._auto_batching or (None,))[0]
        if self.num_workers == 0 or bs is None or self.pin_memory:
            return None
        if self._ring is None or not self.persistent_workers:
            # persistent workers keep the ring they started with; fresh workers get a fresh one
            shapes = [(bs, len(ds.channels), *ds.patch_size)]
            if ds._target_reader is not None:
                shapes.append((bs, len(ds.target_channels), *ds.patch_size))
            slots = max(int(self.prefetch_factor or 2) + RING_EXTRA_SLOTS, 1)
            self._ring = _BatchRing(self.num_workers, slots, shapes)
        return self._ring

    def _batching(self) -> tuple[int, bool]:
        """(batch size, drop_last) of the batches this loader yields."""
        ds = self.dataset
        if ds.batch_size is not None:
            return ds.batch_size, ds.drop_last
        if self._auto_batching is not None:
            return self._auto_batching
        return self.batch_size or 1, bool(self.drop_last)

    def __len__(self) -> int:
        """Batches per epoch: every worker batches its own shard (the last one may be short)."""
        bs, drop_last = self._batching()
        sizes = np.asarray(self.dataset.shard_sizes(self.num_workers))
        return int((sizes // bs).sum() if drop_last else (-(-sizes // bs)).sum())

    def state_dict(self) -> dict[str, Any]:
        """Exact resume state after the batches consumed so far in this epoch."""
        ds = self.dataset
        sizes = ds.shard_sizes(self.num_workers)
        remaining = [s - b for s, b in zip(sizes, self._base, strict=True)]
        bs, drop_last = self._batching()
        done = worker_positions_from_batches(self._batches, remaining, bs, drop_last=drop_last)
        return {
            "seed": ds.seed,
            "mode": ds.mode,
            "epoch": self._epoch_seen,
            "num_workers": self.num_workers,
            "positions": [b + d for b, d in zip(self._base, done, strict=True)],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next iteration continues ``state['epoch']`` after the consumed batches."""
        if int(state.get("num_workers", 0)) != self.num_workers:
            raise ConfigError(
                f"the state was saved with num_workers={state.get('num_workers')}; this loader "
                f"has num_workers={self.num_workers}. Fix: resume with the same num_workers."
            )
        self.dataset.load_state_dict(state)
        self._iterated = False
