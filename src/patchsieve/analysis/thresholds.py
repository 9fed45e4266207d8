"""Thresholds from a side-car's stored statistics: suggest (Otsu or a target background share),
plot the histogram, apply (rewrite the decisions) -- without reading the volume."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from patchsieve.analysis._common import (
    BACKGROUND_COLOUR,
    KEPT_COLOUR,
    _as_sidecar,
    _candidate_thresholds,
    _stat_label,
    _with_threshold,
    threshold_field,
)
from patchsieve.errors import ConfigError, DataError
from patchsieve.regions import filter_out_from_stats
from patchsieve.sidecar import Sidecar, SidecarWriter, config_attrs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = [
    "ThresholdSuggestion",
    "apply_threshold",
    "plot_threshold_histogram",
    "suggest_threshold",
    "threshold_field",
]


@dataclass(frozen=True)
class ThresholdSuggestion:
    """A candidate threshold and what it does to the regions of a side-car.

    ``background_fraction`` is exact: the share of regions CAREamics' ``filter_out`` drops with
    the new threshold (other conditions of the filter, e.g. a MeanStd std threshold, included).
    """

    filter: str
    stat: str
    field: str
    method: str
    threshold: float
    background_fraction: float
    kept_fraction: float
    n_regions: int
    target_background_fraction: float | None
    current_threshold: float | None
    current_background_fraction: float
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able)."""
        return asdict(self)


def suggest_threshold(
    sidecar: Any,
    filter: str | None = None,  # noqa: A002 - CLI name
    *,
    background_fraction: float | None = None,
    method: str | None = None,
    stat: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ThresholdSuggestion:
    """Suggest a threshold from the stored region statistics (no volume read).

    Parameters
    ----------
    sidecar : str, path-like or Sidecar
    filter : str, optional
        Filter name in the side-car (default: the only one).
    background_fraction : float, optional
        Target share of background regions in [0, 1]: the threshold is put between two distinct
        region values so that the realised share is as close as possible.
    method : {"otsu", "quantile"}, optional
        ``"otsu"`` (default without ``background_fraction``): ``skimage.filters.threshold_otsu``
        of the region values. ``"quantile"`` needs ``background_fraction``.
    stat : str, optional
        MeanStd only: threshold ``"mean"`` (default) or ``"std"``.

    Returns
    -------
    ThresholdSuggestion

    Notes
    -----
    Sorting the values dominates: about 0.1 s per million regions.
    """
    sc = _as_sidecar(sidecar, storage_options)
    name = sc.resolve_filter(filter)
    cfg = sc.config(name)
    ndim = len(sc.spatial_dims)
    field, stat = threshold_field(cfg, ndim, stat)
    method = method or ("quantile" if background_fraction is not None else "otsu")
    all_stats = sc.stats
    values = np.asarray(all_stats[stat], np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise DataError(f"side-car {sc.path!r} holds no finite {stat!r} values for {name!r}.")
    if method == "otsu":
        if background_fraction is not None:
            raise ConfigError("pass either background_fraction or method='otsu', not both.")
        if np.ptp(finite) == 0:
            raise DataError(
                f"all {finite.size} regions have {stat} = {finite[0]}; Otsu needs two classes. "
                "Fix: use background_fraction= (--background-fraction) instead.")
        from skimage.filters import threshold_otsu

        thr = float(threshold_otsu(finite))
    elif method == "quantile":
        if background_fraction is None or not 0.0 <= float(background_fraction) <= 1.0:
            raise ConfigError(
                f"background_fraction must be in [0, 1] for method='quantile'; got "
                f"{background_fraction!r}. Fix: e.g. background_fraction=0.7.")
        thr = _candidate_thresholds(finite, float(background_fraction))
    else:
        raise ConfigError(f"method must be 'otsu' or 'quantile'; got {method!r}.")
    if field == "coverage":
        thr = min(max(thr, 0.0), 1.0)
    elif cfg.name != "max":  # entropy, mean and std thresholds are non-negative
        thr = max(thr, 0.0)
    new_cfg = _with_threshold(cfg, field, thr)
    needed = {k: all_stats[k] for k in all_stats}
    fo_new = filter_out_from_stats(new_cfg, needed, ndim=ndim)
    fo_old = sc.filter_out(name)
    n = int(fo_new.size)
    return ThresholdSuggestion(
        filter=name, stat=stat, field=field, method=method, threshold=thr,
        background_fraction=float(fo_new.sum()) / n, kept_fraction=float((~fo_new).sum()) / n,
        n_regions=n,
        target_background_fraction=None if background_fraction is None
        else float(background_fraction),
        current_threshold=getattr(cfg, field, None), current_background_fraction=float(fo_old.mean()),
        config=config_attrs(new_cfg),
    )


def plot_threshold_histogram(
    sidecar: Any,
    suggestion: ThresholdSuggestion,
    out: str | os.PathLike[str] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    bins: int = 128,
    dpi: int = 100,
) -> Figure:
    """Histogram of the region values with the suggested (and current) threshold marked."""
    import matplotlib

    if out is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sc = _as_sidecar(sidecar, storage_options)
    values = np.asarray(sc.stats[suggestion.stat], np.float64)
    values = values[np.isfinite(values)]
    lo = min(float(values.min()), suggestion.threshold)
    hi = max(float(values.max()), suggestion.threshold)
    if hi == lo:
        hi = lo + 1.0
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    fig, ax = plt.subplots(figsize=(8, 4.8), constrained_layout=True)
    centres = (edges[:-1] + edges[1:]) / 2
    bg = centres < suggestion.threshold
    ax.bar(centres[bg], counts[bg], width=np.diff(edges)[bg], color=BACKGROUND_COLOUR,
           label=f"background: {suggestion.background_fraction:.1%} of regions")
    ax.bar(centres[~bg], counts[~bg], width=np.diff(edges)[~bg], color=KEPT_COLOUR,
           label=f"kept: {suggestion.kept_fraction:.1%} of regions")
    ax.axvline(suggestion.threshold, color="black", lw=2,
               label=f"suggested {suggestion.field} = {suggestion.threshold:.4g} "
                     f"({suggestion.method})")
    cur = suggestion.current_threshold
    if cur is not None and np.isfinite(cur):
        ax.axvline(float(cur), color="0.4", lw=1.5, ls="--",
                   label=f"current {suggestion.field} = {float(cur):.4g} "
                         f"({suggestion.current_background_fraction:.1%} background)")
    if counts.max() > 50 * max(np.median(counts[counts > 0]), 1):
        ax.set_yscale("log")
    ax.set_xlabel(_stat_label(suggestion.stat))
    ax.set_ylabel("number of regions")
    ax.legend(loc="best", fontsize=9)
    target = "" if suggestion.target_background_fraction is None else \
        f", target {suggestion.target_background_fraction:.1%} background"
    ax.set_title(f"{suggestion.filter}: {suggestion.n_regions} regions of "
                 f"{os.path.basename(sc.source.rstrip('/'))}{target}", fontsize=11)
    if out is not None:
        fig.savefig(out, dpi=dpi)
    return fig


def apply_threshold(
    sidecar: Any,
    filter: str,  # noqa: A002 - CLI name
    threshold: float,
    *,
    field: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Sidecar:
    """Write a new threshold into a side-car and re-derive its decisions from the stored stats.

    Decisions, weights, per-sample totals and normalisation are rewritten by
    :meth:`patchsieve.sidecar.SidecarWriter.change_filter` under the side-car lock; the volume
    is not read. The side-car is marked incomplete while it is rewritten.

    Returns
    -------
    Sidecar
        The updated side-car.

    Raises
    ------
    SidecarLockedError
        Another live process holds the side-car's lock.
    """
    sc = _as_sidecar(sidecar, storage_options)
    name = sc.resolve_filter(filter)
    cfg = sc.config(name)
    fld = field or threshold_field(cfg, len(sc.spatial_dims))[0]
    new_cfg = _with_threshold(cfg, fld, threshold)
    with SidecarWriter(sc.path, storage_options) as writer:
        writer.change_filter(name, new_cfg)
    logger.info("side-car %s: %s %s set to %s", sc.path, name, fld, threshold)
    return _as_sidecar(sc.path, storage_options)
