"""Batches in CAREamics' form (private): patches cut by a :class:`~patchsieve.dataset.PatchDataset`,
normalised and augmented by CAREamics' own objects (:class:`CareamicsTransform`), wrapped in its
``ImageRegionData`` by :class:`CareamicsLoader`."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from patchsieve.dataset import PatchDataset, PatchLoader

logger = logging.getLogger(__name__)

#: CAREamics axis letter -> patchsieve dim name
_AXIS_DIM = {"S": "s", "T": "t", "C": "c", "Z": "z", "Y": "y", "X": "x"}


@dataclass(frozen=True)
class RegionMeta:
    """What CAREamics' ``ImageRegionData`` says about the image a patch comes from.

    ``data_shape`` is SC(Z)YX (samples flattened, selected channels), ``original_data_shape``
    the shape in the configuration's axes order, as CAREamics' dataset reports them.
    """

    source: str
    dtype: str
    axes: str
    target_axes: str
    data_shape: tuple[int, ...]
    original_data_shape: tuple[int, ...]
    patch_size: tuple[int, ...]

    @classmethod
    def of(cls, sizes: dict[str, int], dtype: str, source: str, axes: str, target_axes: str,
           n_channels: int, n_samples: int, patch_size: Sequence[int],
           channels_selected: bool) -> RegionMeta:
        """Build it from a volume's sizes by dim name."""
        spatial = [d for d in ("z", "y", "x") if d in sizes]
        data_shape = (n_samples, n_channels, *(sizes[d] for d in spatial))
        original = []
        for a in axes.upper():
            d = _AXIS_DIM[a]
            original.append(n_channels if (d == "c" and channels_selected) else sizes.get(d, 1))
        return cls(source, dtype, axes, target_axes, tuple(int(v) for v in data_shape),
                   tuple(int(v) for v in original), tuple(int(p) for p in patch_size))


def region_batch(data: torch.Tensor, meta: RegionMeta, sample: torch.Tensor,
                 origin: torch.Tensor) -> Any:
    """One collated ``ImageRegionData`` (as ``default_collate`` builds CAREamics' batches)."""
    from careamics.dataset.image_region_data import ImageRegionData

    b = int(data.shape[0])

    def col(v: int) -> torch.Tensor:
        return torch.full((b,), int(v), dtype=torch.int64)

    spec = {
        "data_idx": torch.zeros(b, dtype=torch.int64),
        "sample_idx": sample.to(torch.int64),
        "coords": [origin[:, d].to(torch.int64) for d in range(origin.shape[1])],
        "patch_size": [col(p) for p in meta.patch_size],
    }
    return ImageRegionData(
        data=data, source=(meta.source,) * b, data_shape=[col(v) for v in meta.data_shape],
        dtype=(meta.dtype,) * b, axes=(meta.axes,) * b, target_axes=(meta.target_axes,) * b,
        original_data_shape=[col(v) for v in meta.original_data_shape], region_spec=spec,
        additional_metadata={})


class CareamicsTransform:
    """CAREamics' per-patch pipeline as a :class:`~patchsieve.dataset.PatchDataset` transform:
    its normalisation, then its augmentations (``CareamicsDataset.__getitem__``'s order), with
    CAREamics' own objects, run where the patches are cut (the DataLoader workers).

    Parameters
    ----------
    normalization : callable, optional
        ``careamics.dataset.normalization.create_normalization(config.normalization)``; set
        after the side-car's statistics are known (before iterating).
    augment : callable, optional
        ``Compose`` of the configuration's augmentations (None: validation).

    Notes
    -----
    The dataset reseeds it per epoch, rank and worker (:meth:`reseed`): the augmentations are
    deterministic in ``(seed, epoch)``.
    """

    def __init__(self, normalization: Any = None, augment: Any = None):
        self.normalization, self.augment = normalization, augment

    def reseed(self, rng: np.random.Generator) -> None:
        """Give every augmentation a generator derived from ``rng``."""
        for t in getattr(self.augment, "transforms", []):
            if hasattr(t, "rng"):
                t.rng = np.random.default_rng(int(rng.integers(0, 2**63)))

    def __call__(self, x: np.ndarray, y: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        if self.normalization is None:
            raise RuntimeError("CareamicsTransform used before its normalisation was set "
                               "(PatchsieveDataModule.setup sets it)")
        x, y = self.normalization(x, y)
        if self.augment is not None:
            out = self.augment(x, y)
            x, y = out[0], (out[1] if len(out) > 1 else None)
        return x, y


class CareamicsLoader(PatchLoader):
    """A :class:`~patchsieve.dataset.PatchLoader` whose batches are CAREamics' training batches:
    ``(ImageRegionData,)`` or ``(input, target)``.

    The dataset (``return_metadata=True``, a batch size, a :class:`CareamicsTransform`) cuts,
    normalises and augments the patches; this loader only wraps each batch with its region
    specs.

    Parameters
    ----------
    dataset : PatchDataset
    meta, target_meta : RegionMeta
        Image descriptions of the input and target.
    **kwargs
        DataLoader arguments (``num_workers`` ...).
    """

    def __init__(self, dataset: PatchDataset, *, meta: RegionMeta,
                 target_meta: RegionMeta | None = None, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.meta, self.target_meta = meta, target_meta

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            yield self.convert(batch)

    def convert(self, batch: Any) -> tuple[Any, ...]:
        """A patchsieve batch ``[x, (y,) meta]`` as CAREamics' ``(ImageRegionData, ...)``."""
        *arrays, info = batch
        sample, origin = info["sample"], info["origin"]
        items = [region_batch(arrays[0], self.meta, sample, origin)]
        if len(arrays) > 1:
            items.append(region_batch(arrays[1], self.target_meta or self.meta, sample, origin))
        return tuple(items)
