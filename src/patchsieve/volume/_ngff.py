"""OME-Zarr (NGFF 0.4/0.5) multiscales metadata, parsed and validated (private to the volume
package). NGFF 0.5 keeps it under ``attrs["ome"]``, 0.4 under ``attrs["multiscales"]``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from patchsieve.errors import VolumeError
from patchsieve.grid import DIM_ORDER


@dataclass(frozen=True)
class Level:
    """One resolved pyramid level: array path and its transform per dim (input order)."""

    path: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]


@dataclass(frozen=True)
class Multiscale:
    """Parsed ``multiscales[0]`` of an OME-Zarr image."""

    version: str
    dims: tuple[str, ...]
    units: dict[str, str]
    levels: tuple[Level, ...]
    channel_names: tuple[str, ...] | None = field(default=None)


def ngff_attrs(group: zarr.Group) -> tuple[str, Mapping[str, Any], list[Any]] | None:
    """Return ``(version, image attrs, multiscales)`` or None when the group is not OME-Zarr."""
    attrs = group.attrs.asdict()
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:
        return str(ome.get("version", "0.5")), ome, ome["multiscales"]
    if "multiscales" in attrs:
        ms = attrs["multiscales"]
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], Mapping) else {}
        return str(first.get("version", "0.4")), attrs, ms
    return None


def ngff_dim(axis: object, label: str) -> tuple[str, str | None]:
    """Map one NGFF axis entry to ``(dim name, unit)``."""
    if isinstance(axis, str):  # NGFF 0.3 lists bare names
        name, kind, unit = axis, None, None
    elif isinstance(axis, Mapping) and isinstance(axis.get("name"), str):
        name, kind, unit = axis["name"], axis.get("type"), axis.get("unit")
    else:
        raise VolumeError(f"{label}: broken multiscales metadata: axis entry {axis!r} has no name.")
    lowered = name.lower()
    if lowered in DIM_ORDER and (lowered != "s" or kind not in ("space", "time", "channel")):
        return lowered, unit
    if kind == "channel":
        return "c", unit
    if kind == "time":
        return "t", unit
    raise VolumeError(
        f"{label}: NGFF axis {name!r} (type {kind!r}) is not one of {DIM_ORDER}. "
        f"Fix: pass axes= (e.g. axes='CZYX') to name the dims yourself."
    )


def compose(transform_lists: Sequence[object], ndim: int, label: str) -> tuple[tuple, tuple]:
    """Compose NGFF scale/translation lists (dataset first, then multiscale-level)."""
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for transforms in transform_lists:
        if transforms is None:
            continue
        if not isinstance(transforms, list):
            raise VolumeError(f"{label}: broken coordinateTransformations {transforms!r}.")
        for tr in transforms:
            kind = tr.get("type") if isinstance(tr, Mapping) else None
            values = tr.get(kind) if isinstance(tr, Mapping) and kind else None
            if kind == "identity":
                continue
            if kind not in ("scale", "translation") or not isinstance(values, list):
                raise VolumeError(
                    f"{label}: unsupported or broken coordinateTransformation {tr!r}; expected "
                    f"{{'type': 'scale'|'translation', <type>: [one number per axis]}}."
                )
            if len(values) != ndim:
                raise VolumeError(
                    f"{label}: broken multiscales metadata: {kind} {values} has {len(values)} "
                    f"entries for {ndim} axes."
                )
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise VolumeError(
                    f"{label}: broken multiscales metadata: {kind} {values!r} must hold numbers. "
                    "Fix: repair the NGFF coordinateTransformations."
                )
            vec = np.asarray(values, dtype=float)
            if kind == "scale":
                scale, translation = scale * vec, translation * vec
            else:
                translation = translation + vec
    return tuple(float(v) for v in scale), tuple(float(v) for v in translation)


def parse_multiscales(group: zarr.Group, label: str) -> Multiscale | None:
    """Parse and validate the first multiscale image of ``group``; None when not OME-Zarr."""
    found = ngff_attrs(group)
    if found is None:
        return None
    version, image_attrs, ms = found
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], Mapping):
        raise VolumeError(f"{label}: broken multiscales metadata: expected a non-empty list.")
    first = ms[0]
    axes, datasets = first.get("axes"), first.get("datasets")
    if not isinstance(axes, list) or not axes:
        raise VolumeError(f"{label}: broken multiscales metadata: 'axes' missing or empty.")
    if not isinstance(datasets, list) or not datasets:
        raise VolumeError(f"{label}: broken multiscales metadata: 'datasets' missing or empty.")
    mapped = [ngff_dim(ax, label) for ax in axes]
    dims = tuple(name for name, _ in mapped)
    if len(set(dims)) != len(dims):
        raise VolumeError(f"{label}: broken multiscales metadata: repeated axes {dims}.")
    levels = []
    for i, ds in enumerate(datasets):
        if not isinstance(ds, Mapping) or not isinstance(ds.get("path"), str):
            raise VolumeError(f"{label}: broken multiscales metadata: datasets[{i}] has no path.")
        scale, translation = compose(
            [ds.get("coordinateTransformations"), first.get("coordinateTransformations")],
            len(dims),
            label,
        )
        levels.append(Level(ds["path"], scale, translation))
    units = {name: str(unit) for name, unit in mapped if unit}
    channels = None
    omero = image_attrs.get("omero")
    if isinstance(omero, Mapping) and isinstance(omero.get("channels"), list):
        if not all(isinstance(ch, Mapping) for ch in omero["channels"]):
            raise VolumeError(
                f"{label}: broken omero metadata: omero.channels must be a list of objects like "
                f"{{'label': 'DAPI'}}; got {omero['channels'][:3]!r}. Fix: repair the NGFF omero "
                "block (or remove it; it is optional)."
            )
        channels = tuple(str(ch.get("label", i)) for i, ch in enumerate(omero["channels"]))
    return Multiscale(version, dims, units, tuple(levels), channels)

