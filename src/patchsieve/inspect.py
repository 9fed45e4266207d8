"""Choose and trust thresholds from a side-car, without re-reading the volume.

Library side of the ``patchsieve inspect``, ``plot``, ``suggest-threshold`` and ``preview``
commands (the CLI only parses and prints):

* :func:`summarize` -- source, geometry, configs, kept/background fractions overall and per
  sample, patches per epoch and expected background share under every sampling mode, storage
  size, completeness, and the agreement with side-cars of other pyramid levels.
* :func:`suggest_threshold` -- a threshold from the stored region statistics (Otsu or a target
  background fraction); :func:`plot_threshold_histogram` draws it; :func:`apply_threshold`
  writes the new decisions into the side-car (statistics are reused, the volume is not read).
* :func:`plot_filter_maps` -- CAREamics' ``plot_filter_map`` look (image, magma filter map, colour
  bar) for every filter of a side-car or a source, with the keep mask outlined; 2D, 3D (a z
  slice, the middle one by default) and multichannel data.
* :func:`preview_patches` / :func:`plot_preview` -- the first patches an epoch of
  :class:`~patchsieve.dataset.PatchDataset` yields, background patches framed differently.
* :func:`level_patch_size`, :func:`region_index_map`, :func:`decisions_at`,
  :func:`level_agreement` -- filtering on a coarser pyramid level: scale the patch size and map
  region decisions between levels through the NGFF scale/translation of each level.

matplotlib (and torch, for previews) are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.errors import ConfigError, DataError, SidecarError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from patchsieve.sidecar import Sidecar

logger = logging.getLogger(__name__)

__all__ = [
    "RegionGridGeometry",
    "ThresholdSuggestion",
    "apply_threshold",
    "decisions_at",
    "decisions_at_level0",
    "find_level_sidecars",
    "level0_geometry",
    "level_agreement",
    "level_patch_size",
    "plot_filter_maps",
    "plot_preview",
    "plot_threshold_histogram",
    "preview_patches",
    "region_index_map",
    "sidecar_nbytes",
    "suggest_threshold",
    "summarize",
    "threshold_field",
]

SPATIAL = ("z", "y", "x")
KEPT_COLOUR, BACKGROUND_COLOUR = "#0072B2", "#E69F00"  # colour-blind safe blue / orange
_STAT_LABELS = {"entropy": "Shannon entropy (bits)", "mean": "region mean", "std": "region std",
                "mask_coverage": "mask coverage (fraction of region)"}


# ------------------------------------------------------------------------------ helpers
def _as_sidecar(sidecar: Any, storage_options: Mapping[str, Any] | None = None, *,
                allow_incomplete: bool = False) -> Sidecar:
    from patchsieve.sidecar import Sidecar, open_sidecar

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
    from patchsieve.regions import stat_names

    names = stat_names(config, ndim)
    if config.name == "mean_std":
        stat = stat or "mean"
        if stat not in ("mean", "std"):
            raise ConfigError(f"stat must be 'mean' or 'std' for a mean_std filter; got {stat!r}.")
        return f"{stat}_threshold", stat
    if stat is not None and stat != names[0]:
        raise ConfigError(f"stat must be {names[0]!r} for a {config.name} filter; got {stat!r}.")
    return ("coverage" if config.name == "mask" else "threshold"), names[0]


def _with_threshold(config: Any, field: str, value: float) -> Any:
    from patchsieve.config import parse_filter_config

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


# ------------------------------------------------------------------------------ summary
def sidecar_nbytes(path: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Bytes and number of objects stored under a side-car (local path or fsspec URL)."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(str(path), **dict(storage_options or {}))
    sizes = fs.find(root, detail=True)
    return {"bytes": int(sum(int(v.get("size") or 0) for v in sizes.values())),
            "files": len(sizes)}


def _mode_expectations(sc: Sidecar, name: str, seed: int) -> dict[str, Any]:
    from patchsieve.sampling import MODES, StratifiedPatching

    fo, w = sc.filter_out(name), sc.weights(name)
    p = float(sc.config(name).filtered_patch_prob)
    n_bg, n_fg = int(fo.sum()), int((~fo).sum())
    k = sum(math.floor(math.fsum(ws[fs].tolist()) + 0.5)
            for ws, fs in zip(w.reshape(len(w), -1), fo.reshape(len(fo), -1)))
    region_units = {"per_epoch": p * n_bg / (n_fg + p * n_bg) if n_fg + p * n_bg else 0.0,
                    "fixed_subset": k / (n_fg + k) if n_fg + k else 0.0}
    region_units["with_replacement"] = region_units["per_epoch"]
    out: dict[str, Any] = {}
    for mode in MODES:
        sp = StratifiedPatching(_spatial_shape(sc), _spatial_patch(sc), w, background=fo,
                                mode=mode, seed=seed)  # type: ignore[arg-type]
        out[mode] = {"patches_per_epoch": int(sp.epoch_length),
                     "expected_background_fraction": float(sp.expected_background_fraction()),
                     "expected_background_fraction_region_units": float(region_units[mode])}
    return out


def _per_sample(sc: Sidecar, name: str, max_samples: int) -> dict[str, Any]:
    tot = sc.sample_totals(name)
    n_reg = np.maximum(tot["n_regions"], 1)
    frac = tot["n_background"] / n_reg
    index = [list(_sample_index(sc.sample_shape, i)) for i in range(sc.n_samples)]
    rows = [{"sample": i, "index": index[i], "n_regions": int(tot["n_regions"][i]),
             "n_background": int(tot["n_background"][i]), "background_fraction": float(frac[i]),
             "patches_per_epoch": int(tot["n_patches_per_epoch"][i])}
            for i in range(sc.n_samples)]
    lo, hi = int(np.argmin(frac)), int(np.argmax(frac))
    return {"dims": list(sc.sample_dims), "n": sc.n_samples,
            "background_fraction": {"min": float(frac[lo]), "min_sample": lo,
                                    "median": float(np.median(frac)),
                                    "max": float(frac[hi]), "max_sample": hi},
            "rows": rows if sc.n_samples <= max_samples else None}


def _filter_summary(sc: Sidecar, name: str, seed: int, max_samples: int) -> dict[str, Any]:
    fo = sc.filter_out(name)
    n = int(fo.size)
    n_bg = int(fo.sum())
    return {"config": dict(sc.attrs["filters"][name]),
            "n_regions": n, "n_background": n_bg, "n_kept": n - n_bg,
            "background_fraction": n_bg / n if n else 0.0,
            "kept_fraction": (n - n_bg) / n if n else 0.0,
            "patches_per_epoch_careamics": int(sc.sample_totals(name)["n_patches_per_epoch"].sum()),
            "modes": _mode_expectations(sc, name, seed),
            "per_sample": _per_sample(sc, name, max_samples)}


def summarize(
    sidecar: Any,
    *,
    storage_options: Mapping[str, Any] | None = None,
    references: Sequence[Any] | None = None,
    find_references: bool = True,
    seed: int = 0,
    max_samples: int = 12,
) -> dict[str, Any]:
    """A JSON-able summary of a side-car (what ``patchsieve inspect`` prints).

    Parameters
    ----------
    sidecar : str, path-like or Sidecar
    storage_options : mapping, optional
        fsspec options of a remote side-car.
    references : sequence of side-cars, optional
        Side-cars of the same source at other pyramid levels to compare decisions with.
    find_references : bool
        Also look for such side-cars beside this one (:func:`find_level_sidecars`).
    seed : int
        Seed of the sampling plans (fixed_subset draws its subset from it).
    max_samples : int
        Per-sample rows are listed up to this many samples; beyond, only min/median/max.

    Returns
    -------
    dict
        Keys ``sidecar``, ``source``, ``complete``, ``status``, ``geometry``, ``storage``,
        ``progress`` (blocks written / total per resume log), ``filters`` (per filter:
        fractions, ``modes`` with ``patches_per_epoch`` and ``expected_background_fraction`` per
        sampling mode, ``per_sample``; only ``config`` and ``incomplete: True`` while its decisions
        are not written) and ``levels``.

    Notes
    -----
    An incomplete side-car (a run interrupted or still going) is summarised too, so that its
    progress can be checked; readers such as the dataset refuse it.
    """
    sc = _as_sidecar(sidecar, storage_options, allow_incomplete=True)
    a = sc.attrs
    geom = {"dims": list(sc.dims), "shape": sc.shape, "chunks": sc.chunks, "dtype": sc.dtype,
            "sample_dims": list(sc.sample_dims), "sample_shape": list(sc.sample_shape),
            "n_samples": sc.n_samples, "spatial_dims": list(sc.spatial_dims),
            "patch_size": sc.patch_size, "grid_shape": list(sc.grid_shape),
            "regions_per_sample": int(np.prod(sc.grid_shape)),
            "n_channels": int(sc.geometry.get("n_channels", 1)), "ref_channel": sc.ref_channel,
            "border": sc.geometry.get("border", "careamics"),
            "scale": a["source"].get("scale", {})}
    out: dict[str, Any] = {
        "sidecar": sc.path, "source": sc.source, "array_path": sc.array_path, "level": sc.level,
        "complete": sc.is_complete, "status": sc.status,
        "format_version": a.get("format_version"), "patchsieve_version": a.get("patchsieve_version"),
        "created": a.get("created"), "updated": a.get("updated"), "geometry": geom,
        "storage": sidecar_nbytes(sc.path, storage_options),
        "progress": _block_progress(sc),
        "filters": {},
        "levels": [],
    }
    for name in sc.filter_names:
        if sc.status.get(f"decisions/{name}") != "complete":
            out["filters"][name] = {"config": dict(a["filters"][name]), "incomplete": True}
            continue
        out["filters"][name] = _filter_summary(sc, name, seed, max_samples)
    if not sc.is_complete:
        return out  # no level comparison before the run has finished
    refs = [_as_sidecar(r, storage_options) for r in references or []]
    if find_references:
        known = {os.path.abspath(r.path) for r in refs}
        refs += [r for r in find_level_sidecars(sc, storage_options=storage_options)
                 if os.path.abspath(r.path) not in known]
    for ref in refs:
        try:
            out["levels"].append({"sidecar": ref.path, "level": ref.level,
                                  "filters": level_agreement(sc, ref)})
        except (ConfigError, DataError) as err:
            out["levels"].append({"sidecar": ref.path, "level": ref.level, "error": str(err)})
    return out


def _block_progress(sc: Sidecar) -> dict[str, dict[str, int]]:
    """Blocks written / total per resume log (``progress/*``) of the filter pass."""
    out: dict[str, dict[str, int]] = {}
    try:
        group = sc._group["progress"]
    except KeyError:
        return out
    for key, arr in group.arrays():
        marks = np.asarray(arr[...])
        out[key] = {"done": int(np.count_nonzero(marks)), "total": int(marks.size)}
    return out


def find_level_sidecars(sidecar: Any, *,
                        storage_options: Mapping[str, Any] | None = None) -> list[Sidecar]:
    """Complete side-cars beside ``sidecar`` made for the same source at another pyramid level."""
    from fsspec.core import url_to_fs

    from patchsieve.sidecar import SUFFIX, open_sidecar

    sc = _as_sidecar(sidecar, storage_options)
    fs, root = url_to_fs(sc.path, **dict(storage_options or {}))
    parent = root.rstrip("/").rsplit("/", 1)[0] if "/" in root.rstrip("/") else "."
    found: list[Sidecar] = []
    for cand in sorted(fs.glob(f"{parent}/*{SUFFIX}")):
        if cand.rstrip("/") == root.rstrip("/"):
            continue
        url = cand if "://" not in sc.path else f"{sc.path.split('://')[0]}://{cand}"
        try:
            other = open_sidecar(url, storage_options=storage_options)
        except (SidecarError, OSError, ValueError, KeyError):
            continue
        if other.source == sc.source and other.level != sc.level \
                and other.sample_shape == sc.sample_shape:
            found.append(other)
    return found


# ------------------------------------------------------------------------------ thresholds
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
    from patchsieve.regions import decide

    sc = _as_sidecar(sidecar, storage_options)
    name = _pick_filter(sc, filter)
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
    fo_new = decide(new_cfg, needed, ndim=ndim)
    fo_old = sc.filter_out(name)
    n = int(fo_new.size)
    from patchsieve.compute import _config_json

    return ThresholdSuggestion(
        filter=name, stat=stat, field=field, method=method, threshold=thr,
        background_fraction=float(fo_new.sum()) / n, kept_fraction=float((~fo_new).sum()) / n,
        n_regions=n,
        target_background_fraction=None if background_fraction is None
        else float(background_fraction),
        current_threshold=getattr(cfg, field, None), current_background_fraction=float(fo_old.mean()),
        config=_config_json(new_cfg),
    )


def _pick_filter(sc: Sidecar, name: str | None) -> str:
    if name is None:
        if len(sc.filter_names) != 1:
            raise ConfigError(
                f"side-car {sc.path!r} has filters {sc.filter_names}. Fix: pass filter= "
                "(--filter) with one of them.")
        return sc.filter_names[0]
    if name not in sc.filter_names:
        raise ConfigError(
            f"filter {name!r} is not in side-car {sc.path!r}; it has {sc.filter_names}. "
            "Fix: pass one of those names.")
    return name


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
    :func:`patchsieve.compute.update_decisions` under the side-car lock; the volume is not read.
    The side-car is marked incomplete while it is rewritten.

    Returns
    -------
    Sidecar
        The updated side-car.
    """
    import importlib

    from patchsieve.config import parse_filter_config

    # the package re-exports the function ``compute``; fetch the module itself
    _compute = importlib.import_module("patchsieve.compute")
    _sc = importlib.import_module("patchsieve.sidecar")

    sc = _as_sidecar(sidecar, storage_options)
    name = _pick_filter(sc, filter)
    cfg = sc.config(name)
    fld = field or threshold_field(cfg, len(sc.spatial_dims))[0]
    new_cfg = _with_threshold(cfg, fld, threshold)
    writer = _compute._Writer(sc.path, storage_options)
    writer.open("r+")
    lock = _sc.SidecarLock(writer.store)
    lock.acquire()
    try:
        meta = writer.meta()
        meta["filters"] = {**meta["filters"], name: _compute._config_json(new_cfg)}
        configs = {n: parse_filter_config(c) for n, c in meta["filters"].items()}
        meta["complete"] = False
        writer.set_meta(meta)
        meta = _compute.update_decisions(writer, meta["geometry"], configs, meta)
        meta["complete"] = True
        writer.set_meta(meta)
    finally:
        lock.release()
    logger.info("side-car %s: %s %s set to %s", sc.path, name, fld, threshold)
    return _as_sidecar(sc.path, storage_options)


# ------------------------------------------------------------------------------ filter maps
def _slice_region_map(values: NDArray[Any], spatial_shape: Sequence[int],
                      patch: Sequence[int], z: int | None) -> NDArray[np.float64]:
    """CAREamics' per-pixel map of region values on one z slice (2D: the whole image)."""
    from patchsieve.filters._base import expand_region_values

    v = np.asarray(values, np.float64)
    if len(spatial_shape) == 2:
        return expand_region_values(v, spatial_shape, patch)
    bz = int(z) // int(patch[0])  # type: ignore[arg-type]
    layers = [v[g] for g in (bz - 1, bz) if 0 <= g < v.shape[0]]
    if not layers:
        return np.zeros(tuple(spatial_shape[1:]), np.float64)
    m = np.maximum.reduce(layers)
    if len(layers) < 2:  # a region outside the grid counts as 0 (CAREamics' zero layers)
        m = np.maximum(m, 0.0)
    return expand_region_values(m, spatial_shape[1:], patch[1:])


@dataclass
class _Panel:
    name: str
    config: Any
    stat: str
    field: str
    values: NDArray[np.float64]
    keep: NDArray[np.bool_] | None
    background_fraction: float | None


def _read_slice(vol: Any, index: Mapping[str, int], channel: int | None, z: int | None,
                zrange: tuple[int, int] | None = None) -> NDArray[Any]:
    sel: dict[str, Any] = dict(index)
    if "c" in vol.dims:
        sel["c"] = channel if channel is not None else 0
    if "z" in vol.dims:
        sel["z"] = slice(*zrange) if zrange is not None else z
    return np.asarray(vol.isel(sel).data.compute())


def _resolve_z(spatial_shape: Sequence[int], z: int | None) -> int | None:
    if len(spatial_shape) == 2:
        if z is not None:
            raise ConfigError("z applies to 3D data only; this volume is 2D. Fix: drop --z.")
        return None
    nz = int(spatial_shape[0])
    zz = nz // 2 if z is None else int(z)
    if not 0 <= zz < nz:
        raise ConfigError(f"z must be in [0, {nz}); got {z}. Fix: pick a slice 0..{nz - 1}.")
    return zz


def _check_channel(n_channels: int, channel: int | None) -> None:
    if channel is not None and not 0 <= int(channel) < n_channels:
        raise ConfigError(f"channel must be in [0, {n_channels}); got {channel}.")


def _panels_from_sidecar(sc: Sidecar, sample: int, z: int | None,
                         names: Sequence[str] | None) -> list[_Panel]:
    shape, patch = _spatial_shape(sc), _spatial_patch(sc)
    stats = sc.stats
    panels = []
    for name in names or sc.filter_names:
        _pick_filter(sc, name)
        cfg = sc.config(name)
        field, stat = threshold_field(cfg, len(shape))
        fo = sc.filter_out(name)[sample]
        panels.append(_Panel(
            name, cfg, stat, field, _slice_region_map(stats[stat][sample], shape, patch, z),
            _slice_region_map((~fo).astype(np.float64), shape, patch, z) > 0.5,
            _slice_background(fo, patch, z)))
    return panels


def _slice_background(fo: NDArray[np.bool_], patch: Sequence[int], z: int | None) -> float:
    """Share of background among the regions that cover the shown slice."""
    if z is None:
        return float(fo.mean())
    bz = int(z) // int(patch[0])
    sub = fo[[g for g in (bz - 1, bz) if 0 <= g < fo.shape[0]]]
    return float(sub.mean()) if sub.size else 0.0


def _panels_from_source(vol: Any, index: Mapping[str, int], z: int | None,
                        filters: Sequence[Any], patch_size: Any) -> list[_Panel]:
    from patchsieve.config import parse_filter_config
    from patchsieve.filters._base import as_image, image_stats
    from patchsieve.grid import normalize_patch_size
    from patchsieve.regions import decide

    spatial = tuple(d for d in SPATIAL if d in vol.dims)
    shape = tuple(int(vol.sizes[d]) for d in spatial)
    if patch_size is None:
        raise ConfigError("patch_size is required to plot filter maps of a source. "
                          "Fix: pass patch_size=(64, 64) / --patch 64,64.")
    patch = tuple(normalize_patch_size(patch_size, spatial).values())
    items = []
    for f in filters:
        if isinstance(f, str):
            kind = f.lower().replace("-", "_").replace("meanstd", "mean_std")
            base = {"max": {"threshold": 0.0}, "mean_std": {"mean_threshold": 0.0},
                    "shannon": {"threshold": 0.0}}
            if kind not in base:
                raise ConfigError(f"filters entries must be max, mean_std or shannon (or a "
                                  f"config with a threshold); got {f!r}.")
            items.append((kind, parse_filter_config({"name": kind, **base[kind]}), False))
        else:
            cfg = parse_filter_config(f)
            if cfg.name == "mask":
                raise ConfigError("a mask filter can only be plotted from a side-car (its "
                                  "coverage is stored there). Fix: compute the side-car first.")
            items.append((cfg.name, cfg, True))
    refs = {int(c.ref_channel) for _, c, _ in items}
    if len(refs) > 1:
        raise ConfigError(f"filters use different ref_channel values {sorted(refs)}.")
    ref = refs.pop() if refs else 0
    z0 = 0
    if z is not None:
        pz = patch[0]
        z0, z1 = max(z // pz - 1, 0) * pz, min((z // pz + 2) * pz, shape[0])
        img = _read_slice(vol, index, ref, None, (z0, z1))
        lshape = (z1 - z0, *shape[1:])
    else:
        img, lshape = _read_slice(vol, index, ref, None), shape
    from patchsieve.regions import stat_names

    needed = sorted({s for _, c, _ in items for s in stat_names(c, len(shape))})
    stats = image_stats(as_image(img), patch, needed, "careamics")
    panels = []
    zl = None if z is None else z - z0
    for name, cfg, has_thr in items:
        field, stat = threshold_field(cfg, len(shape))
        values = _slice_region_map(stats[stat], lshape, patch, zl)
        keep = bg = None
        if has_thr:
            fo = np.asarray(decide(cfg, stats, ndim=len(shape)), bool)
            keep = _slice_region_map((~fo).astype(np.float64), lshape, patch, zl) > 0.5
            bg = _slice_background(fo, patch, zl)
        panels.append(_Panel(name, cfg, stat, field, values, keep, bg))
    return panels


def plot_filter_maps(
    source: Any,
    out: str | os.PathLike[str] | None = None,
    *,
    sample: int = 0,
    z: int | None = None,
    channel: int | None = None,
    filters: Sequence[Any] | None = None,
    patch_size: Any = None,
    axes: str | None = None,
    level: int = 0,
    storage_options: Mapping[str, Any] | None = None,
    dpi: int = 100,
) -> Figure:
    """Image, filter map and keep mask of every filter on one sample (and z slice).

    Parameters
    ----------
    source : str, path-like or Sidecar
        A side-car (region values come from its stored statistics; only the displayed slice of
        its source is read) or a volume (the statistics of the displayed sample, or of the z
        slab the slice needs, are computed in memory).
    out : str or path-like, optional
        Write the figure as PNG.
    sample : int
        Flat sample index (C order over the ``s``/``t`` dims).
    z : int, optional
        z slice of 3D data (default: the middle slice).
    channel : int, optional
        Channel shown (default: the reference channel).
    filters : sequence, optional
        Side-car: filter names (default all). Source: filter configs (map + keep mask) or the
        names ``"max"``, ``"mean_std"``, ``"shannon"`` (map only).
    patch_size : sequence or mapping, optional
        Source only: the patch size.
    axes, level, storage_options : optional
        As for :func:`patchsieve.open_volume`.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per filter: gray image, magma filter map (alpha 0.5) with a colour bar marking
        the threshold, and the outline of the pixels covered by at least one kept region.
    """
    from patchsieve.sidecar import Sidecar
    from patchsieve.volume import open_volume

    sc = source if isinstance(source, Sidecar) else None
    if sc is None and isinstance(source, (str, os.PathLike)) and _looks_like_sidecar(source,
                                                                                     storage_options):
        sc = _as_sidecar(source, storage_options)
    if sc is not None:
        vol = open_volume(sc.source, level=sc.level, storage_options=storage_options)
        ref = sc.ref_channel
    else:
        vol = open_volume(source, axes=axes, level=level, storage_options=storage_options)
        ref = None
    spatial = tuple(d for d in SPATIAL if d in vol.dims)
    sample_dims = tuple(d for d in ("s", "t") if d in vol.dims)
    sshape = tuple(int(vol.sizes[d]) for d in sample_dims)
    index = dict(zip(sample_dims, _sample_index(sshape, sample)))
    shape = tuple(int(vol.sizes[d]) for d in spatial)
    zz = _resolve_z(shape, z)
    _check_channel(int(vol.sizes.get("c", 1)), channel)
    if sc is not None:
        panels = _panels_from_sidecar(sc, sample, zz, filters)
    else:
        if not filters:
            raise ConfigError("filters is required to plot a source. Fix: pass e.g. "
                              "filters=['shannon'] or [ShannonPatchFilterConfig(threshold=7.5)].")
        panels = _panels_from_source(vol, index, zz, filters, patch_size)
        ref = next((int(p.config.ref_channel) for p in panels), 0)
    shown = channel if channel is not None else ref
    image = _read_slice(vol, index, shown, zz)
    where = [f"{d}={i}" for d, i in index.items()] + ([f"z={zz}"] if zz is not None else []) + \
        ([f"channel {shown}"] if "c" in vol.dims else [])
    name = os.path.basename(str(sc.source if sc is not None else source).rstrip("/"))
    patch = sc.patch_size if sc is not None else patch_size
    fig = _draw_panels(image, panels, f"{name} ({', '.join(where) or 'image'}), patch {patch}")
    if out is not None:
        fig.savefig(out, dpi=dpi)
    return fig


def _looks_like_sidecar(path: Any, storage_options: Mapping[str, Any] | None) -> bool:
    from patchsieve.sidecar import SUFFIX, open_store

    if str(path).rstrip("/").endswith(SUFFIX):
        return True
    try:
        import zarr

        g = zarr.open_group(open_store(os.fspath(path), storage_options=storage_options), mode="r")
        return "patchsieve" in g.attrs
    except Exception:  # noqa: BLE001 - anything unreadable as a side-car is treated as a source
        return False


def _draw_panels(image: NDArray[Any], panels: Sequence[_Panel], suptitle: str) -> Figure:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch as MPatch

    n = len(panels)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    h, w = image.shape
    side = 5.5
    fig, axs = plt.subplots(nrows, ncols, figsize=(side * ncols * 1.2, side * nrows * h / w + 0.8),
                            constrained_layout=True, squeeze=False)
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0, 1)
    for ax, p in zip(axs.ravel(), panels):
        ax.imshow(image, "gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        thr = getattr(p.config, p.field, None)
        vals = [float(p.values.min()), float(p.values.max())]
        if p.keep is not None and thr is not None:  # keep the threshold on the colour bar
            vals += [float(thr)]
        vmin, vmax = min(vals), max(vals)
        m = ax.imshow(p.values, "magma", alpha=0.5, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1)
        cbar = fig.colorbar(m, ax=ax, shrink=0.85)
        label = _stat_label(p.stat)
        if p.keep is not None and thr is not None:
            cbar.ax.axhline(float(thr), color="cyan", lw=2)
            label += f"  (cyan line: {p.field} {float(thr):g})"
            if p.keep.any() and not p.keep.all():
                ax.contour(p.keep.astype(float), levels=[0.5], colors="cyan", linewidths=1.2)
            if not p.keep.all():
                with plt.rc_context({"hatch.color": "0.8", "hatch.linewidth": 0.8}):
                    ax.contourf(p.keep.astype(float), levels=[-0.5, 0.5], colors="none",
                                hatches=["//"])
            title = (f"{p.name}: {p.field} {float(thr):g}\n"
                     f"kept {p.keep.mean():.1%} of pixels; {p.background_fraction:.1%} of "
                     "regions background")
            ax.legend(handles=[Line2D([], [], color="cyan", lw=1.5, label="edge of kept area"),
                               MPatch(facecolor="0.35", edgecolor="0.8", hatch="//",
                                      label="background (no kept region)")],
                      loc="lower right", fontsize=8, framealpha=0.85)
        else:
            title = f"{p.name}: filter map (no threshold)"
        cbar.ax.set_ylabel(label)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axs.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=11)
    return fig


# ------------------------------------------------------------------------------ preview
def preview_patches(
    sidecar: Any,
    n: int = 64,
    *,
    mode: str = "per_epoch",
    seed: int = 0,
    epoch: int = 0,
    channel: int | None = None,
    filter: str | None = None,  # noqa: A002 - CLI name
    storage_options: Mapping[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The first ``n`` patches of an epoch, drawn by :class:`~patchsieve.dataset.PatchDataset`.

    Returns
    -------
    dict
        ``patches`` (n, Y, X) float32 (3D: the middle z slice of each patch; multichannel: the
        chosen channel, default the reference channel), ``background`` (n,) bool, ``samples``,
        ``origins``, ``realized_background_fraction`` (of these n), ``expected_background_fraction``
        (of the sampling mode), ``epoch_length``, ``display_range`` (p0.1, p99.9 of the channel),
        ``epoch`` and ``last_epoch`` (an epoch shorter than ``n`` is followed by the next ones).
    """
    from patchsieve.dataset import PatchDataset

    sc = _as_sidecar(sidecar, storage_options)
    if int(n) < 1:
        raise ConfigError(f"n must be >= 1; got {n}.")
    name = _pick_filter(sc, filter)
    n_ch = int(sc.geometry.get("n_channels", 1))
    _check_channel(n_ch, channel)
    ch = sc.ref_channel if channel is None else int(channel)
    ds = PatchDataset(sidecar=sc, filter_name=name, mode=mode, seed=seed, channels=[ch],
                      return_metadata=True, storage_options=storage_options)
    if len(ds) == 0:
        raise DataError(f"side-car {sc.path!r} gives an empty epoch; nothing to preview.")
    take = int(n)
    patches, bg, samples, origins = [], [], [], []
    last = int(epoch)
    while len(patches) < take:  # epochs shorter than n: continue with the next epochs
        ds.set_epoch(last)
        for x, meta in ds:
            a = x.numpy()[0]
            patches.append(a[a.shape[0] // 2] if a.ndim == 3 else a)
            bg.append(bool(meta["is_background"]))
            samples.append(int(meta["sample"]))
            origins.append([int(v) for v in meta["origin"].tolist()])
            if on_progress is not None:
                on_progress(len(patches), take)
            if len(patches) >= take:
                break
        else:
            last += 1
    bg_arr = np.array(bg, bool)
    norm = sc.normalization()
    stack = np.stack(patches).astype(np.float32)
    try:
        rng = (float(norm["p0.1"][ch]), float(norm["p99.9"][ch]))
    except (KeyError, IndexError, TypeError):
        rng = tuple(float(v) for v in np.percentile(stack, [0.1, 99.9]))  # type: ignore[assignment]
    return {"filter": name, "mode": mode, "seed": seed, "epoch": epoch, "last_epoch": last,
            "channel": ch,
            "patches": stack, "background": bg_arr, "samples": samples, "origins": origins,
            "realized_background_fraction": float(bg_arr.mean()),
            "expected_background_fraction": float(ds.sampler.expected_background_fraction()),
            "epoch_length": int(ds.sampler.epoch_length), "display_range": rng,
            "source": sc.source, "n_channels": n_ch, "ndim": len(sc.spatial_dims)}


def _preview_view(preview: Mapping[str, Any]) -> str:
    parts = [f"channel {preview['channel']}"] if preview.get("n_channels", 1) > 1 else []
    if preview.get("ndim", 2) == 3:
        parts.append("middle z of each patch")
    return "".join(f", {p}" for p in parts)


def plot_preview(preview: Mapping[str, Any], out: str | os.PathLike[str] | None = None, *,
                 dpi: int = 100) -> Figure:
    """Grid of the previewed patches; background patches framed orange, kept ones blue."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    pats, bg = preview["patches"], preview["background"]
    n = len(pats)
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(max(1.3 * ncols + 0.4, 7.0),
                                                   1.3 * nrows + 1.3), squeeze=False)
    lo, hi = preview["display_range"]
    for i, ax in enumerate(axs.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(pats[i], "gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        for sp in ax.spines.values():
            sp.set_edgecolor(BACKGROUND_COLOUR if bg[i] else KEPT_COLOUR)
            sp.set_linewidth(3.5 if bg[i] else 1.5)
    k = int(np.sum(bg))
    ep = f" {preview['epoch']}" if preview.get("last_epoch", preview["epoch"]) == \
        preview["epoch"] else f"s {preview['epoch']}-{preview['last_epoch']}"
    fig.suptitle(
        f"First {n} patches of epoch{ep} ({preview['mode']}, seed {preview['seed']}, "
        f"filter {preview['filter']}{_preview_view(preview)})\n"
        f"{k} background = {k / max(n, 1):.1%} realized; "
        f"{preview['expected_background_fraction']:.1%} expected "
        f"({preview['epoch_length']} patches per epoch)",
        fontsize=10)
    fig.legend(handles=[Patch(facecolor="none", edgecolor=KEPT_COLOUR, lw=2, label="kept region"),
                        Patch(facecolor="none", edgecolor=BACKGROUND_COLOUR, lw=3,
                              label="background region")],
               loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.8 / (1.3 * nrows + 1.3) + 0.02,
                        top=1 - 0.75 / (1.3 * nrows + 1.3), wspace=0.08, hspace=0.08)
    if out is not None:
        fig.savefig(out, dpi=dpi)
    return fig


# ------------------------------------------------------------------------------ pyramid levels
def _level_factors(vol0: Any, volk: Any) -> dict[str, float]:
    """Level-k pixel size in level-0 pixels per spatial dim (NGFF scale, else shape ratio)."""
    out = {}
    for d in (d for d in SPATIAL if d in vol0.dims):
        s0 = float(vol0.attrs.get("scale", {}).get(d, 1.0))
        sk = float(volk.attrs.get("scale", {}).get(d, 1.0))
        ratio = vol0.sizes[d] / volk.sizes[d]
        out[d] = sk / s0 if sk != s0 or vol0.sizes[d] == volk.sizes[d] else ratio
    return out


def level_patch_size(
    source: Any,
    patch_size: Sequence[int] | Mapping[str, int],
    level: int,
    *,
    storage_options: Mapping[str, Any] | None = None,
    axes: str | None = None,
) -> dict[str, int]:
    """Convert a patch size in level-0 pixels into pixels of pyramid level ``level``.

    Parameters
    ----------
    source : str or path-like
        OME-Zarr image with a pyramid.
    patch_size : sequence or mapping
        Patch size in level-0 pixels (CAREamics order).
    level : int
        Target pyramid level.

    Returns
    -------
    dict of str -> int
        Patch size per spatial dim at ``level``.

    Raises
    ------
    ConfigError
        A patch size not divisible by the level's downsampling factor.

    Examples
    --------
    The demo volume halves z, y and x per level: ``level_patch_size(path, (16, 64, 64), 1)``
    gives ``{"z": 8, "y": 32, "x": 32}``.
    """
    from patchsieve.grid import normalize_patch_size
    from patchsieve.volume import open_pyramid

    levels = open_pyramid(source, storage_options=storage_options, axes=axes)
    if not 0 <= int(level) < len(levels):
        raise ConfigError(f"level must be in [0, {len(levels)}) for {source!r}; got {level}.")
    spatial = tuple(d for d in SPATIAL if d in levels[0].dims)
    ps = normalize_patch_size(patch_size, spatial)
    fac = _level_factors(levels[0], levels[int(level)])
    out = {}
    for d in spatial:
        val = ps[d] / fac[d]
        if abs(val - round(val)) > 1e-6 or round(val) < 1:
            raise ConfigError(
                f"patch_size[{d!r}]={ps[d]} (level-0 pixels) is not a multiple of level {level}'s "
                f"downsampling factor {fac[d]:g} along {d}. Fix: use a multiple of {fac[d]:g}.")
        out[d] = int(round(val))
    return out


@dataclass(frozen=True)
class RegionGridGeometry:
    """A region grid placed in physical space: what mapping decisions between levels needs."""

    dims: tuple[str, ...]
    shape: dict[str, int]
    patch_size: dict[str, int]
    grid_shape: tuple[int, ...]
    scale: dict[str, float]
    translation: dict[str, float]
    level: int = 0


def _geometry_of(obj: Any) -> RegionGridGeometry:
    if isinstance(obj, RegionGridGeometry):
        return obj
    sc = _as_sidecar(obj)
    src = sc.attrs["source"]
    return RegionGridGeometry(
        tuple(sc.spatial_dims), {d: sc.shape[d] for d in sc.spatial_dims}, sc.patch_size,
        sc.grid_shape,
        {d: float(src.get("scale", {}).get(d, 1.0)) for d in sc.spatial_dims},
        {d: float(src.get("translation", {}).get(d, 0.0)) for d in sc.spatial_dims}, sc.level)


def level0_geometry(sidecar: Any, *, storage_options: Mapping[str, Any] | None = None
                    ) -> RegionGridGeometry:
    """The level-0 region grid matching a side-car computed on a coarser pyramid level.

    The patch size is the side-car's multiplied by the level's downsampling factor per dim
    (NGFF scales of the two levels; shape ratio without them); only metadata is read.
    """
    from patchsieve.volume import open_volume

    g = _geometry_of(sidecar)
    sc = _as_sidecar(sidecar, storage_options)
    vol0 = open_volume(sc.source, level=0, storage_options=storage_options)
    patch, shape, scale, trans = {}, {}, {}, {}
    for d in g.dims:
        shape[d] = int(vol0.sizes[d])
        scale[d] = float(vol0.attrs.get("scale", {}).get(d, 1.0))
        trans[d] = float(vol0.attrs.get("translation", {}).get(d, 0.0))
        f = g.scale[d] / scale[d] if g.scale[d] != scale[d] or shape[d] == g.shape[d] \
            else shape[d] / g.shape[d]
        patch[d] = max(1, int(round(g.patch_size[d] * f)))
    grid = tuple((shape[d] + 1) // patch[d] for d in g.dims)
    return RegionGridGeometry(g.dims, shape, patch, grid, scale, trans, 0)


def region_index_map(src: Any, dst: Any) -> list[NDArray[np.int64]]:
    """For each spatial dim, the ``src`` region whose centre is nearest to each ``dst`` region.

    ``src`` and ``dst`` are side-cars (or :class:`RegionGridGeometry`). Region ``g`` covers
    pixels ``[g*p, g*p + 2p)``; its centre ``g*p + p - 0.5`` (pixel coordinates) is carried to
    physical space with the level's NGFF ``scale`` and ``translation`` and back into the other
    level's pixels. Patch sizes that match through the scale factors (e.g. 64 at level 0, 32 at
    level 1) give a one-to-one map.

    Returns
    -------
    list of numpy.ndarray of int64
        One index array per spatial dim, of length ``dst.grid_shape[i]``.
    """
    a, b = _geometry_of(src), _geometry_of(dst)
    if a.dims != b.dims:
        raise ConfigError(f"side-cars have spatial dims {a.dims} and {b.dims}.")
    out = []
    for i, d in enumerate(a.dims):
        if a.scale[d] == b.scale[d] and a.shape[d] != b.shape[d]:  # no metadata: shape ratio
            sa_d, sb_d, ta_d, tb_d = b.shape[d] / a.shape[d], 1.0, 0.0, 0.0
        else:
            sa_d, sb_d = a.scale[d], b.scale[d]
            ta_d, tb_d = a.translation[d], b.translation[d]
        pb, pa = b.patch_size[d], a.patch_size[d]
        centre = np.arange(b.grid_shape[i]) * pb + pb - 0.5
        u = (tb_d + sb_d * centre - ta_d) / sa_d
        g = np.rint((u + 0.5) / pa - 1.0).astype(np.int64)
        out.append(np.clip(g, 0, a.grid_shape[i] - 1))
    return out


def decisions_at(src: Any, dst: Any, filter: str,  # noqa: A002
                 values: NDArray[Any] | None = None) -> NDArray[Any]:
    """``src``'s region decisions (or ``values``) resampled onto ``dst``'s region grid.

    ``dst`` is a side-car or a :class:`RegionGridGeometry` (e.g. :func:`level0_geometry`).
    Returns an array of shape ``(n_samples, *dst.grid_shape)``; with ``src`` a level-k side-car
    and ``dst`` a level-0 grid, these are the level-k decisions mapped back to level 0.
    """
    a = _as_sidecar(src)
    if not isinstance(dst, RegionGridGeometry):
        b = _as_sidecar(dst)
        if a.sample_shape != b.sample_shape:
            raise ConfigError(
                f"side-cars have sample shapes {a.sample_shape} and {b.sample_shape}; "
                "decisions can only be mapped between levels of one source.")
    arr = a.filter_out(_pick_filter(a, filter)) if values is None else np.asarray(values)
    idx = np.ix_(np.arange(arr.shape[0]), *region_index_map(a, dst))
    return arr[idx]


def decisions_at_level0(sidecar: Any, filter: str | None = None, *,  # noqa: A002
                        storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A coarse-level side-car's decisions and weights on the level-0 region grid.

    Returns
    -------
    dict
        ``filter_out`` (bool) and ``weight`` (float64), both ``(n_samples, *grid_shape)`` of the
        level-0 grid, and that grid's ``patch_size`` and ``grid_shape``: what a sampler of
        level-0 patches needs (e.g. ``StratifiedPatching(level-0 shape, patch_size, weight,
        background=filter_out)``).
    """
    sc = _as_sidecar(sidecar, storage_options)
    name = _pick_filter(sc, filter)
    geo = level0_geometry(sc, storage_options=storage_options)
    fo = decisions_at(sc, geo, name)
    p = float(sc.config(name).filtered_patch_prob)
    return {"filter_out": fo, "weight": np.where(fo, p, 1.0), "patch_size": geo.patch_size,
            "grid_shape": geo.grid_shape, "shape": geo.shape}


def level_agreement(a: Any, b: Any, filters: Sequence[str] | None = None) -> dict[str, Any]:
    """Agreement of region decisions between side-cars of two pyramid levels of one source.

    The coarser side-car's decisions are mapped onto the finer one's grid
    (:func:`decisions_at`) and compared region by region.

    Returns
    -------
    dict
        Per common filter: ``agreement`` (fraction of identical decisions), ``n_regions``,
        ``background_fraction_fine``/``_coarse``, ``coarse_only_background``,
        ``fine_only_background``, ``fine_level``, ``coarse_level`` and
        ``agreement_at_matched_fraction``: the agreement when the coarse threshold is moved so
        that both levels drop the same share of regions (for single-statistic filters; ``None``
        otherwise).
    """
    sa, sb = _as_sidecar(a), _as_sidecar(b)
    fine, coarse = (sa, sb) if sa.level <= sb.level else (sb, sa)
    names = [n for n in (filters or fine.filter_names) if n in coarse.filter_names]
    if not names:
        raise ConfigError(f"the side-cars share no filter name ({fine.filter_names} vs "
                          f"{coarse.filter_names}). Fix: compute both with the same filter names.")
    out = {}
    for name in names:
        f = fine.filter_out(name)
        c = decisions_at(coarse, fine, name)
        res = {"fine_level": fine.level, "coarse_level": coarse.level, "n_regions": int(f.size),
               "agreement": float((f == c).mean()),
               "background_fraction_fine": float(f.mean()),
               "background_fraction_coarse": float(c.mean()),
               "coarse_only_background": float((c & ~f).mean()),
               "fine_only_background": float((f & ~c).mean()),
               "agreement_at_matched_fraction": None}
        cfg = coarse.config(name)
        if not (cfg.name == "mean_std" and cfg.std_threshold is not None):
            stat = threshold_field(cfg, len(coarse.spatial_dims))[1]
            v = decisions_at(coarse, fine, name, coarse.stats[stat]).astype(np.float64)
            thr = _candidate_thresholds(v.ravel(), float(f.mean()))
            res["agreement_at_matched_fraction"] = float(((v < thr) == f).mean())
            res["matched_coarse_threshold"] = thr
        out[name] = res
    return out
