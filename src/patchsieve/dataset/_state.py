"""State a :class:`~patchsieve.dataset.PatchDataset` shares with its DataLoader workers (also
persistent ones): the epoch, a pending mid-epoch resume, and the read counters (private)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from patchsieve.errors import ConfigError

MAX_WORKERS = 64
#: columns of the read-counter table: patches, cache hits, cache misses, decoded bytes read
READ_FIELDS = ("patches", "hits", "misses", "bytes_read")
_EPOCH, _RESUME_EPOCH, _RESUME_WORKERS, _POSITIONS = 0, 1, 2, 3


class SharedEpochState:
    """Epoch and resume position in one shared-memory int64 tensor.

    Fields (named here, stored in fixed slots so that forked and spawned workers share them):
    ``epoch``; ``resume_epoch`` (the epoch a pending resume belongs to, -1 for none);
    ``resume_workers`` (the ``num_workers`` the positions were saved with); one position per
    worker (patches of its execution order already consumed), each consumed once.
    """

    def __init__(self) -> None:
        self._t = torch.zeros(_POSITIONS + MAX_WORKERS, dtype=torch.int64).share_memory_()
        self._t[_RESUME_EPOCH] = -1

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return int(self._t[_EPOCH])

    @epoch.setter
    def epoch(self, value: int) -> None:
        if int(value) != self.epoch:
            self._t[_RESUME_EPOCH] = -1  # a pending resume belongs to another epoch
        self._t[_EPOCH] = int(value)

    @property
    def resume_epoch(self) -> int:
        """The epoch of the pending resume (-1: none)."""
        return int(self._t[_RESUME_EPOCH])

    def set_resume(self, epoch: int, num_workers: int, positions: Sequence[int]) -> None:
        """Resume ``epoch`` at ``positions`` (one per worker) saved with ``num_workers``."""
        if len(positions) > MAX_WORKERS:
            raise ConfigError(f"at most {MAX_WORKERS} workers are supported; got {len(positions)}.")
        self._t[_EPOCH] = int(epoch)
        self._t[_RESUME_EPOCH] = int(epoch)
        self._t[_RESUME_WORKERS] = int(num_workers)
        self._t[_POSITIONS:] = 0
        self._t[_POSITIONS:_POSITIONS + len(positions)] = torch.tensor(
            [int(p) for p in positions], dtype=torch.int64)

    def pending_positions(self, n_workers: int) -> list[int]:
        """The resume positions of the first ``n_workers`` workers (0 without a resume)."""
        if self.resume_epoch != self.epoch:
            return [0] * n_workers
        return [int(p) for p in self._t[_POSITIONS:_POSITIONS + n_workers]]

    def take_position(self, epoch: int, worker: int, num_workers: int) -> int:
        """Worker ``worker``'s resume position in ``epoch`` (0 without one); consumed once."""
        if self.resume_epoch != epoch:
            return 0
        saved = int(self._t[_RESUME_WORKERS])
        if saved != num_workers:
            raise ConfigError(
                f"the resume state was saved with num_workers={saved}; this DataLoader has "
                f"num_workers={num_workers}. Fix: resume with the same num_workers.")
        pos = int(self._t[_POSITIONS + worker])
        self._t[_POSITIONS + worker] = 0
        return pos


class ReadCounters:
    """Cumulative read counters per worker (a shared float64 table, one row per worker plus
    one for the main process), published as iteration goes on and summed by the audit."""

    MAIN = MAX_WORKERS

    def __init__(self) -> None:
        self._t = torch.zeros(MAX_WORKERS + 1, len(READ_FIELDS),
                              dtype=torch.float64).share_memory_()

    def row(self, slot: int) -> np.ndarray:
        """A numpy view of one row (writes go to the shared table)."""
        return self._t.numpy()[slot]

    def totals(self) -> dict[str, float]:
        """Sums over every row, keyed by :data:`READ_FIELDS`."""
        return dict(zip(READ_FIELDS, (float(v) for v in self._t.numpy().sum(axis=0)),
                        strict=True))
