"""Tests of patchsieve.sampling: CAREamics StratifiedPatching semantics, sharding, order, resume."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from patchsieve.errors import ConfigError
from patchsieve.sampling import (
    StratifiedPatching,
    careamics_n_patches,
    chunk_groups,
    pack_regions,
    region_areas,
    shard_positions,
    worker_orders,
    worker_positions_from_batches,
    zorder_chunk_ids,
)

CAREAMICS_PY = Path(__file__).resolve().parents[1] / "benchmarks" / ".venv-careamics" / "bin" / "python"


# --------------------------------------------------------------------------- references
def _naive_areas(shape, ps):
    """Count, per region, the patch origins o in [g*p, g*p+p) with o + p <= size (brute force)."""
    grid = tuple((s + 1) // p for s, p in zip(shape, ps, strict=True))
    out = np.zeros(grid, np.int64)
    for g in itertools.product(*[range(n) for n in grid]):
        count = 1
        for gi, s, p in zip(g, shape, ps, strict=True):
            count *= sum(1 for o in range(gi * p, gi * p + p) if o + p <= s)
        out[g] = count
    return out


def _naive_pack(items, n_bins):
    """Item-by-item best-fit decreasing with growing capacity, numpy dtype semantics.

    ``items`` is a list of python numbers in region order (int for kept regions, float for
    regions with a relative probability), like the dict CAREamics packs.
    """
    if n_bins == 0:
        return 0, np.full(len(items), -1)
    if len(items) <= n_bins:
        return int(np.ceil(max(items))), np.arange(len(items))
    order = sorted(range(len(items)), key=lambda i: items[i], reverse=True)
    size = max(items)
    cap = np.array([size] * n_bins)  # int64 when the first maximum is an int
    assign = np.full(len(items), -1)
    for i in order:
        a = items[i]
        diff = cap - a
        if (diff < 0).all():
            j = int(np.argmax(cap))
            inc = a - cap[j]
            size = size + inc
            if cap.dtype.kind == "i" and not float(inc).is_integer():
                cap = cap.astype(np.float64)  # where CAREamics raises, patchsieve goes on in float
            cap = cap + inc
        else:
            diff[diff < 0] = size * 2
            j = int(np.argmin(diff))
        assign[i] = j
        cap[j] = cap[j] - a
    return int(np.ceil(size)), assign


def _items(areas, w, bg):
    return [
        int(a) if not b else float(a) * float(p)
        for a, p, b in zip(areas.ravel(), w.ravel(), bg.ravel(), strict=True)
    ]


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    "shape,ps",
    [
        ((5, 6), (2, 2)),
        ((64, 64), (16, 16)),
        ((63, 70), (16, 8)),
        ((9, 10, 11), (2, 3, 4)),
        ((8, 8), (8, 8)),
    ],
)
def test_region_areas_match_brute_force(shape, ps):
    areas, _ = region_areas(shape, ps)
    np.testing.assert_array_equal(areas, _naive_areas(shape, ps))


def test_careamics_n_patches_sequential_ceil():
    bg = np.zeros((4, 4), bool)
    bg.ravel()[:10] = True
    # 16 - 10 * 0.9 evaluated sequentially is 7.000000000000002 -> ceil 8, as in CAREamics
    total = 16.0
    for _ in range(10):
        total -= 1 - 0.1
    assert careamics_n_patches((256, 256), (64, 64), np.full((4, 4), 0.1), bg) == math.ceil(total)
    assert careamics_n_patches((300, 200), (64, 64), np.ones((4, 3)), np.zeros((4, 3), bool)) == 15


# --------------------------------------------------------------------------- bin packing
@pytest.mark.parametrize("seed", range(6))
def test_pack_regions_matches_item_by_item_reference(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        nd = int(rng.choice([2, 3]))
        ps = tuple(int(x) for x in rng.choice([2, 3, 4, 8], size=nd))
        shape = tuple(max(p, int(p * rng.integers(2, 9) + rng.integers(-1, p))) for p in ps)
        p = float(rng.choice([0.1, 0.0, 0.3, 0.5, 1.0]))
        areas, _ = region_areas(shape, ps)
        bg = rng.random(areas.shape) < rng.random()
        w = np.where(bg, p, 1.0)
        n = careamics_n_patches(shape, ps, w, bg)
        items = _items(areas, w, bg)
        adj = np.array(items, dtype=np.float64)
        size, bins = pack_regions(adj, ~bg.ravel(), n) if len(items) > n else (None, None)
        ref_size, ref_bins = _naive_pack(items, n)
        if size is not None:
            assert size == ref_size
            np.testing.assert_array_equal(bins, ref_bins)
        sp = StratifiedPatching(shape, ps, w, background=bg)
        assert sp.n_patches_per_sample[0] == n
        assert sp.bin_size[0] == ref_size
        np.testing.assert_array_equal(sp.bin_of_region[0], ref_bins)


def test_pack_regions_integer_capacity_truncates_like_careamics():
    # a kept 16-area region first -> CAREamics' capacity array is int64
    items = [16] + [1.6] * 12
    size, bins = pack_regions(np.array(items, float), [True] + [False] * 12, 2)
    ref_size, ref_bins = _naive_pack(items, 2)
    assert size == ref_size
    np.testing.assert_array_equal(bins, ref_bins)
    # capacities 16 -> 14 (14.4 truncated) -> 12 ... -> 0: eight 1.6 items fit, then growth
    assert bins[1:9].tolist() == [1] * 8 and bins[9] == 0


def _write_oracle(tmp_path):
    script = tmp_path / "oracle.py"
    script.write_text(
        textwrap.dedent("""
        import sys, numpy as np
        from careamics.dataset.patching.stratified_patching import _ImageStratifiedPatching
        d = np.load(sys.argv[1]); out = {}
        for t in range(int(d["ntrials"])):
            shape, ps, p = d[f"shape_{t}"].tolist(), d[f"ps_{t}"].tolist(), float(d[f"p_{t}"])
            bg = d[f"bg_{t}"]
            sp = _ImageStratifiedPatching(shape, ps, np.random.default_rng(t))
            coords = list(sp.grid_coords.keys())
            try:
                sp.set_region_probs({c: p for c, b in zip(coords, bg.ravel()) if b})
            except Exception as e:
                out[f"err_{t}"] = repr(e); continue
            bin_of = np.full(len(coords), -1)
            for b, members in enumerate(sp.region_bins.bins):
                bin_of[members] = b
            out[f"n_{t}"], out[f"bin_{t}"] = sp.n_patches, bin_of
            out[f"size_{t}"] = sp.region_bins.bin_size
            if t == 0:  # epoch draws: background patches per epoch
                counts = []
                for _ in range(int(d["epochs"])):
                    c = 0
                    for i in range(sp.n_patches):
                        o = sp.sample_patch_coord(i)
                        g = tuple(int(x) // q for x, q in zip(o, ps))
                        c += bool(bg[g])
                    counts.append(c)
                out["bg_counts"] = np.array(counts)
        np.savez(sys.argv[2], **out)
    """)
    )
    return script


@pytest.mark.careamics
@pytest.mark.skipif(not CAREAMICS_PY.exists(), reason="CAREamics venv absent (benchmarks/careamics-env.sh)")
def test_matches_real_careamics_stratified_patching(tmp_path):
    rng = np.random.default_rng(11)
    cases, inp = [], {"ntrials": 80, "epochs": 200}
    for t in range(80):
        nd = 2 if t == 0 else int(rng.choice([2, 3]))
        ps = (8, 8) if t == 0 else tuple(int(x) for x in rng.choice([2, 3, 4, 8, 16], size=nd))
        shape = (
            (64, 62)
            if t == 0
            else tuple(max(p, int(p * rng.integers(2, 12) + rng.integers(-1, p))) for p in ps)
        )
        p = 0.1 if t == 0 else float(rng.choice([0.1, 0.0, 0.5, 0.3, 1.0, 0.05]))
        bg = rng.random(region_areas(shape, ps)[0].shape) < (0.5 if t == 0 else rng.random())
        cases.append((shape, ps, p, bg))
        inp.update({f"shape_{t}": shape, f"ps_{t}": ps, f"p_{t}": p, f"bg_{t}": bg})
    np.savez(tmp_path / "in.npz", **inp)
    subprocess.run(
        [
            str(CAREAMICS_PY),
            str(_write_oracle(tmp_path)),
            str(tmp_path / "in.npz"),
            str(tmp_path / "out.npz"),
        ],
        check=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    out = np.load(tmp_path / "out.npz")
    compared = 0
    for t, (shape, ps, p, bg) in enumerate(cases):
        if f"err_{t}" in out:  # CAREamics itself raises (fractional growth of an int64 array)
            continue
        sp = StratifiedPatching(shape, ps, np.where(bg, p, 1.0), background=bg)
        assert sp.n_patches_per_sample[0] == out[f"n_{t}"], (shape, ps, p)
        assert sp.bin_size[0] == out[f"size_{t}"], (shape, ps, p)
        np.testing.assert_array_equal(sp.bin_of_region[0], out[f"bin_{t}"])
        compared += 1
    assert compared >= 60
    # per-epoch background counts: same mean and spread as CAREamics' own draws
    shape, ps, p, bg = cases[0]
    sp = StratifiedPatching(shape, ps, np.where(bg, p, 1.0), background=bg, seed=3)
    ours = np.array([sp.epoch_plan(e)["background"].sum() for e in range(400)])
    theirs = out["bg_counts"]
    se = math.sqrt(ours.var() / ours.size + theirs.var() / theirs.size)
    assert abs(ours.mean() - theirs.mean()) < 4 * se + 1e-9
    assert 0.6 < (ours.std() + 1e-9) / (theirs.std() + 1e-9) < 1.6


# --------------------------------------------------------------------------- distributions
def _sampler_with_grid(shape, ps, frac_bg, p, n_samples, seed, mode="per_epoch", **kw):
    areas, _ = region_areas(shape, ps)
    rng = np.random.default_rng(seed)
    bg = rng.random((n_samples, *areas.shape)) < frac_bg
    return StratifiedPatching(shape, ps, np.where(bg, p, 1.0), background=bg, mode=mode, seed=seed, **kw)


def _realized(sp, n_min=100_000):
    n_bg = n = epoch = 0
    visits = np.zeros(sp.weights.shape).reshape(sp.n_samples, -1)
    while n < n_min:
        plan = sp.epoch_plan(epoch)
        n_bg += int(plan["background"].sum())
        n += len(plan)
        np.add.at(visits, (plan["sample"], plan["region"]), 1)
        epoch += 1
    return n_bg / n, visits / epoch, n


@pytest.mark.parametrize("shape,ps", [((510, 510), (64, 64)), ((62, 254, 254), (16, 64, 64))])
def test_background_fraction_matches_careamics_expectation(shape, ps):
    # size = m * patch - 2: every region but none of the edge ones is (nearly) full, so the
    # region-unit formula p N_bg / (N_fg + p N_bg) applies as well as the exact expectation
    p = 0.1
    sp = _sampler_with_grid(shape, ps, 0.6, p, n_samples=40, seed=5)
    realized, visits, n = _realized(sp)
    assert n >= 100_000
    assert abs(realized - sp.expected_background_fraction()) < 0.01
    n_bg, n_fg = sp.background.sum(), (~sp.background).sum()
    assert abs(realized - p * n_bg / (n_fg + p * n_bg)) < 0.01
    # every region is visited in proportion to its adjusted area
    exp = sp.expected_visits().reshape(sp.n_samples, -1)
    assert abs(visits.sum() - exp.sum()) / exp.sum() < 1e-9
    epochs = round(n / sp.epoch_length)
    counts, expected = visits * epochs, exp * epochs
    z = (counts - expected)[expected > 20] / np.sqrt(expected[expected > 20])
    assert np.abs(z).max() < 5 and (z**2).mean() < 1.5  # no region over- or under-sampled


def test_origins_lie_in_selectable_box_and_fit_the_image():
    shape, ps = (70, 45, 33), (8, 16, 4)
    sp = _sampler_with_grid(shape, ps, 0.5, 0.2, n_samples=3, seed=1)
    plan = np.concatenate([sp.epoch_plan(e) for e in range(20)])
    g = np.stack(np.unravel_index(plan["region"], sp.grid_shape), axis=1)
    o = plan["origin"]
    assert (o >= g * ps).all() and (o < g * ps + ps).all()
    assert (o + ps <= np.array(shape)).all() and (o >= 0).all()
    # all selectable origins of a full region are reached
    full = plan[plan["region"] == 0]
    assert len(np.unique(full["origin"][:, 2])) == 4


@pytest.mark.parametrize("mode", ["with_replacement", "fixed_subset"])
def test_other_modes_background_fraction(mode):
    kw = {"epoch_length": 20_000} if mode == "with_replacement" else {}
    sp = _sampler_with_grid((510, 510), (64, 64), 0.6, 0.1, n_samples=40, seed=2, mode=mode, **kw)
    realized, _, _ = _realized(sp)
    assert abs(realized - sp.expected_background_fraction()) < 0.01
    if mode == "with_replacement":
        assert len(sp.epoch_plan(0)) == 20_000
        return
    # fixed_subset: round(p * N_bg) background regions per sample, the same in every epoch
    chosen = sp.effective_weights * sp.background > 0
    k = np.floor(sp.background.reshape(sp.n_samples, -1).sum(1) * 0.1 + 0.5)
    np.testing.assert_array_equal(chosen.reshape(sp.n_samples, -1).sum(1), k)
    flat = chosen.reshape(sp.n_samples, -1)
    for e in range(5):
        b = sp.epoch_plan(e)
        b = b[b["background"]]
        assert flat[b["sample"], b["region"]].all()
    again = StratifiedPatching(
        sp.spatial_shape,
        sp.patch_size,
        sp.weights,
        background=sp.background,
        mode="fixed_subset",
        seed=2,
    )
    np.testing.assert_array_equal(again.effective_weights, sp.effective_weights)


def test_plans_are_deterministic_and_epochs_differ():
    sp = _sampler_with_grid((200, 300), (32, 32), 0.4, 0.1, n_samples=4, seed=9)
    a, b, c = sp.epoch_plan(3), sp.epoch_plan(3), sp.epoch_plan(4)
    np.testing.assert_array_equal(a, b)
    assert len(a) == len(c) == sp.epoch_length
    assert not np.array_equal(a, c)
    other_seed = StratifiedPatching((200, 300), (32, 32), sp.weights, background=sp.background, seed=10)
    assert not np.array_equal(other_seed.epoch_plan(3), a)


# --------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n_plan", [1001, 1000])
def test_shards_cover_the_truncated_plan_without_duplicates(n_plan):
    unions = {}
    for ws, nw in [(1, 0), (1, 2), (2, 0), (2, 2)]:
        parts = [
            shard_positions(n_plan, rank=r, world_size=ws, worker=w, num_workers=nw)
            for r in range(ws)
            for w in range(max(nw, 1))
        ]
        allpos = np.concatenate(parts)
        assert len(np.unique(allpos)) == len(allpos)  # disjoint
        np.testing.assert_array_equal(np.sort(allpos), np.arange(n_plan - n_plan % ws))
        per_rank = [
            sum(
                len(shard_positions(n_plan, rank=r, world_size=ws, worker=w, num_workers=nw))
                for w in range(max(nw, 1))
            )
            for r in range(ws)
        ]
        assert len(set(per_rank)) == 1  # equal patch count per rank: no DDP hang
        unions[(ws, nw)] = set(allpos.tolist())
    assert unions[(1, 0)] == unions[(1, 2)]
    assert unions[(2, 0)] == unions[(2, 2)]
    assert unions[(2, 0)] == unions[(1, 0)] - ({n_plan - 1} if n_plan % 2 else set())


@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
def test_worker_orders_partition_the_share_run_by_run(num_workers):
    rng = np.random.default_rng(0)
    n_chunks, n = 40, 1001
    ids = rng.integers(0, n_chunks, n)
    interleaved = worker_orders(None, n, num_workers)
    for window in (0, 1, 7, 40):
        groups = chunk_groups(ids, n_chunks, window)
        orders = worker_orders(groups, n, num_workers)
        allpos = np.concatenate(orders)
        np.testing.assert_array_equal(np.sort(allpos), np.arange(n))  # same patches, once each
        assert [len(o) for o in orders] == [len(o) for o in interleaved]  # sizes fixed
        if window == 0:
            assert all(np.array_equal(a, b) for a, b in zip(orders, interleaved, strict=True))
            continue
        seq = groups[allpos]
        runs = seq[np.r_[True, seq[1:] != seq[:-1]]]
        assert len(runs) == len(np.unique(seq))  # each run executed contiguously
        firsts = [int(np.flatnonzero(groups == g)[0]) for g in runs]
        assert firsts == sorted(firsts)  # runs in order of first appearance
        for g in np.unique(seq):  # patches of a run keep plan order
            p = allpos[seq == g]
            assert (np.diff(p) > 0).all()
        spans = (ids - ids[0]) % n_chunks  # a run holds `window` neighbouring chunks
        for g in np.unique(groups):
            assert np.ptp(spans[groups == g]) < window


def test_worker_positions_follow_dataloader_round_robin():
    for sizes, bs in [([10, 9], 4), ([5, 5, 4], 2), ([7], 3), ([3, 3], 5), ([2, 9], 2), ([0, 4], 3)]:
        batches = []  # simulate in-order delivery: batch t from worker t % W while it has data
        fed = [0] * len(sizes)
        w = 0
        while any(f < s for f, s in zip(fed, sizes, strict=True)):
            if fed[w] < sizes[w]:
                take = min(bs, sizes[w] - fed[w])
                fed[w] += take
                batches.append(list(fed))
            w = (w + 1) % len(sizes)
        for b, state in enumerate(batches, start=1):
            assert worker_positions_from_batches(b, sizes, bs) == state


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"spatial_shape": (64, 64), "patch_size": (16,)}, "patch_size"),
        ({"spatial_shape": (64, 64), "patch_size": (0, 16)}, "positive"),
        ({"spatial_shape": (8, 8), "patch_size": (16, 16)}, "larger"),
        ({"spatial_shape": (64, 64), "patch_size": (16, 16), "mode": "bogus"}, "mode"),
        (
            {"spatial_shape": (64, 64), "patch_size": (16, 16), "weights": np.ones((3, 3))},
            "weights",
        ),
        (
            {"spatial_shape": (64, 64), "patch_size": (16, 16), "weights": np.full((4, 4), 2.0)},
            r"\[0, 1\]",
        ),
        ({"spatial_shape": (64, 64), "patch_size": (16, 16), "seed": -1}, "seed"),
        ({"spatial_shape": (64, 64), "patch_size": (16, 16), "epoch_length": 5}, "epoch_length"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StratifiedPatching(**kwargs)


def test_shard_positions_bad_rank():
    with pytest.raises(ConfigError, match="rank"):
        shard_positions(10, rank=2, world_size=2)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (2, 4, 4), (1, 7, 3)])
def test_zorder_chunk_ids_are_a_bijection_of_compact_runs(grid):
    coords = np.stack(np.unravel_index(np.arange(int(np.prod(grid))), grid), axis=1)
    samples = np.repeat([0, 1], len(coords))
    ids, n = zorder_chunk_ids(samples, np.concatenate([coords, coords]), grid)
    assert n == 2 * len(coords)
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    if grid in [(4, 4), (2, 4, 4)]:  # power-of-two grids: runs of 2**ndim chunks are cubes
        k = 2 ** len(grid)
        by_id = np.empty_like(coords)
        by_id[ids[: len(coords)]] = coords
        for start in range(0, len(coords), k):
            block = by_id[start : start + k]
            assert (np.ptp(block, axis=0) == 1).all()
