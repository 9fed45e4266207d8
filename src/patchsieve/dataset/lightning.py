"""``PatchDataModule``: a Lightning ``LightningDataModule`` around :class:`PatchDataset`.

Imported only when ``lightning`` is installed (``pip install patchsieve[lightning]``). Under
DDP the dataset takes its rank and world size from ``torch.distributed`` (Lightning initialises
it before ``setup``); rank 0 runs the filter pass while the other ranks wait for the side-car.
The loader advances the epoch at each new iteration, so persistent workers see every epoch;
``state_dict``/``load_state_dict`` carry the exact mid-epoch position into checkpoints.

Example
-------
::

    dm = PatchDataModule("img.ome.zarr", patch_size=(64, 64),
                         patch_filter_config=ShannonPatchFilterConfig(threshold=7.5),
                         batch_size=32, num_workers=2)
    trainer.fit(model, datamodule=dm)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - exercised only without lightning
    raise ImportError(
        "patchsieve.dataset.lightning needs the `lightning` package. Fix: pip install "
        "'patchsieve[lightning]' (or pip install lightning)."
    ) from err

from patchsieve.dataset._dataset import PatchDataset
from patchsieve.dataset._loader import PatchLoader
from patchsieve.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["PatchDataModule"]


class PatchDataModule(pl.LightningDataModule):
    """Lightning data module streaming weighted patches with :class:`PatchDataset`.

    Parameters
    ----------
    source : str, path-like or numpy.ndarray, optional
        Training volume (see :class:`PatchDataset`).
    batch_size : int
        Batch size of the training loader.
    num_workers : int
        DataLoader workers.
    multiprocessing_context : {"spawn", "fork", "forkserver"}, optional
        Start method of the workers (default ``"spawn"`` when ``num_workers > 0``).
    persistent_workers : bool, optional
        Keep workers between epochs (default: True when ``num_workers > 0``).
    pin_memory : bool
        Passed to the DataLoader.
    val_kwargs : mapping, optional
        Keyword arguments of a validation :class:`PatchDataset` (its own ``source``, ...);
        no validation loader when omitted.
    collate_in_dataset : bool
        Collate batches inside the datasets (``PatchDataset(batch_size=batch_size)``): the same
        batches as the DataLoader's collation, with fewer copies. Default True.
    **dataset_kwargs
        Keyword arguments of the training :class:`PatchDataset` (``patch_size``,
        ``patch_filter_config``, ``sidecar``, ``target``, ``mode``, ``seed`` ...).
    """

    def __init__(
        self,
        source: Any = None,
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        multiprocessing_context: str | None = None,
        persistent_workers: bool | None = None,
        pin_memory: bool = False,
        val_kwargs: Mapping[str, Any] | None = None,
        collate_in_dataset: bool = True,
        **dataset_kwargs: Any,
    ):
        super().__init__()
        if int(batch_size) <= 0 or int(num_workers) < 0:
            raise ConfigError(
                f"batch_size must be > 0 and num_workers >= 0; got {batch_size}, {num_workers}."
            )
        self.source = source
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.multiprocessing_context = multiprocessing_context or ("spawn" if self.num_workers else None)
        self.persistent_workers = (
            bool(self.num_workers) if persistent_workers is None else bool(persistent_workers)
        )
        self.pin_memory = bool(pin_memory)
        self.collate_in_dataset = bool(collate_in_dataset)
        self.dataset_kwargs = dict(dataset_kwargs)
        self.val_kwargs = dict(val_kwargs) if val_kwargs is not None else None
        self.train_dataset: PatchDataset | None = None
        self.val_dataset: PatchDataset | None = None
        self._loader: PatchLoader | None = None
        self._pending_state: Mapping[str, Any] | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (runs or reuses the filter pass)."""
        if self.train_dataset is None and stage in (None, "fit"):
            self.train_dataset = PatchDataset(self.source, **self._with_batching(self.dataset_kwargs))
        if (
            self.val_dataset is None
            and self.val_kwargs is not None
            and stage
            in (
                None,
                "fit",
                "validate",
            )
        ):
            self.val_dataset = PatchDataset(**self._with_batching(self.val_kwargs))

    def _with_batching(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        kw = dict(kwargs)
        if self.collate_in_dataset:
            kw.setdefault("batch_size", self.batch_size)
        return kw

    def _loader_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "batch_size": self.batch_size,  # PatchLoader drops it when the dataset batches
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
        }
        if not self.collate_in_dataset:  # the DataLoader's own patch-by-patch collation
            from torch.utils.data import default_collate

            kw["collate_fn"] = default_collate
        if self.num_workers:
            kw["multiprocessing_context"] = self.multiprocessing_context
            kw["persistent_workers"] = self.persistent_workers
        return kw

    def train_dataloader(self) -> PatchLoader:
        """The training :class:`PatchLoader` (one per data module; it advances the epochs)."""
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        if self._loader is None:
            self._loader = self.train_dataset.loader(**self._loader_kwargs())
            if self._pending_state is not None:
                self._loader.load_state_dict(self._pending_state)
                self._pending_state = None
        return self._loader

    def val_dataloader(self) -> Any:
        """Validation loader (fixed epoch 0 plan) or an empty list without ``val_kwargs``."""
        if self.val_kwargs is None:
            return []
        if self.val_dataset is None:
            self.setup("validate")
        assert self.val_dataset is not None
        kw = self._loader_kwargs()
        kw["persistent_workers"] = False if not self.num_workers else kw["persistent_workers"]
        return PatchLoader(self.val_dataset, **kw)

    def state_dict(self) -> dict[str, Any]:
        """The training loader's exact resume state (stored in Lightning checkpoints)."""
        return {"train": self._loader.state_dict()} if self._loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the training position from :meth:`state_dict`."""
        train = state_dict.get("train")
        if train is None:
            return
        if self._loader is not None:
            self._loader.load_state_dict(train)
        else:
            self._pending_state = train
