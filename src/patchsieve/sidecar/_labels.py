"""Full-resolution filter masks written as OME-Zarr (NGFF 0.5) multiscale label images.

A pixel is labelled 1 ("signal") when at least one region covering it is kept, 0 (background,
transparent in napari) otherwise — the region decisions mapped back to pixels the way CAREamics'
``apply_filter`` maps region values (regions overlap: 2*patch windows at stride patch).
Labels live in the side-car under ``labels/<filter>/`` with the source's axes (minus ``c``) and
scale, so napari and ``ome_zarr.reader`` overlay them on the data.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from patchsieve.grid import VolumeGeometry
from patchsieve.sidecar._decisions import keep_cells_window

logger = logging.getLogger(__name__)

#: stop adding pyramid levels when the largest downsampled spatial extent is below this
MIN_LEVEL_EXTENT = 256
MAX_LEVELS = 4


def _level_shapes(geom: VolumeGeometry, downsample: Mapping[str, bool]
                  ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``(spatial shape, factor)`` of each pyramid level (level 0 first)."""
    out = []
    for k in range(MAX_LEVELS):
        factor = tuple(2**k if downsample.get(d, True) else 1 for d in geom.spatial_dims)
        shape = tuple(math.ceil(n / f) for n, f in zip(geom.spatial_shape, factor))
        if k > 0 and max(shape[-2:]) < MIN_LEVEL_EXTENT:
            break
        out.append((shape, factor))
    return out


def label_block(fo: Any, geom: VolumeGeometry, box: Sequence[slice],
                factor: Sequence[int]) -> np.ndarray:
    """The labels (uint8, 1 = kept) of one box of a pyramid level, from the region decisions
    ``fo`` (``filter_out``, zarr or numpy): only the regions covering the box are read."""
    n_lead = len(geom.sample_shape)
    lead, spatial = tuple(box[:n_lead]), box[n_lead:]
    ps = geom.patch_size
    cells = [slice((int(s.start) * f) // p, ((int(s.stop) - 1) * f) // p + 1)
             for s, f, p in zip(spatial, factor, ps)]
    keep = keep_cells_window(fo, lead, cells, geom.grid_shape)
    idx = [(np.arange(int(s.start), int(s.stop)) * f) // p - c.start
           for s, f, p, c in zip(spatial, factor, ps, cells)]
    return keep[(slice(None),) * n_lead + np.ix_(*idx)].astype(np.uint8)


def write_labels(group: Any, name: str, volume: Any, geom: VolumeGeometry, fo: Any) -> None:
    """Write ``labels/<name>`` (NGFF 0.5 multiscale labels) into the side-car ``group``.

    ``fo`` is the filter's region-level ``filter_out`` array. The arrays and their metadata are
    made by ome-zarr; the pixels are written chunk by chunk, each from the decisions of the
    regions covering it, by a few threads with a bounded number of chunks in flight (memory
    does not grow with the volume). An existing ``labels/<name>`` (a side-car computed again,
    e.g. resumed or extended) is replaced: the labels are derived from the current decisions.
    """
    chunks = {d: int(c[0]) for d, c in zip(volume.dims, volume.data.chunks)}
    _write_label_image(group, name, geom, fo, chunks,
                       dict(volume.attrs.get("scale", {}) or {}),
                       dict(volume.attrs.get("translation", {}) or {}))


def relabel(group: Any, name: str, meta: Mapping[str, Any]) -> None:
    """Rewrite ``labels/<name>`` from the side-car's current decisions (no volume read).

    Used after a threshold change (:meth:`SidecarWriter.change_filter`) so that a label image
    never disagrees with ``decisions/<name>``; the source's chunks, scale and translation come
    from the side-car's ``attrs["patchsieve"]["source"]``. Reads the decisions chunk by chunk.
    """
    from patchsieve.sidecar._format import decision_key

    src = meta["source"]
    geom = VolumeGeometry.from_attrs(meta["geometry"], src)
    chunks = {d: int(c) for d, c in zip(src["dims"], src["chunks"])}
    _write_label_image(group, name, geom, group[decision_key(name, "filter_out")], chunks,
                       dict(src.get("scale") or {}), dict(src.get("translation") or {}))


def _write_label_image(group: Any, name: str, geom: VolumeGeometry, fo: Any,
                       chunks: Mapping[str, int], scale: Mapping[str, float],
                       translation: Mapping[str, float]) -> None:
    import dask.array as da
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscale_labels

    if "labels" in group and name in group["labels"]:
        del group["labels"][name]

    spatial = list(geom.spatial_dims)
    dims = [*geom.sample_dims, *spatial]
    downsample = {d: d != "z" for d in spatial}
    levels = _level_shapes(geom, downsample)
    lead_shape = list(geom.sample_shape)
    # placeholders: ome-zarr creates the arrays and writes the metadata (compute=False: no data)
    pyramid = [da.zeros((*lead_shape, *shape), dtype=np.uint8,
                        chunks=(*(1,) * len(lead_shape),
                                *(min(chunks.get(d, n), n) for d, n in zip(spatial, shape))))
               for shape, _ in levels]
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
        compute=False,
    )
    lg = group["labels"]
    img = lg[name]
    paths = _level_paths(img)
    for (_, factor), path in zip(levels, paths):
        _fill_level(img[path], fo, geom, factor)
    # ome-zarr appends the name to the labels group's list even when it is there already
    ome = dict(lg.attrs.get("ome", {}))
    holder = ome if "labels" in ome else dict(lg.attrs)
    names = holder.get("labels")
    if isinstance(names, list) and len(set(names)) != len(names):
        holder["labels"] = list(dict.fromkeys(names))
        lg.attrs.update({"ome": holder} if holder is ome else {"labels": holder["labels"]})
    logger.info("wrote label image labels/%s (%d levels)", name, len(pyramid))


def _level_paths(img: Any) -> list[str]:
    attrs = img.attrs.asdict()
    ms = (attrs.get("ome", attrs).get("multiscales") or [{}])[0]
    return [str(d["path"]) for d in ms.get("datasets", [])]


def _fill_level(arr: Any, fo: Any, geom: VolumeGeometry, factor: Sequence[int]) -> None:
    """Write every chunk of one label level (a few threads, bounded chunks in flight)."""
    shape, chunks = tuple(arr.shape), tuple(arr.chunks)
    boxes = (tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, chunks, shape))
             for idx in itertools.product(*(range(-(-n // c)) for n, c in zip(shape, chunks))))

    def one(box: tuple[slice, ...]) -> None:
        arr[box] = label_block(fo, geom, box, factor)

    n_threads = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        pending: set[concurrent.futures.Future[None]] = set()
        for box in boxes:
            pending.add(pool.submit(one, box))
            if len(pending) >= 4 * n_threads:
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for f in done:
                    f.result()
        for f in concurrent.futures.as_completed(pending):
            f.result()


def _axis(d: str) -> dict[str, str]:
    if d in ("z", "y", "x"):
        return {"name": d, "type": "space"}
    if d == "t":
        return {"name": d, "type": "time"}
    return {"name": d, "type": "custom"}  # the sample axis "s"
