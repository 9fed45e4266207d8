"""Tests of the streamed plans of patchsieve.sampling: StreamingPatching (CAREamics epochs from
region counts, tile by tile), its packing on groups, tiles, keyed randomness and ShardStream
(rank / worker shards, execution order, resume)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from patchsieve.errors import ConfigError, SidecarMismatchError
from patchsieve.sampling import (
    ShardStream,
    StratifiedPatching,
    StreamingPatching,
    region_areas,
)
from patchsieve.sampling._keyed import KeyedPermutation, key, uniforms
from patchsieve.sampling._packing import IntervalSet
from patchsieve.sampling._tiles import TileGrid, area_classes, choose_tile_shape, scan_background


# --------------------------------------------------------------------------- helpers
def _random_case(rng, *, max_mult=9):
    nd = int(rng.choice([2, 3]))
    ps = tuple(int(x) for x in rng.choice([2, 3, 4, 8], size=nd))
    shape = tuple(max(p, int(p * rng.integers(2, max_mult) + rng.integers(-1, p))) for p in ps)
    return nd, ps, shape


def _reader(bg, log=None):
    def read(s, lo, hi):
        if log is not None:
            log.append(math.prod(b - a for a, b in zip(lo, hi, strict=True)))
        return bg[(s, *[slice(a, b) for a, b in zip(lo, hi, strict=True)])]

    return read


def _contents_reference(sp):
    """Per sample, per bin: the sorted adjusted areas of its regions (StratifiedPatching)."""
    out = []
    for s in range(sp.n_samples):
        bins = [[] for _ in range(int(sp.n_patches_per_sample[s]))]
        for r in np.flatnonzero((sp.bin_of_region[s] >= 0) & (sp.adjusted[s] > 0)):
            bins[sp.bin_of_region[s][r]].append(float(sp.adjusted[s][r]))
        out.append([tuple(sorted(b)) for b in bins])
    return out


def _contents_streamed(sp):
    """The same from a StreamingPatching's pieces."""
    out = []
    for s in range(sp.n_samples):
        n = int(sp.n_patches_per_sample[s])
        bins = [()] * n
        ps = np.flatnonzero(sp.piece_sample == s)
        for i, p in enumerate(ps):
            end = int(sp.piece_start[ps[i + 1]]) if i + 1 < ps.size else n
            covs = range(int(sp.piece_cov[p]), int(sp.piece_cov[p + 1]))
            c = tuple(sorted(float(sp.kinds.group_value[sp.cov_group[k]])
                             for k in covs for _ in range(int(sp.cov_t[k]))))
            bins[int(sp.piece_start[p]):end] = [c] * (end - int(sp.piece_start[p]))
        out.append(bins)
    return out


def _keys(arr):
    return sorted(zip(arr["sample"].tolist(), arr["region"].tolist(),
                      *[arr["origin"][:, d].tolist() for d in range(arr["origin"].shape[1])]))


# --------------------------------------------------------------------------- building blocks
def test_keyed_permutation_is_a_uniform_bijection():
    for n in (1, 2, 5, 1000):
        p = KeyedPermutation(n, key(n))
        x = np.arange(n)
        np.testing.assert_array_equal(np.sort(p(x)), x)
        np.testing.assert_array_equal(p.inverse(p(x)), x)
    counts = np.zeros((4, 4))
    for s in range(4000):
        counts[np.arange(4), KeyedPermutation(4, key(s))(np.arange(4))] += 1
    assert np.abs(counts / 4000 - 0.25).max() < 0.035
    u = uniforms(key(1), np.arange(200_000))
    np.testing.assert_array_equal(u, uniforms(key(1), np.arange(200_000)))
    assert abs(u.mean() - 0.5) < 0.005 and abs(np.histogram(u, 10)[0] / 20_000 - 1).max() < 0.05


def test_interval_sets_take_lowest_first_and_merge():
    s = IntervalSet([(0, 3), (7, 9)]).union(IntervalSet([(3, 5)]))
    assert s.pairs == [(0, 5), (7, 9)] and len(s) == 7
    head, rest = s.take(6)
    assert head.to_array().tolist() == [0, 1, 2, 3, 4, 7] and rest.pairs == [(8, 9)]


@pytest.mark.parametrize("grid,n_samples,tile", [((5, 6), 2, (2, 4)), ((7, 9, 11), 3, (2, 3, 4)),
                                                  ((13, 17), 1, (16, 16)), ((6, 7, 8), 1, (1, 1, 1))])
def test_tile_scan_counts_every_background_region_once(grid, n_samples, tile):
    rng = np.random.default_rng(0)
    bg = rng.random((n_samples, *grid)) < 0.4
    tiles = TileGrid(grid, n_samples, tile)
    classes = area_classes(len(grid))
    for slab in (None, 1, 3):
        got = scan_background(_reader(bg), tiles, slab)
        want = np.zeros_like(got)
        for s in range(n_samples):
            for idx in itertools.product(*[range(g) for g in grid]):
                alpha = tuple(int(i == g - 1) for i, g in zip(idx, grid, strict=True))
                c_index = np.ravel_multi_index(tuple(i // t for i, t in zip(idx, tile, strict=True)),
                                               tiles.counts)
                want[s * tiles.per_sample + tiles.canonical[c_index], classes.index(alpha)] += bg[(s, *idx)]
        np.testing.assert_array_equal(got, want)
    assert tiles.class_totals().sum() == math.prod(grid)


def test_tile_shape_bounds_the_number_of_tiles():
    for grid, ns in [((400, 500, 500), 1), ((16, 16), 79), ((3000, 3000), 4)]:
        t = choose_tile_shape(grid, ns, (16, 64, 64)[-len(grid):], (16, 256, 256)[-len(grid):], 1 << 12)
        n = ns * math.prod(-(-g // s) for g, s in zip(grid, t, strict=True))
        assert n <= max(1 << 12, ns)


# --------------------------------------------------------------------------- CAREamics semantics
@pytest.mark.parametrize("seed", range(4))
def test_packing_equals_stratified_patching(seed):
    """Same epoch length, bin size and bin contents as StratifiedPatching (whose packing the
    oracle test checks against CAREamics); regions of equal adjusted area may share a bin in
    another combination (the regions are enumerated tile by tile)."""
    rng = np.random.default_rng(seed)
    for _ in range(25):
        _, ps, shape = _random_case(rng)
        p = float(rng.choice([0.1, 0.0, 0.3, 0.5, 1.0]))
        areas, _ = region_areas(shape, ps)
        ns = int(rng.integers(1, 3))
        bg = rng.random((ns, *areas.shape)) < rng.random()
        ref = StratifiedPatching(shape, ps, np.where(bg, p, 1.0), background=bg)
        sp = StreamingPatching.from_arrays(shape, ps, bg, background_weight=p,
                                           chunk_shape=tuple(int(q * rng.integers(1, 4)) for q in ps),
                                           max_tiles=int(rng.choice([3, 40, 1 << 15])))
        np.testing.assert_array_equal(sp.n_patches_per_sample, ref.n_patches_per_sample)
        np.testing.assert_array_equal(sp.bin_size, ref.bin_size)
        a, b = _contents_reference(ref), _contents_streamed(sp)
        for s in range(ns):
            if areas.size <= ref.n_patches_per_sample[s]:  # one region per bin: any order
                assert sorted(a[s]) == sorted(b[s])
            else:
                assert a[s] == b[s]
        assert sp.epoch_length == ref.epoch_length
        assert abs(sp.expected_background_fraction() - ref.expected_background_fraction()) < 1e-9


def test_integer_capacity_truncation_and_growth_as_careamics():
    # the CAREamics oracle's first case: 8x8 patches, 64x62 image, half the regions background
    rng = np.random.default_rng(11)
    shape, ps = (64, 62), (8, 8)
    bg = rng.random(region_areas(shape, ps)[0].shape) < 0.5
    ref = StratifiedPatching(shape, ps, np.where(bg, 0.1, 1.0), background=bg)
    sp = StreamingPatching.from_arrays(shape, ps, bg, background_weight=0.1, chunk_shape=(16, 16))
    assert _contents_reference(ref) == _contents_streamed(sp)


def _epochs(sp, n_min):
    visits = np.zeros((sp.n_samples, math.prod(sp.grid_shape)))
    n = n_bg = epoch = 0
    per_epoch = []
    while n < n_min:
        plan = sp.epoch_plan(epoch)
        assert len(plan) == sp.epoch_length
        per_epoch.append(int(plan["background"].sum()))
        n_bg += per_epoch[-1]
        n += len(plan)
        np.add.at(visits, (plan["sample"], plan["region"]), 1)
        epoch += 1
    return n_bg / n, visits / epoch, np.array(per_epoch)


@pytest.mark.parametrize("mode", ["per_epoch", "with_replacement", "fixed_subset"])
def test_epoch_distribution_matches_stratified_patching(mode):
    rng = np.random.default_rng(5)
    shape, ps = (510, 510), (64, 64)
    bg = rng.random((20, 7, 7)) < 0.6
    kw = {"epoch_length": 800} if mode == "with_replacement" else {}
    ref = StratifiedPatching(shape, ps, np.where(bg, 0.1, 1.0), background=bg, mode=mode, seed=1, **kw)
    sp = StreamingPatching.from_arrays(shape, ps, bg, background_weight=0.1, mode=mode, seed=1,
                                       chunk_shape=(512, 512), **kw)
    assert sp.epoch_length == ref.epoch_length
    if mode != "fixed_subset":  # (there: which background regions are chosen differs)
        assert abs(sp.expected_background_fraction() - ref.expected_background_fraction()) < 1e-12
    realized, visits, counts = _epochs(sp, 60_000)
    _, _, ref_counts = _epochs(ref, 60_000)
    assert abs(realized - sp.expected_background_fraction()) < 0.01
    # per-epoch background counts: the same mean and spread as StratifiedPatching's
    se = math.sqrt(counts.var() / counts.size + ref_counts.var() / ref_counts.size)
    assert abs(counts.mean() - ref_counts.mean()) < 4 * se + 1e-9
    assert 0.7 < (counts.std() + 1e-9) / (ref_counts.std() + 1e-9) < 1.4
    if mode == "fixed_subset":  # round(p * N_bg) background regions, the same every epoch
        drawn = np.zeros_like(bg)
        for e in range(5):
            b = sp.epoch_plan(e)
            drawn.reshape(20, -1)[b["sample"][b["background"]], b["region"][b["background"]]] = True
        k = np.floor(bg.reshape(20, -1).sum(1) * 0.1 + 0.5)
        assert (drawn.reshape(20, -1).sum(1) <= k).all()
        assert (sp._chosen.reshape(20, -1).sum(1) == k).all()
        return
    exp = ref.expected_visits().reshape(visits.shape)
    epochs = round(60_000 / sp.epoch_length + 0.5)
    counts_r, expected = visits * epochs, exp * epochs
    z = (counts_r - expected)[expected > 20] / np.sqrt(expected[expected > 20])
    assert np.abs(z).max() < 5 and (z**2).mean() < 1.5


def test_origins_lie_in_selectable_boxes_and_every_offset_is_reached():
    shape, ps = (70, 45, 33), (8, 16, 4)
    bg = np.random.default_rng(1).random((3, *region_areas(shape, ps)[0].shape)) < 0.5
    sp = StreamingPatching.from_arrays(shape, ps, bg, background_weight=0.2, chunk_shape=(16, 32, 8))
    plan = np.concatenate([sp.epoch_plan(e) for e in range(20)])
    g = np.stack(np.unravel_index(plan["region"], sp.grid_shape), axis=1)
    o = plan["origin"]
    assert (o >= g * ps).all() and (o < g * ps + ps).all()
    assert (o + ps <= np.array(shape)).all()
    np.testing.assert_array_equal(plan["background"], bg.reshape(3, -1)[plan["sample"], plan["region"]])
    assert len(np.unique(plan[plan["region"] == 0]["origin"][:, 2])) == 4


def test_plans_are_deterministic_and_epochs_and_seeds_differ():
    bg = np.random.default_rng(2).random((4, 6, 9)) < 0.4
    a = StreamingPatching.from_arrays((200, 300), (32, 32), bg, seed=9)
    b = StreamingPatching.from_arrays((200, 300), (32, 32), bg, seed=9)
    np.testing.assert_array_equal(a.epoch_plan(3), b.epoch_plan(3))
    assert not np.array_equal(a.epoch_plan(3), a.epoch_plan(4))
    c = StreamingPatching.from_arrays((200, 300), (32, 32), bg, seed=10)
    assert not np.array_equal(a.epoch_plan(3), c.epoch_plan(3))


# --------------------------------------------------------------------------- scale
def test_plan_state_and_reads_do_not_grow_with_the_region_count(monkeypatch):
    """10**5 and 10**6 regions: the same bounded plan state (it grows with the tile count,
    bounded by ``max_tiles``), the decisions read in bounded slabs and tile boxes."""
    import patchsieve.sampling._tiles as tiles_mod

    monkeypatch.setattr(tiles_mod, "SCAN_REGIONS", 1 << 16)
    ps = (4, 8, 8)
    states, logs = [], []
    for grid in [(50, 50, 40), (100, 100, 100)]:
        shape = tuple(g * p for g, p in zip(grid, ps, strict=True))
        zz, yy, xx = np.meshgrid(*[np.arange(g) for g in grid], indexing="ij", sparse=True)
        bg = ((np.sin(yy / 7.0 + zz / 5.0) + np.cos(xx / 9.0)) > 0.3)[None]
        log: list[int] = []
        sp = StreamingPatching(shape, ps, _reader(bg, log), background_weight=0.1,
                               chunk_shape=(8, 32, 32), max_tiles=16)
        assert sp.tiles.n_tiles <= 16
        scan = max(log)
        log.clear()
        tile_n, order, _ = sp.tile_layout(0)
        first = sp.realize(0, int(order[0]))
        assert len(first) == tile_n[order[0]]
        states.append(sp.state_bytes)
        logs.append((scan, max(log), math.prod(sp.tiles.tile_shape)))
    assert states[1] < 2 * states[0] and states[1] < 2**20
    for scan, tile_read, tile_regions in logs:
        assert scan <= 2 * (1 << 16) and tile_read <= tile_regions


# --------------------------------------------------------------------------- shards
def _sampler(rng, **kw):
    _, ps, shape = _random_case(rng, max_mult=12)
    bg = rng.random((int(rng.integers(1, 4)), *region_areas(shape, ps)[0].shape)) < 0.4
    chunk = tuple(int(p * rng.integers(1, 4)) for p in ps)
    return StreamingPatching.from_arrays(shape, ps, bg, background_weight=0.2, chunk_shape=chunk,
                                         max_tiles=int(rng.choice([3, 50, 1 << 15])), **kw), chunk


@pytest.mark.parametrize("seed", range(3))
def test_shards_partition_the_truncated_plan_and_resume_exactly(seed):
    rng = np.random.default_rng(seed)
    sp, chunk = _sampler(rng, seed=seed)
    plan = sp.epoch_plan(1)
    for ws in (1, 2, 3):
        truncated = plan[: len(plan) - len(plan) % ws]
        for nw in (0, 2, 3):
            for window in (0, 1, 3, 100):
                parts = []
                for r in range(ws):
                    n_rank = 0
                    for w in range(max(nw, 1)):
                        s = ShardStream(sp, 1, rank=r, world_size=ws, worker=w, num_workers=nw,
                                        window=window, chunk_shape=chunk)
                        full = s[0 : len(s)]
                        assert len(full) == len(s) == len(range(w, len(truncated) // ws, max(nw, 1)))
                        n_rank += len(full)
                        k = int(rng.integers(0, len(s) + 1))
                        again = ShardStream(sp, 1, rank=r, world_size=ws, worker=w, num_workers=nw,
                                            window=window, chunk_shape=chunk, start=k)
                        rest = list(again.blocks(7))
                        got = np.concatenate(rest) if rest else full[:0]
                        np.testing.assert_array_equal(got, full[k:])
                        parts.append(full)
                    assert n_rank == len(truncated) // ws  # equal per rank: no DDP hang
                assert _keys(np.concatenate(parts)) == _keys(truncated)
                if ws == 1 and window == 0:  # plan order, workers interleaved
                    merged = np.empty_like(plan)
                    for w in range(max(nw, 1)):
                        merged[w :: max(nw, 1)] = parts[w]
                    np.testing.assert_array_equal(merged, plan)


def test_window_one_reads_each_chunk_in_one_run():
    bg = np.random.default_rng(3).random((2, 12, 16)) < 0.3
    sp = StreamingPatching.from_arrays((384, 512), (32, 32), bg, chunk_shape=(64, 64), seed=2)
    for w in range(2):
        arr = ShardStream(sp, 0, worker=w, num_workers=2, window=1, chunk_shape=(64, 64))[:]
        chunk = [(int(s), int(y) // 64, int(x) // 64) for s, (y, x) in zip(arr["sample"], arr["origin"],
                                                                            strict=True)]
        runs = [c for i, c in enumerate(chunk) if i == 0 or c != chunk[i - 1]]
        assert len(runs) == len(set(chunk))


def test_a_million_regions_same_multiset_for_world_1x0_and_2x2():
    grid, ps = (1000, 1000), (8, 8)
    yy, xx = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij", sparse=True)
    bg = ((np.sin(yy / 37.0) + np.cos(xx / 23.0)) > 0.3)[None]
    sp = StreamingPatching((8000, 8000), ps, _reader(bg), background_weight=0.1,
                           chunk_shape=(256, 256), seed=4)

    def union(ws, nw, window):
        return np.concatenate([ShardStream(sp, 0, rank=r, world_size=ws, worker=w, num_workers=nw,
                                           window=window, chunk_shape=(256, 256))[:]
                               for r in range(ws) for w in range(max(nw, 1))])

    one, four = union(1, 0, 64), union(2, 2, 32)
    assert len(one) == sp.epoch_length and len(four) == sp.epoch_length - sp.epoch_length % 2
    a, b = _keys(one), _keys(four)
    missing = set(a) - set(b)
    assert len(a) - len(b) == len(missing) <= 1  # only the truncation to a multiple of 2
    assert set(b) <= set(a) and sorted(set(a) - missing) == sorted(set(b))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"mode": "bogus"}, ConfigError, "mode"),
        ({"seed": -1}, ConfigError, "seed"),
        ({"background_weight": 1.5}, ConfigError, "background_weight"),
        ({"epoch_length": 5}, ConfigError, "epoch_length"),
        ({"epoch_length": 0, "mode": "with_replacement"}, ConfigError, "epoch_length"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        StreamingPatching.from_arrays((64, 64), (16, 16), np.zeros((4, 4), bool), **kwargs)


def test_decisions_that_change_after_the_scan_are_refused():
    bg = np.zeros((1, 8, 8), bool)
    sp = StreamingPatching(((256, 256)), (32, 32), _reader(bg), chunk_shape=(64, 64))
    bg[0, :4] = True  # the side-car was rewritten meanwhile
    with pytest.raises(SidecarMismatchError, match="changed"):
        sp.epoch_plan(0)
    with pytest.raises(SidecarMismatchError, match="shape"):
        StreamingPatching((256, 256), (32, 32), lambda s, lo, hi: np.zeros((1, 1), bool))


def test_int_mode_from_the_first_region_of_a_mixed_largest_group():
    """Background interior regions (16 x 0.25 = 4.0) tie with kept edge regions (area 4) for
    the largest adjusted area, and a background corner (0.25) is fractional: CAREamics' capacity
    array is float64 because the first such region (in enumeration order) is a background one."""
    bg = np.zeros((4, 4), bool)
    bg[:3, :3] = True  # every interior region
    bg[3, 3] = True  # the corner
    ref = StratifiedPatching((16, 16), (4, 4), np.where(bg, 0.25, 1.0), background=bg)
    sp = StreamingPatching.from_arrays((16, 16), (4, 4), bg, background_weight=0.25,
                                       chunk_shape=(4, 4))
    assert sp._int_mode(0, sp.gcum[0, -1], sp._group_int(0)) is False
    assert _contents_reference(ref) == _contents_streamed(sp)
    assert sp.n_patches_per_sample.tolist() == ref.n_patches_per_sample.tolist()
