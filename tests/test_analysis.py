"""Tests of patchsieve.analysis: summary, thresholds, filter-map panels, previews, pyramid levels.

Side-cars are computed once per module from the small demo datasets (real OME-Zarr in a tmp dir)
with an in-process Dask cluster.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from patchsieve import analysis as ins  # noqa: E402
from patchsieve import compute  # noqa: E402
from patchsieve.analysis import figures as _figures  # noqa: E402
from patchsieve.analysis._common import _candidate_thresholds  # noqa: E402
from patchsieve.config import (  # noqa: E402
    MaxPatchFilterConfig,
    MeanStdPatchFilterConfig,
    ShannonPatchFilterConfig,
)
from patchsieve.demo import write_demo_data  # noqa: E402
from patchsieve.errors import ConfigError, DataError  # noqa: E402
from patchsieve.regions import filter_map_from_stats  # noqa: E402
from patchsieve.regions import filter_out_from_stats as decide  # noqa: E402
from patchsieve.sampling import StratifiedPatching  # noqa: E402
from patchsieve.sidecar import open_sidecar  # noqa: E402
from patchsieve.volume import open_volume  # noqa: E402

pytestmark = pytest.mark.cluster

FILTERS_2D = {"shannon": ShannonPatchFilterConfig(threshold=7.5),
              "max": MaxPatchFilterConfig(threshold=300.0),
              "mean_std": MeanStdPatchFilterConfig(mean_threshold=200.0)}
FILTERS_3D = {"shannon": ShannonPatchFilterConfig(threshold=6.5),
              "mean_std": MeanStdPatchFilterConfig(mean_threshold=150.0, std_threshold=20.0)}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cl, Client(cl, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_data(tmp_path_factory.mktemp("demo"), size="small")


@pytest.fixture(scope="module")
def sidecars(demo, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("sc")
    return {
        "hagen2d": compute(demo["hagen2d"], FILTERS_2D, (64, 64),
                           out / "hagen2d.patchsieve.zarr", client=client),
        "vol3d2c": compute(demo["vol3d2c"], FILTERS_3D, (8, 32, 32),
                           out / "vol3d2c.patchsieve.zarr", client=client),
        "vol3d2c_l1": compute(demo["vol3d2c"], FILTERS_3D, (4, 16, 16),
                              out / "vol3d2c.level1.patchsieve.zarr", client=client, level=1),
    }


def check_png(path, width, height):
    """The PNG exists, has the expected pixel size and is not one flat colour."""
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    assert img.shape[:2] == (height, width)
    flat = img[..., :3].reshape(-1, 3)
    assert np.unique(flat, axis=0).shape[0] > 50
    return img


# ------------------------------------------------------------------------------ summary
@pytest.mark.parametrize("kind", ["hagen2d", "vol3d2c"])
def test_summarize_matches_sidecar(sidecars, kind):
    sc = sidecars[kind]
    s = ins.summarize(sc, find_references=False)
    assert s["complete"] is True and s["source"] == sc.source
    assert s["geometry"]["grid_shape"] == list(sc.grid_shape)
    assert s["storage"]["bytes"] > 0 and s["storage"]["files"] > 5
    for name in sc.filter_names:
        f = s["filters"][name]
        fo = sc.filter_out(name)
        assert f["n_regions"] == fo.size and f["n_background"] == int(fo.sum())
        assert f["background_fraction"] == pytest.approx(fo.mean())
        assert f["kept_fraction"] + f["background_fraction"] == pytest.approx(1.0)
        rows = f["per_sample"]["rows"]
        assert sum(r["n_background"] for r in rows) == int(fo.sum())
        assert f["patches_per_epoch_careamics"] == int(sc.sample_totals(name)
                                                       ["n_patches_per_epoch"].sum())
        p = sc.config(name).filtered_patch_prob
        nb, nf = int(fo.sum()), int((~fo).sum())
        for mode, m in f["modes"].items():
            sp = StratifiedPatching([sc.shape[d] for d in sc.spatial_dims],
                                    [sc.patch_size[d] for d in sc.spatial_dims],
                                    sc.weights(name), background=fo, mode=mode)
            assert m["expected_background_fraction"] == pytest.approx(
                sp.expected_background_fraction())
            assert m["patches_per_epoch"] == sp.epoch_length
        units = f["modes"]["per_epoch"]["expected_background_fraction_region_units"]
        assert units == pytest.approx(p * nb / (nf + p * nb))


def test_summarize_summarises_many_samples(sidecars):
    s = ins.summarize(sidecars["hagen2d"], find_references=False, max_samples=2)
    ps = s["filters"]["shannon"]["per_sample"]
    assert ps["rows"] is None and ps["n"] == 4
    fo = sidecars["hagen2d"].filter_out("shannon").reshape(4, -1).mean(axis=1)
    assert ps["background_fraction"]["max"] == pytest.approx(fo.max())
    assert ps["background_fraction"]["max_sample"] == int(np.argmax(fo))


def test_summarize_finds_other_levels(sidecars):
    s = ins.summarize(sidecars["vol3d2c"])
    (lv,) = s["levels"]
    assert lv["level"] == 1
    assert set(lv["filters"]) == {"shannon", "mean_std"}
    assert lv["filters"]["shannon"] == ins.level_agreement(sidecars["vol3d2c"],
                                                           sidecars["vol3d2c_l1"])["shannon"]


# ------------------------------------------------------------------------------ thresholds
def _achievable(values):
    u, c = np.unique(values, return_counts=True)
    return np.concatenate([[0], np.cumsum(c)]) / values.size


@pytest.mark.parametrize("kind,name", [("hagen2d", "shannon"), ("hagen2d", "max"),
                                       ("hagen2d", "mean_std"), ("vol3d2c", "shannon")])
@pytest.mark.parametrize("target", [0.0, 0.3, 0.7, 1.0])
def test_suggest_background_fraction_is_closest_achievable(sidecars, kind, name, target):
    sc = sidecars[kind]
    sg = ins.suggest_threshold(sc, name, background_fraction=target)
    vals = sc.stats[sg.stat].ravel()
    best = np.min(np.abs(_achievable(vals) - target))
    assert abs(sg.background_fraction - target) == pytest.approx(best)
    cfg = sc.config(name).model_copy(update={sg.field: sg.threshold})
    assert sg.background_fraction == pytest.approx(decide(cfg, sc.stats, ndim=len(
        sc.spatial_dims)).mean())
    assert sg.method == "quantile" and sg.current_threshold == getattr(sc.config(name), sg.field)


def test_suggest_otsu_is_skimage_otsu(sidecars):
    from skimage.filters import threshold_otsu

    sc = sidecars["hagen2d"]
    sg = ins.suggest_threshold(sc, "shannon")
    assert sg.method == "otsu"
    assert sg.threshold == pytest.approx(threshold_otsu(sc.stats["entropy"].ravel()))
    assert sg.background_fraction == pytest.approx((sc.stats["entropy"] < sg.threshold).mean())


def test_suggest_std_of_meanstd(sidecars):
    sc = sidecars["vol3d2c"]
    sg = ins.suggest_threshold(sc, "mean_std", background_fraction=0.5, stat="std")
    assert (sg.field, sg.stat) == ("std_threshold", "std")
    assert sg.config["mean_threshold"] == 150.0 and sg.config["std_threshold"] == sg.threshold


@pytest.mark.parametrize("kwargs,err,match", [
    ({"background_fraction": 0.5, "method": "otsu"}, ConfigError, "either"),
    ({"background_fraction": 1.5}, ConfigError, "background_fraction"),
    ({"method": "quantile"}, ConfigError, "background_fraction"),
    ({"method": "kmeans"}, ConfigError, "method"),
    ({"stat": "entropy"}, ConfigError, "stat"),
])
def test_suggest_errors(sidecars, kwargs, err, match):
    with pytest.raises(err, match=match):
        ins.suggest_threshold(sidecars["hagen2d"], "mean_std", **kwargs)


def test_suggest_needs_filter_name_when_several(sidecars):
    with pytest.raises(ConfigError, match="filter"):
        ins.suggest_threshold(sidecars["hagen2d"])
    with pytest.raises(ConfigError, match="nope"):
        ins.suggest_threshold(sidecars["hagen2d"], "nope")


def test_candidate_threshold_on_a_million_values():
    rng = np.random.default_rng(3)
    v = np.round(rng.normal(6.0, 1.0, 1_200_000), 3)
    thr = _candidate_thresholds(v, 0.7)
    got = (v < thr).mean()
    assert abs(got - 0.7) == pytest.approx(np.min(np.abs(_achievable(v) - 0.7)))
    assert (v <= thr).mean() == got  # between two distinct values: ties rule irrelevant


def test_histogram_png(sidecars, tmp_path):
    sc = sidecars["hagen2d"]
    sg = ins.suggest_threshold(sc, "shannon", background_fraction=0.7)
    ins.plot_threshold_histogram(sc, sg, tmp_path / "h.png")
    check_png(tmp_path / "h.png", 800, 480)


def test_apply_threshold_equals_fresh_compute(demo, client, tmp_path):
    out = tmp_path / "a.patchsieve.zarr"
    compute(demo["hagen2d"], FILTERS_2D, (64, 64), out, client=client)
    sc = ins.apply_threshold(out, "shannon", 6.25)
    assert sc.is_complete and sc.config("shannon").threshold == 6.25
    fresh = compute(demo["hagen2d"], {**FILTERS_2D,
                                      "shannon": ShannonPatchFilterConfig(threshold=6.25)},
                    (64, 64), tmp_path / "b.patchsieve.zarr", client=client)
    for name in FILTERS_2D:
        np.testing.assert_array_equal(sc.filter_out(name), fresh.filter_out(name))
        np.testing.assert_array_equal(sc.weights(name), fresh.weights(name))
        for k, v in sc.sample_totals(name).items():
            np.testing.assert_array_equal(v, fresh.sample_totals(name)[k])
    assert sc.normalization()["kept"] == fresh.normalization()["kept"]
    with pytest.raises(ValueError):
        ins.apply_threshold(out, "shannon", -1.0)


# ------------------------------------------------------------------------------ filter maps
@pytest.mark.parametrize("z", [0, 3, 7, 8, 12, 15])
def test_slice_map_equals_full_filter_map(sidecars, z):
    sc = sidecars["vol3d2c"]
    shape = tuple(sc.shape[d] for d in sc.spatial_dims)
    full = filter_map_from_stats(sc.stats["entropy"][0], shape, sc.patch_size)
    got = _figures._slice_region_map(sc.stats["entropy"][0], shape,
                                tuple(sc.patch_size.values()), z)
    np.testing.assert_array_equal(got, full[z])


def test_slice_map_odd_z_grid():
    rng = np.random.default_rng(0)
    shape, ps = (11, 16, 16), (4, 8, 8)
    vals = rng.random((3, 2, 2)) + 1
    full = filter_map_from_stats(vals, shape, ps)
    for z in range(shape[0]):
        np.testing.assert_array_equal(_figures._slice_region_map(vals, shape, ps, z), full[z])


@pytest.mark.parametrize("kind,sample,z", [("hagen2d", 2, None), ("vol3d2c", 0, 5)])
def test_source_panels_equal_sidecar_panels(sidecars, kind, sample, z):
    sc = sidecars[kind]
    vol = open_volume(sc.source)
    index = {"s": sample} if "s" in vol.dims else {}
    zz = _figures._resolve_z([sc.shape[d] for d in sc.spatial_dims], z)
    from_sc = _figures._panels_from_sidecar(sc, sample, zz, None)
    cfgs = [sc.config(n) for n in sc.filter_names]
    from_src = _figures._panels_from_source(vol, index, zz, cfgs, sc.patch_size)
    for a, b in zip(from_sc, from_src):
        np.testing.assert_allclose(a.values, b.values, rtol=1e-12)
        np.testing.assert_array_equal(a.keep, b.keep)
        assert a.background_fraction == pytest.approx(b.background_fraction)


def test_keep_mask_is_coverage_by_kept_regions(sidecars):
    sc = sidecars["hagen2d"]
    (p,) = _figures._panels_from_sidecar(sc, 1, None, ["shannon"])
    keep_regions = ~sc.filter_out("shannon")[1]
    ps = sc.patch_size["y"]
    expect = np.zeros((256, 256), bool)
    for gy, gx in zip(*np.nonzero(keep_regions)):
        expect[gy * ps:gy * ps + 2 * ps, gx * ps:gx * ps + 2 * ps] = True
    np.testing.assert_array_equal(p.keep, expect)


@pytest.mark.parametrize("kind,kwargs,size", [
    ("hagen2d", {"sample": 3}, (1980, 630)),
    ("vol3d2c", {"z": 2, "channel": 1}, (1320, 630)),
])
def test_plot_sidecar_png(sidecars, tmp_path, kind, kwargs, size):
    ins.plot_filter_maps(sidecars[kind].path, tmp_path / "p.png", **kwargs)
    check_png(tmp_path / "p.png", *size)


def test_plot_source_png(demo, tmp_path):
    ins.plot_filter_maps(demo["hagen2d"], tmp_path / "s.png", sample=1, patch_size=(64, 64),
                         filters=["max", "mean_std", ShannonPatchFilterConfig(threshold=7.5)])
    check_png(tmp_path / "s.png", 1980, 630)


@pytest.mark.parametrize("kwargs,match", [
    ({"sample": 9}, "sample"), ({"z": 0}, "z applies"), ({"channel": 3}, "channel"),
    ({"filters": ["nope"]}, "nope"),
])
def test_plot_errors(sidecars, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ins.plot_filter_maps(sidecars["hagen2d"], **kwargs)


def test_plot_source_errors(demo):
    with pytest.raises(ConfigError, match="patch_size"):
        ins.plot_filter_maps(demo["hagen2d"], filters=["shannon"])
    with pytest.raises(ConfigError, match="filters"):
        ins.plot_filter_maps(demo["hagen2d"], patch_size=(64, 64))
    with pytest.raises(ConfigError, match="z must be"):
        ins.plot_filter_maps(demo["vol3d2c"], filters=["shannon"], patch_size=(8, 32, 32), z=16)


# ------------------------------------------------------------------------------ preview
@pytest.mark.parametrize("kind,name,mode", [("hagen2d", "shannon", "per_epoch"),
                                            ("vol3d2c", "mean_std", "with_replacement")])
def test_preview_patches_are_dataset_patches(sidecars, tmp_path, kind, name, mode):
    sc = sidecars[kind]
    res = ins.preview_patches(sc, 40, filter=name, mode=mode, seed=2)
    assert res["patches"].shape[0] == 40
    vol = open_volume(sc.source)
    fo = sc.filter_out(name)
    ps = [sc.patch_size[d] for d in sc.spatial_dims]
    for i in range(40):
        s, o = res["samples"][i], res["origins"][i]
        region = tuple(v // p for v, p in zip(o, ps))
        assert res["background"][i] == fo[s][region]
        sel = {d: slice(v, v + p) for d, v, p in zip(sc.spatial_dims, o, ps)}
        if "s" in vol.dims:
            sel["s"] = s
        if "c" in vol.dims:
            sel["c"] = sc.ref_channel
        crop = np.asarray(vol.isel(sel).data.compute(), np.float32)
        if crop.ndim == 3:
            crop = crop[crop.shape[0] // 2]
        np.testing.assert_array_equal(res["patches"][i], crop)
    assert res["realized_background_fraction"] == pytest.approx(res["background"].mean())
    ins.plot_preview(res, tmp_path / "g.png")
    check_png(tmp_path / "g.png", 950, 910)  # 7 x 6 grid of 1.3-inch cells at 100 dpi


def test_preview_background_flags_match_plan(sidecars):
    sc = sidecars["hagen2d"]
    res = ins.preview_patches(sc, 19, filter="shannon")
    # the plan of the sampler PatchDataset draws with (CAREamics' StratifiedPatching semantics,
    # streamed from the side-car: the same law, its own random numbers)
    from patchsieve.dataset import PatchDataset

    sp = PatchDataset(sidecar=sc, filter_name="shannon").sampler
    ref = StratifiedPatching((256, 256), (64, 64), sc.weights("shannon"),
                             background=sc.filter_out("shannon"))
    assert sp.epoch_length == ref.epoch_length
    plan = sp.epoch_plan(0)
    assert sorted(map(tuple, res["origins"])) == sorted(map(tuple, plan["origin"].tolist()))
    assert int(res["background"].sum()) == int(plan["background"].sum())


def test_preview_errors(sidecars):
    with pytest.raises(ConfigError, match="n must"):
        ins.preview_patches(sidecars["hagen2d"], 0, filter="shannon")
    with pytest.raises(ConfigError, match="channel"):
        ins.preview_patches(sidecars["vol3d2c"], 4, filter="shannon", channel=2)


# ------------------------------------------------------------------------------ levels
def test_level_patch_size(demo):
    assert ins.level_patch_size(demo["vol3d2c"], (16, 64, 64), 1) == {"z": 8, "y": 32, "x": 32}
    assert ins.level_patch_size(demo["vol3d2c"], (16, 64, 64), 2) == {"z": 4, "y": 16, "x": 16}
    with pytest.raises(ConfigError, match="multiple"):
        ins.level_patch_size(demo["vol3d2c"], (16, 65, 64), 1)
    with pytest.raises(ConfigError, match="level"):
        ins.level_patch_size(demo["vol3d2c"], (16, 64, 64), 3)


def test_region_index_map_is_identity_for_matching_patches(sidecars):
    idx = ins.region_index_map(sidecars["vol3d2c_l1"], sidecars["vol3d2c"])
    for i, g in zip(idx, sidecars["vol3d2c"].grid_shape):
        np.testing.assert_array_equal(i, np.arange(g))
    same = ins.region_index_map(sidecars["vol3d2c"], sidecars["vol3d2c"])
    assert all((a == np.arange(len(a))).all() for a in same)


def test_region_index_map_other_patch_size(sidecars, demo, client, tmp_path):
    coarse = compute(demo["vol3d2c"], FILTERS_3D, (4, 8, 8), tmp_path / "c.patchsieve.zarr",
                     client=client, level=1)
    (iz, iy, ix) = ins.region_index_map(coarse, sidecars["vol3d2c"])
    # y/x: level-0 region g (patch 32) has centre 32 g + 31.5 -> level-1 pixel 16 g + 15.5 ->
    # the level-1 region of patch 8 with that centre: 2 g + 1
    np.testing.assert_array_equal(iy, np.minimum(2 * np.arange(4) + 1, coarse.grid_shape[1] - 1))
    np.testing.assert_array_equal(ix, iy)
    # z: patch 4 at level 1 is patch 8 at level 0, as for the fine side-car: one-to-one
    np.testing.assert_array_equal(iz, np.arange(2))


def test_level_agreement(sidecars):
    fine, coarse = sidecars["vol3d2c"], sidecars["vol3d2c_l1"]
    res = ins.level_agreement(coarse, fine)
    for name in FILTERS_3D:
        a = res[name]
        f, c = fine.filter_out(name), coarse.filter_out(name)
        assert c.shape == f.shape  # patches match through the scale: one-to-one grids
        assert a["agreement"] == pytest.approx((f == c).mean())
        assert (a["fine_level"], a["coarse_level"]) == (0, 1)
        assert 0.0 <= a["coarse_only_background"] <= 1 - a["agreement"] + 1e-12
    assert res["mean_std"]["agreement_at_matched_fraction"] is None
    m = res["shannon"]
    assert m["agreement_at_matched_fraction"] is not None
    vals = coarse.stats["entropy"]
    assert ((vals < m["matched_coarse_threshold"]) == fine.filter_out("shannon")).mean() == \
        pytest.approx(m["agreement_at_matched_fraction"])


def test_level_agreement_errors(sidecars):
    with pytest.raises(ConfigError, match="sample shapes"):
        ins.decisions_at(sidecars["hagen2d"], sidecars["vol3d2c"], "shannon")
    with pytest.raises(ConfigError, match="spatial dims"):
        ins.region_index_map(sidecars["hagen2d"], sidecars["vol3d2c"])


def test_find_level_sidecars(sidecars):
    found = ins.find_level_sidecars(sidecars["vol3d2c"])
    assert [s.level for s in found] == [1]
    assert ins.find_level_sidecars(sidecars["hagen2d"]) == []


def test_open_errors_are_patchsieve_errors(tmp_path):
    from patchsieve.errors import SidecarError

    with pytest.raises(SidecarError):
        ins.summarize(tmp_path / "missing.patchsieve.zarr")
    with pytest.raises(ConfigError):
        ins.summarize(42)


def test_otsu_on_constant_values_is_refused(demo, client, tmp_path):
    import zarr

    flat = tmp_path / "flat.zarr"
    z = zarr.create_array(str(flat), shape=(128, 128), chunks=(64, 64), dtype="uint16",
                          dimension_names=("y", "x"), fill_value=0)
    z[...] = 0  # zero everywhere, padding included: every region has entropy 0
    sc = compute(str(flat), ShannonPatchFilterConfig(threshold=1.0), (32, 32),
                 tmp_path / "flat.patchsieve.zarr", client=client)
    with pytest.raises(DataError, match="background_fraction"):
        ins.suggest_threshold(sc)
    assert ins.suggest_threshold(sc, background_fraction=0.5).background_fraction in (0.0, 1.0)
    assert open_sidecar(sc.path).is_complete


def make_incomplete(src_path, dst):
    """Copy a side-car and roll it back to 'interrupted': one stats block unmarked, no decisions."""
    import shutil

    import zarr

    shutil.copytree(src_path, dst)
    g = zarr.open_group(str(dst), mode="r+")
    meta = dict(g.attrs["patchsieve"])
    meta["complete"] = False
    meta["status"] = {k: v for k, v in meta["status"].items() if not k.startswith("decisions")}
    g.attrs["patchsieve"] = meta
    (key, marks), *_ = list(g["progress"].arrays())
    m = np.asarray(marks[...])
    m.flat[0] = 0
    marks[...] = m
    return key, int(np.count_nonzero(m)), int(m.size)


def test_summarize_incomplete_sidecar(sidecars, tmp_path):
    dst = tmp_path / "inc.patchsieve.zarr"
    key, done, total = make_incomplete(sidecars["hagen2d"].path, dst)
    s = ins.summarize(dst)
    assert s["complete"] is False and s["levels"] == []
    assert s["progress"][key] == {"done": done, "total": total}
    assert all(f == {"config": f["config"], "incomplete": True} for f in s["filters"].values())
    assert ins.summarize(sidecars["hagen2d"], find_references=False)["progress"][key]["done"] \
        == total


def test_decisions_at_level0_without_a_level0_sidecar(sidecars):
    coarse, fine = sidecars["vol3d2c_l1"], sidecars["vol3d2c"]
    geo = ins.level0_geometry(coarse)
    assert geo.patch_by_dim == {"z": 8, "y": 32, "x": 32} and geo.grid_shape == fine.grid_shape
    res = ins.decisions_at_level0(coarse, "shannon")
    np.testing.assert_array_equal(res["filter_out"], ins.decisions_at(coarse, fine, "shannon"))
    np.testing.assert_array_equal(res["weight"], np.where(res["filter_out"], 0.1, 1.0))
    sp = StratifiedPatching((16, 128, 128), (8, 32, 32), res["weight"],
                            background=res["filter_out"])
    assert sp.epoch_length > 0
