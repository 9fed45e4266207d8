"""Full-resolution filter masks written as OME-Zarr (NGFF 0.5) multiscale label images.

A pixel is labelled 1 ("signal") when at least one region covering it is kept, 0 (background,
transparent in napari) otherwise — the region decisions mapped back to pixels the way CAREamics'
``apply_filter`` maps region values (regions overlap: 2*patch windows at stride patch).
Labels live in the side-car under ``labels/<filter>/`` with the source's axes (minus ``c``) and
scale, so napari and ``ome_zarr.reader`` overlay them on the data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from patchsieve.grid import VolumeGeometry

logger = logging.getLogger(__name__)

#: stop adding pyramid levels when the largest downsampled spatial extent is below this
MIN_LEVEL_EXTENT = 256
MAX_LEVELS = 4


def _label_block(keep_cells: np.ndarray, ps: tuple[int, ...], n_lead: int, factor: tuple[int, ...],
                 block_info: Any = None) -> np.ndarray:
    loc = block_info[None]["array-location"]
    lead = tuple(slice(a, b) for a, b in loc[:n_lead])
    idx = [
        (np.arange(a, b) * f) // p for (a, b), p, f in zip(loc[n_lead:], ps, factor)
    ]
    sub = keep_cells[lead]
    sub = sub[(slice(None),) * n_lead + np.ix_(*idx)]
    return sub.astype(np.uint8)


def label_pyramid(keep_cells: np.ndarray, geom: VolumeGeometry, chunks: Mapping[str, int],
                  downsample: Mapping[str, bool]) -> list[Any]:
    """Lazily build the label pyramid (list of dask arrays, level 0 first)."""
    import dask.array as da

    spatial = list(geom.spatial_dims)
    shape0 = list(geom.spatial_shape)
    ps = geom.patch_size
    lead_shape = list(geom.sample_shape)
    n_lead = len(lead_shape)
    levels = []
    for k in range(MAX_LEVELS):
        factor = tuple(2**k if downsample.get(d, True) else 1 for d in spatial)
        shape = [math.ceil(n / f) for n, f in zip(shape0, factor)]
        if k > 0 and max(shape[-2:]) < MIN_LEVEL_EXTENT:
            break
        out_chunks = [1] * n_lead + [min(chunks.get(d, n), n) for d, n in zip(spatial, shape)]
        arr = da.map_blocks(
            _label_block, keep_cells=keep_cells, ps=ps, n_lead=n_lead, factor=factor,
            dtype=np.uint8,
            chunks=da.core.normalize_chunks(tuple(out_chunks), tuple(lead_shape + shape)),
            meta=np.empty((0,) * (n_lead + len(spatial)), dtype=np.uint8),
        )
        levels.append(arr)
    return levels


def write_labels(group: Any, name: str, volume: Any, geom: VolumeGeometry,
                 keep_cells: np.ndarray) -> None:
    """Write ``labels/<name>`` (NGFF 0.5 multiscale labels) into the side-car ``group``.

    An existing ``labels/<name>`` (a side-car computed again, e.g. resumed or extended) is
    replaced: the labels are derived from the current decisions.
    """
    chunks = {d: int(c[0]) for d, c in zip(volume.dims, volume.data.chunks)}
    _write_label_image(group, name, geom, keep_cells, chunks,
                       dict(volume.attrs.get("scale", {}) or {}),
                       dict(volume.attrs.get("translation", {}) or {}))


def relabel(group: Any, name: str, meta: Mapping[str, Any]) -> None:
    """Rewrite ``labels/<name>`` from the side-car's current decisions (no volume read).

    Used after a threshold change (:meth:`SidecarWriter.change_filter`) so that a label image
    never disagrees with ``decisions/<name>``; the source's chunks, scale and translation come
    from the side-car's ``attrs["patchsieve"]["source"]``.
    """
    from patchsieve.sidecar._decisions import cover_cells
    from patchsieve.sidecar._format import decision_key

    src = meta["source"]
    geom = VolumeGeometry.from_attrs(meta["geometry"], src)
    fo = np.asarray(group[decision_key(name, "filter_out")][...], dtype=bool)
    chunks = {d: int(c) for d, c in zip(src["dims"], src["chunks"])}
    _write_label_image(group, name, geom, cover_cells(~fo, geom.cell_shape), chunks,
                       dict(src.get("scale") or {}), dict(src.get("translation") or {}))


def _write_label_image(group: Any, name: str, geom: VolumeGeometry, keep_cells: np.ndarray,
                       chunks: Mapping[str, int], scale: Mapping[str, float],
                       translation: Mapping[str, float]) -> None:
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscale_labels

    if "labels" in group and name in group["labels"]:
        del group["labels"][name]

    spatial = list(geom.spatial_dims)
    dims = [*geom.sample_dims, *spatial]
    downsample = {d: d != "z" for d in spatial}
    pyramid = label_pyramid(keep_cells, geom, chunks, downsample)
    transforms = []
    for k in range(len(pyramid)):
        sc = []
        for d in dims:
            base = float(scale.get(d, 1.0))
            f = 2**k if (d in spatial and downsample.get(d, True)) else 1
            sc.append(base * f)
        t: list[dict[str, Any]] = [{"type": "scale", "scale": sc}]
        if translation:
            t.append({"type": "translation",
                      "translation": [float(translation.get(d, 0.0)) for d in dims]})
        transforms.append(t)
    axes = [_axis(d) for d in dims]
    write_multiscale_labels(
        pyramid, group, name, fmt=FormatV05(), axes=axes,
        coordinate_transformations=transforms,
        storage_options=[{"chunks": tuple(int(c[0]) for c in lvl.chunks)} for lvl in pyramid],
        label_metadata={"colors": [{"label-value": 1, "rgba": [255, 64, 64, 128]}],
                        "properties": [{"label-value": 1, "class": "signal (kept)"}]},
    )
    # ome-zarr appends the name to the labels group's list even when it is there already
    lg = group["labels"]
    ome = dict(lg.attrs.get("ome", {}))
    holder = ome if "labels" in ome else dict(lg.attrs)
    names = holder.get("labels")
    if isinstance(names, list) and len(set(names)) != len(names):
        holder["labels"] = list(dict.fromkeys(names))
        lg.attrs.update({"ome": holder} if holder is ome else {"labels": holder["labels"]})
    logger.info("wrote label image labels/%s (%d levels)", name, len(pyramid))


def _axis(d: str) -> dict[str, str]:
    if d in ("z", "y", "x"):
        return {"name": d, "type": "space"}
    if d == "t":
        return {"name": d, "type": "time"}
    return {"name": d, "type": "custom"}  # the sample axis "s"
