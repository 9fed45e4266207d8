"""``PatchDataset`` (private module; see :mod:`patchsieve.dataset`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from patchsieve.dataset._batches import _batch_items, _BatchRing
from patchsieve.dataset._chunks import _BlockCuts, _ChunkReader, _PatchBoxes
from patchsieve.dataset._setup import (
    OutputOptions,
    SamplingOptions,
    SourceOptions,
    get_sidecar,
    make_sampler,
    norm_stats,
    rank_and_world,
    resolve_channels,
    source_reader,
    target_reader,
)
from patchsieve.dataset._state import MAX_WORKERS, ReadCounters, SharedEpochState
from patchsieve.errors import ConfigError
from patchsieve.sampling import ShardStream

if TYPE_CHECKING:
    from patchsieve.dataset._loader import PatchLoader

logger = logging.getLogger(__name__)

PREPARE_BLOCK = 4096  # patches whose geometry is prepared at once (cache look-ahead: 2 blocks)


# --------------------------------------------------------------------------- dataset
class PatchDataset(IterableDataset):
    """Patches drawn with a side-car's region weights, streamed from chunked storage.

    Parameters
    ----------
    source : str, path-like or numpy.ndarray, optional
        The input volume (Zarr / OME-Zarr, local path or fsspec URL). Default: the side-car's
        source.
    patch_size : sequence of int or mapping, optional
        Patch size (CAREamics order). Required without ``sidecar``; must equal the side-car's.
    patch_filter_config : PatchFilterConfig, optional
        The filter (e.g. ``ShannonPatchFilterConfig(threshold=7.5)``). Without ``sidecar`` the
        filter pass runs (or a matching complete side-car at the default location is reused).
    sidecar : str, path-like or Sidecar, optional
        A completed side-car.
    target : str, path-like or numpy.ndarray, optional
        Paired target volume (CARE / N2N), read at the same location; same sizes except ``c``.
    filter_name : str, optional
        Which filter of the side-car to use (default: the one matching ``patch_filter_config``,
        or the only one).
    mode : {"per_epoch", "with_replacement", "fixed_subset"}
        Sampling mode (:mod:`patchsieve.sampling`); ``per_epoch`` is CAREamics' semantics.
    channels, target_channels : int or sequence of int, optional
        Channels to return (default all).
    seed : int
        Seed of the epoch plans.
    epoch_length : int, optional
        Patches per epoch for ``with_replacement``.
    shuffle_window : int, optional
        Chunks per run of the chunk-aware execution order (:mod:`patchsieve.sampling`): a batch
        mixes patches of up to this many neighbouring storage chunks, each decoded about once
        per epoch. Default: what half of ``cache_bytes`` holds (see :meth:`window`); 0 = plan
        order (every patch may need a fresh chunk).
    cache_bytes : int
        Bound of the per-worker cache of decoded chunks (input and target each).
    normalize : bool
        Standardise input channels with the side-car's stored per-channel mean/std.
    transform : callable, optional
        ``transform(x, y) -> (x, y)`` on numpy arrays ``(C, [Z,] Y, X)`` (``y`` None without
        target), e.g. :class:`patchsieve.transforms.RandomFlipRotate`.
    return_metadata : bool
        Also yield a dict: sample index, origin, region, region weight, is_background.
    storage_options, target_storage_options : mapping, optional
        fsspec options (credentials, endpoint) of the source and target.
    rank, world_size : int, optional
        DDP rank and world size (default: ``torch.distributed`` when initialised, else 0/1).
    axes, level : optional
        Passed to the filter pass / volume opening.
    client : distributed.Client, optional
        Client for the filter pass when it runs.
    sidecar_timeout : float
        Seconds non-zero ranks wait for rank 0's side-car.
    batch_size : int, optional
        Collate batches inside the dataset (in the DataLoader worker): every patch is cut
        straight into its slot of a preallocated float32 batch, which saves a copy and the
        per-patch tensors. The batches equal those of ``DataLoader(batch_size=batch_size)``
        over the per-patch dataset (same patches, same order, same values; each worker batches
        its own shard). Use with :meth:`loader` / :class:`PatchLoader` (they pass
        ``batch_size=None`` to the DataLoader). Default None: single patches.
    drop_last : bool
        With ``batch_size``: drop each worker's last short batch (as the DataLoader's
        ``drop_last`` does).

    Notes
    -----
    ``len(dataset)`` is the number of patches of this rank per epoch (also with
    ``batch_size``). Iterating yields ``x`` (a float32 tensor ``(C, [Z,] Y, X)``), ``(x, y)``
    with a target, plus ``meta`` last when ``return_metadata``; with ``batch_size`` a batch
    ``(B, C, [Z,] Y, X)`` or a list ``[x, y(, meta)]`` whose ``meta`` holds one tensor per key,
    as ``default_collate`` returns them.
    """

    def __init__(
        self,
        source: Any = None,
        *,
        patch_size: Sequence[int] | Mapping[str, int] | None = None,
        patch_filter_config: Any = None,
        sidecar: Any = None,
        target: Any = None,
        filter_name: str | None = None,
        mode: str = "per_epoch",
        channels: int | Sequence[int] | None = None,
        target_channels: int | Sequence[int] | None = None,
        seed: int = 0,
        epoch_length: int | None = None,
        shuffle_window: int | None = None,
        cache_bytes: int = 256 * 2**20,
        normalize: bool = False,
        transform: Callable[..., Any] | None = None,
        return_metadata: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        target_storage_options: Mapping[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        axes: str | None = None,
        level: int = 0,
        client: Any = None,
        sidecar_timeout: float = 3600.0,
        batch_size: int | None = None,
        drop_last: bool = False,
    ):
        super().__init__()
        out = OutputOptions(channels, target_channels, bool(normalize), transform,
                            bool(return_metadata), None if batch_size is None else batch_size,
                            bool(drop_last), cache_bytes)
        rank, world_size = rank_and_world(rank, world_size)
        sampling = SamplingOptions(mode, int(seed), epoch_length, shuffle_window, rank,
                                   world_size)
        opts = SourceOptions(source, sidecar, patch_size, patch_filter_config, filter_name,
                             target, storage_options, target_storage_options, axes, level,
                             client, sidecar_timeout)
        self.source_options, self.sampling_options, self.output_options = opts, sampling, out
        sc = get_sidecar(opts, sampling)
        self.sidecar_path = str(getattr(sc, "path", ""))
        self.filter_name = sc.resolve_filter(filter_name, patch_filter_config)
        sc.require_patch_size(patch_size)
        self.dims = tuple(sc.dims)
        self.spatial_dims = tuple(sc.spatial_dims)
        self.sample_dims = tuple(sc.sample_dims)
        self.sample_shape = tuple(sc.sample_shape)
        self.patch_size = tuple(int(sc.patch_size[d]) for d in self.spatial_dims)
        self._boxes = _PatchBoxes(self.sample_dims, self.sample_shape, self.spatial_dims,
                                  self.patch_size)
        shape = dict(sc.shape)
        self.channels = resolve_channels(channels, shape.get("c", 1), "channels")
        self._norm = norm_stats(sc, self.channels, len(self.spatial_dims)) if normalize else None
        self._reader = source_reader(sc, opts, self.cache_bytes)
        #: the epoch plans: CAREamics StratifiedPatching, streamed tile by tile from the
        #: side-car's decisions (plan state independent of the number of regions)
        self.sampler = make_sampler(sc, self.filter_name, sampling, self._chunk_grid()[0])
        self._target_reader: _ChunkReader | None = None
        self.target_channels: list[int] = []
        if target is not None:
            self._target_reader, self.target_channels = target_reader(
                opts, shape, target_channels, self.cache_bytes)
        self._state = SharedEpochState()  # shared with DataLoader workers, persistent ones too
        self._reads = ReadCounters()
        self._main_position = 0
        self._ring: _BatchRing | None = None  # set by a PatchLoader while it starts its workers
        # (batch_size, drop_last) a PatchLoader asks for while it starts iterating (None: own)
        self._loader_batching: tuple[int, bool] | None = None
        self._main_epoch = -1

    # ---- options (grouped in source_options, sampling_options and output_options)
    @property
    def mode(self) -> str:
        """Sampling mode."""
        return self.sampling_options.mode

    @property
    def seed(self) -> int:
        """Seed of the epoch plans."""
        return self.sampling_options.seed

    @property
    def rank(self) -> int:
        """DDP rank of this dataset."""
        return self.sampling_options.rank

    @property
    def world_size(self) -> int:
        """DDP world size."""
        return self.sampling_options.world_size

    @property
    def shuffle_window(self) -> int | None:
        """Chunks per run of the execution order (None: automatic, see :meth:`window`)."""
        sw = self.sampling_options.shuffle_window
        return None if sw is None else int(sw)

    @property
    def cache_bytes(self) -> int:
        """Bound of the per-worker cache of decoded chunks."""
        return int(self.output_options.cache_bytes)

    @property
    def batch_size(self) -> int | None:
        """Batch size of in-dataset batching (None: single patches)."""
        bs = self.output_options.batch_size
        return None if bs is None else int(bs)

    @property
    def drop_last(self) -> bool:
        """Whether each worker's last short batch is dropped."""
        return self.output_options.drop_last

    @property
    def transform(self) -> Callable[..., Any] | None:
        """The ``transform(x, y)`` applied to every item."""
        return self.output_options.transform

    @property
    def return_metadata(self) -> bool:
        """Whether items carry their metadata dict."""
        return self.output_options.return_metadata

    # ---- epochs and resume
    @property
    def epoch(self) -> int:
        """The current epoch (shared with DataLoader workers)."""
        return self._state.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch plan; visible to persistent workers."""
        if int(epoch) < 0:
            raise ConfigError(f"epoch must be >= 0; got {epoch}.")
        self._state.epoch = int(epoch)

    def __len__(self) -> int:
        return self.sampler.epoch_length // self.world_size

    def shard_stream(self, epoch: int, worker: int = 0, num_workers: int = 0,
                     start: int = 0) -> ShardStream:
        """One worker's patches of ``epoch`` in execution order (from position ``start``),
        realised run by run (:class:`patchsieve.sampling.ShardStream`)."""
        return ShardStream(self.sampler, epoch, rank=self.rank, world_size=self.world_size,
                           worker=worker, num_workers=num_workers,
                           window=self.window(num_workers), chunk_shape=self._chunk_grid()[0],
                           start=start)

    def _chunk_grid(self) -> tuple[list[int], list[int]]:
        ch = self._reader.chunks
        spatial_ch = [ch[self.dims.index(d)] for d in self.spatial_dims]
        shape = [self._reader.shape[self.dims.index(d)] for d in self.spatial_dims]
        n = [-(-s // c) for s, c in zip(shape, spatial_ch, strict=True)]
        return spatial_ch, n

    def window(self, num_workers: int = 0) -> int:
        """Chunks per run of the execution order (``shuffle_window`` or the automatic choice).

        Automatic: as many chunks as half the cache holds (room for the neighbours that
        patches straddle), at most ``n_chunks / (2 * workers)`` so that every worker gets runs.
        """
        if self.shuffle_window is not None:
            return self.shuffle_window
        spatial_ch, n = self._chunk_grid()
        arr_ch = self._reader.chunks
        itemsize = np.dtype(self._reader.array().dtype).itemsize
        c_read = 1
        if "c" in self.dims:
            cc = arr_ch[self.dims.index("c")]
            c_read = cc * len({c // cc for c in self.channels})
        chunk_bytes = int(np.prod(spatial_ch)) * c_read * itemsize
        n_chunks = max(int(np.prod(self.sample_shape)), 1) * int(np.prod(n))
        by_cache = max(self.cache_bytes // max(2 * chunk_bytes, 1), 1)
        by_balance = max(-(-n_chunks // (2 * max(int(num_workers), 1))), 1)
        return int(min(by_cache, by_balance))

    def shard_sizes(self, num_workers: int) -> list[int]:
        """Patches per DataLoader worker of this rank (``num_workers=0``: one entry)."""
        nw = max(int(num_workers), 1)
        m = len(self)
        return [len(range(w, m, nw)) for w in range(nw)]

    def state_dict(self) -> dict[str, Any]:
        """Resume state of direct (in-process) iteration; see :meth:`PatchLoader.state_dict`."""
        return {
            "seed": self.seed,
            "mode": self.mode,
            "epoch": self.epoch,
            "num_workers": 0,
            "positions": [int(self._main_position) if self._main_epoch == self.epoch else 0],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume mid-epoch: the next iteration of ``state['epoch']`` skips consumed patches."""
        missing = [k for k in ("seed", "mode", "epoch", "positions")
                   if not isinstance(state, Mapping) or k not in state]
        if missing:
            raise ConfigError(
                f"state lacks {missing}; it was not made by PatchDataset.state_dict(). Fix: pass "
                "the dict that state_dict() returned."
            )
        if int(state["seed"]) != self.seed or state["mode"] != self.mode:
            raise ConfigError(
                f"state was saved with seed={state['seed']}, mode={state['mode']!r}; this dataset "
                f"has seed={self.seed}, mode={self.mode!r}. Fix: build the dataset with the same "
                "seed and mode."
            )
        self._state.set_resume(int(state["epoch"]), int(state.get("num_workers", 0)),
                               [int(p) for p in state["positions"]])

    # ---- iteration
    def __iter__(self) -> Iterator[Any]:
        # read now (iter() runs inside the loader's start, before it clears the request)
        batch_size, drop_last = self._loader_batching or (self.batch_size, self.drop_last)
        return self._iterate(batch_size, drop_last)

    def _iterate(self, batch_size: int | None, drop_last: bool) -> Iterator[Any]:
        info = get_worker_info()
        worker, nw = (0, 0) if info is None else (info.id, info.num_workers)
        if nw > MAX_WORKERS:
            raise ConfigError(f"num_workers must be <= {MAX_WORKERS}; got {nw}.")
        if info is not None:
            torch.set_num_threads(1)
        epoch = self.epoch
        start = self._state.take_position(epoch, worker, nw)
        todo = self.shard_stream(epoch, worker, nw, start)
        n_shard = start + len(todo)
        if info is None:
            self._main_epoch, self._main_position = epoch, start
        slot = worker if info is not None else ReadCounters.MAIN
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, self.rank, worker]))
        if self.transform is not None and hasattr(self.transform, "reseed"):
            self.transform.reseed(rng)
        self._stats_base = self._reads.row(slot).copy()
        self._counters0 = self._counters()
        readers = [(self._reader, self.channels)]
        if self._target_reader is not None:
            readers.append((self._target_reader, self.target_channels))
        # geometry prepared block by block (bounded memory, fast first batch); a block is a
        # whole number of batches
        block = PREPARE_BLOCK if batch_size is None else batch_size * max(
            1, PREPARE_BLOCK // batch_size
        )
        blocks = _BlockCuts(self._boxes, todo, readers, block)
        cuts = [functools.partial(blocks, k) for k in range(len(readers))]
        if batch_size is not None:
            for b0 in range(0, len(todo), batch_size):
                b1 = min(b0 + batch_size, len(todo))
                if drop_last and b1 - b0 < batch_size:
                    break
                batch = self._load_batch(todo, blocks, b0, b1)
                self._record(slot, b1)
                if info is None:
                    self._main_position += b1 - b0
                yield batch
            self._record(slot, n_shard - start)
            return
        i = 0
        for part in todo.blocks(block):
            for entry in part:
                item = self._load(entry, [c(i) for c in cuts], None)
                if i % 32 == 0:
                    self._record(slot, i + 1)
                if info is None:
                    self._main_position += 1
                i += 1
                yield item
        self._record(slot, n_shard - start)

    def _load_batch(self, todo: np.ndarray, blocks: _BlockCuts, b0: int, b1: int) -> Any:
        """Patches ``b0:b1`` of ``todo`` cut straight into one batch, as ``default_collate``
        would stack the per-patch items (same values, dtypes and structure).

        Inside a worker of a :class:`PatchLoader` the batch goes into a slot of the loader's
        :class:`_BatchRing` and a small :class:`_RingBatch` message is returned instead (the
        loader turns it back into the batch).
        """
        outs, tensors = [], []
        info = get_worker_info()
        ring = self._ring if info is not None else None
        slot = ring.acquire(info.id) if ring is not None else None
        for k, (_, chans) in enumerate(blocks.readers):
            shape = (b1 - b0, len(chans), *self.patch_size)
            if slot is not None:  # a reused shared-memory slot: no new segment per batch
                t = ring.view(k, info.id, slot, b1 - b0)
                out = t.numpy()
            elif info is not None:  # like default_collate: straight into shared memory
                t = torch.empty(shape, dtype=torch.float32).share_memory_()
                out = t.numpy()
            else:
                out = np.empty(shape, np.float32)
                t = torch.from_numpy(out)
            blocks.fill(k, b0, b1, out)
            outs.append(out)
            tensors.append(t)
        x = outs[0]
        y = outs[1] if len(outs) > 1 else None
        if self.transform is None:
            if self._norm is not None:
                x -= self._norm[0]
                x /= self._norm[1]
        else:
            for k in range(b1 - b0):
                xk = x[k]
                if self._norm is not None:
                    xk = (xk - self._norm[0]) / self._norm[1]
                res = self.transform(xk, y[k] if y is not None else None)
                if not isinstance(res, tuple) or len(res) != 2:
                    raise ConfigError(
                        f"transform must return (x, y) (y None without a target); got "
                        f"{type(res).__name__}. Fix: return both arrays, e.g. `return x, y`."
                    )
                x[k] = res[0]
                if y is not None:
                    y[k] = res[1]
        meta = None
        if self.return_metadata:
            part = todo[b0:b1]
            meta = {
                "sample": part["sample"].astype(np.int64),
                # a copy: a one-row field view passes as contiguous with the record stride
                "origin": np.array(part["origin"], dtype=np.int64, copy=True),
                "region": part["region"].astype(np.int64),
                "weight": part["weight"].astype(np.float64),
                "is_background": part["background"].astype(bool),
            }
        if slot is not None:
            return ring.message(info.id, slot, b1 - b0, meta)
        return _batch_items(tensors, meta)

    def _counters(self) -> np.ndarray:
        r, t = self._reader, self._target_reader
        return np.array(
            [
                0.0,
                r.hits + (t.hits if t else 0),
                r.misses + (t.misses if t else 0),
                r.bytes_read + (t.bytes_read if t else 0),
            ]
        )

    def _record(self, slot: int, done: int) -> None:
        """Publish this iteration's read counters to the shared table (cumulative per slot)."""
        row = self._reads.row(slot)  # a view of the shared table: no tensor per call
        row[:] = self._stats_base + self._counters() - self._counters0
        row[0] = self._stats_base[0] + done

    def _box(
        self, dims: Sequence[str], chans: Sequence[int], sample: Sequence[int], origin: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """Box ``[lo, hi)`` of one patch in the reader's dims (used by the benchmark baseline)."""
        return self._boxes.box(dims, chans, sample, origin)

    def _load(
        self, entry: np.ndarray, patches: Sequence[np.ndarray], origin: Sequence[int] | None = None
    ) -> Any:
        x = patches[0]
        if self._norm is not None:
            x = (x - self._norm[0]) / self._norm[1]
        y = patches[1] if len(patches) > 1 else None
        if self.transform is not None:
            out = self.transform(x, y)
            if not isinstance(out, tuple) or len(out) != 2:
                raise ConfigError(
                    f"transform must return (x, y) (y None without a target); got "
                    f"{type(out).__name__}. Fix: return both arrays, e.g. `return x, y`."
                )
            x, y = out
        out: list[Any] = [torch.from_numpy(np.ascontiguousarray(x))]
        if y is not None:
            out.append(torch.from_numpy(np.ascontiguousarray(y)))
        if self.return_metadata:
            out.append(
                {
                    "sample": int(entry["sample"]),
                    "origin": torch.as_tensor(entry["origin"].tolist() if origin is None else origin),
                    "region": int(entry["region"]),
                    "weight": float(entry["weight"]),
                    "is_background": bool(entry["background"]),
                }
            )
        return out[0] if len(out) == 1 else tuple(out)

    # ---- audit
    def audit(self, epochs: int = 1) -> dict[str, Any]:
        """Sampling audit: realized vs expected background share, visits, reads, cache.

        The realized numbers are computed from this rank's plans of ``epochs`` epochs starting
        at the current one (what iteration yields), tile by tile: it reads every region's
        decision once and draws every patch of those epochs again (``O(regions + patches)``
        time, one tile in memory); the read numbers from the patches read so far in this
        process and its DataLoader workers.
        """
        sp = self.sampler
        n_ep = max(int(epochs), 1)
        acc = {"bg": 0, "n": 0, "regions": 0, "eligible": 0, "never": 0, "kept_sum": 0,
               "kept_n": 0, "bg_sum": 0, "bg_n": 0, "max": 0}
        hist = np.zeros(1, np.int64)
        layouts = [sp.tile_layout(e) for e in range(self.epoch, self.epoch + n_ep)]
        n_keep = [int(lay[0].sum()) - int(lay[0].sum()) % self.world_size for lay in layouts]
        for u in range(sp.tiles.n_tiles):
            background, expected = sp.tile_expectations(u)
            _, lo, _ = sp.tile_box(u)
            visits = np.zeros(background.size, np.int64)
            for e, (tile_n, _, plan_pos), keep in zip(range(self.epoch, self.epoch + n_ep), layouts,
                                                       n_keep, strict=True):
                if not tile_n[u]:
                    continue
                plan = sp.realize(e, u)
                pos = plan_pos[u] + np.arange(plan.size)
                plan = plan[(pos < keep) & (pos % self.world_size == self.rank)]
                acc["bg"] += int(plan["background"].sum())
                acc["n"] += plan.size
                coords = np.stack(np.unravel_index(plan["region"], sp.grid_shape), axis=1) - lo
                np.add.at(visits, np.ravel_multi_index(tuple(coords.T), background.shape), 1)
            bg, eligible = background.ravel(), expected.ravel() > 0
            acc["regions"] += bg.size
            acc["eligible"] += int(eligible.sum())
            acc["never"] += int(((visits == 0) & eligible).sum())
            acc["kept_sum"] += int(visits[~bg].sum())
            acc["kept_n"] += int((~bg).sum())
            acc["bg_sum"] += int(visits[bg].sum())
            acc["bg_n"] += int(bg.sum())
            acc["max"] = max(acc["max"], int(visits.max(initial=0)))
            h = np.bincount(visits[eligible])
            hist = np.pad(hist, (0, max(0, h.size - hist.size)))
            hist[: h.size] += h
        reads = self._reads.totals()
        patches, hits, misses = reads["patches"], reads["hits"], reads["misses"]
        nbytes = reads["bytes_read"]
        return {
            "epochs": n_ep,
            "patches": acc["n"],
            "expected_background_fraction": sp.expected_background_fraction(),
            "realized_background_fraction": acc["bg"] / acc["n"] if acc["n"] else 0.0,
            "visits": {
                "regions": acc["regions"],
                "eligible_regions": acc["eligible"],
                "never_visited_eligible": acc["never"],
                "kept_mean": acc["kept_sum"] / acc["kept_n"] if acc["kept_n"] else 0.0,
                "background_mean": acc["bg_sum"] / acc["bg_n"] if acc["bg_n"] else 0.0,
                "max": acc["max"],
                "quantiles": _hist_quantiles(hist, (5, 50, 95)),
            },
            "patches_read": int(patches),
            "bytes_read_per_patch": nbytes / patches if patches else 0.0,
            "chunk_cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        }

    def loader(self, **kwargs: Any) -> PatchLoader:
        """A :class:`PatchLoader` (``torch.utils.data.DataLoader``) over this dataset."""
        from patchsieve.dataset._loader import PatchLoader

        return PatchLoader(self, **kwargs)


def _hist_quantiles(hist: np.ndarray, qs: Sequence[float]) -> dict[str, float]:
    """``np.percentile`` (linear interpolation) of the values whose histogram is ``hist``."""
    n = int(hist.sum())
    if n == 0:
        return {f"p{q}": 0.0 for q in qs}
    cum = np.cumsum(hist)
    out = {}
    for q in qs:
        pos = (n - 1) * q / 100.0
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        v_lo = int(np.searchsorted(cum, lo, side="right"))
        v_hi = int(np.searchsorted(cum, hi, side="right"))
        out[f"p{q}"] = float(v_lo + (v_hi - v_lo) * (pos - lo))
    return out
