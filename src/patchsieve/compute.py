"""The filter pass: volume -> region statistics -> decisions & weights -> side-car (resumable).

One call, :func:`compute`, streams the volume through Dask, evaluates one or more filter configs on
the reference channel and writes everything a sampler needs to a Zarr side-car (see
:mod:`patchsieve.sidecar` for the layout).

How it stays out-of-core and resumable
--------------------------------------
* The graph is built once from :func:`patchsieve.regions.region_stats` (the statistics that need
  overlapping regions, Max and Shannon: read chunk by chunk with a one-patch halo) and from per-cell
  partials of cell-aligned blocks (sums of every channel for normalisation, plus what MeanStd and
  Mask need: their region values are exact functions of the cells and are derived from them at the
  end, without a halo). Each output block is tiny (one value per patch-sized cell or region).
* Only blocks whose progress marker is unset are computed: the graph is culled to the keys of the
  missing blocks, so a restarted run reads only the data those blocks need.
* Workers never write to the side-car: results come back to the client, which writes them and then
  sets the block's marker (zarr's local store writes atomically; object stores PUT atomically). A
  run killed at any point leaves markers only for blocks whose values are on disk.
* Decisions, weights, totals, normalisation and labels are derived from the stored statistics; the
  root ``complete`` flag is set last.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from patchsieve import sidecar as _sc
from patchsieve._version import __version__
from patchsieve.errors import (
    ConfigError,
    PatchsieveError,
    SidecarIncompleteError,
    SidecarMismatchError,
    StorageError,
)

logger = logging.getLogger(__name__)

__all__ = ["compute", "default_output", "update_decisions"]

SAMPLE_DIMS = ("s", "t")
SPATIAL_DIMS = ("z", "y", "x")
#: number of chunks sampled (seeded) for the per-channel percentiles
PERCENTILE_CHUNKS = 16
PERCENTILE_VALUES_PER_CHUNK = 65536
PERCENTILES = (0.1, 99.9)


# ------------------------------------------------------------------------------ locations
def _source_stem(url: str) -> str:
    name = url.rstrip("/").split("/")[-1] or "volume"
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "volume"
    return name


def _cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "patchsieve")


def default_output(
    source_url: str,
    source_fingerprint: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    level: int = 0,
) -> str:
    """Default side-car location.

    ``<source name>.patchsieve.zarr`` beside the source when that location is writable (local or
    object storage), else ``$XDG_CACHE_HOME/patchsieve/<fingerprint>/<source name>.patchsieve.zarr``
    (``~/.cache`` when XDG_CACHE_HOME is unset). In-memory sources (numpy/dask) always use the cache.
    Never inside the source store. A pass on pyramid level ``k > 0`` is named
    ``<source name>.level<k>.patchsieve.zarr`` so it sits beside the level-0 side-car.
    """
    stem = _source_stem(source_url) + (f".level{level}" if level else "")
    cached = os.path.join(_cache_root(), source_fingerprint[:16], stem + _sc.SUFFIX)
    if source_url.startswith("<"):
        return cached
    parent = source_url.rstrip("/").rsplit("/", 1)[0] if "/" in source_url.rstrip("/") else "."
    beside = f"{parent}/{stem}{_sc.SUFFIX}"
    try:
        _sc._require_writable(beside, storage_options)
    except StorageError:
        logger.info("source location not writable; side-car goes to the cache: %s", cached)
        return cached
    return beside


def _check_not_inside(output: str, source_url: str) -> None:
    out = output.rstrip("/")
    src = source_url.rstrip("/")
    if src.startswith("<"):
        return
    if not _sc.is_remote(out):
        out = os.path.abspath(_sc._local_path(out))
    if not _sc.is_remote(src):
        src = os.path.abspath(_sc._local_path(src))
    if out == src or out.startswith(src + "/"):
        raise ConfigError(
            f"output {output!r} is inside the source store {source_url!r}; patchsieve never writes "
            "into a source. Fix: choose an output beside it (the default is "
            "<source name>.patchsieve.zarr next to the source)."
        )


# ------------------------------------------------------------------------------ fingerprints
def source_fingerprint(volume: Any, storage_options: Mapping[str, Any] | None = None) -> str:
    """Fingerprint of a source: metadata plus checksums of a few raw (encoded) chunks.

    For Zarr sources: array metadata document, shape, chunks, dtype and the sha256 of up to 8 raw
    chunks spread over the array (first, last, evenly between). A change to other chunks that keeps
    the metadata is not detected (documented limitation). For in-memory arrays: shape, dtype and a
    hash of a strided sample of the data.
    """
    import hashlib

    attrs = dict(volume.attrs)
    head = {
        "url": attrs.get("source"),
        "array_path": attrs.get("array_path", ""),
        "dims": list(volume.dims),
        "shape": list(volume.shape),
        "dtype": str(volume.dtype),
    }
    h = hashlib.sha256(_sc.canonical_hash(head).encode())
    url = str(attrs.get("source", "<numpy>"))
    fmt = str(attrs.get("format", ""))
    if url.startswith("<") or fmt == "tiff":
        data = volume.data
        flat_idx = tuple(slice(None, None, max(1, n // 16)) for n in volume.shape)
        sample = np.ascontiguousarray(np.asarray(data[flat_idx]))
        h.update(sample.tobytes())
        if fmt == "tiff" and not url.startswith("<"):
            try:
                st = os.stat(_sc._local_path(url))
                h.update(f"{st.st_size}".encode())
            except OSError:
                pass
        return h.hexdigest()[:32]
    from patchsieve.volume import open_zarr_array

    arr = open_zarr_array(url, attrs.get("array_path", ""), storage_options=storage_options)
    meta = arr.metadata.to_dict()
    h.update(_sc.canonical_hash(meta).encode())
    grid = [math.ceil(n / c) for n, c in zip(arr.shape, arr.chunks)]
    total = int(np.prod(grid))
    picks = sorted({0, total - 1, *(int(i) for i in np.linspace(0, total - 1, 8))}) if total else []
    store = arr.store_path.store
    prefix = arr.store_path.path
    for flat in picks:
        coords = tuple(int(c) for c in np.unravel_index(flat, grid))
        key = arr.metadata.encode_chunk_key(coords)
        full = f"{prefix}/{key}" if prefix else key
        raw = _sc._sync_get(store, full)
        h.update(full.encode())
        h.update(hashlib.sha256(raw).digest() if raw is not None else b"<missing>")
    return h.hexdigest()[:32]


# ------------------------------------------------------------------------------ geometry
def _geometry(volume: Any, patch_size: Any, ref_channel: int) -> dict[str, Any]:
    from patchsieve.grid import normalize_patch_size

    dims = tuple(volume.dims)
    spatial = tuple(d for d in SPATIAL_DIMS if d in dims)
    sample_dims = tuple(d for d in SAMPLE_DIMS if d in dims)
    ps = normalize_patch_size(patch_size, spatial)
    sizes = dict(volume.sizes)
    n_channels = int(sizes.get("c", 1))
    if "c" not in dims and ref_channel != 0:
        raise ConfigError(
            f"ref_channel={ref_channel} but the volume has no channel axis (dims {dims}). "
            "Fix: use ref_channel=0, or open the volume with its channel axis (axes='C...')."
        )
    if ref_channel < 0 or ref_channel >= n_channels:
        raise ConfigError(
            f"ref_channel={ref_channel} is out of range for a volume with {n_channels} channel(s). "
            f"Fix: choose 0..{n_channels - 1}."
        )
    for d in spatial:
        if ps[d] > sizes[d]:
            raise ConfigError(
                f"patch_size[{d!r}]={ps[d]} is larger than the volume's {d} size {sizes[d]}. "
                "Fix: use a smaller patch size."
            )
    grid_shape = [(sizes[d] + 1) // ps[d] for d in spatial]
    cell_shape = [math.ceil(sizes[d] / ps[d]) for d in spatial]
    return {
        "dims": list(dims),
        "sample_dims": list(sample_dims),
        "sample_shape": [int(sizes[d]) for d in sample_dims],
        "spatial_dims": list(spatial),
        "spatial_shape": [int(sizes[d]) for d in spatial],
        "patch_size": {d: int(ps[d]) for d in spatial},
        "grid_shape": grid_shape,
        "cell_shape": cell_shape,
        "n_channels": n_channels,
        "ref_channel": int(ref_channel),
    }


def _configs_by_name(filters: Any) -> dict[str, Any]:
    from pydantic import TypeAdapter

    from patchsieve.config import PatchFilterConfig

    if filters is None:
        raise ConfigError("filters is empty. Fix: pass at least one filter config, e.g. "
                          "ShannonPatchFilterConfig(threshold=7.5).")
    if isinstance(filters, Mapping) and "name" not in filters:
        items = list(filters.items())
    else:
        seq = [filters] if not isinstance(filters, Sequence) or isinstance(filters, Mapping) \
            else list(filters)
        items = []
        for cfg in seq:
            cfg = TypeAdapter(PatchFilterConfig).validate_python(cfg)
            items.append((cfg.name, cfg))
    out: dict[str, Any] = {}
    for name, cfg in items:
        cfg = TypeAdapter(PatchFilterConfig).validate_python(cfg)
        if name in out:
            raise ConfigError(
                f"two filters share the name {name!r}. Fix: pass a mapping {{name: config}} with "
                "distinct names, e.g. {'shannon-7.5': ..., 'shannon-8': ...}."
            )
        out[name] = cfg
    if not out:
        raise ConfigError("filters is empty. Fix: pass at least one filter config.")
    refs = {int(c.ref_channel) for c in out.values() if c.name != "mask"}
    if len(refs) > 1:
        raise ConfigError(
            f"filters use different ref_channel values {sorted(refs)}; one side-car has one "
            "reference channel. Fix: use the same ref_channel, or compute two side-cars."
        )
    return out


def _config_json(cfg: Any) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude={"mask"}) if cfg.name == "mask" else \
        cfg.model_dump(mode="json")


# ------------------------------------------------------------------------------ the graph
def _cell_partials(block: np.ndarray, ps: Sequence[int], n_spatial: int) -> np.ndarray:
    """Per-cell (sum, sumsq) over the trailing ``n_spatial`` axes of a cell-aligned block.

    Returns float64 of shape (2, *leading, *cells).
    """
    from patchsieve.filters import _jit

    blk = np.asarray(block)
    if _jit.AVAILABLE and blk.dtype.kind in "ui" and blk.dtype.itemsize <= 2 \
            and 1 <= n_spatial <= 3 and int(np.prod(ps)) < (1 << 31):
        # exact int64 sums in one numba pass (equal to the float64 sums: all < 2**53)
        lead = blk.shape[: blk.ndim - n_spatial]
        sp = blk.shape[blk.ndim - n_spatial :]
        cells = [math.ceil(n / p) for n, p in zip(sp, ps)]
        pad = 3 - n_spatial
        x4 = np.ascontiguousarray(blk).reshape((-1, *(1,) * pad, *sp))
        cshape = (x4.shape[0], *(1,) * pad, *cells)
        s = np.zeros(cshape, dtype=np.int64)
        q = np.zeros(cshape, dtype=np.int64)
        _jit.cell_int_sums(x4, *((1,) * pad), *ps, s, q)
        return np.stack([s, q]).astype(np.float64).reshape((2, *lead, *cells))
    x = np.asarray(blk, dtype=np.float64)
    lead = x.shape[: x.ndim - n_spatial]
    sp = x.shape[x.ndim - n_spatial :]
    cells = [math.ceil(n / p) for n, p in zip(sp, ps)]
    pad = [(0, 0)] * len(lead) + [(0, c * p - n) for c, p, n in zip(cells, ps, sp)]
    if any(p[1] for p in pad):
        x = np.pad(x, pad)
    shape = list(lead)
    for c, p in zip(cells, ps):
        shape += [c, p]
    x = x.reshape(shape)
    axes = tuple(len(lead) + 2 * i + 1 for i in range(n_spatial))
    return np.stack([x.sum(axis=axes), (x * x).sum(axis=axes)])


def _percentile_sample(block: np.ndarray, seed: int, n: int, channel_axis: int | None) -> np.ndarray:
    """A seeded subsample of a block's values, shape (n_channels, k)."""
    x = np.asarray(block)
    if channel_axis is None:
        x = x[None]
    else:
        x = np.moveaxis(x, channel_axis, 0)
    x = x.reshape(x.shape[0], -1)
    rng = np.random.default_rng(seed)
    if x.shape[1] > n:
        idx = rng.choice(x.shape[1], size=n, replace=False)
        x = x[:, idx]
    return x.astype(np.float64)


class _Plan:
    """What to compute: region-stat blocks, cell blocks and percentile chunks, with their keys.

    ``region_todo`` are the statistics that need overlapping region blocks (one patch of halo);
    ``cell_sets`` the per-cell partials to compute in one pass over cell-aligned blocks: ``"base"``
    (sum, sum of squares of every channel), ``"moments"`` (the reference channel's MeanStd cell
    moments, for float data) and ``"mask"`` (non-zero counts of the mask).
    """

    def __init__(self, volume: Any, geom: Mapping[str, Any], region_todo: Sequence[str],
                 cell_sets: Sequence[str], configs: Mapping[str, Any], border: str, seed: int,
                 storage_options: Mapping[str, Any] | None):
        import dask.array as da

        from patchsieve.grid import region_chunks
        from patchsieve.regions import region_block_array, region_stats

        self.geom = geom
        self.stats = list(region_todo)
        self.cell_sets = list(cell_sets)
        mask = None
        mask_cfgs = [c for c in configs.values() if c.name == "mask"]
        if mask_cfgs and ("mask_coverage" in self.stats or "mask" in self.cell_sets):
            mask = _open_mask(mask_cfgs[0], volume, storage_options)
        data = volume.data
        dims = list(volume.dims)
        self.dims = dims
        ps = [geom["patch_size"][d] for d in geom["spatial_dims"]]
        # the side-car's region chunks: the first region block per axis
        chunk_of = dict(zip(dims, (c[0] for c in data.chunks)))
        self.stat_chunks = tuple(
            [int(chunk_of[d]) for d in geom["sample_dims"]]
            + [int(region_chunks(data.chunks[dims.index(d)], p, g)[0])
               for d, p, g in zip(geom["spatial_dims"], ps, geom["grid_shape"])])
        self.stat_blocks = None
        self.stat_numblocks: tuple[int, ...] = ()
        if self.stats:
            if "mask_coverage" in self.stats:  # only without cell support (never at present)
                ds = region_stats(volume, geom["patch_size"], self.stats,
                                  ref_channel=geom["ref_channel"], mask=mask, border=border)
                raw = da.stack([ds[s].data for s in self.stats])
            else:
                raw = region_block_array(volume, geom["patch_size"], self.stats,
                                         ref_channel=geom["ref_channel"], border=border)
            # regular blocks (the first block per axis; a no-op when the storage chunks are
            # whole multiples of the patch), then one task per block packs its stats
            raw = raw.rechunk((len(self.stats), *self.stat_chunks))
            self.stat_blocks = da.map_blocks(
                _pack_blocks, raw, drop_axis=0, dtype=object,
                chunks=tuple((1,) * len(c) for c in raw.chunks[1:]),
                meta=np.empty((0,) * (raw.ndim - 1), dtype=object),
            )
            self.stat_numblocks = raw.numblocks[1:]
        # per-cell partials over a cell-aligned rechunk of the volume (all channels)
        target = []
        for d, c in zip(dims, data.chunks):
            if d in geom["spatial_dims"]:
                p = geom["patch_size"][d]
                target.append(max(p, (c[0] // p) * p))
            elif d == "c":
                target.append(-1)
            else:
                target.append(c[0])
        self.cell_input = data.rechunk(tuple(target))
        n_sp = len(geom["spatial_dims"])
        c_axis = dims.index("c") if "c" in dims else None
        args = [self.cell_input]
        if "mask" in self.cell_sets:
            assert mask is not None
            m = mask.transpose(*[d for d in dims if d != "c"]).data
            m = m.rechunk(tuple(c for d, c in zip(dims, self.cell_input.chunks) if d != "c"))
            if c_axis is not None:
                m = m[(slice(None),) * c_axis + (None,)]
            args.append(m)
        self.cell_blocks = da.map_blocks(
            _cell_block, *args, ps=tuple(ps), n_spatial=n_sp, c_axis=c_axis,
            ref=int(geom["ref_channel"]), sets=tuple(self.cell_sets), border=border,
            dims=tuple(dims), dtype=object,
            chunks=tuple((1,) * len(c) for c in self.cell_input.chunks),
            meta=np.empty((0,) * self.cell_input.ndim, dtype=object),
        )
        self.cell_numblocks = self.cell_input.numblocks
        cell_chunks = []
        for d, c in zip(dims, self.cell_input.chunks):
            if d in geom["spatial_dims"]:
                cell_chunks.append(c[0] // geom["patch_size"][d])
            elif d != "c":
                cell_chunks.append(c[0])
        self.cell_chunks = tuple(cell_chunks)
        # percentile sample: seeded choice of source chunks
        nb = data.numblocks
        total = int(np.prod(nb))
        rng = np.random.default_rng(seed)
        k = min(PERCENTILE_CHUNKS, total)
        picks = sorted(int(i) for i in rng.choice(total, size=k, replace=False))
        self.pct_blocks = []
        for j, flat in enumerate(picks):
            idx = tuple(int(i) for i in np.unravel_index(flat, nb))
            blk = data.blocks[idx]
            self.pct_blocks.append(
                blk.map_blocks(_percentile_sample_block, seed=seed + j,
                               n=PERCENTILE_VALUES_PER_CHUNK, channel_axis=c_axis,
                               dtype=object, chunks=(1,) * blk.ndim,
                               meta=np.empty((0,) * blk.ndim, dtype=object))
            )
        self.pct_picks = picks


def _pack_blocks(block: np.ndarray) -> np.ndarray:
    """``(n_stats, *block)`` -> a 1-element object array holding one float64 array per stat."""
    out = np.empty((1,) * (block.ndim - 1), dtype=object)
    out.flat[0] = tuple(np.asarray(b, dtype=np.float64) for b in block)
    return out


def _cell_block(block: np.ndarray, *mask: np.ndarray, ps: tuple[int, ...], n_spatial: int,
                c_axis: int | None, ref: int, sets: tuple[str, ...], border: str,
                dims: tuple[str, ...], block_info: Any = None) -> np.ndarray:
    """The cell partials of one cell-aligned block, as a 1-element object array holding a dict."""
    from patchsieve.regions import cell_int_sums, cell_moments

    res: dict[str, np.ndarray] = {}
    if "base" in sets:
        res["partials"] = _cell_partials(block, ps, n_spatial)
    if "moments" in sets:
        x = np.take(block, ref, axis=c_axis) if c_axis is not None else block
        lead = x.shape[: x.ndim - n_spatial]
        s, m2 = cell_moments(x, ps, border)  # type: ignore[arg-type]
        res["ref_sum"] = s.reshape((*lead, *s.shape[1:]))
        res["ref_m2"] = m2.reshape((*lead, *m2.shape[1:]))
    if "mask" in sets:
        from patchsieve.filters._base import check_mask_values

        m = mask[0] if c_axis is None else np.take(mask[0], 0, axis=c_axis)
        if m.dtype.kind != "b":
            origin = ({d: int(lo) for d, (lo, _) in zip(dims, block_info[0]["array-location"])
                       if d != "c"} if block_info else {})
            check_mask_values(m, what=f"mask block at {origin}")
        lead = m.shape[: m.ndim - n_spatial]
        nz, _ = cell_int_sums(m != 0, ps)
        res["nonzero"] = nz.reshape((*lead, *nz.shape[1:])).astype(np.float64)
    out = np.empty((1,) * block.ndim, dtype=object)
    out.flat[0] = res
    return out


def _percentile_sample_block(block: np.ndarray, seed: int, n: int,
                             channel_axis: int | None) -> np.ndarray:
    out = np.empty((1,) * block.ndim, dtype=object)
    out.flat[0] = _percentile_sample(block, seed, n, channel_axis)
    return out


def _open_mask(cfg: Any, volume: Any, storage_options: Mapping[str, Any] | None) -> Any:
    """The mask of a MaskPatchFilterConfig as a DataArray matching the volume minus 'c'."""
    import dask.array as da
    import xarray as xr

    from patchsieve.volume import open_volume

    mask = cfg.mask
    dims = [d for d in volume.dims if d != "c"]
    shape = tuple(volume.sizes[d] for d in dims)
    if mask is None:
        raise ConfigError("MaskPatchFilterConfig.mask is not set. Fix: pass mask=<array or path>.")
    if isinstance(mask, xr.DataArray):
        m = mask
    elif isinstance(mask, (str, os.PathLike)):
        m = open_volume(str(mask), axes="".join(dims).upper() if len(dims) else None,
                        storage_options=storage_options)
    else:
        arr = mask if isinstance(mask, da.Array) else np.asarray(mask)
        m = xr.DataArray(arr if isinstance(arr, da.Array) else da.from_array(arr),
                         dims=dims[-arr.ndim:] if arr.ndim <= len(dims) else None)
    if tuple(m.shape) != shape:
        raise ConfigError(
            f"mask shape {tuple(m.shape)} does not match the volume's shape without channels "
            f"{shape} (dims {dims}). Fix: pass a mask of the same shape as the data."
        )
    return m


# ------------------------------------------------------------------------------ writing
class _Writer:
    """Client-side writer of the side-car: arrays, markers, attrs."""

    def __init__(self, path: str, storage_options: Mapping[str, Any] | None):
        self.path = path
        self.store = _sc.open_store(path, storage_options=storage_options, read_only=False)
        self.group: zarr.Group | None = None

    def open(self, mode: str) -> zarr.Group:
        self.group = zarr.open_group(self.store, mode=mode, zarr_format=3)
        return self.group

    def meta(self) -> dict[str, Any]:
        assert self.group is not None
        return dict(self.group.attrs.asdict().get("patchsieve", {}))

    def set_meta(self, meta: Mapping[str, Any]) -> None:
        assert self.group is not None
        m = dict(meta)
        m["updated"] = _sc._now()
        self.group.attrs.update({"patchsieve": m})

    def array(self, key: str, shape: Sequence[int], chunks: Sequence[int], dtype: str,
              fill_value: Any = 0) -> zarr.Array:
        """The array ``key``, created (or recreated) with chunks that are whole multiples of
        ``chunks`` holding up to :data:`SIDECAR_CHUNK_ELEMENTS` values: region- and cell-level
        arrays are small, and one object per compute block would cost more to write than the
        block costs to compute."""
        assert self.group is not None
        chunks = _coarse_chunks(shape, chunks)
        try:
            arr = self.group[key]
            # an existing array of the right shape and dtype is kept whatever its chunks (a
            # side-car begun by an older version resumes with its values intact)
            if tuple(arr.shape) == tuple(shape) and arr.dtype == np.dtype(dtype):
                return arr
        except KeyError:
            pass
        return self.group.create_array(
            key, shape=tuple(int(s) for s in shape),
            chunks=chunks, dtype=dtype, fill_value=fill_value,
            overwrite=True, config={"write_empty_chunks": True},
        )


#: target number of values per chunk of the side-car's arrays
SIDECAR_CHUNK_ELEMENTS = 1 << 20


def _coarse_chunks(shape: Sequence[int], chunks: Sequence[int],
                   target: int = SIDECAR_CHUNK_ELEMENTS) -> tuple[int, ...]:
    """Grow ``chunks`` by whole multiples, last axes first, up to about ``target`` values."""
    out = [max(1, min(int(c), int(n) if int(n) > 0 else 1)) for c, n in zip(chunks, shape)]
    for a in reversed(range(len(out))):
        n = max(1, int(shape[a]))
        rest = math.prod(out) // out[a]
        k = max(1, min(math.ceil(n / out[a]), target // max(1, rest * out[a])))
        out[a] = min(out[a] * k, max(n, out[a]))
        if math.prod(out) >= target:
            break
    return tuple(out)


def _block_slices(idx: Sequence[int], chunks: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, chunks, shape))


def compute(
    source: Any,
    filters: Any,
    patch_size: Any,
    output: str | os.PathLike[str] | None = None,
    *,
    client: Any = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    output_storage_options: Mapping[str, Any] | None = None,
    axes: str | None = None,
    level: int = 0,
    border: str = "careamics",
    labels: bool = False,
    seed: int = 0,
    progress: bool = False,
    cluster: Mapping[str, Any] | None = None,
) -> _sc.Sidecar:
    """Run the filter pass and write (or complete) a side-car.

    Parameters
    ----------
    source : str, path, numpy/dask array or xarray.DataArray
        The volume (see :func:`patchsieve.open_volume`).
    filters : config, sequence of configs, or mapping {name: config}
        ``*PatchFilterConfig`` objects (or dicts). Names default to the config's ``name``.
    patch_size : sequence or mapping
        Patch size per spatial dim (CAREamics order, e.g. ``(64, 64)`` or ``(16, 64, 64)``).
    output : str or path, optional
        Side-car location; default see :func:`default_output`.
    client, scheduler : optional
        An existing ``distributed.Client`` or a scheduler address; default a LocalCluster.
    overwrite : bool
        Replace a side-car made for another source or other parameters.
    storage_options, output_storage_options : mapping, optional
        fsspec options for the source and for the side-car (default: the source's). Never stored.
    axes, level : optional
        Passed to :func:`patchsieve.open_volume`.
    border : {"careamics", "valid"}
        "careamics" zero-pads edge regions exactly as CAREamics does; "valid" uses in-image pixels.
    labels : bool
        Also write a full-resolution OME-Zarr label image per filter (large).
    seed : int
        Seed of the chunk sample for percentiles.
    progress : bool
        Show a progress bar (rich).
    cluster : mapping, optional
        Overrides for the default LocalCluster (``n_workers``, ``threads_per_worker``,
        ``processes``) and ``timeout`` (seconds to reach a scheduler and find a worker).

    Returns
    -------
    Sidecar
        The completed side-car.
    """
    from patchsieve.cluster import get_client
    from patchsieve.regions import stat_names
    from patchsieve.volume import open_volume

    configs = _configs_by_name(filters)
    volume = source if _is_dataarray(source) else open_volume(
        source, axes=axes, level=level, storage_options=storage_options)
    ref = next((int(c.ref_channel) for c in configs.values() if c.name != "mask"), 0)
    geom = _geometry(volume, patch_size, ref)
    ndim = len(geom["spatial_dims"])
    stats = sorted({s for c in configs.values() for s in stat_names(c, ndim)})
    src_url = str(volume.attrs.get("source", "<numpy>"))
    src_fp = source_fingerprint(volume, storage_options)
    out_opts = output_storage_options if output_storage_options is not None else storage_options
    if output is None:
        output = default_output(src_url, src_fp, storage_options=out_opts,
                                level=int(volume.attrs.get("level", level) or 0))
    output = str(output)
    _check_not_inside(output, src_url)
    _sc._require_writable(output, out_opts)
    params = {"geometry": {k: geom[k] for k in ("patch_size", "ref_channel")}, "border": border,
              "level": int(volume.attrs.get("level", level)),
              "array_path": volume.attrs.get("array_path", "")}
    params_fp = _sc.canonical_hash(params)
    writer = _Writer(output, out_opts)
    opts = {k: v for k, v in (cluster or {}).items() if v is not None}
    # connect first: an unreachable scheduler leaves no trace in the output
    with get_client(scheduler, client, **opts) as cl:  # type: ignore[arg-type]
        lock = _sc.SidecarLock(writer.store)
        with _writing(output):
            lock.acquire()
        try:
            with _writing(output):
                meta = _prepare(writer, volume, geom, configs, stats, src_fp, params_fp, border,
                                seed, overwrite)
            _fill(writer, cl, volume, geom, configs, meta, border, seed, storage_options,
                  progress, lock)
            with _writing(output):
                _finalize(writer, volume, geom, configs, labels)
        finally:
            with contextlib.suppress(OSError):
                lock.release()
    return _sc.open_sidecar(output, storage_options=out_opts)


def _is_dataarray(x: Any) -> bool:
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, xr.DataArray)


def _prepare(writer: _Writer, volume: Any, geom: Mapping[str, Any], configs: Mapping[str, Any],
             stats: Sequence[str], src_fp: str, params_fp: str, border: str, seed: int,
             overwrite: bool) -> dict[str, Any]:
    """Create the side-car or validate an existing one; return its metadata."""
    existing: dict[str, Any] = {}
    foreign = _sc.foreign_keys(writer.store)
    try:
        writer.open("r+")
        existing = writer.meta()
    except (FileNotFoundError, KeyError, ValueError):
        existing = {}
    if existing.get("format") != _sc.FORMAT_NAME and foreign:
        # something that is not (yet) a side-car lives there: never delete it silently
        if not overwrite:
            raise SidecarMismatchError(
                f"output {writer.path!r} exists and is not a patchsieve side-car (it holds "
                f"{sorted(foreign)[:3]}...). Fix: choose another output, or pass overwrite=True / "
                "--overwrite to replace it."
            )
        existing = {}
    if existing:
        problems = []
        if int(existing.get("format_version", -1)) != _sc.FORMAT_VERSION:
            problems.append(f"format_version {existing.get('format_version')} != {_sc.FORMAT_VERSION}")
        fp = existing.get("fingerprint", {})
        if fp.get("source") != src_fp:
            problems.append("the source changed (fingerprint mismatch) or is another source")
        if fp.get("params") != params_fp:
            problems.append("other parameters (patch size, ref_channel, border, level)")
        if problems:
            if not overwrite:
                raise SidecarMismatchError(
                    f"side-car {writer.path!r} was made for {'; '.join(problems)}. Fix: pass "
                    "overwrite=True / --overwrite to recompute it, or choose another output."
                )
            existing = {}
    if not existing:
        _sc.clear_store(writer.store)  # keeps our lock
        writer.open("a")
        existing = {
            "format": _sc.FORMAT_NAME,
            "format_version": _sc.FORMAT_VERSION,
            "patchsieve_version": __version__,
            "created": _sc._now(),
            "source": {
                "url": str(volume.attrs.get("source", "<numpy>")),
                "array_path": str(volume.attrs.get("array_path", "")),
                "level": int(volume.attrs.get("level", 0)),
                "format": str(volume.attrs.get("format", "")),
                "dims": list(volume.dims),
                "shape": [int(n) for n in volume.shape],
                "chunks": [int(c[0]) for c in volume.data.chunks],
                "dtype": str(volume.dtype),
                "scale": _jsonable(volume.attrs.get("scale", {})),
                "translation": _jsonable(volume.attrs.get("translation", {})),
            },
            "fingerprint": {"source": src_fp, "params": params_fp},
            "geometry": {**geom, "border": border},
            "filters": {},
            "stats": [],
            "status": {},
            "complete": False,
            "seed": int(seed),
        }
    existing["filters"] = {**existing.get("filters", {}),
                           **{n: _config_json(c) for n, c in configs.items()}}
    existing["stats"] = sorted(set(existing.get("stats", [])) | set(stats))
    existing["complete"] = False
    writer.set_meta(existing)
    return existing


def _jsonable(x: Any) -> Any:
    import json

    try:
        json.dumps(x)
        return x
    except TypeError:
        return json.loads(json.dumps(x, default=str))


def _cell_plan(stats: Sequence[str], dtype: Any,
               status: Mapping[str, str]) -> tuple[list[str], list[str], list[str]]:
    """Split the side-car's statistics: (region-block stats to compute, cell-derived stats to
    derive, cell partial sets to compute)."""
    from patchsieve.regions import cell_stats_supported

    derived = [s for s in stats if cell_stats_supported(s, dtype)]
    region_todo = [s for s in stats if s not in derived
                   and status.get(f"stats/{s}") != "complete"]
    derived_todo = [s for s in derived if status.get(f"stats/{s}") != "complete"]
    need = {"base"}
    if any(s in ("mean", "std") for s in derived_todo) and not _small_int(dtype):
        need.add("moments")
    if "mask_coverage" in derived_todo:
        need.add("mask")
    sets = [k for k in CELL_SETS if k in need and status.get(CELL_SETS[k]) != "complete"]
    return region_todo, derived_todo, sets


def _small_int(dtype: Any) -> bool:
    dt = np.dtype(dtype)
    return dt.kind in "ui" and dt.itemsize <= 2


def _fill(writer: _Writer, client: Any, volume: Any, geom: Mapping[str, Any],
          configs: Mapping[str, Any], meta: dict[str, Any], border: str, seed: int,
          storage_options: Mapping[str, Any] | None, progress: bool, lock: _sc.SidecarLock) -> None:
    """Compute the missing region-stat blocks, cell blocks and the percentile sample, then
    derive the cell statistics (mean, std, mask coverage) from the cell partials.

    All jobs are submitted as one graph so each source chunk is read once.
    """
    stats = list(meta["stats"])
    status = dict(meta.get("status", {}))
    region_todo, derived_todo, cell_sets = _cell_plan(stats, volume.dtype, status)
    need_pct = status.get("percentiles") != "complete"
    if not region_todo and not derived_todo and not cell_sets and not need_pct:
        return
    plan = _Plan(volume, geom, region_todo, cell_sets, configs, border, seed, storage_options)
    jobs: list[_Job] = []
    with _writing(writer.path):
        if region_todo:
            jobs.append(_stats_job(writer, plan, geom, region_todo, lock))
        if cell_sets:
            jobs.append(_cells_job(writer, plan, geom, lock))
    samples: list[np.ndarray] = []
    if need_pct and plan.pct_blocks:
        jobs.append(_Job("percentile sample", _stack_object_blocks(plan.pct_blocks),
                         [(i,) for i in range(len(plan.pct_blocks))],
                         lambda idx, v: samples.append(v), lambda: None))
    with _progress_bar(progress) as p:
        # waves only pay off for the halo'd region blocks; cell blocks stream chunk by chunk
        _run_jobs(client, jobs, p, writer.path,
                  source=volume.data if region_todo else None)
    with _writing(writer.path):
        for k in cell_sets:
            status[CELL_SETS[k]] = "complete"
        _derive_cell_stats(writer, geom, derived_todo, plan.stat_chunks, border, volume.dtype)
        _record_fill(writer, meta, status, region_todo + derived_todo, need_pct, samples, plan,
                     geom, seed)


def _derive_cell_stats(writer: _Writer, geom: Mapping[str, Any], todo: Sequence[str],
                       chunks: Sequence[int], border: str, dtype: Any) -> None:
    """Write ``stats/<s>`` of the cell statistics from the (complete) cell partials."""
    from patchsieve.regions import moments_from_sums, regions_from_cells

    if not todo:
        return
    g = writer.group
    assert g is not None
    ref = int(geom["ref_channel"])
    ps = [geom["patch_size"][d] for d in geom["spatial_dims"]]
    sample_shape = list(geom["sample_shape"])
    n_sp = len(ps)
    cells: dict[str, np.ndarray] = {}
    if any(s in ("mean", "std") for s in todo):
        if _small_int(dtype):
            # exact integer sums (stored as float64, all < 2**53)
            s = np.asarray(g["cells/sum"][ref]).astype(np.int64)
            q = np.asarray(g["cells/sumsq"][ref]).astype(np.int64)
            cells["sum"] = s.astype(np.float64)
            cells["m2"] = moments_from_sums(s, q, ps, geom["spatial_shape"], border)  # type: ignore[arg-type]
        else:
            cells["sum"] = np.asarray(g["cells/ref_sum"][...])
            cells["m2"] = np.asarray(g["cells/ref_m2"][...])
    if "mask_coverage" in todo:
        cells["nonzero"] = np.asarray(g["cells/mask_nonzero"][...])
    flat = {k: v.reshape((-1, *v.shape[v.ndim - n_sp:])) for k, v in cells.items()}
    region_shape = [*sample_shape, *geom["grid_shape"]]
    for st in todo:
        vals = regions_from_cells(st, flat, patch_size=ps, spatial_shape=geom["spatial_shape"],
                                  grid_shape=geom["grid_shape"], border=border)  # type: ignore[arg-type]
        arr = writer.array(f"stats/{st}", region_shape, chunks, "float64", fill_value=np.nan)
        arr[...] = vals.reshape(region_shape)


def _record_fill(writer: _Writer, meta: dict[str, Any], status: dict[str, str],
                 todo_stats: list[str], need_pct: bool,
                 samples: list[np.ndarray], plan: _Plan, geom: Mapping[str, Any],
                 seed: int) -> None:
    for s in todo_stats:
        status[f"stats/{s}"] = "complete"
    if need_pct:
        allv = np.concatenate(samples, axis=1) if samples else np.zeros((geom["n_channels"], 0))
        pct = {f"p{q:g}": [float(np.percentile(c, q)) if c.size else float("nan") for c in allv]
               for q in PERCENTILES}
        meta["percentiles"] = {**pct, "n_sampled_chunks": len(plan.pct_blocks),
                               "values_per_chunk": PERCENTILE_VALUES_PER_CHUNK,
                               "sampled_chunks": plan.pct_picks, "seed": int(seed)}
        status["percentiles"] = "complete"
    meta["status"] = status
    writer.set_meta(meta)


@contextlib.contextmanager
def _writing(output: str) -> Any:
    """Turn a storage failure while writing the side-car into one clear StorageError."""
    try:
        yield
    except PatchsieveError:
        raise
    except OSError as err:
        raise StorageError(
            f"writing the side-car {output!r} failed ({type(err).__name__}: "
            f"{_sc._safe_msg(err)}); it is left incomplete and readers refuse it. Fix: free "
            "space / check permissions of the output, then rerun the same command (it resumes)."
        ) from err


@dataclass
class _Job:
    label: str
    collection: Any
    todo: list[tuple[int, ...]]
    on_result: Callable[[tuple[int, ...], Any], None]
    finish: Callable[[], None]


class _Mirror:
    """In-memory copies of the side-car arrays a job fills, flushed to Zarr in batches.

    Results arrive block by block; writing each block with its own zarr call costs more than
    computing it. The client keeps a copy of every target array (region- or cell-level, so tiny
    next to the volume), loaded from disk so a resumed run starts from what is there, and writes
    the bounding box of the blocks finished since the last flush in one call per array, then their
    markers. A killed run therefore leaves markers only for blocks whose values are on disk.
    """

    def __init__(self, arrays: Mapping[str, zarr.Array], marker: zarr.Array,
                 lock: _sc.SidecarLock, prefix: Mapping[str, int] | None = None):
        self.arrays = dict(arrays)
        #: leading axes of an array not addressed by the block slices (e.g. channels)
        self.prefix = {k: int((prefix or {}).get(k, 0)) for k in self.arrays}
        self.mem = {k: np.asarray(a[...]) for k, a in self.arrays.items()}
        self.marker, self.lock = marker, lock
        self.done = np.asarray(marker[...])
        self.pending: list[tuple[int, ...]] = []
        self.lo: list[int] | None = None
        self.hi: list[int] | None = None
        self.last = time.monotonic()

    def put(self, idx: tuple[int, ...], sl: tuple[slice, ...], values: Mapping[str, np.ndarray]) -> None:
        for k, v in values.items():
            self.mem[k][(slice(None),) * self.prefix[k] + tuple(sl)] = v
        starts = [s.start or 0 for s in sl]
        stops = [s.stop for s in sl]
        self.lo = starts if self.lo is None else [min(a, b) for a, b in zip(self.lo, starts)]
        self.hi = stops if self.hi is None else [max(a, b) for a, b in zip(self.hi, stops)]
        self.pending.append(idx)
        if len(self.pending) >= 512 or time.monotonic() - self.last >= _FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        assert self.lo is not None and self.hi is not None
        box = tuple(slice(a, b) for a, b in zip(self.lo, self.hi))
        for k, arr in self.arrays.items():
            # whole chunks from the in-memory copy: zarr then never reads a chunk back
            p = self.prefix[k]
            wide = tuple(slice((b.start // c) * c, min(n, -(-b.stop // c) * c))
                         for b, c, n in zip(box, arr.chunks[p:], arr.shape[p:]))
            full = (slice(None),) * p + wide + (slice(None),) * (arr.ndim - len(box) - p)
            arr[full] = self.mem[k][full]
        for idx in self.pending:
            self.done[idx] = 1
        self.marker[...] = self.done
        self.pending, self.lo, self.hi = [], None, None
        self.last = time.monotonic()
        self.lock.heartbeat()


def _stats_job(writer: _Writer, plan: _Plan, geom: Mapping[str, Any], todo_stats: list[str],
               lock: _sc.SidecarLock) -> _Job:
    region_shape = [*geom["sample_shape"], *geom["grid_shape"]]
    arrays = {s: writer.array(f"stats/{s}", region_shape, plan.stat_chunks, "float64",
                              fill_value=np.nan) for s in todo_stats}
    # one marker array per set of stats computed together
    mkey = "progress/stats_" + _sc.canonical_hash(sorted(todo_stats))[:8]
    marker = writer.array(mkey, plan.stat_numblocks, [max(1, n) for n in plan.stat_numblocks],
                          "uint8")
    mirror = _Mirror(arrays, marker, lock)
    todo = [tuple(int(i) for i in idx) for idx in np.argwhere(mirror.done == 0)]
    logger.info("region statistics %s: %d of %d blocks to compute", todo_stats, len(todo),
                mirror.done.size)

    def on_stat(idx: tuple[int, ...], values: tuple[np.ndarray, ...]) -> None:
        sl = _block_slices(idx, plan.stat_chunks, region_shape)
        mirror.put(idx, sl, dict(zip(todo_stats, values)))

    return _Job("region statistics", plan.stat_blocks, todo, on_stat, mirror.flush)


def _group_shape(numblocks: Sequence[int], target: int) -> tuple[int, ...]:
    """Blocks per result group (last axes first), about ``target`` blocks per group."""
    g = [1] * len(numblocks)
    for a in reversed(range(len(numblocks))):
        need = math.ceil(target / math.prod(g))
        if need <= 1:
            break
        g[a] = min(int(numblocks[a]), need)
    return tuple(g)


#: bytes of source chunks a wave of the filter pass may read (at least one chunk plane)
WAVE_BYTES = 512 * 2**20


def _run_jobs(client: Any, jobs: list[_Job], progress: Any, output: str,
              source: Any = None) -> None:
    """Compute the groups of missing blocks of all jobs; hand results back by block.

    Each block's result is tiny; returning thousands of them one by one costs a scheduler round
    trip each, so neighbouring blocks are returned in groups of up to 16 (a group with any
    missing block is recomputed whole: resume granularity stays small).

    With ``source`` (the volume's dask array), the groups are submitted in waves of consecutive
    chunk planes along the source's first blocked axis, each reading about
    :data:`WAVE_BYTES`: the region blocks' one-patch halo reaches into the next plane, and a
    scheduler handed the whole graph at once reads planes far ahead of the kernels (peak
    memory then grows with the volume). The chunks a wave shares with the next one are kept
    (as futures) until the next wave is done, so every chunk is still read once.
    """
    from distributed import as_completed

    jobs = [j for j in jobs if j.todo]
    if not jobs:
        return
    nthreads = max(1, sum(client.nthreads().values()) if hasattr(client, "nthreads") else 1)
    todo_delayed: list[Any] = []
    owner: dict[Any, tuple[_Job, tuple[int, ...], tuple[int, ...]]] = {}
    tasks = {}
    # no graph optimisation: dask's array optimisation inlines the chunk reads into their
    # dependents (per collection, even with dask.optimize(*colls)), so a chunk shared by the
    # region and cell jobs would be read twice; the scheduler runs only what the keys need
    for job in jobs:
        numblocks = job.collection.numblocks
        total = math.prod(numblocks)
        g = _group_shape(numblocks, max(1, min(16, total // (8 * nthreads))))
        coll = job.collection.rechunk(g) if math.prod(g) > 1 else job.collection
        groups = coll.to_delayed(optimize_graph=False)
        todo_groups = sorted({tuple(i // k for i, k in zip(idx, g)) for idx in job.todo})
        for gidx in todo_groups:
            d = groups[gidx]
            todo_delayed.append(d)
            owner[d.key] = (job, gidx, g)
        if progress is not None:
            tasks[job.label] = progress.add_task(job.label, total=len(todo_groups))
    waves = _waves(todo_delayed, source)
    held: dict[Any, Any] = {}  # carried chunk key -> (future, last wave that uses it)
    with client.as_current():
        for i, (wave, sub, carry) in enumerate(waves):
            if sub is None:
                futures = client.compute(wave, optimize_graph=False)
            else:
                # the wave's own culled graph: the full one would be shipped with every wave
                keys = [d.key for d in wave] + [k for k, _ in carry]
                futs = client.get(sub, keys, sync=False)
                futures = futs[: len(wave)]
                for (k, last), f in zip(carry, futs[len(wave):]):
                    held[k] = (f, last)
            for fut, result in as_completed(futures, with_results=True):
                job, gidx, g = owner[fut.key]
                with _writing(output):
                    for off in np.ndindex(*result.shape):
                        idx = tuple(a * k + o for a, k, o in zip(gidx, g, off))
                        job.on_result(idx, result[off])
                fut.release()
                if progress is not None:
                    progress.advance(tasks[job.label])
            for k in [k for k, (_, last) in held.items() if last <= i]:
                held.pop(k)[0].release()
    for f, _ in held.values():
        f.release()
    with _writing(output):
        for job in jobs:
            job.finish()


class _Deps:
    """Dependencies of a materialised task graph: the chunk keys of array ``name`` each key
    needs, and the sub-graph a set of keys needs."""

    def __init__(self, graph: Mapping[Any, Any], name: str):
        self.graph, self.name = graph, name
        self._deps: dict[Any, list[Any]] = {}
        self._loads: dict[Any, frozenset[Any]] = {}

    def deps(self, key: Any) -> list[Any]:
        from dask.core import get_dependencies

        d = self._deps.get(key)
        if d is None:
            d = self._deps[key] = [k for k in get_dependencies(self.graph, key)
                                   if k in self.graph]
        return d

    def loads(self, key: Any) -> frozenset[Any]:
        memo = self._loads
        stack = [key]  # iterative DFS (graphs are deep enough to hit the recursion limit)
        while stack:
            k = stack[-1]
            if k in memo:
                stack.pop()
            elif isinstance(k, tuple) and k and k[0] == self.name:
                memo[k] = frozenset([k])
                stack.pop()
            else:
                todo = [dk for dk in self.deps(k) if dk not in memo]
                if todo:
                    stack.extend(todo)
                    continue
                deps = self.deps(k)
                memo[k] = frozenset().union(*(memo[dk] for dk in deps)) if deps else frozenset()
                stack.pop()
        return memo[key]

    def subgraph(self, keys: Sequence[Any]) -> dict[Any, Any]:
        sub: dict[Any, Any] = {}
        stack = list(keys)
        while stack:
            k = stack.pop()
            if k not in sub:
                sub[k] = self.graph[k]
                stack.extend(self.deps(k))
        return sub


def _waves(delayed: list[Any], source: Any
           ) -> list[tuple[list[Any], dict[Any, Any] | None, list[tuple[Any, int]]]]:
    """Split ``delayed`` into waves of consecutive source chunk rows (see :func:`_run_jobs`).

    Groups are ordered by the chunk (plane, row) of the first two blocked axes of ``source``
    they start in and cut into waves reading about :data:`WAVE_BYTES` each. Each wave comes
    with its culled task graph and the source chunk keys it reads first that a later wave
    reads too, with the index of the last wave that needs them.
    """
    if source is None or not delayed:
        return [(delayed, None, [])]
    axes = [a for a, n in enumerate(source.numblocks) if n > 1][:2]
    if not axes:
        return [(delayed, None, [])]
    # the groups of one job share their collection's graph: merge each distinct graph once
    graphs = {id(g): g for g in (d.__dask_graph__() for d in delayed)}
    graph: dict[Any, Any] = {}
    for g in graphs.values():
        graph.update(g)
    dep = _Deps(graph, source.name)
    per = [(d, dep.loads(d.key)) for d in delayed]
    row = {d.key: min((tuple(k[1 + a] for a in axes) for k in ls), default=(0,) * len(axes))
           for d, ls in per}
    chunk_bytes = math.prod(c[0] for c in source.chunks) * source.dtype.itemsize
    per.sort(key=lambda t: row[t[0].key])
    waves: list[tuple[list[Any], set[Any]]] = []
    cur: list[Any] = []
    cur_loads: set[Any] = set()
    last_row = None
    for d, ls in per:
        r = row[d.key]
        if cur and r != last_row and len(cur_loads) * chunk_bytes >= WAVE_BYTES:
            waves.append((cur, cur_loads))
            cur, cur_loads = [], set()
        cur.append(d)
        cur_loads |= ls
        last_row = r
    if cur:
        waves.append((cur, cur_loads))
    first: dict[Any, int] = {}
    last: dict[Any, int] = {}
    for i, (_, ls) in enumerate(waves):
        for k in ls:
            first.setdefault(k, i)
            last[k] = i
    out = []
    for i, (ds, ls) in enumerate(waves):
        carry = [(k, last[k]) for k in sorted(ls) if first[k] == i and last[k] > i]
        # chunks carried from earlier waves are in the sub-graph too: the scheduler finds
        # them in memory under the same key and does not read them again
        out.append((ds, dep.subgraph([d.key for d in ds]), carry))
    logger.debug("filter pass in %d wave(s) of source chunk rows", len(out))
    return out


def _stack_object_blocks(blocks: list[Any]) -> Any:
    import dask.array as da

    flat = [b.reshape((1,)) for b in blocks]
    return da.concatenate(flat, axis=0)


_FLUSH_EVERY_S = 2.0



#: cell partial sets -> their status key in the side-car attrs
CELL_SETS = {"base": "cells", "moments": "cells/moments", "mask": "cells/mask"}


def _cells_job(writer: _Writer, plan: _Plan, geom: Mapping[str, Any],
               lock: _sc.SidecarLock) -> _Job:
    n_c = geom["n_channels"]
    cshape = [n_c, *geom["sample_shape"], *geom["cell_shape"]]
    cchunks = [n_c, *plan.cell_chunks]
    arrays: dict[str, zarr.Array] = {}
    if "base" in plan.cell_sets:
        arrays["sum"] = writer.array("cells/sum", cshape, cchunks, "float64")
        arrays["sumsq"] = writer.array("cells/sumsq", cshape, cchunks, "float64")
    if "moments" in plan.cell_sets:
        arrays["ref_sum"] = writer.array("cells/ref_sum", cshape[1:], cchunks[1:], "float64")
        arrays["ref_m2"] = writer.array("cells/ref_m2", cshape[1:], cchunks[1:], "float64")
    if "mask" in plan.cell_sets:
        arrays["nonzero"] = writer.array("cells/mask_nonzero", cshape[1:], cchunks[1:],
                                         "float64")
    # one marker array per set of partials computed together
    mkey = "progress/cells" if plan.cell_sets == ["base"] else \
        "progress/cells_" + "_".join(plan.cell_sets)
    marker = writer.array(mkey, plan.cell_numblocks,
                          [max(1, n) for n in plan.cell_numblocks], "uint8")
    mirror = _Mirror(arrays, marker, lock, prefix={"sum": 1, "sumsq": 1})
    todo = [tuple(int(i) for i in idx) for idx in np.argwhere(mirror.done == 0)]
    dims = plan.dims
    c_axis = dims.index("c") if "c" in dims else None

    def on_cell(idx: tuple[int, ...], res: Mapping[str, np.ndarray]) -> None:
        idx_wo_c = [i for d, i in zip(dims, idx) if d != "c"]
        sl = _block_slices(idx_wo_c, plan.cell_chunks, cshape[1:])
        values: dict[str, np.ndarray] = {}
        if "partials" in res:
            # partial: (2, *block dims incl. c, *cells)
            partial = res["partials"]
            partial = partial[:, None] if c_axis is None else np.moveaxis(partial, 1 + c_axis, 1)
            values["sum"], values["sumsq"] = partial[0], partial[1]
        for k in ("ref_sum", "ref_m2", "nonzero"):
            if k in res:
                values[k] = res[k]
        mirror.put(idx, sl, values)

    return _Job("cell partials", plan.cell_blocks, todo, on_cell, mirror.flush)


class _NullBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return _NullBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn(), transient=False)


# ------------------------------------------------------------------------------ finalize
def _cover_cells(keep: np.ndarray, cell_shape: Sequence[int]) -> np.ndarray:
    """Cell-level OR of the regions covering each cell (region g covers cells g and g+1)."""
    n_sp = len(cell_shape)
    lead = keep.shape[: keep.ndim - n_sp]
    out = np.zeros((*lead, *cell_shape), dtype=bool)
    import itertools

    for offs in itertools.product((0, 1), repeat=n_sp):
        src = keep
        sl = [slice(None)] * len(lead)
        for o, g, c in zip(offs, keep.shape[len(lead):], cell_shape):
            n = min(g, c - o)
            sl.append(slice(o, o + n))
        part = tuple(slice(None) for _ in lead) + tuple(slice(0, s.stop - s.start) for s in sl[len(lead):])
        out[tuple(sl)] |= src[part]
    return out


def _normalization(writer: _Writer, geom: Mapping[str, Any], keep_cells: np.ndarray | None,
                   meta: Mapping[str, Any]) -> dict[str, Any]:
    g = writer.group
    assert g is not None
    s = np.asarray(g["cells/sum"][...])
    q = np.asarray(g["cells/sumsq"][...])
    counts = _cell_counts(geom)
    n_c = s.shape[0]
    n_lead = len(geom["sample_shape"])
    cnt = np.broadcast_to(counts, s.shape[1:])
    out: dict[str, Any] = {}

    def mean_std(sel: np.ndarray | None) -> tuple[list[float], list[float], int]:
        means, stds = [], []
        n = float(cnt.sum() if sel is None else cnt[sel].sum())
        for c in range(n_c):
            ss = s[c].sum() if sel is None else s[c][sel].sum()
            qq = q[c].sum() if sel is None else q[c][sel].sum()
            m = ss / n if n else float("nan")
            var = max(qq / n - m * m, 0.0) if n else float("nan")
            means.append(float(m))
            stds.append(float(math.sqrt(var)) if n else float("nan"))
        return means, stds, int(n)

    out["mean"], out["std"], out["n_pixels"] = mean_std(None)
    _ = n_lead
    if keep_cells is not None:
        out["kept_mean"], out["kept_std"], out["kept_n_pixels"] = mean_std(keep_cells)
    pct = meta.get("percentiles", {})
    out.update(pct)
    return out


def _cell_counts(geom: Mapping[str, Any]) -> np.ndarray:
    """Number of in-image pixels per cell, shape cell_shape."""
    per_axis = []
    for n, p in zip(geom["spatial_shape"], geom["patch_size"].values()):
        c = math.ceil(n / p)
        a = np.full(c, p, dtype=np.float64)
        a[-1] = n - (c - 1) * p
        per_axis.append(a)
    out = per_axis[0]
    for a in per_axis[1:]:
        out = np.multiply.outer(out, a)
    return out


def _finalize(writer: _Writer, volume: Any, geom: Mapping[str, Any], configs: Mapping[str, Any],
              labels: bool) -> None:
    meta = writer.meta()
    meta = update_decisions(writer, geom, configs, meta)
    if labels:
        from patchsieve._labels import write_labels

        g = writer.group
        assert g is not None
        for name in configs:
            fo = np.asarray(g[f"decisions/{name}/filter_out"][...], dtype=bool)
            write_labels(g, name, volume, geom, _cover_cells(~fo, geom["cell_shape"]))
        meta["status"]["labels"] = "complete"
        meta["labels"] = sorted(configs)
    meta["complete"] = True
    writer.set_meta(meta)


def epoch_patches(weights: np.ndarray, spatial_shape: Sequence[int],
                  patch_size: Sequence[int]) -> np.ndarray:
    """Patches per sample per epoch, exactly as CAREamics 0.3.5 ``StratifiedPatching``.

    Delegates to :func:`patchsieve.sampling.careamics_n_patches` (the sampler's own rule), so the
    side-car's totals and the dataset's epoch length can never disagree.

    Parameters
    ----------
    weights : ndarray, (n_samples, *grid_shape)
        Relative region probabilities (1 = untouched).
    spatial_shape, patch_size : sequence of int
        Image and patch size per spatial dim.
    """
    from patchsieve.sampling import careamics_n_patches

    flat = weights.reshape(weights.shape[0], -1)
    return np.array([careamics_n_patches(spatial_shape, patch_size, row.reshape(weights.shape[1:]),
                                         row != 1.0) for row in flat], dtype=np.int64)


def update_decisions(writer: _Writer, geom: Mapping[str, Any], configs: Mapping[str, Any],
                     meta: dict[str, Any]) -> dict[str, Any]:
    """(Re)compute decisions, weights, totals and normalisation from the stored statistics."""
    from patchsieve.regions import decide, stat_names

    g = writer.group
    assert g is not None
    ndim = len(geom["spatial_dims"])
    region_shape = [*geom["sample_shape"], *geom["grid_shape"]]
    n_s = len(geom["sample_shape"])
    norm_by_filter: dict[str, Any] = {}
    for name, cfg in configs.items():
        needed = stat_names(cfg, ndim)
        missing = [s for s in needed if meta["status"].get(f"stats/{s}") != "complete"]
        if missing:
            raise SidecarIncompleteError(
                f"statistics {missing} for filter {name!r} are not complete in {writer.path!r}. "
                "Fix: rerun compute on the same output.")
        values = {s: np.asarray(g[f"stats/{s}"][...]) for s in needed}
        fo = np.asarray(decide(cfg, values), dtype=bool).reshape(region_shape)
        p = float(cfg.filtered_patch_prob)
        w = np.where(fo, p, 1.0)
        chunks = g[f"stats/{needed[0]}"].chunks
        writer.array(f"decisions/{name}/filter_out", region_shape, chunks, "bool")[...] = fo
        writer.array(f"decisions/{name}/weight", region_shape, chunks, "float64")[...] = w
        axes = tuple(range(n_s, n_s + ndim))
        n_regions = np.full(geom["sample_shape"], int(np.prod(geom["grid_shape"])), dtype=np.int64)
        n_bg = fo.sum(axis=axes).astype(np.int64)
        wsum = w.sum(axis=axes)
        n_patches = epoch_patches(w.reshape((-1, *geom["grid_shape"])),
                                  geom["spatial_shape"],
                                  [geom["patch_size"][d] for d in geom["spatial_dims"]],
                                  ).reshape(geom["sample_shape"] or ())
        sshape = geom["sample_shape"] or []
        for key, val, dt in (("n_regions", n_regions, "int64"), ("n_background", n_bg, "int64"),
                             ("weight_sum", wsum, "float64"),
                             ("n_patches_per_epoch", n_patches, "int64")):
            a = writer.array(f"decisions/{name}/{key}", sshape or [1], sshape or [1], dt)
            a[...] = np.asarray(val).reshape(sshape or [1])
        if "cells/sum" in g:
            keep_cells = _cover_cells(~fo, geom["cell_shape"])
            norm_by_filter[name] = _normalization(writer, geom, keep_cells, meta)
        meta["status"][f"decisions/{name}"] = "complete"
    if "cells/sum" in g:
        base = _normalization(writer, geom, None, meta)
        base["kept"] = {n: {k: v for k, v in d.items() if k.startswith("kept_")}
                        for n, d in norm_by_filter.items()}
        if len(norm_by_filter) == 1:
            only = next(iter(norm_by_filter.values()))
            base.update({k: v for k, v in only.items() if k.startswith("kept_")})
        meta["normalization"] = base
    meta["timing"] = {"finalized_at": time.time()}
    return meta
