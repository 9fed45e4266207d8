"""Summaries of a side-car: geometry, fractions, expected sampling, storage, progress, and its
agreement with side-cars of other pyramid levels (what ``patchsieve inspect`` prints)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from patchsieve.analysis._common import _as_sidecar, _sample_index, _spatial_patch, _spatial_shape
from patchsieve.analysis.levels import level_agreement
from patchsieve.errors import ConfigError, DataError, SidecarError
from patchsieve.sampling import MODES, StratifiedPatching
from patchsieve.sidecar import SUFFIX, Sidecar, open_sidecar
from patchsieve.volume import is_remote

__all__ = ["brief_summary", "find_level_sidecars", "sidecar_nbytes", "summarize"]


def sidecar_nbytes(path: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Bytes and number of objects stored under a side-car (local path or fsspec URL)."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(str(path), **dict(storage_options or {}))
    sizes = fs.find(root, detail=True)
    return {"bytes": int(sum(int(v.get("size") or 0) for v in sizes.values())),
            "files": len(sizes)}


def _mode_expectations(sc: Sidecar, name: str, seed: int) -> dict[str, Any]:
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
            "n_channels": sc.n_channels, "ref_channel": sc.ref_channel,
            "border": sc.geometry.border,
            "scale": a["source"].get("scale", {})}
    out: dict[str, Any] = {
        "sidecar": sc.path, "source": sc.source, "array_path": sc.array_path, "level": sc.level,
        "complete": sc.is_complete, "status": sc.status,
        "format_version": a.get("format_version"), "patchsieve_version": a.get("patchsieve_version"),
        "created": a.get("created"), "updated": a.get("updated"), "geometry": geom,
        "storage": sidecar_nbytes(sc.path, storage_options),
        "progress": sc.progress(),
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


def find_level_sidecars(sidecar: Any, *,
                        storage_options: Mapping[str, Any] | None = None) -> list[Sidecar]:
    """Complete side-cars beside ``sidecar`` made for the same source at another pyramid level."""
    from fsspec.core import url_to_fs

    sc = _as_sidecar(sidecar, storage_options)
    fs, root = url_to_fs(sc.path, **dict(storage_options or {}))
    parent = root.rstrip("/").rsplit("/", 1)[0] if "/" in root.rstrip("/") else "."
    found: list[Sidecar] = []
    for cand in sorted(fs.glob(f"{parent}/*{SUFFIX}")):
        if cand.rstrip("/") == root.rstrip("/"):
            continue
        url = f"{sc.path.split('://')[0]}://{cand}" if is_remote(sc.path) else cand
        try:
            other = open_sidecar(url, storage_options=storage_options)
        except (SidecarError, OSError, ValueError, KeyError):
            continue
        if other.source == sc.source and other.level != sc.level \
                and other.sample_shape == sc.sample_shape:
            found.append(other)
    return found


def brief_summary(sidecar: Any, *, storage_options: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """What ``patchsieve compute`` and ``run`` report: per filter, regions, background regions,
    background fraction and patches per epoch (JSON-able)."""
    sc = _as_sidecar(sidecar, storage_options)
    filters = {}
    for name in sc.filter_names:
        # the per-sample totals, not the region arrays: a side-car may hold 10**8 regions
        tot = sc.sample_totals(name)
        n, bg = int(tot["n_regions"].sum()), int(tot["n_background"].sum())
        filters[name] = {
            "regions": n,
            "background": bg,
            "background_fraction": bg / n if n else 0.0,
            "patches_per_epoch": int(tot["n_patches_per_epoch"].sum()),
        }
    return {"sidecar": sc.path, "source": sc.source, "complete": bool(sc.is_complete),
            "filters": filters}
