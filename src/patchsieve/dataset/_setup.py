"""How a :class:`~patchsieve.dataset.PatchDataset` is set up (private): its options in groups,
the side-car it samples from, and the readers of its source and target."""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import patchsieve.config  # noqa: F401 - every dataset reads its side-car's filter config
from patchsieve.dataset._chunks import _ChunkReader
from patchsieve.errors import ConfigError, SidecarIncompleteError, SidecarMismatchError
from patchsieve.sampling import MODES, StreamingPatching
from patchsieve.sidecar import Sidecar, open_sidecar
from patchsieve.volume import same_location

logger = logging.getLogger(__name__)

#: decoded storage chunks of the side-car's decisions kept per process (tiles are cut from them)
DECISION_CACHE_BYTES = 32 * 2**20


@dataclass(frozen=True)
class SourceOptions:
    """Where the patches come from: the side-car, the volume, an optional paired target."""

    source: Any
    sidecar: Any
    patch_size: Any
    patch_filter_config: Any
    filter_name: str | None
    target: Any
    storage_options: Mapping[str, Any] | None
    target_storage_options: Mapping[str, Any] | None
    axes: str | None
    level: int
    client: Any
    sidecar_timeout: float


@dataclass(frozen=True)
class SamplingOptions:
    """Which patches an epoch draws and in which order."""

    mode: str
    seed: int
    epoch_length: int | None
    shuffle_window: int | None
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}; got {self.mode!r}.")
        if self.shuffle_window is not None:
            _check_int("shuffle_window", self.shuffle_window)


@dataclass(frozen=True)
class OutputOptions:
    """What one item looks like: channels, normalisation, transform, batching, cache."""

    channels: int | Sequence[int] | None
    target_channels: int | Sequence[int] | None
    normalize: bool
    transform: Callable[..., Any] | None
    return_metadata: bool
    batch_size: int | None
    drop_last: bool
    cache_bytes: int

    def __post_init__(self) -> None:
        bs = self.batch_size
        if bs is not None and (isinstance(bs, bool) or not isinstance(bs, (int, np.integer))
                               or bs < 1):
            raise ConfigError(
                f"batch_size must be a positive integer or None; got {bs!r}. Fix: e.g. "
                "batch_size=64 (batches collated in the dataset), or None for single patches.")
        _check_int("cache_bytes", self.cache_bytes)


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer >= 0; got {value!r}. Fix: e.g. {name}=0.")
    if int(value) < 0:
        raise ConfigError("shuffle_window and cache_bytes must be >= 0.")


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The DDP rank and world size: given, else ``torch.distributed``'s, else 0 and 1."""
    if rank is not None or world_size is not None:
        r, ws = int(rank or 0), int(world_size or 1)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, ws = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, ws = 0, 1
    if ws < 1 or not 0 <= r < ws:
        raise ConfigError(f"rank must lie in [0, world_size={ws}); got rank={r}.")
    return r, ws


def resolve_channels(channels: int | Sequence[int] | None, n: int, name: str) -> list[int]:
    """Channel indices (all ``n`` for None), validated."""
    if channels is None:
        return list(range(n))
    sel = [channels] if isinstance(channels, (int, np.integer)) else list(channels)
    bad = [c for c in sel if not isinstance(c, (int, np.integer)) or not 0 <= int(c) < n]
    if not sel or bad:
        raise ConfigError(
            f"{name} must be channel indices in [0, {n}); got {channels!r}. Fix: pass e.g. "
            f"{name}=0 or {name}=[0, 1], or None for all {n} channels.")
    return [int(c) for c in sel]


def get_sidecar(opts: SourceOptions, sampling: SamplingOptions) -> Sidecar:
    """The complete side-car to sample from: given, or found / computed for the source."""
    sidecar, source = opts.sidecar, opts.source
    if source is None and sidecar is None:
        raise ConfigError("pass source (a volume) or sidecar (a completed side-car).")
    if sidecar is not None:
        if isinstance(sidecar, (str, os.PathLike)):
            return open_sidecar(os.fspath(sidecar), storage_options=opts.storage_options)
        if not getattr(sidecar, "is_complete", False):
            raise SidecarIncompleteError(
                f"side-car {getattr(sidecar, 'path', sidecar)!r} is not complete. Fix: rerun "
                "`patchsieve compute` with the same arguments to finish it.")
        if isinstance(source, (str, os.PathLike)) and not same_location(source, sidecar.source):
            logger.warning("source %r differs from the side-car's source %r; checking shapes",
                           source, sidecar.source)
        return sidecar  # type: ignore[no-any-return]
    if opts.patch_size is None or opts.patch_filter_config is None:
        raise ConfigError(
            "without sidecar, pass patch_size and patch_filter_config so that the filter "
            "pass can run. Fix: e.g. patch_size=(64, 64), "
            "patch_filter_config=ShannonPatchFilterConfig(threshold=7.5).")
    from patchsieve.filterpass import ensure_sidecar

    return ensure_sidecar(
        source, opts.patch_filter_config, opts.patch_size, storage_options=opts.storage_options,
        axes=opts.axes, level=opts.level, client=opts.client, rank=sampling.rank,
        world_size=sampling.world_size, timeout=opts.sidecar_timeout)


def norm_stats(sc: Sidecar, channels: Sequence[int],
               n_spatial: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32, broadcastable to a patch) from the side-car."""
    stats = sc.normalization()
    if not stats or "mean" not in stats or "std" not in stats:
        raise SidecarIncompleteError(
            "normalize=True needs the side-car's per-channel mean/std, which it lacks. "
            "Fix: recompute the side-car, or pass normalize=False.")
    mean = np.atleast_1d(np.asarray(stats["mean"], np.float64))
    std = np.atleast_1d(np.asarray(stats["std"], np.float64))
    mean = mean[list(channels)] if mean.size > 1 else mean
    std = std[list(channels)] if std.size > 1 else std
    shape = (-1,) + (1,) * n_spatial
    return (mean.reshape(shape).astype(np.float32),
            np.maximum(std, 1e-12).reshape(shape).astype(np.float32))


def source_reader(sc: Sidecar, opts: SourceOptions, cache_bytes: int) -> _ChunkReader:
    """The reader of the input volume (the side-car's source, or another copy of it)."""
    src = sc.locate_source() if opts.source is None else opts.source
    shape = dict(sc.shape)
    array_path = sc.array_path
    if isinstance(src, (str, os.PathLike)) and not same_location(src, sc.source):
        array_path = _check_other_source(src, shape, opts)
    reader = _make_reader(src, array_path, opts.storage_options, shape, "source")
    reader.cache_bytes = int(cache_bytes)
    reader.array()  # validate now (opened again lazily in every worker)
    return reader


def _check_other_source(src: Any, shape: Mapping[str, int], opts: SourceOptions) -> str:
    """A source at another location than the side-car's: same dims and sizes required."""
    from patchsieve.volume import open_volume

    vol = open_volume(src, axes=opts.axes, level=opts.level,
                      storage_options=opts.storage_options)
    if dict(vol.sizes) != dict(shape):
        raise SidecarMismatchError(
            f"source {src!r} has sizes {dict(vol.sizes)}; the side-car was computed for a "
            f"volume of shape {dict(shape)}. Fix: pass the side-car of this source or omit "
            "sidecar= to compute one.")
    return str(vol.attrs.get("array_path", ""))


def _make_reader(src: Any, array_path: str, storage_options: Any, shape: Mapping[str, int],
                 what: str) -> _ChunkReader:
    dims = list(shape)
    if isinstance(src, np.ndarray):
        if src.shape != tuple(shape[d] for d in dims):
            raise ConfigError(
                f"{what} array has shape {src.shape}; expected "
                f"{tuple(shape[d] for d in dims)} (dims {tuple(dims)}).")
        return _ChunkReader(None, "", None, src.shape, [shape[d] for d in dims], 0, array=src,
                            dims=dims)
    if not isinstance(src, (str, os.PathLike)):
        raise ConfigError(
            f"{what} must be a Zarr/OME-Zarr path or URL or a numpy array; got "
            f"{type(src).__name__}.")
    return _ChunkReader(os.fspath(src), array_path, storage_options, [shape[d] for d in dims],
                        None, 0, dims=dims)


def target_reader(opts: SourceOptions, shape: Mapping[str, int], target_channels: Any,
                  cache_bytes: int) -> tuple[_ChunkReader, list[int]]:
    """The reader of the paired target (CARE / N2N) and its channels."""
    from patchsieve.volume import open_volume

    target, so = opts.target, opts.target_storage_options
    try:
        vol = open_volume(target, axes=opts.axes, level=opts.level, storage_options=so)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to open is the user's target
        raise ConfigError(
            f"target {target!r} cannot be opened ({err}). Fix: pass the path "
            "or URL of the target volume (and target_storage_options).") from err
    tshape = dict(vol.sizes)
    mismatch = [d for d in set(shape) | set(tshape)
                if d != "c" and shape.get(d) != tshape.get(d)]
    if mismatch:
        raise ConfigError(
            f"target has sizes {tshape}, the input {dict(shape)}: they differ in "
            f"{sorted(mismatch)}. Fix: pass a target of the same (s, t, z, y, x) sizes.")
    tch = resolve_channels(target_channels, tshape.get("c", 1), "target_channels")
    tdims = list(vol.dims)
    if isinstance(target, np.ndarray):
        data = np.asarray(vol.data)
        reader = _ChunkReader(None, "", None, data.shape, data.shape, 0, array=data, dims=tdims)
    elif isinstance(target, (str, os.PathLike)):
        reader = _ChunkReader(os.fspath(target), str(vol.attrs.get("array_path", "")), so,
                              [tshape[d] for d in tdims], None, int(cache_bytes), dims=tdims)
    else:
        raise ConfigError(
            f"target must be a Zarr/OME-Zarr path or URL or a numpy array; got "
            f"{type(target).__name__}.")
    reader.array()
    return reader, tch


class DecisionReader:
    """``read(sample, lo, hi)``: boxes of a side-car's ``filter_out`` decisions, for the
    streamed sampler. Picklable: the side-car is opened again (by path) in another process.

    Small boxes (tiles) are assembled from whole storage chunks of the decisions kept in an LRU
    cache (:data:`DECISION_CACHE_BYTES`): one zarr read per chunk, not per tile. With
    :attr:`validate` (set once the sampler is built) a chunk's stored weights are checked the
    first time the chunk is read (:meth:`check_weights`): every patch comes from regions whose
    weights were checked, without a pass over the whole weight array.
    """

    def __init__(self, sc: Sidecar, name: str, background_weight: float):
        self.path, self.name = str(sc.path), name
        self.storage_options = sc.storage_options
        self.background_weight = float(background_weight)
        self.validate = False
        self.n_sample_dims = len(sc.sample_dims)
        self.sample_shape = tuple(sc.sample_shape)
        self._sc: Sidecar | None = sc
        self._pid: int | None = os.getpid()
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._cached = 0
        self._arr: Any = None
        self._checked: set[tuple[int, ...]] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sc": None, "_pid": None, "_cache": OrderedDict(), "_cached": 0,
                "_arr": None}

    def _sidecar(self) -> Sidecar:
        if self._sc is None or self._pid != os.getpid():
            self._sc = open_sidecar(self.path, storage_options=self.storage_options)
            self._pid = os.getpid()
            self._cache, self._cached, self._arr = OrderedDict(), 0, None
        return self._sc

    def _array(self) -> Any:
        """The decisions' zarr array (opened once per process)."""
        sc = self._sidecar()
        if self._arr is None:
            self._arr = sc.decision_array(self.name)
        return self._arr

    def _index(self, sample: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(int(sample), self.sample_shape)) \
            if self.sample_shape else ()

    def __call__(self, sample: int, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        arr = self._array()
        n = int(np.prod([b - a for a, b in zip(lo, hi, strict=True)]))
        if not self.validate or n * 16 > DECISION_CACHE_BYTES:
            # the start-up count (slabs, read once) or a huge box: read through, cache nothing
            return self._sidecar().decision_block(self.name, sample, lo, hi)
        idx = self._index(sample)
        ch = arr.chunks
        ns = self.n_sample_dims
        full = (*idx, *lo), (*[i + 1 for i in idx], *hi)
        ranges = [range(a // c, (b - 1) // c + 1) for a, b, c in zip(*full, ch, strict=True)]
        out = np.empty([b - a for a, b in zip(lo, hi, strict=True)], bool)
        for key in itertools.product(*ranges):
            block = self._chunk(arr, key)
            src, dst = [], []
            for d, k in enumerate(key):
                start = k * ch[d]
                a, b = max(full[0][d], start), min(full[1][d], start + block.shape[d])
                src.append(a - start if d < ns else slice(a - start, b - start))
                if d >= ns:
                    dst.append(slice(a - full[0][d], b - full[0][d]))
            out[tuple(dst)] = block[tuple(src)]
        return out

    def _chunk(self, arr: Any, key: tuple[int, ...]) -> np.ndarray:
        block = self._cache.get(key)
        if block is not None:
            self._cache.move_to_end(key)
            return block
        sl = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in
                   zip(key, arr.chunks, arr.shape, strict=True))
        block = np.asarray(arr[sl], dtype=bool)
        if self.validate and key not in self._checked:
            self._check_box(sl, block)
            self._checked.add(key)
        self._cache[key] = block
        self._cached += block.nbytes
        while self._cached > DECISION_CACHE_BYTES and len(self._cache) > 1:
            self._cached -= self._cache.popitem(last=False)[1].nbytes
        return block

    def check_weights(self, sample: int, lo: Sequence[int], hi: Sequence[int]) -> None:
        """Raise unless the stored weights of the box are 1 (kept) or ``filtered_patch_prob``
        (background), as the sampler assumes."""
        idx = self._index(sample)
        sl = (*idx, *[slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)])
        fo = np.asarray(self._array()[sl], dtype=bool)
        self._check_box(sl, fo)

    def _check_box(self, sl: tuple[Any, ...], fo: np.ndarray) -> None:
        w = np.asarray(self._sidecar().decision_array(self.name, "weight")[sl], np.float64)
        where = f"regions {sl}"
        if not (np.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()):
            bad = w[~(np.isfinite(w) & (w >= 0) & (w <= 1))].ravel()[:3].tolist()
            raise ConfigError(
                f"side-car {self.path!r}, filter {self.name!r}: region weights must lie in [0, 1] "
                f"(relative probabilities); {where} hold {bad}. Fix: recompute the decisions "
                "(`patchsieve compute` or `patchsieve.analysis.apply_threshold`).")
        if not np.array_equal(w, np.where(fo, self.background_weight, 1.0)):
            raise SidecarMismatchError(
                f"side-car {self.path!r}, filter {self.name!r}: {where} have weights other than "
                f"1 (kept) / filtered_patch_prob={self.background_weight} (background). Fix: "
                "recompute the decisions (`patchsieve compute` or "
                "`patchsieve.analysis.apply_threshold`).")


def make_sampler(sc: Sidecar, name: str, sampling: SamplingOptions,
                 chunk_shape: Sequence[int]) -> StreamingPatching:
    """The streamed CAREamics sampler over the side-car's decisions (read block by block),
    checked against the side-car's stored per-sample totals and (box by box) weights."""
    pf = float(sc.config(name).filtered_patch_prob)
    rows = int(sc.decision_array(name).chunks[len(sc.sample_dims)])
    reader = DecisionReader(sc, name, pf)
    sp = StreamingPatching(
        [sc.shape[d] for d in sc.spatial_dims], [sc.patch_size[d] for d in sc.spatial_dims],
        reader, n_samples=sc.n_samples, background_weight=pf,
        mode=sampling.mode, seed=sampling.seed, epoch_length=sampling.epoch_length,  # type: ignore[arg-type]
        chunk_shape=chunk_shape, decision_rows=rows)
    _check_totals(sc, name, sp, pf)
    reader.check_weights(*sp.tile_box(0))  # fail fast; later every tile read is checked
    reader.validate = True
    return sp


def _check_totals(sc: Sidecar, name: str, sp: StreamingPatching, pf: float) -> None:
    """The decisions read block by block must agree with the side-car's stored totals."""
    totals = sc.sample_totals(name)
    n_bg = np.asarray(totals["n_background"]).reshape(-1)
    n_regions = np.asarray(totals["n_regions"]).reshape(-1)
    expected_w = (n_regions - n_bg) + n_bg * pf
    problems = []
    if not np.array_equal(n_bg, sp.n_background):
        problems.append(f"n_background {n_bg.tolist()[:4]} vs {sp.n_background.tolist()[:4]} counted")
    if not np.allclose(np.asarray(totals["weight_sum"]).reshape(-1), expected_w, rtol=1e-9):
        problems.append("weights other than 1 (kept) / filtered_patch_prob (background)")
    if sp.mode == "per_epoch" and not np.array_equal(
            np.asarray(totals["n_patches_per_epoch"]).reshape(-1), sp.n_patches_per_sample):
        problems.append("n_patches_per_epoch differs from CAREamics' count of the decisions")
    if problems:
        raise SidecarMismatchError(
            f"side-car {sc.path!r}, filter {name!r}: {'; '.join(problems)}. Fix: recompute the "
            "side-car (`patchsieve compute ... --overwrite`) or change its threshold with "
            "`patchsieve.analysis.apply_threshold`, which rewrite decisions and totals together.")
