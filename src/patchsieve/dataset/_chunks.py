"""Chunk reading and patch cutting for :mod:`patchsieve.dataset` (private).

:class:`_ChunkReader` reads patches of one zarr (or numpy) array through a bounded cache of
decoded chunks: plain local chunks are decoded directly with numcodecs (:class:`_RawChunks`),
zstd/blosc ones in place into arrays recycled from evicted chunks; the cache evicts by Belady's
rule from the known accesses (:func:`_future_uses`) and background threads decode ahead.
:class:`_Cutter` cuts the patches of one block of an execution order, one at a time or a batch
at once grouped by storage chunk; :class:`_BlockCuts` prepares the blocks in turn.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchsieve.errors import SidecarMismatchError
from patchsieve.volume import is_remote, open_zarr_array, read_key

logger = logging.getLogger(__name__)

PREFETCH_THREADS = 2  # background chunk decoders per reader (and process)
PREFETCH_AHEAD = 3  # chunks decoded ahead, in order of first use (at most 1/4 of the cache)
REMOTE_PREFETCH_THREADS, REMOTE_PREFETCH_AHEAD = 16, 48  # object storage: requests wait ~50 ms
GATHER_MIN = 6  # patches of one chunk in a batch cut with one strided gather (fewer: slicing)


# --------------------------------------------------------------------------- chunk reader
class _RawChunks:
    """Whole-chunk decoding of plain Zarr arrays without zarr's async codec pipeline.

    Applies only to arrays with a regular chunk grid, C order, native byte order and at most
    one compressor (zstd, blosc, gzip; zarr v2: any numcodecs compressor and no filters). A
    chunk is read (a file on a local store, one ``get`` on any other store, e.g. object
    storage) and decoded directly with numcodecs, about 1.6x faster than
    ``array[chunk slice]`` here; an absent chunk is the fill value (metadata-only test volumes
    read without zarr too). Anything else (sharding, transposes, filters) is left to zarr:
    :meth:`build` returns None or :meth:`read` None.
    """

    def __init__(self, root: str, chunk_key: Callable[[tuple[int, ...]], str], decode: Any,
                 dtype: np.dtype, chunk_shape: tuple[int, ...], fill_value: Any = 0,
                 store: Any = None):
        self.root, self.chunk_key, self.decode = root, chunk_key, decode
        self.store = store  # a non-local zarr store: bytes through it (``root`` is the prefix)
        self.fill_value = fill_value
        self._fill: np.ndarray | None = None
        self.dtype, self.chunk_shape = dtype, chunk_shape
        codec = getattr(decode, "__self__", None)  # the numcodecs codec of a bound decode
        kind = getattr(codec, "codec_id", None)
        self.inplace = kind if kind in ("zstd", "blosc") else None  # decodes into a given array
        self.nbytes = int(np.prod(chunk_shape)) * dtype.itemsize

    @classmethod
    def build(cls, arr: Any) -> _RawChunks | None:
        """The fast reader of ``arr`` (a ``zarr.Array``), or None where zarr must decode."""
        import sys

        try:
            from zarr.storage import LocalStore

            store, meta = arr.store_path.store, arr.metadata
            dtype = np.dtype(arr.dtype)
            if dtype.kind not in "biuf" or dtype.hasobject:
                return None
            if dtype.itemsize > 1 and (sys.byteorder != "little" or dtype.byteorder == ">"):
                return None
            chunk_shape = tuple(int(c) for c in arr.chunks)
            if meta.zarr_format == 3:
                from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec
                from zarr.core.chunk_grids import RegularChunkGrid

                if not isinstance(meta.chunk_grid, RegularChunkGrid):
                    return None
                codecs = list(meta.codecs)
                if not codecs or type(codecs[0]) is not BytesCodec:
                    return None
                endian = getattr(codecs[0].endian, "value", codecs[0].endian)
                if dtype.itemsize > 1 and endian not in (None, "little"):
                    return None
                import numcodecs

                known = {ZstdCodec: numcodecs.Zstd, BloscCodec: numcodecs.Blosc, GzipCodec: numcodecs.GZip}
                if len(codecs) == 1:
                    decode = None
                elif len(codecs) == 2 and type(codecs[1]) in known:
                    decode = known[type(codecs[1])]().decode
                else:
                    return None
            elif meta.zarr_format == 2:
                if meta.filters or getattr(meta, "order", "C") != "C":
                    return None
                decode = meta.compressor.decode if meta.compressor is not None else None
            else:
                return None
            fill = arr.fill_value if arr.fill_value is not None else 0
            if isinstance(store, LocalStore):
                root = os.path.join(str(store.root), arr.store_path.path)
                return cls(root, meta.encode_chunk_key, decode, dtype, chunk_shape, fill)
            return cls(arr.store_path.path, meta.encode_chunk_key, decode, dtype, chunk_shape, fill,
                       store=store)
        except Exception as err:  # any unexpected layout: zarr decodes
            logger.debug("raw chunk decoding unavailable (%s); zarr decodes", err)
            return None

    def fill(self) -> np.ndarray:
        """The whole-chunk fill value (one shared read-only array: patches are copies)."""
        if self._fill is None:
            self._fill = np.full(self.chunk_shape, self.fill_value, self.dtype)
            self._fill.flags.writeable = False
        return self._fill

    def _bytes(self, key: tuple[int, ...]) -> bytes | None:
        """The encoded chunk (None when absent): a file read, or one store request."""
        name = self.chunk_key(key)
        if self.store is not None:
            return read_key(self.store, f"{self.root}/{name}" if self.root else name)
        try:
            with open(os.path.join(self.root, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def read(self, key: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray | None:
        """The whole decoded chunk ``key`` (the fill value when absent), or None (unexpected
        size).

        zstd and blosc chunks whose header gives the expected size are decoded in place into
        ``out`` (a spare whole-chunk array, else a new one): the arrays can be reused for later
        chunks (:meth:`_ChunkReader._recycle`) instead of allocating, faulting in and freeing
        a chunk's worth of fresh memory per decode. Others decode to a new read-only array.
        """
        data = self._bytes(key)
        if data is None:
            return self.fill()  # an absent chunk reads as the fill value
        if self.inplace and _decoded_size(data, self.inplace) == self.nbytes:
            dest = out if out is not None else np.empty(self.chunk_shape, self.dtype)
            try:
                self.decode(data, out=dest)
                return dest
            except (ValueError, RuntimeError) as err:  # not what the header said: decode anew
                logger.debug("in-place decode of chunk %s failed (%s)", key, err)
        buf = self.decode(data) if self.decode is not None else data
        flat = np.frombuffer(buf, dtype=self.dtype)
        if flat.size * self.dtype.itemsize != self.nbytes:
            return None
        return flat.reshape(self.chunk_shape)


def _decoded_size(data: bytes, kind: str | None) -> int | None:
    """Decoded size announced by a zstd frame or blosc header (None: unknown / other codec)."""
    if kind == "blosc":  # header: version, versionlz, flags, typesize, nbytes (uint32 LE), ...
        return int.from_bytes(data[4:8], "little") if len(data) >= 16 else None
    if kind != "zstd" or len(data) < 6 or data[:4] != b"\x28\xb5\x2f\xfd":
        return None
    desc = data[4]  # zstd frame header descriptor (RFC 8878, 3.1.1.1.1)
    single = (desc >> 5) & 1
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[desc & 3]
    size = (1 if single else 0, 2, 4, 8)[desc >> 6]
    if size == 0 or len(data) < pos + size:
        return None
    value = int.from_bytes(data[pos : pos + size], "little")
    return value + 256 if size == 2 else value


class _ChunkReader:
    """Reads patches from a zarr (or numpy) array through an LRU cache of decoded chunks.

    The zarr array is opened lazily in the process that reads and re-opened when the process
    id changes (fork); pickling drops the handle and the cache (spawn).
    """

    def __init__(
        self,
        url: str | None,
        array_path: str,
        storage_options: Mapping[str, Any] | None,
        shape: Sequence[int],
        chunks: Sequence[int] | None,
        cache_bytes: int,
        array: np.ndarray | None = None,
        dims: Sequence[str] = (),
    ):
        self.url, self.array_path, self.dims = url, array_path, tuple(dims)
        self.fast_decode = True
        #: object storage: many requests in flight (:data:`REMOTE_PREFETCH_THREADS`)
        self.remote = url is not None and is_remote(str(url))
        self.storage_options = dict(storage_options or {})
        self.shape = tuple(int(n) for n in shape)
        self._chunks = tuple(int(c) for c in chunks) if chunks else None
        self.cache_bytes = int(cache_bytes)
        self._numpy = array
        self._arr: Any = None
        self._pid: int | None = None
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._cached = 0
        self._pool: Any = None
        self._pending: dict[tuple[int, ...], Any] = {}
        self._raw: _RawChunks | None = None
        # future accesses of the current iteration (Belady eviction): key -> sorted positions
        self._future: dict[tuple[int, ...], np.ndarray] | None = None
        self.now = 0
        self.hits = self.misses = self.bytes_read = 0
        # whole-chunk arrays decoded in place (reusable once their chunk leaves the cache)
        self._full: dict[tuple[int, ...], np.ndarray] = {}
        self._spare: list[np.ndarray] = []
        self._done: tuple[int, ...] | None = None  # a chunk used once, not cached: recycle next

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(
            _arr=None, _pid=None, _cache=OrderedDict(), _cached=0, _pool=None, _pending={}, _raw=None,
            _future=None, _full={}, _spare=[], _done=None,
        )
        return state

    def _recycle(self, key: tuple[int, ...]) -> None:
        """Chunk ``key`` left the cache (nobody holds it: patches are copies): its array can
        take the next decoded chunk."""
        full = self._full.pop(key, None)
        threads, ahead = self.prefetch_limits
        if full is not None and len(self._spare) < threads + ahead + 2:
            self._spare.append(full)

    def _fetch(self, key: tuple[int, ...]) -> np.ndarray:
        sl = tuple(
            slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, self.chunks, self.shape, strict=True)
        )
        arr = self.array()
        if self._raw is not None:
            try:
                spare = self._spare.pop()  # atomic: decoder threads call this too
            except IndexError:
                spare = None
            block = self._raw.read(key, spare)
            if spare is not None and block is not spare:
                self._spare.append(spare)
            if block is not None:  # edge chunks are stored whole: keep the in-bounds part
                if block.flags.writeable:
                    self._full[key] = block
                return block[tuple(slice(0, s.stop - s.start) for s in sl)]
        return np.asarray(arr[sl])

    @property
    def prefetch_limits(self) -> tuple[int, int]:
        """(decoder threads, chunks decoded ahead at most): many requests in flight for object
        storage (threads wait on the network; the plan's next chunks are known blocks ahead)."""
        if self.remote:
            return REMOTE_PREFETCH_THREADS, REMOTE_PREFETCH_AHEAD
        return PREFETCH_THREADS, PREFETCH_AHEAD

    def prefetch(self, key: tuple[int, ...]) -> None:
        """Start decoding ``key`` in a background thread (codecs release the GIL)."""
        if self._numpy is not None or key in self._cache or key in self._pending:
            return
        self.array()  # (re)open in this process first: the pool belongs to this pid
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(
                max_workers=self.prefetch_limits[0], thread_name_prefix="patchsieve-prefetch"
            )
        self._pending[key] = self._pool.submit(self._fetch, key)

    def array(self) -> Any:
        if self._numpy is not None:
            return self._numpy
        if self._arr is None or self._pid != os.getpid():
            self._arr = open_zarr_array(self.url, self.array_path,
                                        storage_options=self.storage_options)
            self._pid = os.getpid()
            self._cache.clear()
            self._cached = 0
            self._pool, self._pending = None, {}  # threads do not survive fork
            self._full, self._spare, self._done = {}, [], None
            self._raw = _RawChunks.build(self._arr) if self.fast_decode else None
            if tuple(self._arr.shape) != self.shape:
                raise SidecarMismatchError(
                    f"array {self.array_path!r} of {self.url!r} has shape {self._arr.shape}; the "
                    f"side-car describes {self.shape}. Fix: pass the side-car of this source."
                )
        return self._arr

    @property
    def chunks(self) -> tuple[int, ...]:
        if self._chunks is None:
            self._chunks = tuple(int(c) for c in self.array().chunks)
        return self._chunks

    def _chunk(self, key: tuple[int, ...]) -> np.ndarray:
        """Decoded chunk ``key``. The caller copies what it needs before the next call: a
        chunk evicted (or not cached) here is reused for later decodes."""
        if self._done is not None:
            self._recycle(self._done)
            self._done = None
        block = self._cache.get(key)
        if block is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return block
        self.misses += 1
        pending = self._pending.pop(key, None)
        block = pending.result() if pending is not None else self._fetch(key)
        self.bytes_read += block.nbytes
        if self._future is not None:
            cached = self._insert_belady(key, block)
        elif block.nbytes <= self.cache_bytes:
            self._cache[key] = block
            self._cached += block.nbytes
            while self._cached > self.cache_bytes:
                old, blk = self._cache.popitem(last=False)
                self._cached -= blk.nbytes
                self._recycle(old)
            cached = True
        else:
            cached = False
        if not cached:
            self._done = key
        return block

    def plan(self, future: dict[tuple[int, ...], np.ndarray] | None) -> None:
        """Announce the accesses of the coming iteration: ``future[key]`` holds the sorted
        positions (values of :attr:`now`) that read chunk ``key``. The cache then evicts the
        chunk needed furthest ahead (Belady's rule) and keeps none that is not needed again,
        so a chunk is decoded about once per pass whatever the order. None: plain LRU."""
        self._future, self.now = future, 0

    def _next_use(self, key: tuple[int, ...]) -> float:
        uses = self._future.get(key) if self._future is not None else None
        if uses is None:
            return float("inf")
        j = int(np.searchsorted(uses, self.now, side="left"))
        return float(uses[j]) if j < len(uses) else float("inf")

    def _insert_belady(self, key: tuple[int, ...], block: np.ndarray) -> bool:
        """Cache ``block`` unless it is never needed again; evict by Belady's rule. Returns
        whether it was cached."""
        if block.nbytes > self.cache_bytes or self._next_use(key) == float("inf"):
            return False
        self._cache[key] = block
        self._cached += block.nbytes
        while self._cached > self.cache_bytes:
            victim = max(self._cache, key=self._next_use)
            self._cached -= self._cache.pop(victim).nbytes
            if victim != key:  # the caller still needs `key` now: it is recycled later
                self._recycle(victim)
        return key in self._cache

    def read_into(
        self, lo: Sequence[int], hi: Sequence[int], out: np.ndarray, is_sample: Sequence[bool]
    ) -> None:
        """Write the box ``[lo, hi)`` into ``out`` chunk by chunk (no intermediate copy).

        ``out`` has the box's dims without those flagged in ``is_sample`` (extent 1 there);
        values are cast to ``out.dtype``.
        """
        if self._arr is None or self._pid != os.getpid():
            self.array()
        ch = self.chunks
        ranges = [range(a // c, (b - 1) // c + 1) for a, b, c in zip(lo, hi, ch, strict=True)]
        for k in itertools.product(*ranges):
            block = self._chunk(k)
            src, dst = [], []
            for d, kk in enumerate(k):
                start = kk * ch[d]
                a, b = max(lo[d], start), min(hi[d], start + block.shape[d])
                if is_sample[d]:
                    src.append(a - start)
                else:
                    src.append(slice(a - start, b - start))
                    dst.append(slice(a - lo[d], b - lo[d]))
            out[tuple(dst)] = block[tuple(src)]

    def read(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """The box ``[lo, hi)`` (all dims), assembled from cached chunks (may be a view)."""
        if self._numpy is not None:  # in-memory source: plain slicing
            return self._numpy[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        if self._arr is None or self._pid != os.getpid():
            self.array()
        ch = self.chunks
        c0 = [a // c for a, c in zip(lo, ch, strict=True)]
        c1 = [(b - 1) // c for b, c in zip(hi, ch, strict=True)]
        if c0 == c1:  # inside one chunk (the common case): a view of the cached block
            block = self._chunk(tuple(c0))
            return block[
                tuple(slice(a - k * c, b - k * c) for a, b, k, c in zip(lo, hi, c0, ch, strict=True))
            ]
        out = np.empty([b - a for a, b in zip(lo, hi, strict=True)], dtype=self._arr.dtype)
        for k in itertools.product(*[range(s, e + 1) for s, e in zip(c0, c1, strict=True)]):
            block = self._chunk(k)
            src, dst = [], []
            for d, kk in enumerate(k):
                start = kk * ch[d]
                a, b = max(lo[d], start), min(hi[d], start + block.shape[d])
                src.append(slice(a - start, b - start))
                dst.append(slice(a - lo[d], b - lo[d]))
            out[tuple(dst)] = block[tuple(src)]
        return out


# --------------------------------------------------------------------------- patch cutting
@dataclass(frozen=True)
class _PatchBoxes:
    """Where the patches of plan entries lie in a reader's array (its dims in any order)."""

    sample_dims: tuple[str, ...]
    sample_shape: tuple[int, ...]
    spatial_dims: tuple[str, ...]
    patch_size: tuple[int, ...]

    def boxes(self, dims: Sequence[str], chans: Sequence[int],
              part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Box origins ``(n, ndim)`` in ``dims`` and the box size of plan entries ``part``."""
        lo = np.empty((len(part), len(dims)), np.int64)
        size = np.ones(len(dims), np.int64)
        smp = np.unravel_index(part["sample"], self.sample_shape) if self.sample_shape else ()
        for j, d in enumerate(dims):
            if d in self.sample_dims:
                lo[:, j] = smp[self.sample_dims.index(d)]
            elif d == "c":
                lo[:, j], size[j] = min(chans), max(chans) - min(chans) + 1
            else:
                k = self.spatial_dims.index(d)
                lo[:, j], size[j] = part["origin"][:, k], self.patch_size[k]
        return lo, size

    def box(self, dims: Sequence[str], chans: Sequence[int], sample: Sequence[int],
            origin: Sequence[int]) -> tuple[list[int], list[int]]:
        """Box ``[lo, hi)`` of one patch in ``dims`` (used by the benchmark baseline)."""
        lo, hi = [], []
        for d in dims:
            if d in self.sample_dims:
                i = sample[self.sample_dims.index(d)]
                lo.append(i)
                hi.append(i + 1)
            elif d == "c":
                lo.append(min(chans))
                hi.append(max(chans) + 1)
            else:
                k = self.spatial_dims.index(d)
                lo.append(origin[k])
                hi.append(origin[k] + self.patch_size[k])
        return lo, hi


class _Cutter:
    """Patches ``b0:b1`` of an execution order, cut from one reader; the chunk cache is told
    the accesses of ``b0:b2`` (the look-ahead of its eviction rule and of the decoders).

    ``cut(i, out=None)`` writes patch ``i`` as float32 ``(C, [Z,] Y, X)``; :meth:`fill` writes
    a run of patches into the slots of a batch with a few array operations per storage chunk
    (not per patch). Patches inside one chunk are cast straight from the cached block;
    patches straddling chunks are assembled piece by piece into their slot. Chunks are decoded
    ahead in background threads in order of first use.
    """

    def __init__(self, ds: _PatchBoxes, reader: _ChunkReader, chans: Sequence[int],
                 todo: np.ndarray, b0: int, b1: int, b2: int):
        dims = reader.dims
        lo, size = ds.boxes(dims, chans, todo[b0:b1])
        self.reader, self.b0 = reader, b0
        self.is_sample = [d in ds.sample_dims for d in dims]
        kept = [d for d in dims if d not in ds.sample_dims]
        self.perm = ([kept.index("c")] + [i for i, d in enumerate(kept) if d != "c"]
                     if "c" in kept else None)
        csel = [c - min(chans) for c in chans] if "c" in kept else None
        if csel is not None and csel == list(range(size[dims.index("c")])):
            csel = None
        self.csel = csel
        self.inv = np.argsort(self.perm).tolist() if self.perm is not None else None
        self.out_shape = (len(chans), *ds.patch_size)
        self.sizes = size.tolist()
        self.lo = lo
        nd = self.nd = len(dims)
        self.window = [1 if self.is_sample[j] else self.sizes[j] for j in range(nd)]
        self.keep_axes = [j for j in range(nd) if not self.is_sample[j]]
        if reader._numpy is not None:
            self.single = np.ones(len(lo), bool)
            self.loc, self.cid = lo, np.zeros(len(lo), np.int64)
            self.c0 = np.zeros_like(lo)
            self.prefetch = False
            return
        ch = np.asarray(reader.chunks, np.int64)
        c0 = lo // ch
        self.single = ((lo + size - 1) // ch == c0).all(axis=1)
        self.loc, self.c0 = lo - c0 * ch, c0
        grid = [-(-n // c) for n, c in zip(reader.shape, reader.chunks, strict=True)]
        self.cid = np.ravel_multi_index(tuple(c0.T), grid) if nd else np.zeros(len(lo), np.int64)
        ahead_lo = lo if b2 == b1 else ds.boxes(dims, chans, todo[b0:b2])[0]
        future = _future_uses(ahead_lo // ch, (ahead_lo + size - 1) // ch)
        for k in future:
            future[k] += b0
        reader.plan(future)
        reader.now = b0
        # upcoming distinct chunks by first use, `depth` of them decoding ahead
        ahead = reader.prefetch_limits[1]
        self.prefetch = ahead > 0
        self.keys = sorted(future, key=lambda k: int(future[k][0]))
        self.first_use = np.asarray([int(future[k][0]) for k in self.keys], np.int64)
        chunk_bytes = int(np.prod(reader.chunks)) * np.dtype(reader.array().dtype).itemsize
        self.depth = max(1, min(ahead, reader.cache_bytes // max(4 * chunk_bytes, 1)))
        self.submitted = 0

    def _ahead(self, i: int) -> None:
        """Keep ``depth`` chunks beyond those in use at position ``i`` decoding."""
        in_use = int(np.searchsorted(self.first_use, i, side="right"))
        stop = min(in_use + self.depth, len(self.keys))
        while self.submitted < stop:
            self.reader.prefetch(self.keys[self.submitted])
            self.submitted += 1

    def _block(self, p: int) -> np.ndarray:
        if self.reader._numpy is not None:
            return self.reader._numpy
        return self.reader._chunk(tuple(self.c0[p].tolist()))

    def _straddling(self, p: int, out: np.ndarray) -> None:
        """Patch ``p`` (relative) crossing chunk borders, assembled into ``out``."""
        a = self.lo[p].tolist()
        hi = [a[j] + self.sizes[j] for j in range(self.nd)]
        if self.perm is None or self.csel is None:  # straight into the output
            view = out[0] if self.perm is None else out.transpose(self.inv)
            self.reader.read_into(a, hi, view, self.is_sample)
            return
        box = self.reader.read(a, hi)
        box = box[tuple(0 if s else slice(None) for s in self.is_sample)]
        out[...] = box.transpose(self.perm)[self.csel]

    def _arrange(self, box: np.ndarray, lead: int = 0) -> np.ndarray:
        """Kept-dims ``box`` (after ``lead`` stacking axes) as ``(..., C, [Z,] Y, X)`` (a view)."""
        head = (slice(None),) * lead
        if self.perm is None:
            return box[(*head, None)]
        box = box.transpose(*range(lead), *[lead + q for q in self.perm])
        return box[(*head, self.csel)] if self.csel is not None else box

    def __call__(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty(self.out_shape, np.float32)
        p = i - self.b0
        self.reader.now = i
        if self.prefetch:
            self._ahead(i)
        if not self.single[p]:
            self._straddling(p, out)
            return out
        out[...] = self._arrange(self._box(self._block(p), self.loc[p].tolist()))
        return out

    def _box(self, block: np.ndarray, li: Sequence[int]) -> np.ndarray:
        """The patch at local offset ``li`` of ``block`` (a view; sample dims dropped)."""
        is_sample, sizes = self.is_sample, self.sizes
        return block[tuple(li[j] if is_sample[j] else slice(li[j], li[j] + sizes[j])
                           for j in range(self.nd))]

    def fill(self, b0: int, b1: int, out: np.ndarray) -> None:
        """Patches ``b0:b1`` into ``out[0 : b1 - b0]``, grouped by storage chunk."""
        p0, p1 = b0 - self.b0, b1 - self.b0
        self.reader.now = b0
        if self.prefetch:
            self._ahead(b1 - 1)
        single = self.single[p0:p1]
        for q in np.flatnonzero(~single).tolist():
            self._straddling(p0 + q, out[q])
        rows = np.flatnonzero(single)
        if rows.size == 0:
            return
        cid = self.cid[p0:p1][rows]
        order = np.argsort(cid, kind="stable")
        rows, cid = rows[order], cid[order]
        cuts = np.flatnonzero(cid[1:] != cid[:-1]) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), len(rows)]
        loc = self.loc[p0:p1]
        locl = loc.tolist()
        for s, e in zip(starts, ends, strict=True):
            block = self._block(p0 + int(rows[s]))
            if e - s < GATHER_MIN:  # a few patches: plain slicing is cheaper than a strided view
                for q in rows[s:e].tolist():
                    out[q] = self._arrange(self._box(block, locl[q]))
                continue
            sel = rows[s:e]
            view = np.lib.stride_tricks.sliding_window_view(block, self.window)
            stack = view[tuple(loc[sel, j] for j in range(self.nd))]  # (k, *window)
            stack = stack.reshape(len(sel), *[self.sizes[j] for j in self.keep_axes])
            out[sel] = self._arrange(stack, 1)


class _BlockCuts:
    """``cut(k, i, out=None)``: patch ``i`` of ``todo`` from reader ``k``, geometry prepared
    one block of patches at a time (sequential access), telling the cache two blocks ahead;
    ``fill(k, b0, b1, out)``: a whole batch at once."""

    def __init__(self, ds: _PatchBoxes, todo: np.ndarray, readers: Sequence[Any], block: int):
        self.ds, self.todo, self.readers, self.block = ds, todo, list(readers), int(block)
        self.current = -1
        self.cuts: list[_Cutter] = []

    def _at(self, i: int) -> None:
        b = i // self.block
        if b != self.current:
            b0 = b * self.block
            b1 = min(b0 + self.block, len(self.todo))
            b2 = min(b0 + 2 * self.block, len(self.todo))
            self.cuts = [_Cutter(self.ds, r, c, self.todo, b0, b1, b2) for r, c in self.readers]
            self.current = b

    def __call__(self, k: int, i: int, out: np.ndarray | None = None) -> np.ndarray:
        self._at(i)
        return self.cuts[k](i, out)

    def fill(self, k: int, b0: int, b1: int, out: np.ndarray) -> None:
        """Patches ``b0:b1`` (inside one block: batches divide blocks) into ``out``."""
        self._at(b0)
        self.cuts[k].fill(b0, b1, out)


def _future_uses(first: np.ndarray, last: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    """Chunk key -> sorted positions of the boxes (rows) that touch it.

    ``first`` and ``last`` are ``(n, ndim)`` chunk coordinates of each box's first and last
    voxel.
    """
    n, nd = first.shape
    if n == 0:
        return {}
    span = last - first + 1
    pos_parts, key_parts = [], []
    for off in itertools.product(*[range(int(m)) for m in span.max(axis=0)]):
        o = np.asarray(off, np.int64)
        sel = np.flatnonzero((o < span).all(axis=1))
        pos_parts.append(sel)
        key_parts.append(first[sel] + o)
    pos = np.concatenate(pos_parts)
    keys = np.concatenate(key_parts)
    order = np.lexsort((pos, *keys.T[::-1]))
    keys, pos = keys[order], pos[order]
    cut = np.flatnonzero((keys[1:] != keys[:-1]).any(axis=1)) + 1
    starts = np.concatenate([[0], cut])
    return {
        tuple(k): p
        for k, p in zip(keys[starts].tolist(), np.split(pos, cut), strict=True)
    }

