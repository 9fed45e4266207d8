"""Writers of the demo datasets and of OME-Zarr images (private to :mod:`patchsieve.demo`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import zarr

from patchsieve.demo._fields import (
    hagen_block,
    mask_block,
    vol_block,
    vol_fields,
)
from patchsieve.errors import ConfigError
from patchsieve.grid import DIM_ORDER
from patchsieve.volume import open_store, parse_axes

logger = logging.getLogger(__name__)

DEMO_KINDS: tuple[str, ...] = ("hagen2d", "vol3d2c")
"""Dataset kinds :func:`write_demo_data` can write (``"all"`` writes both)."""

DEMO_SIZES: dict[str, dict[str, tuple[int, ...]]] = {
    "full": {"hagen2d": (79, 1024, 1024), "vol3d2c": (2, 64, 512, 512)},
    "small": {"hagen2d": (4, 256, 256), "vol3d2c": (2, 16, 128, 128)},
}
"""Shape presets per ``size``."""

_CHUNKS: dict[str, dict[str, tuple[int, ...]]] = {
    "full": {"hagen2d": (1, 512, 512), "vol3d2c": (1, 16, 256, 256), "mask": (16, 256, 256)},
    "small": {"hagen2d": (1, 128, 128), "vol3d2c": (1, 8, 64, 64), "mask": (8, 64, 64)},
}
_NGFF_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


# ----------------------------------------------------------------------------- OME-Zarr writer
def write_ome_zarr(
    dest: str | os.PathLike[str],
    data: np.ndarray | da.Array,
    axes: str | Sequence[str],
    *,
    version: Literal["0.4", "0.5"] = "0.5",
    chunks: Sequence[int] | None = None,
    levels: int = 1,
    scale: Mapping[str, float] | None = None,
    translation: Mapping[str, float] | None = None,
    units: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> str:
    """Write an array as an OME-Zarr image (or plain Zarr v3 where NGFF cannot hold its axes).

    Parameters
    ----------
    dest : str or path-like
        Local path or fsspec URL of the image group (overwritten).
    data : numpy.ndarray or dask.array.Array
        The image; a dask array is written block by block.
    axes : str or sequence of str
        CAREamics-style axes in the order of ``data`` (must already be in ``s, t, c, z, y, x``
        order).
    version : {"0.5", "0.4"}
        NGFF version: 0.5 writes zarr v3, 0.4 zarr v2.
    chunks : sequence of int, optional
        Storage chunks of level 0 (default: ``data``'s dask chunks, else 1 per non-spatial index
        and up to 256 per spatial dim).
    levels : int
        Number of pyramid levels; each level halves y and x (and z when present).
    scale, translation : mapping of dim -> float, optional
        Level-0 physical pixel size and origin (defaults 1 and 0).
    units : mapping of dim -> str, optional
        Axis units, e.g. ``{"y": "micrometer", "x": "micrometer"}``.
    storage_options : mapping, optional
        fsspec options for URL destinations.
    attrs : mapping, optional
        Extra attributes stored on the image group beside the NGFF metadata.

    Returns
    -------
    str
        ``dest`` as a string.

    Raises
    ------
    ConfigError
        Axes not in canonical order, bad ``levels`` or ``chunks``.

    Notes
    -----
    A stack with both ``s`` and ``t`` cannot be NGFF (time must be the first axis and only one
    custom/channel axis is allowed before space); it is written as a plain Zarr v3 array with
    ``dimension_names`` and a single level.
    """
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    dims = parse_axes(axes, np.ndim(data))
    if list(dims) != [d for d in DIM_ORDER if d in dims]:
        raise ConfigError(
            f"axes={axes!r} must follow the order {DIM_ORDER}. Fix: transpose data first."
        )
    if not isinstance(levels, int) or levels < 1:
        raise ConfigError(f"levels must be an int >= 1; got {levels!r}.")
    chunks = _default_chunks(data, dims) if chunks is None else tuple(int(c) for c in chunks)
    if len(chunks) != len(dims):
        raise ConfigError(f"chunks={chunks!r} must have one entry per axis {dims}.")
    if "s" in dims and "t" in dims:
        arr = zarr.create_array(
            _dest_store(dest, storage_options),
            shape=data.shape,
            chunks=chunks,
            dtype=data.dtype,
            dimension_names=dims,
            zarr_format=3,
            overwrite=True,
            attributes=dict(attrs or {}),
        )
        da.store(_as_dask(data, chunks), arr, lock=False)
        return os.fspath(dest)
    group = zarr.open_group(
        _dest_store(dest, storage_options), mode="w", zarr_format=2 if version == "0.4" else 3
    )
    spatial = [d for d in dims if d in "zyx"]
    ngff_axes = [{"name": d, "type": _NGFF_TYPES.get(d, "custom")} for d in dims]
    write_image(
        _as_dask(data, chunks) if isinstance(data, da.Array) else data,
        group,
        scale_factors=[{d: 2**i for d in spatial} for i in range(1, levels)],
        fmt=FormatV04() if version == "0.4" else FormatV05(),
        axes=ngff_axes,
        scale={d: float((scale or {}).get(d, 1.0)) for d in dims},
        axes_units={d: u for d, u in (units or {}).items() if d in dims} or None,
        storage_options={"chunks": chunks},
    )
    if translation:
        _set_translation(group, [float(translation.get(d, 0.0)) for d in dims])
    if attrs:
        group.attrs.update(dict(attrs))
    return os.fspath(dest)


def _set_translation(group: zarr.Group, shift: list[float]) -> None:
    """Set the translation of every level (ome-zarr's writer only takes a scale)."""
    attrs = group.attrs.asdict()
    meta = attrs["ome"] if "ome" in attrs else attrs
    for ds in meta["multiscales"][0]["datasets"]:
        kept = [t for t in ds["coordinateTransformations"] if t.get("type") != "translation"]
        ds["coordinateTransformations"] = [*kept, {"type": "translation", "translation": shift}]
    group.attrs.update({"ome": meta} if "ome" in attrs else {"multiscales": meta["multiscales"]})


def _default_chunks(data: np.ndarray | da.Array, dims: tuple[str, ...]) -> tuple[int, ...]:
    if isinstance(data, da.Array):
        return tuple(int(c[0]) for c in data.chunks)
    return tuple(1 if d in "stc" else min(256, n) for d, n in zip(dims, data.shape, strict=True))


def _as_dask(data: np.ndarray | da.Array, chunks: tuple[int, ...]) -> da.Array:
    if isinstance(data, da.Array):
        return data if tuple(c[0] for c in data.chunks) == chunks else data.rechunk(chunks)
    return da.from_array(data, chunks=chunks)


def _dest_store(dest: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> Any:
    """A writable store for ``dest`` (local path or fsspec URL)."""
    return open_store(dest, storage_options=storage_options, read_only=False)


# ----------------------------------------------------------------------------- public entry point
def write_demo_data(
    out: str | os.PathLike[str],
    *,
    kind: Literal["all", "hagen2d", "vol3d2c"] = "all",
    size: Literal["full", "small"] = "full",
    seed: int = 0,
    version: Literal["0.4", "0.5"] = "0.5",
    shapes: Mapping[str, Sequence[int]] | None = None,
    chunks: Mapping[str, Sequence[int]] | None = None,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write deterministic synthetic OME-Zarr datasets into the folder ``out``.

    Parameters
    ----------
    out : str or path-like
        Output folder (created). Datasets are ``<out>/<name>.ome.zarr``.
    kind : {"all", "hagen2d", "vol3d2c"}
        Which datasets to write (``"vol3d2c"`` also writes ``"vol3d2c_mask"``).
    size : {"full", "small"}
        Shape preset (:data:`DEMO_SIZES`); ``"small"`` is for tests.
    seed : int
        Base seed; the same seed, shape and chunks give identical data.
    version : {"0.5", "0.4"}
        NGFF version (0.5 = zarr v3, 0.4 = zarr v2).
    shapes : mapping, optional
        Per-kind shape overrides, e.g. ``{"hagen2d": (6, 256, 256)}`` or
        ``{"vol3d2c": (2, 32, 256, 256)}``. The spatial sizes must be multiples of 16 (z of 4).
    chunks : mapping, optional
        Per-kind storage-chunk overrides (keys ``"hagen2d"``, ``"vol3d2c"``, ``"mask"``).
    overwrite : bool
        Rewrite datasets that exist with other parameters; identical existing ones are reused.

    Returns
    -------
    dict of str -> str
        Dataset name -> path, e.g. ``{"hagen2d": ".../hagen2d.ome.zarr", ...}``.

    Raises
    ------
    ConfigError
        Unknown ``kind``/``size``, bad shape, or an existing dataset with other parameters and
        ``overwrite=False``.
    """
    kinds = _kinds(kind)
    if size not in DEMO_SIZES:
        raise ConfigError(f"size must be one of {sorted(DEMO_SIZES)}; got {size!r}.")
    if version not in ("0.4", "0.5"):
        raise ConfigError(f"version must be '0.4' or '0.5'; got {version!r}.")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for name in kinds:
        shape = _shape_for(name, size, shapes)
        chunk = tuple(int(c) for c in (chunks or {}).get(name, _CHUNKS[size][name]))
        if len(chunk) != len(shape) or min(chunk) < 1:
            raise ConfigError(
                f"chunks[{name!r}]={chunk} must have one positive entry per dim of shape {shape}."
            )
        params = {
            "kind": name,
            "seed": int(seed),
            "shape": list(shape),
            "chunks": list(chunk),
            "version": version,
            "generator": 1,
        }
        path = out_dir / f"{name}.ome.zarr"
        if name == "hagen2d":
            if _reuse(path, params, overwrite):
                written[name] = str(path)
                continue
            data = da.map_blocks(
                partial(hagen_block, seed, tuple(shape[1:])),
                dtype=np.float32,
                chunks=tuple(_split(n, c) for n, c in zip(shape, chunk, strict=True)),
                meta=np.empty((0, 0, 0), np.float32),
            )
            write_ome_zarr(
                path,
                data,
                "SYX",
                version=version,
                chunks=chunk,
                levels=1,
                scale={"y": 0.1, "x": 0.1},
                units={"y": "micrometer", "x": "micrometer"},
                attrs={"patchsieve_demo": params},
            )
            written[name] = str(path)
        else:
            written.update(
                _write_vol(out_dir, shape, chunk, seed, version, params, size, chunks, overwrite)
            )
        logger.info("demo dataset %s -> %s", name, written[name])
    return written


def _write_vol(
    out_dir: Path,
    shape: tuple[int, ...],
    chunk: tuple[int, ...],
    seed: int,
    version: Literal["0.4", "0.5"],
    params: dict[str, Any],
    size: str,
    chunks: Mapping[str, Sequence[int]] | None,
    overwrite: bool,
) -> dict[str, str]:
    """Write the two-channel volume (3 levels) and its channel-0 mask."""
    path, mask_path = out_dir / "vol3d2c.ome.zarr", out_dir / "vol3d2c_mask.ome.zarr"
    mask_chunk = tuple((chunks or {}).get("mask", _CHUNKS[size]["mask"]))
    mask_params = {**params, "kind": "vol3d2c_mask", "chunks": list(mask_chunk)}
    result = {"vol3d2c": str(path), "vol3d2c_mask": str(mask_path)}
    reuse = _reuse(path, params, overwrite) and _reuse(mask_path, mask_params, overwrite)
    if reuse:
        return result
    f0, f1 = vol_fields(seed, tuple(shape[1:]))
    phys = {
        "scale": {"z": 0.5, "y": 0.2, "x": 0.2},
        "units": {"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    }
    data = da.map_blocks(
        partial(vol_block, f0, f1, seed),
        dtype=np.uint16,
        chunks=tuple(_split(n, c) for n, c in zip(shape, chunk, strict=True)),
        meta=np.empty((0, 0, 0, 0), np.uint16),
    )
    write_ome_zarr(
        path,
        data,
        "CZYX",
        version=version,
        chunks=chunk,
        levels=3,
        attrs={"patchsieve_demo": params},
        **phys,
    )
    mask = da.map_blocks(
        partial(mask_block, f0),
        dtype=np.uint8,
        chunks=tuple(_split(n, c) for n, c in zip(shape[1:], mask_chunk, strict=True)),
        meta=np.empty((0, 0, 0), np.uint8),
    )
    write_ome_zarr(
        mask_path,
        mask,
        "ZYX",
        version=version,
        chunks=mask_chunk,
        levels=1,
        attrs={"patchsieve_demo": mask_params},
        **phys,
    )
    return result


def _kinds(kind: str) -> tuple[str, ...]:
    if kind == "all":
        return DEMO_KINDS
    if kind in DEMO_KINDS:
        return (kind,)
    raise ConfigError(f"kind must be 'all' or one of {DEMO_KINDS}; got {kind!r}.")


def _shape_for(name: str, size: str, shapes: Mapping[str, Sequence[int]] | None) -> tuple[int, ...]:
    shape = tuple(int(n) for n in (shapes or {}).get(name, DEMO_SIZES[size][name]))
    ndim = len(DEMO_SIZES[size][name])
    spatial = shape[-2:]
    if name == "vol3d2c" and len(shape) == ndim:
        if shape[0] != 2 or shape[1] % 4 or shape[1] < 4:
            raise ConfigError(
                f"shapes['vol3d2c']={shape} must be (2, Z, Y, X) with Z a multiple of 4. "
                f"Fix: e.g. (2, 16, 128, 128)."
            )
    if len(shape) != ndim or any(n < 16 or n % 16 for n in spatial) or shape[0] < 1:
        raise ConfigError(
            f"shapes[{name!r}]={shape} must have {ndim} entries with Y and X multiples of 16. "
            f"Fix: e.g. {DEMO_SIZES['small'][name]}."
        )
    return shape


def _split(n: int, c: int) -> tuple[int, ...]:
    """Dask chunk tuple of ``n`` in blocks of ``c`` (last block shorter)."""
    return tuple(min(c, n - i) for i in range(0, n, c))


def _reuse(path: Path, params: dict[str, Any], overwrite: bool) -> bool:
    """True when ``path`` already holds a demo dataset written with ``params``."""
    if not path.exists():
        return False
    try:
        existing = zarr.open_group(str(path), mode="r").attrs.get("patchsieve_demo")
    except (FileNotFoundError, ValueError):
        existing = None
    if existing == params:
        logger.info("reusing %s (same parameters)", path)
        return True
    if overwrite:
        return False
    raise ConfigError(
        f"{path} exists and was not written by write_demo_data with these parameters "
        f"({existing!r} != {params!r}). Fix: pass overwrite=True or choose another `out`."
    )
