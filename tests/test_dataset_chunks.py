"""Fast paths of patchsieve.dataset: raw chunk decoding, Belady cache, in-dataset batching.

Each fast path must give exactly what the plain path gives (zarr decoding, LRU cache,
``DataLoader(batch_size=...)`` collation of single patches).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, default_collate

from patchsieve.compute import compute
from patchsieve.config import MaxPatchFilterConfig
from patchsieve.dataset import PatchDataset
from patchsieve.dataset._chunks import _ChunkReader, _future_uses, _RawChunks
from patchsieve.demo import write_ome_zarr
from patchsieve.errors import ConfigError
from patchsieve.transforms import RandomFlipRotate

CFG = MaxPatchFilterConfig(threshold=200.0, coverage=0.25)


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60000, size=shape).astype(np.uint16)


def _reader(path, shape, cache_bytes=1 << 30, fast=True):
    r = _ChunkReader(str(path), "", None, shape, None, cache_bytes, dims=("z", "y", "x")[-len(shape):])
    r.fast_decode = fast
    return r


# --------------------------------------------------------------------------- raw chunk decoding
LAYOUTS = {
    "v3-zstd": {"zarr_format": 3},
    "v3-blosc": {"zarr_format": 3, "compressors": zarr.codecs.BloscCodec(cname="lz4")},
    "v3-gzip": {"zarr_format": 3, "compressors": zarr.codecs.GzipCodec()},
    "v3-raw": {"zarr_format": 3, "compressors": None},
    "v2-zstd": {"zarr_format": 2},
    "v2-blosc": {"zarr_format": 2, "compressors": __import__("numcodecs").Blosc()},
    "v2-raw": {"zarr_format": 2, "compressors": None},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", ["uint16", "float32", "uint8"])
def test_raw_decoding_equals_zarr(tmp_path, layout, dtype):
    shape, chunks = (5, 37, 50), (2, 16, 16)  # edge chunks on every axis
    data = _data(shape).astype(dtype)
    data[:2, :16, :16] = 0  # one chunk equal to the fill value: not written (absent file)
    path = tmp_path / "a.zarr"
    z = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype, **LAYOUTS[layout])
    z[:] = data
    fast, slow = _reader(path, shape), _reader(path, shape, fast=False)
    fast.array()
    assert fast._raw is not None, "this layout should be decoded without zarr"
    for key in itertools.product(*[range(-(-n // c)) for n, c in zip(shape, chunks, strict=True)]):
        a, b = fast._fetch(key), slow._fetch(key)
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
        sl = tuple(slice(k * c, (k + 1) * c) for k, c in zip(key, chunks, strict=True))
        np.testing.assert_array_equal(a, data[sl])


@pytest.mark.parametrize("nbytes", [1, 255, 256, 300, 65791, 65792, 70000, 2**20, 2**32 + 5])
def test_decoded_size_reads_zstd_and_blosc_headers(nbytes):
    import numcodecs

    from patchsieve.dataset._chunks import _decoded_size

    if nbytes < 2**24:
        data = np.zeros(nbytes, np.uint8)
        assert _decoded_size(numcodecs.Zstd().encode(data), "zstd") == nbytes
        assert _decoded_size(numcodecs.Zstd(level=9).encode(data), "zstd") == nbytes
        assert _decoded_size(numcodecs.Blosc().encode(data), "blosc") == nbytes
    # hand-made frame headers: single segment with 8-byte content size, and a window
    # descriptor + 4-byte dictionary id + 4-byte size
    magic = b"\x28\xb5\x2f\xfd"
    assert _decoded_size(magic + bytes([0xE0]) + nbytes.to_bytes(8, "little"), "zstd") == nbytes
    if nbytes < 2**32:
        frame = magic + bytes([0x83, 0x50]) + b"dict" + nbytes.to_bytes(4, "little")
        assert _decoded_size(frame, "zstd") == nbytes
    assert _decoded_size(magic + bytes([0x00, 0x50]) + b"xyz", "zstd") is None  # size unknown
    assert _decoded_size(b"not a frame", "zstd") is None
    assert _decoded_size(numcodecs.Zstd().encode(np.zeros(8, np.uint8)), None) is None


@pytest.mark.parametrize("layout", ["v3-zstd", "v3-blosc", "v2-zstd", "v3-gzip"])
def test_recycled_chunk_arrays_never_change_patches(tmp_path, layout):
    """A tiny cache evicts constantly, so decoders keep reusing evicted chunk arrays (in
    background threads); every box still equals the data."""
    shape, chunks = (6, 70, 90), (2, 16, 16)
    data = _data(shape, seed=4)
    path = tmp_path / "a.zarr"
    z = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16", **LAYOUTS[layout])
    z[:] = data
    r = _reader(path, shape, cache_bytes=3 * 2 * 16 * 16 * 2)
    rng = np.random.default_rng(1)
    lo = np.stack([rng.integers(0, n - s + 1, 400) for n, s in zip(shape, (2, 20, 20), strict=True)],
                  axis=1)
    size = np.array([2, 20, 20])
    ch = np.array(chunks)

    r.plan(_future_uses(lo // ch, (lo + size - 1) // ch))
    keys = sorted({tuple(k) for k in (lo // ch).tolist()})
    for i, a in enumerate(lo.tolist()):
        r.now = i
        for k in keys[i % len(keys): i % len(keys) + 3]:
            r.prefetch(k)  # decoders run ahead into spare arrays
        hi = [a[j] + size[j] for j in range(3)]
        out = np.empty(tuple(size), np.float32)
        r.read_into(a, hi, out, [False] * 3)
        want = data[tuple(slice(x, y) for x, y in zip(a, hi, strict=True))]
        np.testing.assert_array_equal(out, want)
    if layout != "v3-gzip":
        assert r._spare, "evicted chunk arrays should have been kept for reuse"


def test_a_returned_chunk_stays_valid_until_the_next_call(tmp_path):
    """Chunks that leave the cache are reused by the decoders, but never the one just handed
    out: neither one not cached (no later use) nor one evicted by its own insertion."""
    shape, chunks = (4, 16, 16), (1, 16, 16)
    data = _data(shape, seed=2)
    path = tmp_path / "a.zarr"
    zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16")[:] = data
    one = 16 * 16 * 2
    # (cache bytes, planned uses, keys read in order; the position stays 0, as in a batch)
    cases = ((one, {(0, 0, 0): [0]}, [(1, 0, 0)]),  # not in the plan: not cached
             (one, {(0, 0, 0): [3], (1, 0, 0): [7]}, [(0, 0, 0), (1, 0, 0)]))  # evicts itself
    for cache, uses, order in cases:
        r = _reader(path, shape, cache_bytes=cache)
        r.plan({k: np.asarray(v) for k, v in uses.items()})
        r.now = 0
        blocks = {key: r._chunk(key) for key in order}
        last = order[-1]
        assert last not in r._cache
        for z in (2, 3):  # decodes as a background decoder would run them meanwhile
            r._fetch((z, 0, 0))
        np.testing.assert_array_equal(blocks[last], data[last[0]][None])


def test_raw_decoding_declines_other_layouts(tmp_path):
    shape = (8, 32, 32)
    sharded = zarr.create_array(
        str(tmp_path / "s.zarr"), shape=shape, chunks=(2, 8, 8), shards=(4, 16, 16), dtype="uint16"
    )
    sharded[:] = _data(shape)
    assert _RawChunks.build(sharded) is None
    big = zarr.create_array(str(tmp_path / "be.zarr"), shape=shape, chunks=(4, 16, 16), dtype=">u2",
                            zarr_format=2)
    big[:] = _data(shape)
    assert _RawChunks.build(big) is None
    r = _reader(tmp_path / "s.zarr", shape)  # still readable, by zarr
    k = tuple(n // 2 for n in (-(-s // c) for s, c in zip(shape, r.chunks, strict=True)))
    sl = tuple(slice(i * c, (i + 1) * c) for i, c in zip(k, r.chunks, strict=True))
    np.testing.assert_array_equal(r._fetch(k), sharded[sl])
    assert r._raw is None


# --------------------------------------------------------------------------- Belady cache
def test_future_uses_lists_every_touching_box():
    rng = np.random.default_rng(0)
    first = rng.integers(0, 4, size=(300, 3))
    last = first + rng.integers(0, 3, size=(300, 3))
    got = _future_uses(first, last)
    want: dict[tuple[int, ...], list[int]] = {}
    for i, (a, b) in enumerate(zip(first.tolist(), last.tolist(), strict=True)):
        for k in itertools.product(*[range(x, y + 1) for x, y in zip(a, b, strict=True)]):
            want.setdefault(k, []).append(i)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].tolist() == v


def test_belady_cache_reads_the_same_boxes_with_fewer_decodes(tmp_path):
    shape, chunks = (16, 96, 96), (4, 16, 16)
    data = _data(shape, 3)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=shape, chunks=chunks, dtype="uint16")
    z[:] = data
    rng = np.random.default_rng(1)
    size = np.array([4, 16, 16])
    lo = rng.integers(0, np.array(shape) - size + 1, size=(400, 3))
    ch = np.array(chunks)
    cache = 12 * int(np.prod(chunks)) * 2  # 12 chunks of 144
    lru, bel = _reader(tmp_path / "a.zarr", shape, cache), _reader(tmp_path / "a.zarr", shape, cache)
    bel.plan(_future_uses(lo // ch, (lo + size - 1) // ch))
    for i, a in enumerate(lo.tolist()):
        hi = [x + s for x, s in zip(a, size.tolist(), strict=True)]
        want = data[tuple(slice(x, y) for x, y in zip(a, hi, strict=True))]
        bel.now = i
        out = np.empty(size.tolist(), np.float32)
        bel.read_into(a, hi, out, [False] * 3)
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(lru.read(a, hi), want)
        assert bel._cached <= cache
    assert bel.misses < lru.misses


# --------------------------------------------------------------------------- in-dataset batches
@pytest.fixture(scope="module")
def syx(tmp_path_factory):
    from distributed import Client, LocalCluster

    root = tmp_path_factory.mktemp("syx")
    rng = np.random.default_rng(0)
    data = rng.poisson(20, size=(3, 150, 200)).astype(np.uint16)
    data[:, 37:75, 50:100] += rng.poisson(400, size=(3, 38, 50)).astype(np.uint16)
    src = write_ome_zarr(root / "img.ome.zarr", data, "SYX", chunks=(1, 64, 64))
    tgt = write_ome_zarr(root / "tgt.ome.zarr", (data * 2).astype(np.uint16), "SYX", chunks=(1, 50, 50))
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl,
        Client(cl, set_as_default=False) as c,
    ):
        sc = compute(src, [CFG], (32, 32), root / "img.patchsieve.zarr", client=c)
    return src, tgt, data, sc


def _same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (int, float, bool)):
        assert a == b
    else:
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _same(u, v)


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("num_workers", "extra"),
    [
        (0, {}),
        (0, {"normalize": True}),
        (0, {"target": "tgt", "transform": "flip"}),
        (2, {"drop_last": True}),
    ],
)
def test_dataset_batches_equal_loader_collation(syx, num_workers, extra):
    src, tgt, _, sc = syx

    def make(**kw):
        e = dict(extra)
        e.pop("drop_last", None)
        if e.pop("target", None):
            e["target"] = tgt
        if e.pop("transform", None):
            e["transform"] = RandomFlipRotate(seed=0)
        return PatchDataset(src, sidecar=sc, seed=3, return_metadata=True, **e, **kw)

    lkw = {"num_workers": num_workers}
    if num_workers:
        lkw["multiprocessing_context"] = "fork"
    drop = bool(extra.get("drop_last"))
    plain = make().loader(batch_size=16, drop_last=drop, collate_fn=default_collate, **lkw)
    batched_ds = make(batch_size=16, drop_last=drop)
    batched = batched_ds.loader(**lkw)
    a, b = list(plain), list(batched)
    assert len(a) == len(b) == len(plain) == len(batched)
    for u, v in zip(a, b, strict=True):
        _same(u, v)
    # direct iteration (no DataLoader) yields the same batches
    if num_workers == 0:
        for u, v in zip(a, make(batch_size=16, drop_last=drop), strict=True):
            _same(u, v)


@pytest.mark.cluster
def test_dataset_batches_resume_mid_epoch(syx):
    src, _, _, sc = syx

    def keys(batches):
        return [(int(s), *o.tolist()) for _, m in batches for s, o in zip(m["sample"], m["origin"],
                                                                          strict=True)]

    kw = {"num_workers": 2, "multiprocessing_context": "fork"}
    full = keys(PatchDataset(src, sidecar=sc, seed=7, return_metadata=True, batch_size=10).loader(**kw))
    ld = PatchDataset(src, sidecar=sc, seed=7, return_metadata=True, batch_size=10).loader(**kw)
    it = iter(ld)
    head = [next(it) for _ in range(5)]
    state = ld.state_dict()
    del it
    ld3 = PatchDataset(src, sidecar=sc, seed=7, return_metadata=True, batch_size=10).loader(**kw)
    ld3.load_state_dict(state)
    assert keys(head) + keys(ld3) == full


@pytest.mark.cluster
def test_dataset_batch_size_errors(syx):
    src, _, _, sc = syx
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ConfigError, match="batch_size"):
            PatchDataset(src, sidecar=sc, batch_size=bad)
    ds = PatchDataset(src, sidecar=sc, batch_size=8)
    with pytest.raises(ConfigError, match="batch_size"):
        ds.loader(batch_size=16)
    with pytest.raises(ConfigError, match="drop_last"):
        ds.loader(drop_last=True)
    assert ds.loader(batch_size=8).batch_size is None  # the same size, given twice, is fine
    assert len(ds) == ds.sampler.epoch_length  # still patches per epoch


@pytest.mark.cluster
def test_lightning_module_collates_in_the_dataset(syx):
    pytest.importorskip("lightning")
    from patchsieve.lightning import PatchDataModule

    src, _, _, sc = syx
    kw = {"sidecar": sc, "batch_size": 8, "return_metadata": True, "seed": 2}
    fast = PatchDataModule(src, **kw)
    plain = PatchDataModule(src, collate_in_dataset=False, **kw)
    lf, lp = fast.train_dataloader(), plain.train_dataloader()
    assert fast.train_dataset.batch_size == 8 and plain.train_dataset.batch_size is None
    assert len(lf) == len(lp)
    for u, v in zip(lf, lp, strict=True):
        _same(u, v)


@pytest.mark.cluster
@pytest.mark.parametrize("batch_size", [None, 16])
def test_blockwise_preparation_gives_the_same_patches(syx, monkeypatch, batch_size):
    import patchsieve.dataset._dataset as dsmod

    src, tgt, _, sc = syx

    def run():
        ds = PatchDataset(src, sidecar=sc, target=tgt, seed=5, return_metadata=True,
                          batch_size=batch_size)
        return list(ds) if batch_size else [[*item] for item in ds]

    whole = run()
    monkeypatch.setattr(dsmod, "PREPARE_BLOCK", 7)  # many blocks, not a multiple of the batch
    blocks = run()
    assert len(whole) == len(blocks) > 2
    for u, v in zip(whole, blocks, strict=True):
        _same(u, v)


# --------------------------------------------------------------------------- batch ring
def _ring_make(syx, **kw):
    src, tgt, _, sc = syx
    return PatchDataset(src, sidecar=sc, target=tgt, seed=11, return_metadata=True, **kw)


@pytest.mark.cluster
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_ring_batches_equal_fresh_tensors_and_survive_reuse(syx, context):
    """Workers write batches into reused shared slots; the loader hands out copies: batches
    kept across many slot reuses, an epoch left early and the next one (persistent workers)
    equal the per-item DataLoader collation."""
    kw = {"num_workers": 2, "multiprocessing_context": context}
    ring = _ring_make(syx, batch_size=2).loader(persistent_workers=True, prefetch_factor=1, **kw)
    plain = _ring_make(syx).loader(batch_size=2, collate_fn=default_collate, **kw)
    it = iter(ring)
    head = [next(it) for _ in range(3)]  # epoch 0 left early: its slots must be reclaimed
    del it
    want0 = list(plain)
    for u, v in zip(head, want0[:3], strict=True):
        _same(u, v)
    got1 = list(ring)  # epoch 1 with the same (persistent) workers; slots reused many times
    want1 = list(plain)
    assert len(got1) == len(want1) > 2 * 2 * (1 + 1)  # every slot of both workers reused
    for u, v in zip(got1, want1, strict=True):
        _same(u, v)
    assert ring.ring_batches == len(head) + len(got1)  # no batch fell back to a fresh tensor


@pytest.mark.cluster
def test_ring_full_falls_back_to_fresh_tensors(syx, monkeypatch):
    import patchsieve.dataset._batches as batches
    import patchsieve.dataset._loader as dsmod

    monkeypatch.setattr(dsmod, "RING_EXTRA_SLOTS", -1)  # one slot per worker
    monkeypatch.setattr(batches, "RING_WAIT_S", 0.0)  # never wait for it
    kw = {"num_workers": 2, "multiprocessing_context": "fork", "prefetch_factor": 2}
    ring = _ring_make(syx, batch_size=4).loader(**kw)
    got = list(ring)
    want = list(_ring_make(syx).loader(batch_size=4, collate_fn=default_collate, **kw))
    assert len(got) == len(want)
    for u, v in zip(got, want, strict=True):
        _same(u, v)
    assert 0 < ring.ring_batches < len(got)  # both routes were taken


@pytest.mark.cluster
def test_ring_not_used_without_workers_or_with_pinned_memory(syx):
    ds = _ring_make(syx, batch_size=8)
    for ld in (ds.loader(num_workers=0), ds.loader(num_workers=2, multiprocessing_context="fork",
                                                   pin_memory=True)):
        n = sum(1 for _ in ld)
        assert n > 0 and ld.ring_batches == 0
    assert ds._ring is None  # the loader never leaves its ring on the dataset


@pytest.mark.cluster
@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_batch_size_cuts_batches_in_the_dataset(syx, num_workers):
    """``ds.loader(batch_size=...)`` on a patch-by-patch dataset lets the dataset cut the
    batches: the same batches, length and resume positions as a plain torch DataLoader."""
    kw = {"num_workers": num_workers}
    if num_workers:
        kw["multiprocessing_context"] = "fork"
    ds = _ring_make(syx)
    fast = ds.loader(batch_size=6, **kw)
    assert fast.batch_size is None and fast._batching() == (6, False)
    want = list(DataLoader(_ring_make(syx), batch_size=6, **kw))
    got = list(fast)
    assert len(got) == len(want) == len(fast)
    for u, v in zip(got, want, strict=True):
        _same(u, v)
    assert fast.ring_batches == (len(got) if num_workers else 0)
    assert ds._loader_batching is None and ds.batch_size is None  # the dataset is unchanged
    assert sum(1 for _ in ds) == len(ds)  # and still yields single patches
    # resume after 3 batches: the rest of the epoch, as the patch-by-patch loader would
    a = _ring_make(syx).loader(batch_size=6, **kw)
    b = _ring_make(syx).loader(batch_size=6, collate_fn=default_collate, **kw)
    for ld in (a, b):
        it = iter(ld)
        for _ in range(3):
            next(it)
        del it
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ConfigError, match="batch_size"):
        ds.loader(batch_size=0)
