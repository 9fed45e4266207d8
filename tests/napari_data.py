"""Test data for the napari plugin, shared with ``benchmarks/bench_napari.py``.

* :func:`metadata_only_ome_zarr` -- an NGFF 0.5 pyramid whose chunks are never written (every
  chunk reads as the fill value): terabyte-scale shapes in a few KB.
* :func:`synthetic_sidecar` -- a complete side-car over such a source whose region statistics are
  synthetic (a smooth seeded field), written through :class:`patchsieve.sidecar.SidecarWriter`
  exactly as the filter pass writes them (fingerprint, stats, decisions, totals).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def metadata_only_ome_zarr(path: str | Path, shape: Sequence[int], chunks: Sequence[int],
                           axes: str = "zyx", levels: int = 4, dtype: str = "uint16") -> str:
    """An OME-Zarr (NGFF 0.5) pyramid of ``levels`` levels (y, x and z halved) with no chunk."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    datasets = []
    for level in range(levels):
        f = 2**level
        lshape = tuple(max(1, n // f) if a in "zyx" else n for a, n in zip(axes, shape))
        group.create_array(f"s{level}", shape=lshape, dtype=dtype,
                           chunks=tuple(min(c, n) for c, n in zip(chunks, lshape)),
                           dimension_names=list(axes))
        datasets.append({"path": f"s{level}", "coordinateTransformations": [
            {"type": "scale", "scale": [float(f) if a in "zyx" else 1.0 for a in axes]}]})
    write_multiscales_metadata(
        group, datasets, fmt=FormatV05(),
        axes=[{"name": a, "type": "space" if a in "zyx" else "channel"} for a in axes])
    return str(path)


def smooth_field(shape: Sequence[int], seed: int = 0, sigma: float = 6.0) -> np.ndarray:
    """A seeded smooth random field in [0, 1] (blobs), float64."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma, mode="wrap")
    f -= f.min()
    return f / (f.max() or 1.0)


def synthetic_sidecar(source: str, output: str, patch_size: Sequence[int], configs: Mapping[str, Any],
                      *, seed: int = 0, labels: bool = False) -> str:
    """Write a complete side-car for ``source`` with synthetic region statistics.

    Entropy-like values: background regions around 5.8 bits, structure around 8.2 bits (a smooth
    field decides which); ``mean``/``std``/``max_cov*``/``mask_coverage`` are scaled copies.
    """
    from patchsieve.grid import VolumeGeometry
    from patchsieve.regions import required_stats
    from patchsieve.sidecar import SidecarWriter, canonical_hash, source_fingerprint, stats_key
    from patchsieve.volume import open_volume

    vol = open_volume(source)
    geom = VolumeGeometry.from_volume(vol, patch_size)
    stats = sorted({s for c in configs.values() for s in required_stats(c, geom.ndim)})
    params = {"geometry": {"patch_size": geom.patch_by_dim, "ref_channel": geom.ref_channel},
              "border": "careamics", "level": 0, "array_path": vol.attrs.get("array_path", "")}
    fp = {"source": source_fingerprint(vol), "params": canonical_hash(params)}
    field = smooth_field(geom.region_shape, seed)
    rng = np.random.default_rng(seed + 1)
    base = np.where(field > 0.55, 8.2, 5.8) + rng.normal(0, 0.25, field.shape)
    scale = {"entropy": 1.0, "mean": 100.0, "std": 20.0, "mask_coverage": 0.1}
    with SidecarWriter(output) as w:
        meta = w.begin(vol, geom, configs, stats, fp, seed=seed)
        for s in stats:
            k = 100.0 if s.startswith("max_cov") else scale[s]
            values = np.clip(base * k, 0, None) if s != "mask_coverage" else np.clip(
                (base - 5.0) / 4.0, 0, 1)
            chunks = [1] * len(geom.sample_shape) + list(geom.grid_shape)
            w.array(stats_key(s), geom.region_shape, chunks, "float64")[...] = values
            meta["status"][stats_key(s)] = "complete"
        meta["percentiles"] = {"p0.1": [0.0] * geom.n_channels, "p99.9": [1000.0] * geom.n_channels}
        meta["status"]["percentiles"] = "complete"
        w.set_meta(meta)
        w.finalize(vol, configs, labels)
    return output
