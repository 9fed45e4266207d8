"""Complete side-cars with synthetic statistics over metadata-only volumes (issue 17).

A Zarr v3 array created with a shape and no chunk written reads every chunk as its fill value
(``../shared/stack-notes.md``, "Scale without disk"): a 400x500x500 region grid of 16x64x64
patches is a 13 TB uint16 volume of a few KB. :func:`write_scale_sidecar` writes a *complete*
side-car for it through :class:`patchsieve.sidecar.SidecarWriter` (``begin``, ``array``,
attrs), block by block: a smooth procedural Max statistic, the Max filter's decisions derived
from it with ``patchsieve.regions.filter_out_from_stats``, weights (1 kept,
``filtered_patch_prob`` background) and the per-sample totals CAREamics' epoch length needs.
Memory stays at one block of regions (``block_regions``). Used by ``tests/test_dataset_scale.py``
(10**6 and 10**7 regions) and ``benchmarks/bench_sampler_scale.py`` (10**8).

Usage::

    python benchmarks/scale_sidecar.py OUT_DIR --grid 400 500 500   # prints the two paths
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_scale_volume(root: str | Path, grid: Sequence[int], patch: Sequence[int],
                       chunks: Sequence[int], n_samples: int = 0) -> str:
    """A metadata-only Zarr v3 array whose region grid is ``grid`` (one sample, or
    ``n_samples`` along a leading sample axis); returns its path."""
    import zarr

    shape = [int(g) * int(p) for g, p in zip(grid, patch, strict=True)]
    chunk = [int(c) for c in chunks]
    if n_samples:
        shape, chunk = [int(n_samples), *shape], [1, *chunk]
    path = str(Path(root) / "volume.zarr")
    zarr.create_array(path, shape=shape, chunks=chunk, dtype="uint16", fill_value=0,
                      overwrite=True)
    return path


def _field(lo: Sequence[int], hi: Sequence[int], seed: int) -> np.ndarray:
    """A smooth positive field over the regions ``[lo, hi)`` (the synthetic Max statistic)."""
    axes = np.meshgrid(*[np.arange(a, b, dtype=np.float64) for a, b in zip(lo, hi, strict=True)],
                       indexing="ij", sparse=True)
    freq = [37.0 + 3 * seed, 23.0 + seed, 29.0][-len(axes):]
    out = 500.0 + 0.0 * axes[0]
    for k, (ax, f) in enumerate(zip(axes, freq, strict=True)):
        out = out + 250.0 * (np.sin(ax / f + k) if k % 2 == 0 else np.cos(ax / f + seed))
    # rounded to 1/8: the statistic compresses like a real one (it would not as random bits)
    return np.broadcast_to(np.round(out * 8.0) / 8.0, [b - a for a, b in zip(lo, hi, strict=True)])


def write_scale_sidecar(source: str, patch: Sequence[int], output: str | Path, *,
                        axes: str | None = None, threshold: float = 500.0, seed: int = 0,
                        block_regions: int = 1 << 22) -> str:
    """Write a complete side-car (Max filter, synthetic statistics) for ``source``.

    Returns the side-car path. Everything is written block by block (at most
    ``block_regions`` regions in memory).
    """
    from patchsieve.config import MaxPatchFilterConfig
    from patchsieve.grid import VolumeGeometry
    from patchsieve.regions import filter_out_from_stats, required_stats
    from patchsieve.sidecar import (
        SAMPLE_TOTALS,
        SidecarWriter,
        canonical_hash,
        decision_key,
        source_fingerprint,
        stats_key,
    )
    from patchsieve.volume import open_volume

    cfg = MaxPatchFilterConfig(threshold=float(threshold), coverage=0.25)
    volume = open_volume(source, axes=axes)
    geom = VolumeGeometry.from_volume(volume, patch)
    stat = required_stats(cfg, geom.ndim)[0]
    fingerprint = {"source": source_fingerprint(volume),
                   "params": canonical_hash({"synthetic": True, "patch": geom.patch_by_dim})}
    region_shape = list(geom.region_shape)
    grid = list(geom.grid_shape)
    n_s = len(geom.sample_shape)
    pf = float(cfg.filtered_patch_prob)
    n_bg = np.zeros(max(geom.n_samples, 1), np.int64)
    with SidecarWriter(str(output)) as w, w.writing():
        meta = w.begin(volume, geom, {"max": cfg}, [stat], fingerprint, seed=seed, overwrite=True)
        base = [1] * len(region_shape)
        arrays = {"stat": w.array(stats_key(stat), region_shape, base, "float64"),
                  "fo": w.array(decision_key("max", "filter_out"), region_shape, base, "bool"),
                  "w": w.array(decision_key("max", "weight"), region_shape, base, "float64")}
        ch = arrays["stat"].chunks[n_s]
        rows = max(ch, (block_regions // max(math.prod(grid[1:]), 1)) // ch * ch)
        for s in range(max(geom.n_samples, 1)):
            idx = tuple(int(i) for i in np.unravel_index(s, geom.sample_shape)) if n_s else ()
            for z0 in range(0, grid[0], rows):
                z1 = min(grid[0], z0 + rows)
                lo, hi = [z0, *[0] * (len(grid) - 1)], [z1, *grid[1:]]
                values = np.array(_field(lo, hi, seed + s))
                fo = np.asarray(filter_out_from_stats(cfg, {stat: values}, ndim=geom.ndim), bool)
                sel = (*idx, slice(z0, z1))
                arrays["stat"][sel] = values
                arrays["fo"][sel] = fo
                arrays["w"][sel] = np.where(fo, pf, 1.0)
                n_bg[s] += int(fo.sum())
        _write_totals(w, geom, n_bg, pf, SAMPLE_TOTALS, decision_key)
        meta["status"][stats_key(stat)] = "complete"
        meta["status"]["decisions/max"] = "complete"
        meta["synthetic"] = {"field": "sin/cos", "seed": int(seed), "threshold": float(threshold)}
        meta["complete"] = True
        w.set_meta(meta)
    return str(output)


def _write_totals(w, geom, n_bg, pf, keys, decision_key) -> None:  # noqa: ANN001
    """n_regions, n_background, weight_sum and CAREamics' n_patches_per_epoch per sample."""
    n_regions = math.prod(geom.grid_shape)
    total = float(np.prod(np.array(geom.spatial_shape) / np.array(geom.patch_size)))
    npe = []
    for k in n_bg.tolist():  # CAREamics subtracts (1 - p) once per background region, in order
        t, left, buf = total, k, np.full(min(k, 1 << 20) + 1, 1.0 - pf)
        while left > 0:
            m = min(left, 1 << 20)
            buf[0] = t
            t = float(np.subtract.reduce(buf[: m + 1]))
            left -= m
        npe.append(max(int(np.ceil(t)), 0))
    values = {"n_regions": np.full(n_bg.size, n_regions, np.int64), "n_background": n_bg,
              "weight_sum": (n_regions - n_bg) + n_bg * pf, "n_patches_per_epoch": np.array(npe)}
    shape = list(geom.sample_shape) or [1]
    for key in keys:
        dtype = "float64" if key == "weight_sum" else "int64"
        w.array(decision_key("max", key), shape, shape, dtype)[...] = values[key].reshape(shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--grid", type=int, nargs="+", default=[400, 500, 500])
    ap.add_argument("--patch", type=int, nargs="+", default=[16, 64, 64])
    ap.add_argument("--chunks", type=int, nargs="+", default=[16, 256, 256])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    src = write_scale_volume(args.out, args.grid, args.patch, args.chunks)
    sc = write_scale_sidecar(src, args.patch, args.out / "volume.patchsieve.zarr",
                             axes="ZYX"[-len(args.grid):])
    print(src, sc, f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
