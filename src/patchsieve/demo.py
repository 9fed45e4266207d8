"""Deterministic synthetic demo datasets, written as OME-Zarr chunk by chunk.

Datasets (``kind``)
-------------------
``"hagen2d"``
    Hagen-like 2D stack, dims ``("s", "y", "x")``, full size ``(79, 1024, 1024)`` float32 holding
    integer photon counts, ``Poisson(100 + 900 * structure) + rint(Normal(0, 5))``, as camera data
    does. Coarse "cells" with a finer texture inside cover ~27 % of the area; the rest is dim
    noisy background. Shannon entropy over 128 x 128 regions (CAREamics' Shannon filter with
    patch 64) separates them around 7.5 bits: background regions ~5.5-6.1 bits, regions that
    are mostly structure > 8 bits (measured on the full stack: max 6.06 / min 8.20).
``"vol3d2c"``
    3D two-channel uint16 volume, dims ``("c", "z", "y", "x")``, full size ``(2, 64, 512, 512)``,
    3-level pyramid (z, y and x halved per level). Channel 0 is sparse (~8 % structure), channel 1
    denser (~45 %, partly correlated with channel 0).
``"vol3d2c_mask"``
    Written with ``"vol3d2c"``: a binary uint8 mask ``("z", "y", "x")`` of channel 0's structure
    (1 keep / 0 drop) for mask-based filtering demos.

Every block is generated from its own seeded :class:`numpy.random.Generator`, so the output is
deterministic and the full-size data never sits in memory at once. Sample stacks use the
``{"name": "s", "type": "custom"}`` NGFF axis (see :mod:`patchsieve.volume`).
"""

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
from scipy import ndimage as ndi

from patchsieve.errors import ConfigError
from patchsieve.volume import DIM_ORDER, parse_axes

__all__ = ["DEMO_KINDS", "DEMO_SIZES", "write_demo_data", "write_ome_zarr"]

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
_KIND_ID = {"hagen2d": 1, "vol3d2c": 2}
_BG, _AMP, _READ_SIGMA = 100.0, 900.0, 5.0
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
    """A writable store (fsspec URL) or local path for ``dest``."""
    text = os.fspath(dest)
    if "://" in text and not text.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(
            text, storage_options=dict(storage_options or {}), read_only=False
        )
    return text.removeprefix("file://")


# ----------------------------------------------------------------------------- generators
def _lowres_field(
    rng: np.random.Generator, small_shape: tuple[int, ...], sigma: float
) -> np.ndarray:
    """Smooth periodic Gaussian random field on a coarse grid."""
    return ndi.gaussian_filter(rng.standard_normal(small_shape), sigma, mode="wrap")


def _structure(
    small: np.ndarray, factors: tuple[int, ...], frac: float, region: tuple[slice, ...]
) -> np.ndarray:
    """Upsample ``small`` over ``region`` (linear, periodic) and map to blobs in [0, 1].

    About ``frac`` of the volume is > 0 (threshold = the (1 - frac) quantile of ``small``).
    Only ``region`` is computed, so blocks are independent of each other.
    """
    thr = np.quantile(small, 1.0 - frac)
    top = float(small.max()) - thr
    field = small
    for axis, (sl, f) in enumerate(zip(region, factors, strict=True)):
        weights = _linear_weights(small.shape[axis], f, sl)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return np.sqrt(np.clip(field - thr, 0.0, None) / top)


def _linear_weights(n_small: int, factor: int, sl: slice) -> np.ndarray:
    """Periodic linear-interpolation weights (rows: output pixels of ``sl``; cols: coarse grid).

    Row ``o`` samples the coarse grid at ``(o + 0.5) / factor - 0.5`` with wrap-around, as
    ``scipy.ndimage.zoom(..., order=1, mode="grid-wrap", grid_mode=True)`` does; applied axis by
    axis (the interpolation is separable).
    """
    pos = (np.arange(sl.start, sl.stop, dtype=np.float64) + 0.5) / factor - 0.5
    left = np.floor(pos)
    frac = pos - left
    weights = np.zeros((pos.size, n_small))
    rows = np.arange(pos.size)
    np.add.at(weights, (rows, left.astype(int) % n_small), 1.0 - frac)
    np.add.at(weights, (rows, (left.astype(int) + 1) % n_small), frac)
    return weights


def _counts(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    """Camera-like integer counts: Poisson shot noise plus rounded Gaussian read noise."""
    out = rng.poisson(clean).astype(np.float64)
    out += np.rint(rng.normal(0.0, _READ_SIGMA, size=clean.shape))
    return np.clip(out, 0.0, None)


def _coarse_factor(yx: Sequence[int]) -> int:
    """Upsampling factor of the coarse 'cell' field: 128 px, smaller for small images."""
    for factor in (128, 64, 32):
        if all(n % factor == 0 and n // factor >= 4 for n in yx):
            return factor
    return 16


def _hagen_signal(
    seed: int, sample: int, yx: Sequence[int], region: tuple[slice, ...]
) -> np.ndarray:
    """Noise-free photon rate of one sample over ``region``.

    Coarse "cells" cover ~30 % of the area (soft edges); inside them a finer texture spans
    10-100 % of the amplitude, so structure regions hold many distinct count values (high
    entropy) and background regions hold Poisson(100) + read noise only (~5.5 bits).
    """
    rng = np.random.default_rng([seed, _KIND_ID["hagen2d"], sample])
    coarse = _coarse_factor(yx)
    cells = _lowres_field(rng, (yx[0] // coarse, yx[1] // coarse), 1.0)
    texture = _lowres_field(rng, (yx[0] // 8, yx[1] // 8), 1.5)
    cell = np.clip(4.0 * _structure(cells, (coarse, coarse), 0.3, region), 0.0, 1.0)
    fine = _structure(texture, (8, 8), 0.95, region)
    return _BG + _AMP * cell * (0.1 + 0.9 * fine)


def _hagen_block(seed: int, yx: tuple[int, int], block_info: dict | None = None) -> np.ndarray:
    """One (1, h, w) block of the Hagen-like stack (float32 integer counts)."""
    loc = block_info[None]["array-location"]
    chunk = block_info[None]["chunk-location"]
    region = tuple(slice(a, b) for a, b in loc[1:])
    clean = _hagen_signal(seed, loc[0][0], yx, region)
    rng = np.random.default_rng([seed, _KIND_ID["hagen2d"], loc[0][0], *chunk[1:], 7])
    return _counts(rng, clean).astype(np.float32)[None]


def _vol_fields(seed: int, zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    small_shape = (max(zyx[0] // 4, 1), max(zyx[1] // 16, 1), max(zyx[2] // 16, 1))
    rng = np.random.default_rng([seed, _KIND_ID["vol3d2c"]])
    return _lowres_field(rng, small_shape, 1.5), _lowres_field(rng, small_shape, 1.5)


def _vol_signal(
    f0: np.ndarray, f1: np.ndarray, channel: int, region: tuple[slice, ...]
) -> np.ndarray:
    s0 = _structure(f0, (4, 16, 16), 0.08, region)
    if channel == 0:
        return _BG + _AMP * s0
    s1 = _structure(f1, (4, 16, 16), 0.45, region)
    return _BG + 0.5 * _AMP * np.clip(0.5 * s0 + 0.7 * s1, 0.0, 1.0)


def _vol_block(
    f0: np.ndarray, f1: np.ndarray, seed: int, block_info: dict | None = None
) -> np.ndarray:
    """One (1, dz, h, w) block of the two-channel volume."""
    loc = block_info[None]["array-location"]
    chunk = block_info[None]["chunk-location"]
    region = tuple(slice(a, b) for a, b in loc[1:])
    clean = _vol_signal(f0, f1, loc[0][0], region)
    rng = np.random.default_rng([seed, _KIND_ID["vol3d2c"], *chunk, 11])
    return np.rint(_counts(rng, clean)).clip(0, 65535).astype(np.uint16)[None]


def _mask_block(f0: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    region = tuple(slice(a, b) for a, b in block_info[None]["array-location"])
    return (_structure(f0, (4, 16, 16), 0.08, region) > 0.1).astype(np.uint8)


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
                partial(_hagen_block, seed, tuple(shape[1:])),
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
    f0, f1 = _vol_fields(seed, tuple(shape[1:]))
    phys = {
        "scale": {"z": 0.5, "y": 0.2, "x": 0.2},
        "units": {"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    }
    data = da.map_blocks(
        partial(_vol_block, f0, f1, seed),
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
        partial(_mask_block, f0),
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
