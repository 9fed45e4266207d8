"""``PatchsieveDataModule``: CAREamics' training data module, fed by :class:`PatchDataset`
(private module; see :mod:`patchsieve.careamics`)."""

from __future__ import annotations

import logging
import os
from typing import Any

from patchsieve.careamics._batches import CareamicsLoader, CareamicsTransform, RegionMeta
from patchsieve.careamics._config import (
    KEEP_ALL,
    check_dataset_options,
    data_config_of,
    fill_normalization,
    loader_options,
    record_filter,
    require_careamics,
    resolve_filter,
)
from patchsieve.careamics._plans import (
    HeldOutPatching,
    careamics_val_cells,
    fixed_random_plan,
    held_out_plan,
)
from patchsieve.dataset import PatchDataset
from patchsieve.dataset.lightning import PatchDataModule
from patchsieve.errors import ConfigError
from patchsieve.sampling import PlannedPatching, StratifiedPatching
from patchsieve.sidecar import Sidecar, open_sidecar

logger = logging.getLogger(__name__)


class PatchsieveDataModule(PatchDataModule):
    """CAREamics' training data module, streaming its patches with patchsieve.

    A drop-in for CAREamics 0.3.5's ``CareamicsDataModule`` during training:
    ``careamist.trainer.fit(careamist.model, datamodule=PatchsieveDataModule(...))`` trains
    CAREamics' own Lightning modules (N2V, N2V2, structN2V, CARE, N2N) on patches that
    :class:`~patchsieve.dataset.PatchDataset` draws with the side-car's weights and streams
    out of core. It yields CAREamics' batches (``ImageRegionData``), reads everything else
    from the CAREamics ``DataConfig`` (patch size, batch size, channels, seed, augmentations,
    normalisation, DataLoader parameters, ``n_val_patches``) and writes the normalisation
    statistics it uses back into that configuration, as CAREamics does, so ``predict`` and
    model export work unchanged. :func:`patchsieve.careamics.train` is the one-call form.

    Parameters
    ----------
    data_config : careamics DataConfig or mapping
        The training data configuration (``careamist.config.data_config``); updated in place
        (normalisation statistics, ``patch_filter``).
    source : str, path-like or numpy.ndarray
        Training volume: Zarr / OME-Zarr (local or fsspec URL), TIFF or an array; read with
        ``data_config.axes``.
    patch_filter_config : patchsieve or CAREamics filter config, optional
        The patch filter; wins over ``data_config.patch_filter`` when that is unset (it is then
        recorded there); a different filter in both is a :class:`ConfigError`. Without any
        filter every region is kept.
    sidecar : str, path-like or Sidecar, optional
        A completed side-car of ``source`` (default: found or computed beside the source).
    val_source : optional
        Validation volume. Without it, ``data_config.n_val_patches`` patches are held out of the
        training data as CAREamics does.
    target, val_target : optional
        Paired targets (CARE, N2N), read at the same locations.
    **dataset_options
        Further :class:`~patchsieve.dataset.PatchDataset` options (``storage_options``,
        ``cache_bytes``, ``shuffle_window``, ``client``, ``level`` ...). Options that the
        configuration sets raise :class:`ConfigError`.

    Notes
    -----
    ``setup`` runs (or reuses) the filter pass, then fills the normalisation statistics:
    ``mean_std`` from the side-car's whole-volume per-channel statistics (a target's from its
    own side-car), which CAREamics instead estimates from one epoch of patches.

    Examples
    --------
    With CAREamics installed (``docs/careamics.md``)::

        dm = PatchsieveDataModule(careamist.config.data_config, "noisy.zarr")
        careamist.trainer.fit(careamist.model, datamodule=dm)

    >>> import patchsieve.careamics as psc
    >>> "PatchsieveDataModule" in psc.__all__
    True
    """

    def __init__(self, data_config: Any, source: Any, *, patch_filter_config: Any = None,
                 sidecar: Any = None, val_source: Any = None, target: Any = None,
                 val_target: Any = None, **dataset_options: Any):
        require_careamics()
        from careamics.dataset.factory import TrainValData, TrainValSplitData

        cfg = data_config_of(data_config)
        ps = [int(p) for p in cfg.patching.patch_size]
        flt = resolve_filter(cfg, patch_filter_config, len(ps))
        train_kw, drop_last = loader_options(cfg.train_dataloader_params, cfg.num_workers,
                                             "data_config.train_dataloader_params")
        self.val_loader_kwargs, _ = loader_options(cfg.val_dataloader_params, cfg.num_workers,
                                                   "data_config.val_dataloader_params")
        options = check_dataset_options(dataset_options)
        nw = int(train_kw.pop("num_workers"))
        super().__init__(
            source, batch_size=cfg.batch_size, num_workers=nw,
            multiprocessing_context=train_kw.pop("multiprocessing_context", None),
            persistent_workers=train_kw.pop("persistent_workers", None),
            pin_memory=bool(train_kw.pop("pin_memory", False)),
            patch_size=ps, patch_filter_config=flt if flt is not None else KEEP_ALL,
            sidecar=sidecar, target=target, channels=cfg.channels, seed=int(cfg.seed),
            axes=cfg.axes, drop_last=drop_last, return_metadata=True,
            transform=CareamicsTransform(), **options)
        self.train_loader_extra = train_kw
        self.config, self.patch_filter = cfg, flt
        self.val_source, self.val_target = val_source, val_target
        self.sidecar: Sidecar | None = None
        self.target_sidecar: Sidecar | None = None
        self.held_out: list[tuple[int, tuple[int, ...]]] = []
        if val_source is not None:
            self._data: Any = TrainValData(train_data=source, val_data=val_source,
                                           train_data_target=target, val_data_target=val_target)
        else:
            self._data = TrainValSplitData(train_data=source, n_val_patches=cfg.n_val_patches,
                                           train_data_target=target)

    # ---- datasets
    def setup(self, stage: str | None = None) -> None:
        """Build the training and validation datasets (runs or reuses the filter passes) and
        fill the normalisation statistics of the configuration."""
        if stage not in (None, "fit", "validate") or self.train_dataset is not None:
            return
        from careamics.dataset.augmentation.compose import Compose
        from careamics.dataset.normalization import create_normalization

        kw = self._with_batching(self.dataset_kwargs)
        ds = PatchDataset(self.source, **kw)
        so = kw.get("storage_options")
        self.sidecar = open_sidecar(ds.sidecar_path, storage_options=so) \
            if ds.sidecar_path else None
        if self.patch_filter is not None:
            record_filter(self.config, self.patch_filter, len(ds.patch_size))
        norm_cfg = self.config.normalization
        if kw.get("target") is not None and norm_cfg.name == "mean_std" \
                and norm_cfg.target_needs_computation():
            self.target_sidecar = self._target_sidecar(kw, ds)
        fill_normalization(self.config.normalization, self.sidecar, self.config.channels,
                           self.target_sidecar, has_target=kw.get("target") is not None)
        norm = create_normalization(self.config.normalization)
        ds.transform.normalization = norm
        ds.transform.augment = Compose(list(self.config.augmentations))
        kw = {**kw, "transform": CareamicsTransform(norm, None)}  # validation: no augmentation
        if self.val_source is None:
            self.val_dataset = self._held_out_split(ds, kw)
        else:
            self.val_dataset = self._validation_volume(kw)
        self.train_dataset = ds
        self.hparams.update(data_config=self.config.model_dump(mode="json"))

    def _target_sidecar(self, kw: dict[str, Any], ds: PatchDataset) -> Sidecar:
        """The side-car of the target (its normalisation statistics): found or computed."""
        from patchsieve.filterpass import ensure_sidecar
        from patchsieve.volume import open_volume

        target, so = kw["target"], kw.get("target_storage_options")
        flt = self.dataset_kwargs["patch_filter_config"]
        axes, level = self.config.target_axes or self.config.axes, kw.get("level", 0)
        vol = open_volume(target, axes=axes, level=level, storage_options=so)
        if getattr(flt, "ref_channel", 0) >= int(vol.sizes.get("c", 1)):
            flt = flt.model_copy(update={"ref_channel": 0})
        return ensure_sidecar(target, flt, kw["patch_size"], storage_options=so, axes=axes,
                              level=level, client=kw.get("client"), rank=ds.rank,
                              world_size=ds.world_size)

    def _held_out_split(self, ds: PatchDataset, kw: dict[str, Any]) -> PatchDataset | None:
        """CAREamics' validation split: ``n_val_patches`` cells out of the training data."""
        n_val = int(self.config.n_val_patches)
        if n_val == 0:
            return None
        sp = ds.sampler
        sc = open_sidecar(ds.sidecar_path, storage_options=self.dataset_kwargs.get(
            "storage_options")) if ds.sidecar_path else self.sidecar
        assert sc is not None
        # the hold-out needs every region's weight: an in-memory plan (O(regions)), as CAREamics
        weights, background = sc.weights(ds.filter_name), sc.filter_out(ds.filter_name)
        self.held_out = careamics_val_cells(sp.n_patches_per_sample, sp.grid_shape, n_val,
                                            int(self.config.seed))
        ds.sampler = PlannedPatching(HeldOutPatching(
            sp.spatial_shape, sp.patch_size, weights, background=background, seed=sp.seed,
            held_out=self.held_out))
        val = PatchDataset(self.source, **{**kw, "sidecar": self.sidecar or kw.get("sidecar")})
        val.sampler = PlannedPatching(held_out_plan(self.held_out, ds.sampler.plans))
        logger.info("held out %d validation patches (CAREamics' n_val_patches); %d training "
                    "patches per epoch", n_val, ds.sampler.epoch_length)
        return val

    def _validation_volume(self, kw: dict[str, Any]) -> PatchDataset:
        """Validation patches of ``val_source`` (CAREamics' ``FixedRandomPatching``)."""
        vkw = {**kw, "sidecar": None, "target": self.val_target}
        if self.val_target is None:
            vkw.pop("target_storage_options", None)
        val = PatchDataset(self.val_source, **vkw)
        sc = open_sidecar(val.sidecar_path, storage_options=kw.get("storage_options"))
        like = StratifiedPatching(val.sampler.spatial_shape, val.sampler.patch_size,
                                  sc.weights(val.filter_name),
                                  background=sc.filter_out(val.filter_name), seed=val.sampler.seed)
        val.sampler = PlannedPatching(fixed_random_plan(like, int(self.config.seed)))
        return val

    # ---- loaders
    def _metas(self, ds: PatchDataset) -> tuple[RegionMeta, RegionMeta | None]:
        cfg = self.config
        sc = open_sidecar(ds.sidecar_path, storage_options=self.dataset_kwargs.get(
            "storage_options")) if ds.sidecar_path else self.sidecar
        assert sc is not None
        src = ds.source_options.source
        name = "array" if not isinstance(src, (str, os.PathLike)) else os.fspath(src)
        taxes = cfg.target_axes or cfg.axes
        meta = RegionMeta.of(sc.shape, sc.dtype, name, cfg.axes, taxes, len(ds.channels),
                             sc.n_samples, ds.patch_size, cfg.channels is not None)
        tmeta = None
        if ds.target_channels:
            tmeta = RegionMeta.of({**sc.shape, "c": len(ds.target_channels)}, sc.dtype, name,
                                  taxes, taxes, len(ds.target_channels), sc.n_samples,
                                  ds.patch_size, False)
        return meta, tmeta

    def _careamics_loader(self, ds: PatchDataset, kw: dict[str, Any]) -> CareamicsLoader:
        meta, tmeta = self._metas(ds)
        return CareamicsLoader(ds, meta=meta, target_meta=tmeta, **kw)

    def train_dataloader(self) -> CareamicsLoader:
        """The training loader (one per data module; it advances the epochs)."""
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        if self._loader is None:
            kw = {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                  **self.train_loader_extra}
            if self.num_workers:
                kw["multiprocessing_context"] = self.multiprocessing_context
                kw["persistent_workers"] = self.persistent_workers
            self._loader = self._careamics_loader(self.train_dataset, kw)
            if self._pending_state is not None:
                self._loader.load_state_dict(self._pending_state)
                self._pending_state = None
        return self._loader  # type: ignore[return-value]

    def val_dataloader(self) -> Any:
        """The validation loader (the same patches every epoch), or [] with no validation."""
        if self.train_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        kw = dict(self.val_loader_kwargs)
        if int(kw.get("num_workers", 0)):
            kw.setdefault("multiprocessing_context", self.multiprocessing_context or "spawn")
        else:
            kw.pop("persistent_workers", None)
            kw.pop("prefetch_factor", None)
        return self._careamics_loader(self.val_dataset, kw)

    def predict_dataloader(self) -> Any:
        """Prediction is CAREamics' own (``careamist.predict`` builds its data module)."""
        raise ConfigError(
            "PatchsieveDataModule feeds training only. Fix: predict with careamist.predict(...), "
            "which reads the normalisation this module wrote into the configuration.")
