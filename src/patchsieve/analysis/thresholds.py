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
    _stat_label,
    _with_threshold,
    threshold_field,
)
from patchsieve.errors import ConfigError, DataError
from patchsieve.regions import filter_out_from_stats
from patchsieve.sidecar import (
    Sidecar,
    SidecarWriter,
    config_attrs,
    decision_key,
    iter_chunks,
    stats_key,
    stored_array,
)

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
    The statistics are read chunk by chunk (memory does not grow with the side-car): Otsu from
    the same 256-bin histogram ``skimage.filters.threshold_otsu`` makes, the quantile from a
    few histogram passes narrowing in on the value at the target share.
    """
    sc = _as_sidecar(sidecar, storage_options)
    name = sc.resolve_filter(filter)
    cfg = sc.config(name)
    ndim = len(sc.spatial_dims)
    field, stat = threshold_field(cfg, ndim, stat)
    method = method or ("quantile" if background_fraction is not None else "otsu")
    values = stored_array(sc, stats_key(stat))
    n_finite, lo, hi = _finite_range(values)
    if n_finite == 0:
        raise DataError(f"side-car {sc.path!r} holds no finite {stat!r} values for {name!r}.")
    if method == "otsu":
        if background_fraction is not None:
            raise ConfigError("pass either background_fraction or method='otsu', not both.")
        if hi == lo:
            raise DataError(
                f"all {n_finite} regions have {stat} = {lo}; Otsu needs two classes. "
                "Fix: use background_fraction= (--background-fraction) instead.")
        from skimage.filters import threshold_otsu

        counts = _histogram(values, 256, lo, hi)
        edges = np.linspace(lo, hi, 257)
        # the histogram threshold_otsu(values) would make (same range, same bins)
        thr = float(threshold_otsu(hist=(counts, (edges[:-1] + edges[1:]) / 2.0)))
    elif method == "quantile":
        if background_fraction is None or not 0.0 <= float(background_fraction) <= 1.0:
            raise ConfigError(
                f"background_fraction must be in [0, 1] for method='quantile'; got "
                f"{background_fraction!r}. Fix: e.g. background_fraction=0.7.")
        thr = _quantile_threshold(values, n_finite, lo, hi, float(background_fraction))
    else:
        raise ConfigError(f"method must be 'otsu' or 'quantile'; got {method!r}.")
    if field == "coverage":
        thr = min(max(thr, 0.0), 1.0)
    elif cfg.name != "max":  # entropy, mean and std thresholds are non-negative
        thr = max(thr, 0.0)
    new_cfg = _with_threshold(cfg, field, thr)
    n, bg_new = _background(sc, new_cfg, ndim)
    bg_old = sum(int(np.count_nonzero(v))
                 for _, v in iter_chunks(stored_array(sc, decision_key(name, "filter_out"))))
    return ThresholdSuggestion(
        filter=name, stat=stat, field=field, method=method, threshold=thr,
        background_fraction=float(bg_new) / n, kept_fraction=float(n - bg_new) / n,
        n_regions=n,
        target_background_fraction=None if background_fraction is None
        else float(background_fraction),
        current_threshold=getattr(cfg, field, None), current_background_fraction=bg_old / n,
        config=config_attrs(new_cfg),
    )


def _finite_range(arr: Any) -> tuple[int, float, float]:
    """Number, minimum and maximum of the finite values of a side-car array (chunk by chunk)."""
    n, lo, hi = 0, np.inf, -np.inf
    for _, v in iter_chunks(arr):
        v = v[np.isfinite(v)]
        if v.size:
            n += int(v.size)
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    return n, lo, hi


def _histogram(arr: Any, bins: int, lo: float, hi: float) -> np.ndarray:
    """``np.histogram`` of the finite values over ``[lo, hi]``, chunk by chunk (the same counts
    as one call on all values: a value's bin depends on the edges only)."""
    counts = np.zeros(bins, dtype=np.int64)
    for _, v in iter_chunks(arr):
        v = v[np.isfinite(v)]
        if v.size:
            counts += np.histogram(v, bins=bins, range=(lo, hi))[0]
    return counts


def _in_range(v: np.ndarray, lo: float, hi: float, closed: bool) -> np.ndarray:
    return v[(v >= lo) & ((v <= hi) if closed else (v < hi))]


#: values a quantile search collects in memory at most (then sorts them)
_SELECT_MAX = 1 << 20


def _kth(arr: Any, k: int, lo: float, hi: float) -> float:
    """The ``k``-th smallest finite value (0-based) of a side-car array, by histogram passes
    narrowing the value range until the values left fit in memory."""
    below, closed = 0, True
    for _ in range(64):
        counts = np.zeros(4096, dtype=np.int64)
        vmin, vmax = np.inf, -np.inf
        for _, v in iter_chunks(arr):
            v = _in_range(v[np.isfinite(v)], lo, hi, closed)
            if v.size:
                counts += np.histogram(v, bins=4096, range=(lo, hi))[0]
                vmin, vmax = min(vmin, float(v.min())), max(vmax, float(v.max()))
        if vmin == vmax:
            return vmin
        cum = np.cumsum(counts)
        i = int(np.searchsorted(cum, k - below, side="right"))
        edges = np.linspace(lo, hi, 4097)
        below += int(cum[i - 1]) if i else 0
        closed = closed and i == 4095
        lo, hi = float(edges[i]), float(edges[i + 1])
        if counts[i] <= _SELECT_MAX:
            vals = np.concatenate([_in_range(v[np.isfinite(v)], lo, hi, closed)
                                   for _, v in iter_chunks(arr)])
            return float(np.sort(vals)[k - below])
    raise DataError("the quantile search did not converge")  # pragma: no cover


def _quantile_threshold(arr: Any, n: int, lo: float, hi: float, fraction: float) -> float:
    """What :func:`patchsieve.analysis._common._candidate_thresholds` returns for all finite
    values, found chunk by chunk: the candidate thresholds (between distinct values) next to
    the ``floor(fraction * n)``-th value, compared as there."""
    a = _kth(arr, min(int(np.floor(fraction * n)), n - 1), lo, hi)
    lt = le = 0
    prev, nxt = -np.inf, np.inf
    for _, v in iter_chunks(arr):
        v = v[np.isfinite(v)]
        lt += int(np.count_nonzero(v < a))
        le += int(np.count_nonzero(v <= a))
        below, above = v[v < a], v[v > a]
        if below.size:
            prev = max(prev, float(below.max()))
        if above.size:
            nxt = min(nxt, float(above.min()))
    lt_prev = le_next = 0
    prev2, nxt2 = -np.inf, np.inf
    for _, v in iter_chunks(arr):
        v = v[np.isfinite(v)]
        lt_prev += int(np.count_nonzero(v < prev))
        le_next += int(np.count_nonzero(v <= nxt))
        below, above = v[v < prev], v[v > nxt]
        if below.size:
            prev2 = max(prev2, float(below.max()))
        if above.size:
            nxt2 = min(nxt2, float(above.min()))

    def low(u: float) -> float:
        return u - max(1.0, abs(u)) * 1e-3

    def high(u: float) -> float:
        return u + max(1.0, abs(u)) * 1e-3

    def mid(u: float, w: float) -> float:
        return float((np.float64(u) + np.float64(w)) / 2)

    cands: list[tuple[int, float]] = []  # (values below, threshold), in candidate order
    if np.isfinite(prev):
        cands.append((lt_prev, mid(prev2, prev) if np.isfinite(prev2) else low(prev)))
    cands.append((lt, mid(prev, a) if np.isfinite(prev) else low(a)))
    cands.append((le, mid(a, nxt) if np.isfinite(nxt) else high(a)))
    if np.isfinite(nxt):
        cands.append((le_next, mid(nxt, nxt2) if np.isfinite(nxt2) else high(nxt)))
    below_share = np.array([c for c, _ in cands]) / n
    return float(cands[int(np.argmin(np.abs(below_share - fraction)))][1])


def _background(sc: Sidecar, config: Any, ndim: int) -> tuple[int, int]:
    """Regions and background regions of ``config`` on the side-car's statistics."""
    from patchsieve.regions import required_stats

    needed = required_stats(config, ndim)
    arrays = {k: stored_array(sc, stats_key(k)) for k in needed}
    first = arrays[needed[0]]
    n = bg = 0
    for box, v in iter_chunks(first):
        values = {needed[0]: v, **{k: np.asarray(a[box]) for k, a in arrays.items()
                                   if k != needed[0]}}
        fo = filter_out_from_stats(config, values, ndim=ndim)
        n += int(fo.size)
        bg += int(np.count_nonzero(fo))
    return n, bg


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
    values = stored_array(sc, stats_key(suggestion.stat))
    _, vmin, vmax = _finite_range(values)
    lo = min(vmin, suggestion.threshold)
    hi = max(vmax, suggestion.threshold)
    if hi == lo:
        hi = lo + 1.0
    counts = _histogram(values, bins, lo, hi)
    edges = np.linspace(lo, hi, bins + 1)
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
