"""The napari plugin without a display: reader on ``napari.components.ViewerModel``, the live
threshold model, Apply, errors as notifications, and the widgets on Qt's offscreen platform.

Runs in ``make test`` (napari is in the dev extra); the real-viewer tests are in
``test_napari_gui.py`` (``make test-napari``, under Xvfb). With ``CI=true`` a missing napari is a
failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # widgets only; no GL needed here

try:
    import napari  # noqa: F401
    import npe2
    from napari.components import ViewerModel
    from napari.utils.notifications import notification_manager
except ImportError:  # pragma: no cover - the dev extra installs napari
    if os.environ.get("CI"):
        raise
    pytest.skip("napari is not installed (pip install 'patchsieve[napari]')",
                allow_module_level=True)

from napari_data import metadata_only_ome_zarr, synthetic_sidecar  # noqa: E402 - tests/ (rootdir-relative)

import patchsieve as ps
from patchsieve.config import (
    MaxPatchFilterConfig,
    MeanStdPatchFilterConfig,
    ShannonPatchFilterConfig,
)
from patchsieve.demo import write_demo_data, write_ome_zarr
from patchsieve.napari import DecisionLabels, LiveThreshold, SidecarScene, read_sidecar
from patchsieve.regions import filter_out_from_stats
from patchsieve.sidecar import SidecarWriter, cover_cells, open_sidecar

LOCAL = {"processes": False, "n_workers": 1}


@pytest.fixture(scope="module", autouse=True)
def _plugins() -> None:
    """Register the installed plugins' manifests (a Viewer does this; a ViewerModel does not)."""
    npe2.PluginManager.instance().discover()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Small demo data and side-cars (with label images): 2D stack, 3D two-channel, level 1."""
    root = tmp_path_factory.mktemp("napari-demo")
    paths = write_demo_data(root / "data", size="small")
    out = {**paths}
    out["h"] = ps.compute(paths["hagen2d"], ShannonPatchFilterConfig(threshold=7.5), (32, 32),
                          str(root / "hagen2d.patchsieve.zarr"), labels=True, cluster=LOCAL).path
    out["v"] = ps.compute(
        paths["vol3d2c"], [MeanStdPatchFilterConfig(mean_threshold=150.0, ref_channel=1),
                           MaxPatchFilterConfig(threshold=400.0, ref_channel=1)],
        (8, 32, 32), str(root / "vol3d2c.patchsieve.zarr"), labels=True, cluster=LOCAL).path
    out["v1"] = ps.compute(
        paths["vol3d2c"], MeanStdPatchFilterConfig(mean_threshold=150.0, ref_channel=1),
        (4, 16, 16), str(root / "vol3d2c.level1.patchsieve.zarr"), level=1, labels=True,
        cluster=LOCAL).path
    return out


def _open(path: str, **kw: Any) -> tuple[Any, list[Any]]:
    viewer = ViewerModel()
    layers = viewer.open(path, plugin="patchsieve", **kw)
    return viewer, layers


def _stored_labels(path: str, name: str) -> np.ndarray:
    """Level 0 of the side-car's label image ``labels/<name>`` (path from its NGFF metadata)."""
    g = zarr.open_group(path, mode="r")[f"labels/{name}"]
    level0 = g.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
    return np.asarray(g[level0][...])


def _tree(*roots: str) -> dict[str, tuple[int, int]]:
    """Every file under ``roots`` with its size and mtime (to prove nothing was written)."""
    out = {}
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


# ----------------------------------------------------------------------------- manifest
def test_manifest_contributes_the_reader_and_the_widgets() -> None:
    mf = npe2.PluginManager.instance().get_manifest("patchsieve")
    assert [r.filename_patterns for r in mf.contributions.readers] == [["*.patchsieve.zarr"]]
    assert {w.display_name for w in mf.contributions.widgets} == {
        "Threshold", "Preview", "Open side-car"}
    for cmd in mf.contributions.commands:
        assert callable(_resolve(cmd.python_name))


def _resolve(python_name: str) -> Any:
    import importlib

    module, attr = python_name.split(":")
    return getattr(importlib.import_module(module), attr)


# ----------------------------------------------------------------------------- reader
def test_reader_2d_stack(demo: dict[str, str]) -> None:
    viewer, layers = _open(demo["h"])
    image, labels = layers
    assert (type(image).__name__, type(labels).__name__) == ("Image", "Labels")
    sc = open_sidecar(demo["h"])
    vol = ps.open_volume(demo["hagen2d"])
    assert image.data.shape == vol.shape == labels.data.shape
    assert labels.axis_labels == image.axis_labels == ("s", "y", "x")
    np.testing.assert_allclose(labels.scale, image.scale)
    assert image.contrast_limits == pytest.approx(
        [sc.attrs["percentiles"]["p0.1"][0], sc.attrs["percentiles"]["p99.9"][0]])
    # the rule of the side-car's label images, level 0 and the cell grid
    np.testing.assert_array_equal(np.asarray(labels.data[0]), _stored_labels(demo["h"], "shannon"))
    keep = cover_cells(~sc.filter_out("shannon"), sc.geometry.cell_shape)
    np.testing.assert_array_equal(np.asarray(labels.data[-1]), keep.astype(np.uint8))
    assert labels.data[-1].shape == (sc.n_samples, *sc.geometry.cell_shape)


def test_reader_3d_multichannel(demo: dict[str, str]) -> None:
    viewer, layers = _open(demo["v"])
    kinds = [type(x).__name__ for x in layers]
    assert kinds == ["Image", "Image", "Labels", "Labels"]
    pyramid = ps.open_pyramid(demo["vol3d2c"])
    for c, layer in enumerate(layers[:2]):
        assert layer.multiscale and len(layer.data) == len(pyramid)
        assert layer.data[0].shape == pyramid[0].isel(c=c).shape
        assert layer.name.endswith(f"[{c}]")
        np.testing.assert_allclose(layer.scale, [pyramid[0].attrs["scale"][d] for d in "zyx"])
    for layer, name in zip(layers[2:], ("mean_std", "max")):
        assert layer.data.shape == layers[0].data.shape
        np.testing.assert_allclose(layer.scale, layers[0].scale)
        np.testing.assert_array_equal(np.asarray(layer.data[0]), _stored_labels(demo["v"], name))


def test_reader_level1_sidecar_maps_to_level0(demo: dict[str, str]) -> None:
    viewer, layers = _open(demo["v1"])
    image, labels = layers[0], layers[-1]
    assert labels.data.shape == image.data.shape  # level-0 pixels
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    stored = _stored_labels(demo["v1"], "mean_std")  # level-1 pixels
    up = stored.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    np.testing.assert_array_equal(np.asarray(labels.data[0]), up[: labels.data.shape[0]])


def test_reader_relative_source_is_found_beside_the_sidecar(
        demo: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "project"
    shutil.copytree(Path(demo["hagen2d"]), work / "hagen2d.ome.zarr")
    monkeypatch.chdir(work)
    sc = ps.compute("hagen2d.ome.zarr", ShannonPatchFilterConfig(threshold=7.5), (32, 32),
                    "hagen2d.patchsieve.zarr", cluster=LOCAL)
    assert sc.source == "hagen2d.ome.zarr"
    monkeypatch.chdir(tmp_path)
    viewer, layers = _open(str(work / "hagen2d.patchsieve.zarr"))
    assert len(layers) == 2 and layers[1].data.shape == layers[0].data.shape


@pytest.mark.s3
def test_reader_s3_credentials_from_the_environment(
        s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    so = s3_bucket.storage_options
    img = np.random.default_rng(3).poisson(20.0, (2, 64, 64)).astype("uint16")
    src = write_ome_zarr(f"{s3_bucket.url}/cells.ome.zarr", img, "syx", chunks=(1, 32, 32),
                         storage_options=so)
    out = f"{s3_bucket.url}/cells.patchsieve.zarr"
    ps.compute(src, ShannonPatchFilterConfig(threshold=3.0), (16, 16), out, storage_options=so,
               cluster=LOCAL)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", so["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", so["secret"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", so["endpoint_url"])
    viewer, layers = _open(out)
    assert [type(x).__name__ for x in layers] == ["Image", "Labels"]
    np.testing.assert_array_equal(np.asarray(layers[0].data[1]), img[1])
    keep = cover_cells(~open_sidecar(out, storage_options=so).filter_out("shannon"), (4, 4))
    np.testing.assert_array_equal(np.asarray(layers[1].data[-1]), keep)


# ----------------------------------------------------------------------------- errors
def _broken(kind: str, demo: dict[str, str], tmp: Path) -> tuple[str, list[str]]:
    """A side-car broken in one way; returns its path and the folders that must stay as they are."""
    if kind == "not-a-sidecar":
        path = tmp / "plain.patchsieve.zarr"
        zarr.open_group(str(path), mode="w").create_array("x", shape=(4,), dtype="uint8")
        return str(path), [str(path)]
    src = tmp / "hagen2d.ome.zarr"
    shutil.copytree(demo["hagen2d"], src)
    sc = ps.compute(str(src), ShannonPatchFilterConfig(threshold=7.5), (32, 32),
                    str(tmp / "h.patchsieve.zarr"), cluster=LOCAL)
    if kind == "incomplete":
        g = zarr.open_group(sc.path, mode="r+")
        g.attrs["patchsieve"] = {**g.attrs["patchsieve"], "complete": False}
    elif kind == "source-missing":
        shutil.move(str(src), str(tmp / "elsewhere.ome.zarr"))
        return sc.path, [sc.path, str(tmp / "elsewhere.ome.zarr")]
    elif kind == "source-changed":
        arr = zarr.open_array(str(src / "s0"), mode="r+")
        arr[0, :8, :8] = arr[0, :8, :8] + 1  # the first chunk is one the fingerprint samples
    return sc.path, [sc.path, str(src)]


@pytest.mark.parametrize(("kind", "match"), [
    ("not-a-sidecar", "is not a patchsieve side-car"),
    ("incomplete", "is not complete"),
    ("source-missing", "source of side-car .* is missing"),
    ("source-changed", "fingerprint mismatch"),
])
def test_errors_are_one_notification_and_nothing_is_written(
        kind: str, match: str, demo: dict[str, str], tmp_path: Path) -> None:
    import re

    path, folders = _broken(kind, demo, tmp_path)
    before = _tree(*folders)
    notification_manager.records.clear()
    viewer, layers = _open(path)
    assert layers == [] and len(viewer.layers) == 0
    errors = [n for n in notification_manager.records if n.severity == "error"]
    assert len(errors) == 1 and re.search(match, errors[0].message), errors
    assert "Fix:" in errors[0].message
    assert _tree(*folders) == before


# ----------------------------------------------------------------------------- live threshold
def test_live_threshold_follows_the_library(demo: dict[str, str]) -> None:
    viewer, layers = _open(demo["h"])
    labels = layers[1]
    scene = labels.metadata["patchsieve"]["scene"]
    live = LiveThreshold(scene, "shannon")
    assert live.state.applied and live.state.threshold == 7.5
    sc = open_sidecar(demo["h"])
    for thr in (5.0, 6.9, 8.3):
        state = live.set_threshold(thr)
        labels.refresh()
        fo = filter_out_from_stats(ShannonPatchFilterConfig(threshold=thr), sc.stats)
        assert state.n_background == int(fo.sum()) and not state.applied
        assert state.background_fraction == pytest.approx(fo.mean())
        keep = cover_cells(~fo, sc.geometry.cell_shape).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(labels.data[-1]), keep)
        np.testing.assert_array_equal(np.asarray(labels.data[0])[:, ::32, ::32], keep)
        w = np.where(fo, 0.1, 1.0)
        assert state.patches_per_epoch == int(ps.sidecar.epoch_patches(
            w, sc.geometry.spatial_shape, sc.geometry.patch_size).sum())
    assert live.share_below(8.3) == pytest.approx(
        float((sc.stats["entropy"] < 8.3).mean()))


def test_live_meanstd_switches_between_mean_and_std(demo: dict[str, str]) -> None:
    live = LiveThreshold(SidecarScene(demo["v"]), "mean_std")
    assert live.stat_choices == ["mean", "std"] and live.field == "mean_threshold"
    live.select_stat("std")
    assert live.field == "std_threshold" and live.stat == "std"
    state = live.set_threshold(50.0)
    sc = open_sidecar(demo["v"])
    cfg = MeanStdPatchFilterConfig(mean_threshold=150.0, std_threshold=50.0, ref_channel=1)
    assert state.n_background == int(filter_out_from_stats(cfg, sc.stats).sum())


def test_apply_equals_compute_with_that_threshold(demo: dict[str, str], tmp_path: Path) -> None:
    path = str(tmp_path / "h.patchsieve.zarr")
    shutil.copytree(demo["h"], path)
    live = LiveThreshold(SidecarScene(path), "shannon")
    thr = live.suggest("quantile", 0.4).threshold
    live.set_threshold(thr)
    live.apply()
    assert live.state.applied and live.applied_threshold == pytest.approx(thr)
    fresh = ps.compute(demo["hagen2d"], ShannonPatchFilterConfig(threshold=thr), (32, 32),
                       str(tmp_path / "fresh.patchsieve.zarr"), labels=True, cluster=LOCAL)
    got = open_sidecar(path)
    assert got.config("shannon") == fresh.config("shannon")
    np.testing.assert_array_equal(got.filter_out("shannon"), fresh.filter_out("shannon"))
    np.testing.assert_array_equal(got.weights("shannon"), fresh.weights("shannon"))
    for key, value in fresh.sample_totals("shannon").items():
        np.testing.assert_array_equal(got.sample_totals("shannon")[key], value)
    # the label image was rewritten, never left stale
    np.testing.assert_array_equal(_stored_labels(path, "shannon"),
                                  _stored_labels(fresh.path, "shannon"))
    np.testing.assert_array_equal(np.asarray(live.scene.labels["shannon"].levels[0]),
                                  _stored_labels(fresh.path, "shannon"))


def test_apply_respects_the_lock_and_writes_nothing(demo: dict[str, str], tmp_path: Path) -> None:
    path = str(tmp_path / "h.patchsieve.zarr")
    shutil.copytree(demo["h"], path)
    live = LiveThreshold(SidecarScene(path), "shannon")
    live.set_threshold(6.0)
    with SidecarWriter(path):  # another writer holds the lock
        before = {k: v for k, v in _tree(path).items() if not k.endswith("patchsieve.lock")}
        with pytest.raises(ps.SidecarLockedError, match="locked"):
            live.apply()
        after = {k: v for k, v in _tree(path).items() if not k.endswith("patchsieve.lock")}
    assert after == before
    assert open_sidecar(path).config("shannon").threshold == 7.5


def test_preview_sidecar_samples_with_the_unapplied_threshold(demo: dict[str, str]) -> None:
    pytest.importorskip("torch")
    from patchsieve.analysis import preview_patches

    live = LiveThreshold(SidecarScene(demo["h"]), "shannon")
    live.set_threshold(100.0)  # every region background
    res = preview_patches(live.preview_sidecar(), 8, filter="shannon")
    assert res["background"].all()
    live.set_threshold(0.0)  # every region kept
    res = preview_patches(live.preview_sidecar(), 8, filter="shannon")
    assert not res["background"].any()
    assert open_sidecar(demo["h"]).config("shannon").threshold == 7.5


# ----------------------------------------------------------------------------- scale
def test_open_a_large_sidecar_reads_only_the_displayed_coarse_chunks(
        tmp_path: Path, chunk_reads: Any) -> None:
    from patchsieve.sidecar import source_fingerprint

    src = metadata_only_ome_zarr(tmp_path / "big.ome.zarr", (512, 4096, 4096), (16, 256, 256))
    out = synthetic_sidecar(src, str(tmp_path / "big.patchsieve.zarr"), (16, 64, 64),
                            {"shannon": ShannonPatchFilterConfig(threshold=7.0)})
    chunk_reads.clear()
    source_fingerprint(ps.open_volume(src))
    fingerprint_keys = set(chunk_reads.chunk_reads())
    chunk_reads.clear()
    viewer, layers = _open(out)
    image, labels = layers
    assert image.data.shape == labels.data.shape == (512, 4096, 4096)
    assert image.data_level == len(image.data) - 1  # napari shows the coarsest level first
    source_reads = {k for k in chunk_reads.chunk_reads() if k.startswith("s")}
    coarsest = f"s{len(image.data) - 1}/"
    extra = {k for k in source_reads - fingerprint_keys if not k.startswith(coarsest)}
    assert not extra, sorted(extra)[:5]
    # napari slices a new layer at z = 0, then at the middle plane the viewer centres its dims on
    plane_chunks = (4096 // 2 ** (len(image.data) - 1) // 256) ** 2
    assert len(source_reads - fingerprint_keys) <= 2 * plane_chunks, sorted(source_reads)
    assert len(fingerprint_keys) <= 9


def test_live_update_on_a_million_regions_is_vectorised(tmp_path: Path) -> None:
    """Correctness at the benchmark's scale (1000 x 1000 regions); speed is benchmarked."""
    src = metadata_only_ome_zarr(tmp_path / "wide.ome.zarr", (64000, 64000), (1024, 1024),
                                 axes="yx", levels=2)
    out = synthetic_sidecar(src, str(tmp_path / "wide.patchsieve.zarr"), (64, 64),
                            {"shannon": ShannonPatchFilterConfig(threshold=7.0)})
    scene = SidecarScene(out)
    live = LiveThreshold(scene, "shannon")
    state = live.set_threshold(6.5)
    assert state.n_regions == 10**6
    fo = scene.sidecar.stats["entropy"] < 6.5
    assert state.n_background == int(fo.sum())
    lab: DecisionLabels = scene.labels["shannon"]
    np.testing.assert_array_equal(lab.levels[-1][500, 100:110],
                                  cover_cells(~fo, (1000, 1000))[0, 500, 100:110])


# ----------------------------------------------------------------------------- widgets (offscreen Qt)
def _wait(worker: Any, timeout: float = 60.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while worker is not None and not getattr(worker, "done", False):
        QApplication.processEvents()
        if time.monotonic() > end:
            raise TimeoutError("worker did not finish")
        time.sleep(0.01)
    for _ in range(20):
        QApplication.processEvents()


@pytest.fixture
def qapp() -> Any:
    from qtpy.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def test_threshold_widget_moves_applies_and_reports(qapp: Any, demo: dict[str, str],
                                                    tmp_path: Path) -> None:
    from patchsieve.napari import ThresholdWidget

    path = str(tmp_path / "v.patchsieve.zarr")
    shutil.copytree(demo["v"], path)
    viewer = ViewerModel()
    viewer.open(path, plugin="patchsieve")
    widget = ThresholdWidget(viewer)
    assert [widget.picker.itemText(i) for i in range(widget.picker.count())] == [
        "mean_std: kept", "max: kept"]
    widget.picker.setCurrentIndex(1)
    assert widget.live is not None and widget.live.filter == "max"
    widget.spin.setValue(600.0)
    assert widget.live.state.threshold == 600.0
    layer = viewer.layers["max: kept"]
    sc = open_sidecar(path)
    fo = filter_out_from_stats(MaxPatchFilterConfig(threshold=600.0, ref_channel=1), sc.stats,
                               ndim=3)
    np.testing.assert_array_equal(np.asarray(layer.data[-1]),
                                  cover_cells(~fo, sc.geometry.cell_shape)[0])
    assert f"{int(fo.sum()):,} of {fo.size:,}" in widget.counts.text()
    widget.method.setCurrentText("otsu")
    widget.suggest()
    otsu = ps.analysis.suggest_threshold(path, "max", method="otsu").threshold
    assert widget.live.state.threshold == pytest.approx(otsu)
    notification_manager.records.clear()
    _wait(widget.apply())
    assert open_sidecar(path).config("max").threshold == pytest.approx(otsu)
    assert widget.live.state.applied
    assert any("now uses threshold" in n.message for n in notification_manager.records)


def test_threshold_widget_apply_while_locked_notifies(qapp: Any, demo: dict[str, str],
                                                      tmp_path: Path) -> None:
    from patchsieve.napari import ThresholdWidget

    path = str(tmp_path / "h.patchsieve.zarr")
    shutil.copytree(demo["h"], path)
    viewer = ViewerModel()
    viewer.open(path, plugin="patchsieve")
    widget = ThresholdWidget(viewer)
    widget.spin.setValue(6.0)
    notification_manager.records.clear()
    with SidecarWriter(path):
        _wait(widget.apply())
    errors = [n for n in notification_manager.records if n.severity == "error"]
    assert len(errors) == 1 and "locked" in errors[0].message
    assert open_sidecar(path).config("shannon").threshold == 7.5


def test_preview_widget_shows_a_grid(qapp: Any, demo: dict[str, str]) -> None:
    pytest.importorskip("torch")
    from patchsieve.napari import PreviewWidget, ThresholdWidget

    viewer = ViewerModel()
    viewer.open(demo["h"], plugin="patchsieve")
    ThresholdWidget(viewer).spin.setValue(100.0)  # unapplied: everything background
    preview = PreviewWidget(viewer)
    preview.n.setValue(9)
    _wait(preview.preview())
    assert preview.result is not None and preview.result["background"].all()
    assert preview.grid.count() == 9 and "9 background" in preview.summary.text()


@pytest.mark.s3
def test_open_widget_takes_credentials_from_its_fields(qapp: Any, s3_bucket: Any) -> None:
    from patchsieve.napari import OpenSidecarWidget

    so = s3_bucket.storage_options
    img = np.random.default_rng(4).poisson(20.0, (48, 48)).astype("uint16")
    src = write_ome_zarr(f"{s3_bucket.url}/img.ome.zarr", img, "yx", chunks=(48, 48),
                         storage_options=so)
    out = f"{s3_bucket.url}/img.patchsieve.zarr"
    ps.compute(src, MaxPatchFilterConfig(threshold=10.0), (16, 16), out, storage_options=so,
               cluster=LOCAL)
    viewer = ViewerModel()
    widget = OpenSidecarWidget(viewer)
    widget.path.setText(out)
    widget.endpoint.setText(so["endpoint_url"])
    widget.key.setText(so["key"])
    widget.secret.setText(so["secret"])
    _wait(widget.open())
    assert [x.name for x in viewer.layers] == ["img", "max: kept"]
    scene = viewer.layers["max: kept"].metadata["patchsieve"]["scene"]
    assert so["secret"] not in repr(viewer.layers["max: kept"].metadata)
    assert scene.storage_options["key"] == so["key"]
    np.testing.assert_array_equal(np.asarray(viewer.layers["img"].data), img)


def test_read_sidecar_is_the_reader_result(demo: dict[str, str]) -> None:
    data = read_sidecar(demo["h"])
    assert [kind for _, _, kind in data] == ["image", "labels"]
    assert data[1][1]["metadata"]["patchsieve"]["filter"] == "shannon"
