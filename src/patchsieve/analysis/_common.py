"""Helpers the analysis modules share (private to :mod:`patchsieve.analysis`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.config import parse_filter_config
from patchsieve.errors import ConfigError
from patchsieve.regions import required_stats
from patchsieve.sidecar import Sidecar, open_sidecar

KEPT_COLOUR, BACKGROUND_COLOUR = "#0072B2", "#E69F00"  # colour-blind safe blue / orange
_STAT_LABELS = {"entropy": "Shannon entropy (bits)", "mean": "region mean", "std": "region std",
                "mask_coverage": "mask coverage (fraction of region)"}


def _as_sidecar(sidecar: Any, storage_options: Mapping[str, Any] | None = None, *,
                allow_incomplete: bool = False) -> Sidecar:
    if isinstance(sidecar, Sidecar):
        return sidecar
    if isinstance(sidecar, (str, os.PathLike)):
        return open_sidecar(os.fspath(sidecar), storage_options=storage_options,
                            allow_incomplete=allow_incomplete)
    raise ConfigError(f"sidecar must be a path/URL or a Sidecar; got {type(sidecar).__name__}.")


def _stat_label(stat: str) -> str:
    if stat.startswith("max_cov"):
        return f"Max value at coverage {stat[len('max_cov'):]}"
    return _STAT_LABELS.get(stat, stat)


def threshold_field(config: Any, ndim: int, stat: str | None = None) -> tuple[str, str]:
    """The config field holding the threshold and the region statistic it is compared with.

    Parameters
    ----------
    config : PatchFilterConfig
    ndim : int
        Spatial ndim (resolves the Max coverage).
    stat : str, optional
        For MeanStd: ``"mean"`` (default) or ``"std"``.

    Returns
    -------
    (field, stat) : tuple of str
        e.g. ``("threshold", "entropy")``, ``("mean_threshold", "mean")``,
        ``("coverage", "mask_coverage")``.

    Examples
    --------
    >>> from patchsieve.config import MaxPatchFilterConfig
    >>> threshold_field(MaxPatchFilterConfig(threshold=3.0), 2)
    ('threshold', 'max_cov0.25')
    """
    names = required_stats(config, ndim)
    if config.name == "mean_std":
        stat = stat or "mean"
        if stat not in ("mean", "std"):
            raise ConfigError(f"stat must be 'mean' or 'std' for a mean_std filter; got {stat!r}.")
        return f"{stat}_threshold", stat
    if stat is not None and stat != names[0]:
        raise ConfigError(f"stat must be {names[0]!r} for a {config.name} filter; got {stat!r}.")
    return ("coverage" if config.name == "mask" else "threshold"), names[0]


def _with_threshold(config: Any, field: str, value: float) -> Any:
    data = config.model_dump()
    data[field] = float(value)
    return parse_filter_config(data)


def _spatial_patch(sc: Sidecar) -> tuple[int, ...]:
    return tuple(sc.patch_size[d] for d in sc.spatial_dims)


def _spatial_shape(sc: Sidecar) -> tuple[int, ...]:
    return tuple(sc.shape[d] for d in sc.spatial_dims)


def _sample_index(sc_sample_shape: Sequence[int], sample: int) -> tuple[int, ...]:
    n = int(np.prod(sc_sample_shape, dtype=np.int64)) if sc_sample_shape else 1
    if not 0 <= int(sample) < n:
        raise ConfigError(f"sample must be in [0, {n}); got {sample}. Fix: pick 0..{n - 1}.")
    return tuple(int(i) for i in np.unravel_index(int(sample), tuple(sc_sample_shape))) \
        if sc_sample_shape else ()


def _candidate_thresholds(values: NDArray[np.float64], fraction: float) -> float:
    """A threshold between two distinct values whose below-share is closest to ``fraction``.

    Thresholds strictly between distinct values make ``<`` (MeanStd, Shannon, Mask) and
    ``<=`` (Max) drop the same regions.
    """
    uniq, counts = np.unique(values, return_counts=True)
    below = np.concatenate([[0], np.cumsum(counts)]) / values.size  # share below candidate j
    cands = np.concatenate([[uniq[0] - max(1.0, abs(uniq[0])) * 1e-3],
                            (uniq[:-1] + uniq[1:]) / 2,
                            [uniq[-1] + max(1.0, abs(uniq[-1])) * 1e-3]])
    j = int(np.argmin(np.abs(below - fraction)))
    return float(cands[j])


def _check_channel(n_channels: int, channel: int | None) -> None:
    if channel is not None and not 0 <= int(channel) < n_channels:
        raise ConfigError(f"channel must be in [0, {n_channels}); got {channel}.")
