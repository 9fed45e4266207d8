"""``train``: ``CAREamist.train`` with the patches streamed by patchsieve (private module; see
:mod:`patchsieve.careamics`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from patchsieve.careamics._config import require_careamics
from patchsieve.errors import ConfigError

if TYPE_CHECKING:
    from patchsieve.careamics._datamodule import PatchsieveDataModule

logger = logging.getLogger(__name__)


def train(
    careamist: Any,
    source: Any,
    *,
    patch_filter_config: Any = None,
    sidecar: Any = None,
    val_source: Any = None,
    target: Any = None,
    val_target: Any = None,
    **dataset_options: Any,
) -> PatchsieveDataModule:
    """Train a ``CAREamist``'s model on patches streamed by patchsieve.

    The patchsieve counterpart of ``careamist.train(train_data=source, ...)`` (CAREamics
    0.3.5): the same model, trainer, callbacks, checkpoints and configuration, fed by a
    :class:`PatchsieveDataModule` instead of CAREamics' in-memory or Zarr datasets. Like
    ``CAREamist.train`` it sets ``careamist.train_datamodule``, resets the trainer's stop flags,
    seeds everything with ``data_config.seed`` and calls
    ``careamist.trainer.fit(careamist.model, datamodule=..., ckpt_path=careamist.checkpoint_path)``;
    afterwards ``careamist.predict``, ``get_losses``, checkpoints and ``export_to_bmz`` work as
    after CAREamics' own training, with the normalisation statistics written into
    ``careamist.config.data_config.normalization``.

    Parameters
    ----------
    careamist : careamics.CAREamist
        Built from a training configuration (N2V, N2V2, structN2V, CARE or N2N).
    source : str, path-like or numpy.ndarray
        Training volume: Zarr / OME-Zarr (local or fsspec URL), TIFF or an array, with the
        configuration's ``axes``. Never loaded whole.
    patch_filter_config : patchsieve or CAREamics filter config, optional
        E.g. ``ShannonPatchFilterConfig(threshold=1.0)``. Wins over the configuration's
        ``data_config.patch_filter`` when that is unset (and is then recorded there); both set
        and different is a :class:`~patchsieve.errors.ConfigError`. Neither: every region kept.
    sidecar : str, path-like or Sidecar, optional
        A completed side-car of ``source``; default: the one beside the source, computed when
        absent or made for other parameters.
    val_source : optional
        Validation volume (``val_data``). Without it ``data_config.n_val_patches`` patches are
        held out of the training data as CAREamics does, so ``val_loss`` exists for the
        checkpoint and scheduler callbacks.
    target, val_target : optional
        Targets of CARE / N2N (``train_data_target``, ``val_data_target``), read at the same
        locations as the inputs.
    **dataset_options
        Further :class:`~patchsieve.dataset.PatchDataset` options (``storage_options``,
        ``cache_bytes``, ``client`` ...).

    Returns
    -------
    PatchsieveDataModule
        The data module trained on (also ``careamist.train_datamodule``).

    Raises
    ------
    ImportError
        CAREamics is not installed.
    ConfigError
        A supervised algorithm without ``target`` (or with ``val_source`` but no
        ``val_target``), conflicting filters, options the configuration sets, or a
        normalisation whose statistics patchsieve cannot provide.

    Notes
    -----
    Normalisation ``mean_std`` takes the side-car's per-channel statistics of the whole volume;
    ``none`` and explicit ``min_max`` / ``quantile`` statistics are applied by CAREamics' own
    objects. See ``docs/careamics.md`` for what else differs from ``CAREamist.train``.

    Examples
    --------
    >>> import patchsieve.careamics as psc
    >>> psc.train.__name__
    'train'
    """
    require_careamics()
    from careamics.lightning.callbacks import ConfigSaverCallback  # noqa: F401 - 0.3.5 API check
    from lightning.pytorch import seed_everything

    from patchsieve.careamics._datamodule import PatchsieveDataModule

    cfg = careamist.config
    name = cfg.get_algorithm_friendly_name()
    if cfg.is_supervised():
        if target is None:
            raise ConfigError(
                f"{name} is supervised: pass target= (the training targets, read at the same "
                "locations as source).")
        if val_source is not None and val_target is None:
            raise ConfigError(f"{name} is supervised: with val_source= pass val_target= too.")
    elif target is not None or val_target is not None:
        logger.warning("%s is self-supervised: target= and val_target= are ignored", name)
        target = val_target = None
    dm = PatchsieveDataModule(cfg.data_config, source, patch_filter_config=patch_filter_config,
                              sidecar=sidecar, val_source=val_source, target=target,
                              val_target=val_target, **dataset_options)
    careamist.train_datamodule = dm
    trainer = careamist.trainer
    # as CAREamist.train: undo a previous stop_training(), validate on every batch
    trainer.should_stop = False
    trainer.limit_val_batches = 1.0
    seed_everything(cfg.data_config.seed, workers=True)
    trainer.fit(careamist.model, datamodule=dm, ckpt_path=careamist.checkpoint_path)
    _finish_wandb(trainer, dm)
    return dm


def _finish_wandb(trainer: Any, dm: Any) -> None:
    """As ``CAREamist.train``: record the normalisation in a W&B run and finish it."""
    from lightning.pytorch.loggers import WandbLogger

    for lgr in trainer.loggers:
        if isinstance(lgr, WandbLogger):
            import wandb

            wandb.run.config.update({"normalization": dm.config.normalization.model_dump()},
                                    allow_val_change=True)
            wandb.finish()
            break
