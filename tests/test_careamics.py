"""patchsieve.careamics without CAREamics: the import guard, CAREamics' validation plans, the
configuration rules (the training itself: tests/test_careamics_train.py, make test-careamics)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

import patchsieve.careamics as psc
from patchsieve.careamics._config import (
    check_dataset_options,
    loader_options,
    pooled_mean_std,
    resolve_filter,
)
from patchsieve.careamics._plans import (
    FixedPlan,
    HeldOutPatching,
    careamics_val_cells,
    fixed_random_plan,
    held_out_plan,
)
from patchsieve.config import MaxPatchFilterConfig, ShannonPatchFilterConfig
from patchsieve.errors import ConfigError
from patchsieve.sampling import StratifiedPatching

NO_CAREAMICS = importlib.util.find_spec("careamics") is None


@pytest.mark.skipif(not NO_CAREAMICS, reason="CAREamics is installed here")
def test_clear_import_error_without_careamics():
    with pytest.raises(ImportError, match="careamics-env.sh"):
        psc.train(object(), "x.zarr")
    with pytest.raises(ImportError, match="pip install 'careamics==0.3.5'"):
        psc.PatchsieveDataModule  # noqa: B018 - the lazy attribute imports CAREamics
    assert set(psc.__all__) == {"PatchsieveDataModule", "train"}
    with pytest.raises(AttributeError):
        psc.nothing  # noqa: B018


def _sampler(n_samples=3, shape=(160, 192), ps=(32, 32), seed=4, bg_frac=0.3):
    rng = np.random.default_rng(seed)
    grid = tuple((s + 1) // p for s, p in zip(shape, ps))
    w = np.where(rng.random((n_samples, *grid)) < bg_frac, 0.1, 1.0)
    return dict(spatial_shape=shape, patch_size=ps, weights=w, background=w < 1, seed=seed)


def _overlap(plan, held, ps):
    hit = np.zeros(len(plan), bool)
    for s, cell in held:
        c = np.asarray(cell) * np.asarray(ps)
        sel = plan["sample"] == s
        hit[sel] |= np.all(np.abs(plan["origin"][sel] - c) < np.asarray(ps), axis=1)
    return hit


@pytest.mark.parametrize("n_val", [1, 8, 40])
def test_held_out_training_plans_never_touch_validation_cells(n_val):
    kw = _sampler()
    base = StratifiedPatching(**kw)
    held = careamics_val_cells(base.n_patches_per_sample, base.grid_shape, n_val, seed=9)
    assert len(held) == n_val and len(set(held)) == n_val
    sp = HeldOutPatching(**kw, held_out=held)
    per_sample = np.bincount([s for s, _ in held], minlength=3)
    assert sp.epoch_length == base.epoch_length - n_val  # CAREamics: n_patches - excluded
    for epoch in range(3):
        plan = sp.epoch_plan(epoch)
        assert len(plan) == sp.epoch_length
        np.testing.assert_array_equal(np.bincount(plan["sample"], minlength=3),
                                      base.n_patches_per_sample - per_sample)
        assert not _overlap(plan, held, kw["patch_size"]).any()
        np.testing.assert_array_equal(plan, sp.epoch_plan(epoch))  # deterministic
        # patches inside the image, region index consistent with the origin
        assert (plan["origin"] + 32 <= np.asarray(kw["spatial_shape"])).all()
    val = held_out_plan(held, base)
    assert val.epoch_length == n_val
    np.testing.assert_array_equal(val.epoch_plan(0), val.epoch_plan(5))


def test_remaining_areas_when_rejection_is_not_enough():
    """A small image where most patches touch a held-out cell: the rest is drawn from the
    remaining sampling areas (CAREamics' orthant exclusion), never overlapping."""
    kw = _sampler(n_samples=1, shape=(64, 64), ps=(16, 16), bg_frac=0.0)
    base = StratifiedPatching(**kw)
    held = [(0, (1, 1)), (0, (2, 2)), (0, (1, 2))]
    sp = HeldOutPatching(**kw, held_out=held)
    plan = sp.epoch_plan(0)
    assert len(plan) == base.epoch_length - 3
    assert not _overlap(plan, held, (16, 16)).any()
    # all cells but (3, 3) held out: the one patch left lies exactly on it
    every = [(0, (i, j)) for i in range(4) for j in range(4)]
    last = HeldOutPatching(**kw, held_out=every[:15]).epoch_plan(0)
    assert last["origin"].tolist() == [[48, 48]]
    with pytest.raises(ConfigError, match="n_val_patches"):
        careamics_val_cells(base.n_patches_per_sample, base.grid_shape, 16, seed=1)


def test_validation_cells_follow_careamics_rng_and_weights():
    """Cells are drawn per sample in proportion to its patches (sequentially, as CAREamics)."""
    n = [100, 0, 100]
    cells = careamics_val_cells(n, (4, 5), 30, seed=3)
    assert not any(s == 1 for s, _ in cells)
    assert cells == careamics_val_cells(n, (4, 5), 30, seed=3)
    assert cells != careamics_val_cells(n, (4, 5), 30, seed=4)
    assert all(0 <= c[0] < 4 and 0 <= c[1] < 5 for _, c in cells)


def test_fixed_random_plan_is_careamics_fixed_random_patching():
    base = StratifiedPatching(**_sampler(n_samples=2, shape=(100, 130)))
    plan = fixed_random_plan(base, seed=5)
    assert plan.epoch_length == 2 * 4 * 5  # prod(ceil(shape / patch)) per sample
    p = plan.epoch_plan(0)
    assert (p["origin"] >= 0).all() and (p["origin"] + 32 <= np.array([100, 130])).all()
    np.testing.assert_array_equal(p, fixed_random_plan(base, seed=5).epoch_plan(3))
    assert isinstance(plan, FixedPlan)
    assert plan.expected_visits().sum() == plan.epoch_length


def test_filter_rules():
    cfg = SimpleNamespace(patch_filter=None)
    shannon = ShannonPatchFilterConfig(threshold=1.0)
    assert resolve_filter(cfg, shannon, 2) == shannon
    assert resolve_filter(cfg, None, 2) is None
    own = SimpleNamespace(patch_filter=MaxPatchFilterConfig(threshold=3.0, coverage=0.25))
    # the same filter in both places (Max coverage resolved: None == 0.5**ndim)
    assert resolve_filter(own, MaxPatchFilterConfig(threshold=3.0), 2).threshold == 3.0
    assert resolve_filter(own, None, 2).threshold == 3.0
    with pytest.raises(ConfigError, match="conflicts"):
        resolve_filter(own, MaxPatchFilterConfig(threshold=3.0), 3)  # 0.125 != 0.25
    with pytest.raises(ConfigError, match="conflicts"):
        resolve_filter(own, shannon, 2)


def test_loader_and_dataset_options():
    kw, drop = loader_options({"shuffle": True, "num_workers": 2, "pin_memory": True,
                               "drop_last": True}, 0, "p")
    assert kw == {"num_workers": 2, "pin_memory": True} and drop
    assert loader_options(None, 3, "p") == ({"num_workers": 3}, False)
    with pytest.raises(ConfigError, match="collate_fn"):
        loader_options({"collate_fn": None}, 0, "data_config.train_dataloader_params")
    assert check_dataset_options({"cache_bytes": 1}) == {"cache_bytes": 1}
    with pytest.raises(ConfigError, match="data_config.patching.patch_size"):
        check_dataset_options({"patch_size": (8, 8)})


def test_pooled_statistics():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 2, 10_000), rng.normal(5, 1, 10_000)
    m, s = pooled_mean_std([a.mean(), b.mean()], [a.std(), b.std()])
    both = np.concatenate([a, b])
    assert m == pytest.approx(both.mean()) and s == pytest.approx(both.std())


@pytest.mark.cluster
def test_last_batch_of_one_patch_carries_metadata(tmp_path, monkeypatch):
    """A last batch of one patch (epoch length % batch size == 1) with return_metadata: its
    origins were a one-row view with the record stride, which torch refused (found by the
    CAREamics training path: every epoch of such a size crashed at its end)."""
    from distributed import Client, LocalCluster

    from patchsieve.dataset import PatchDataset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    arr = np.random.default_rng(0).poisson(5, (1, 64, 64)).astype(np.float32)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cl, Client(cl, set_as_default=False) as c:
        ds = PatchDataset(arr, patch_size=(16, 16), axes="SYX", client=c, batch_size=5,
                          patch_filter_config=MaxPatchFilterConfig(threshold=-1.0),
                          return_metadata=True)
    assert len(ds) == 16
    batches = list(ds.loader())
    assert [len(b[0]) for b in batches] == [5, 5, 5, 1]
    x, meta = batches[-1]
    s, (oy, ox) = int(meta["sample"][0]), meta["origin"][0].tolist()
    np.testing.assert_array_equal(x[0, 0].numpy(), arr[s, oy:oy + 16, ox:ox + 16])
