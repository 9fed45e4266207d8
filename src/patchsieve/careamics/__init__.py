"""Train with CAREamics from patchsieve: CAREamics' own models fed by the patch stream.

``train(careamist, source, ...)`` is ``careamist.train(train_data=source, ...)`` of CAREamics
0.3.5 with the patches drawn by :class:`~patchsieve.dataset.PatchDataset` from a side-car
(filter pass run or reused) and streamed out of core; :class:`PatchsieveDataModule` is the
Lightning data module behind it, for ``careamist.trainer.fit(careamist.model, datamodule=...)``
or a Trainer of one's own (DDP included). Batches are CAREamics' ``ImageRegionData``, normalised
and augmented by CAREamics' own objects; the normalisation statistics are written into the
CAREamics configuration, so ``careamist.predict`` and model export work unchanged.

``import careamics`` below is the external package: it is imported only when a function runs,
and its absence raises an ImportError that names the fix. ``docs/careamics.md`` shows the few
lines that change in a CAREamics script.

Example
-------
::

    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config
    import patchsieve.careamics
    from patchsieve import ShannonPatchFilterConfig

    careamist = CAREamist(create_advanced_n2v_config(
        "n2v", data_type="zarr", axes="SYX", patch_size=[64, 64], batch_size=16, num_epochs=20))
    patchsieve.careamics.train(careamist, "noisy.zarr",
                               patch_filter_config=ShannonPatchFilterConfig(threshold=1.0),
                               val_source="noisy.zarr")
    denoised, _ = careamist.predict(image, data_type="array", axes="YX",
                                    tile_size=(128, 128), in_memory=True)

Modules: ``_train`` (:func:`train`), ``_datamodule`` (:class:`PatchsieveDataModule`, needs
lightning), ``_config`` (the CAREamics configuration read as patchsieve options), ``_plans``
(CAREamics' validation patches as epoch plans), ``_batches`` (``ImageRegionData`` batches).
"""

from __future__ import annotations

import importlib
from typing import Any

from patchsieve.careamics._train import train

__all__ = ["PatchsieveDataModule", "train"]


def __getattr__(name: str) -> Any:
    if name == "PatchsieveDataModule":
        from patchsieve.careamics._config import require_careamics

        require_careamics()
        value = importlib.import_module("patchsieve.careamics._datamodule").PatchsieveDataModule
        globals()[name] = value
        return value
    raise AttributeError(f"module 'patchsieve.careamics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
