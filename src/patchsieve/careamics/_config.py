"""A CAREamics configuration read as patchsieve options (private): the import guard, the patch
filter rule, the normalisation statistics and the DataLoader options."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from patchsieve.config import MaxPatchFilterConfig, parse_filter_config, resolve_coverage
from patchsieve.errors import ConfigError, SidecarIncompleteError

logger = logging.getLogger(__name__)

#: how to get CAREamics; named by every error raised for its absence
INSTALL_HINT = (
    "pip install 'careamics==0.3.5' in an environment of its own (it pins torch 2.11), e.g. "
    "`bash benchmarks/careamics-env.sh` in a patchsieve checkout, which also installs "
    "patchsieve editable next to it"
)

#: "no patch filter": a Max threshold below every float32 value keeps every region, so the
#: side-car only provides the geometry and the normalisation statistics
KEEP_ALL = MaxPatchFilterConfig(threshold=-float(np.finfo(np.float32).max), coverage=0.0)

#: PatchDataset options that the CAREamics configuration sets (-> the field to change instead)
RESERVED = {
    "patch_size": "data_config.patching.patch_size",
    "batch_size": "data_config.batch_size",
    "channels": "data_config.channels",
    "seed": "data_config.seed",
    "axes": "data_config.axes",
    "normalize": "data_config.normalization",
    "transform": "data_config.augmentations",
    "return_metadata": "(always on: the batches carry CAREamics' region specs)",
    "drop_last": "data_config.train_dataloader_params['drop_last']",
    "mode": "(CAREamics' stratified patching: mode='per_epoch')",
    "num_workers": "data_config.train_dataloader_params['num_workers']",
    "val_kwargs": "val_source=",
}

#: DataLoader parameters of a CAREamics config that a PatchLoader takes as they are
LOADER_KEYS = ("num_workers", "pin_memory", "persistent_workers", "multiprocessing_context",
               "prefetch_factor", "timeout")


def require_careamics() -> Any:
    """Import CAREamics (>= 0.3.5: batches of ``ImageRegionData``), or raise an ImportError
    that names the fix."""
    try:
        import careamics
        from careamics.dataset.image_region_data import ImageRegionData  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"patchsieve.careamics needs CAREamics >= 0.3.5 ({err}). Fix: {INSTALL_HINT}."
        ) from err
    return careamics


def data_config_of(data_config: Any) -> Any:
    """A CAREamics training ``DataConfig`` (a mapping is validated into one)."""
    from careamics.config.data.data_config import DataConfig

    cfg = data_config if isinstance(data_config, DataConfig) else DataConfig.model_validate(
        data_config)
    if str(cfg.mode) not in ("training", "Mode.TRAINING"):
        raise ConfigError(
            f"data_config.mode must be 'training'; got {cfg.mode!r}. Fix: pass the data config of "
            "a training configuration (careamist.config.data_config).")
    if cfg.patching.name != "stratified":
        raise ConfigError(
            f"data_config.patching must be CAREamics' stratified patching; got "
            f"{cfg.patching.name!r}. patchsieve samples with StratifiedPatching semantics. Fix: "
            "build the configuration with careamics' create_*_config factories (their default).")
    return cfg


def _comparable(cfg: Any, ndim: int) -> dict[str, Any]:
    d = cfg.model_dump()
    if d.get("name") == "max":
        d["coverage"] = resolve_coverage(d.get("coverage"), ndim)
    d.pop("mask", None)
    return d


def resolve_filter(data_config: Any, explicit: Any, ndim: int) -> Any:
    """The patch filter of the run: ``explicit`` (a patchsieve or CAREamics filter config) or
    the CAREamics configuration's own ``patch_filter``, or None.

    Raises
    ------
    ConfigError
        Both are given and differ.
    """
    own = getattr(data_config, "patch_filter", None)
    own_ps = None if own is None else parse_filter_config(own.model_dump())
    exp = None if explicit is None else parse_filter_config(
        explicit.model_dump() if hasattr(explicit, "model_dump") else explicit)
    if exp is not None and own_ps is not None and _comparable(exp, ndim) != _comparable(own_ps, ndim):
        raise ConfigError(
            f"patch_filter_config={exp!r} conflicts with the CAREamics configuration's "
            f"data_config.patch_filter={own!r}. Fix: pass only one of them (or the same filter).")
    return exp if exp is not None else own_ps


def record_filter(data_config: Any, cfg: Any, ndim: int) -> None:
    """Write the filter into the CAREamics config (``patch_filter``), so that the saved
    configuration and checkpoints say how the model was trained. Mask filters need a mask image
    CAREamics' ``patch_filter`` cannot name; they are left out."""
    if cfg is None or cfg.name not in ("max", "mean_std", "shannon"):
        return
    data = cfg.model_dump()
    if cfg.name == "max":
        data["coverage"] = resolve_coverage(cfg.coverage, ndim)
    current = getattr(data_config, "patch_filter", None)
    if current is not None and _comparable(parse_filter_config(current.model_dump()), ndim) \
            == _comparable(cfg, ndim):
        return
    data_config.patch_filter = data


def loader_options(params: Mapping[str, Any] | None, default_workers: int,
                   what: str) -> tuple[dict[str, Any], bool]:
    """PatchLoader keyword arguments and ``drop_last`` from CAREamics dataloader params.

    ``shuffle`` is dropped (the dataset plans and shuffles itself); parameters a PatchLoader
    cannot take (``sampler``, ``collate_fn`` ...) raise :class:`ConfigError`.
    """
    p = dict(params or {})
    p.pop("shuffle", None)
    drop_last = bool(p.pop("drop_last", False))
    out = {k: p.pop(k) for k in LOADER_KEYS if k in p}
    out.setdefault("num_workers", int(default_workers))
    if int(out["num_workers"]) < 0:
        raise ConfigError(f"{what}['num_workers'] must be >= 0; got {out['num_workers']}.")
    if p:
        raise ConfigError(
            f"{what} holds {sorted(p)}, which a patchsieve loader does not take (it plans, "
            f"shuffles and collates patches itself). Fix: remove them; it takes {LOADER_KEYS} "
            "and drop_last.")
    return out, drop_last


def check_dataset_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The PatchDataset options given to ``train`` minus those the CAREamics config sets."""
    bad = {k: RESERVED[k] for k in options if k in RESERVED}
    if bad:
        raise ConfigError(
            "these options come from the CAREamics configuration: "
            + "; ".join(f"{k} -> {v}" for k, v in bad.items())
            + ". Fix: set them in the configuration, not as keyword arguments.")
    return dict(options)


# --------------------------------------------------------------------------- normalisation
def pooled_mean_std(means: Sequence[float], stds: Sequence[float],
                    counts: Sequence[float] | None = None) -> tuple[float, float]:
    """One mean and std over several channels from per-channel moments.

    Examples
    --------
    >>> m, s = pooled_mean_std([0.0, 2.0], [1.0, 1.0])
    >>> round(m, 6), round(s, 6)
    (1.0, 1.414214)
    """
    m = np.asarray(means, np.float64)
    s = np.asarray(stds, np.float64)
    w = np.ones_like(m) if counts is None else np.asarray(counts, np.float64)
    mean = float((w * m).sum() / w.sum())
    var = float((w * (s * s + m * m)).sum() / w.sum()) - mean * mean
    return mean, math.sqrt(max(var, 0.0))


def sidecar_mean_std(sc: Any, channels: Sequence[int] | None,
                     per_channel: bool) -> tuple[list[float], list[float]]:
    """Mean and std of the selected channels from a side-car's normalisation statistics
    (``Sidecar.normalization()``: every pixel of the volume, from the pass's cell sums)."""
    stats = sc.normalization()
    if "mean" not in stats or "std" not in stats:
        raise SidecarIncompleteError(
            f"side-car {getattr(sc, 'path', sc)!r} has no normalisation statistics. Fix: "
            "recompute it (`patchsieve compute ... --overwrite`).")
    mean = np.atleast_1d(np.asarray(stats["mean"], np.float64))
    std = np.atleast_1d(np.asarray(stats["std"], np.float64))
    sel = list(range(mean.size)) if channels is None else [int(c) for c in channels]
    mean, std = mean[sel], std[sel]
    if per_channel:
        return [float(v) for v in mean], [float(v) for v in std]
    m, s = pooled_mean_std(mean, std)
    return [m], [s]


def fill_normalization(norm: Any, input_sc: Any, channels: Sequence[int] | None,
                       target_sc: Any = None, *, has_target: bool = False) -> None:
    """Fill the missing statistics of a CAREamics normalisation config, in place.

    ``mean_std`` takes the side-cars' statistics (the target's from its own side-car); ``none``
    needs none; ``min_max`` and ``quantile`` are applied exactly as CAREamics does when their
    statistics are in the configuration, and raise :class:`ConfigError` when they are not
    (CAREamics estimates them from one pass over the training patches, which patchsieve does
    not reproduce).
    """
    name = norm.name
    if name == "none":
        return
    need_target = (has_target or target_sc is not None) and norm.target_needs_computation()
    if name == "mean_std":
        if norm.needs_computation():
            norm.set_input_stats(*sidecar_mean_std(input_sc, channels, norm.per_channel))
            logger.info("normalisation from side-car %s: means %s, stds %s",
                        getattr(input_sc, "path", ""), norm.input_means, norm.input_stds)
        if need_target:
            if target_sc is None:  # the data module computes it whenever it is needed
                raise RuntimeError("fill_normalization: a target without its side-car")
            norm.set_target_stats(*sidecar_mean_std(target_sc, None, norm.per_channel))
        return
    if norm.needs_computation() or need_target:
        fields = "input_mins/input_maxes" if name == "min_max" else \
            "input_lower_quantile_values/input_upper_quantile_values"
        raise ConfigError(
            f"normalization {name!r} without statistics: CAREamics computes them from one pass "
            "over its training patches, which patchsieve does not reproduce. Fix: give the "
            f"statistics in the configuration (normalization_params with {fields}, and the "
            "target's for CARE/N2N; the side-car's normalization() holds per-channel "
            "percentiles), or use normalization='mean_std' (from the side-car) or 'none'.")
