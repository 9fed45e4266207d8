"""The plugin in a real napari viewer (Qt + OpenGL): run by ``make test-napari`` under Xvfb.

Excluded from ``make test`` (marker ``napari_gui``). Without a display they skip, except with
``CI=true``, where a missing display or GL is a failure (``.ci/run`` sets them up).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.napari_gui

if not os.environ.get("DISPLAY") and not os.environ.get("CI"):
    pytest.skip("no display: run `make test-napari` (xvfb-run)", allow_module_level=True)

napari = pytest.importorskip("napari") if not os.environ.get("CI") else __import__("napari")

import patchsieve as ps  # noqa: E402
from patchsieve.config import MeanStdPatchFilterConfig, ShannonPatchFilterConfig  # noqa: E402
from patchsieve.demo import write_demo_data  # noqa: E402
from patchsieve.sidecar import cover_cells, open_sidecar  # noqa: E402

LOCAL = {"processes": False, "n_workers": 1}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("napari-gui")
    paths = write_demo_data(root / "data", size="small")
    h = ps.compute(paths["hagen2d"], ShannonPatchFilterConfig(threshold=7.5), (32, 32),
                   str(root / "hagen2d.patchsieve.zarr"), labels=True, cluster=LOCAL)
    v = ps.compute(paths["vol3d2c"], MeanStdPatchFilterConfig(mean_threshold=150.0,
                                                              ref_channel=1),
                   (8, 32, 32), str(root / "vol3d2c.patchsieve.zarr"), cluster=LOCAL)
    v1 = ps.compute(paths["vol3d2c"], MeanStdPatchFilterConfig(mean_threshold=150.0,
                                                               ref_channel=1),
                    (4, 16, 16), str(root / "vol3d2c.level1.patchsieve.zarr"), level=1,
                    cluster=LOCAL)
    return {**paths, "h": h.path, "v": v.path, "v1": v1.path}


@pytest.fixture
def viewer() -> Any:
    v = napari.Viewer(show=True)  # a window on the (virtual) display: the canvas renders
    yield v
    v.close()


def _process(seconds: float = 0.2) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def _wait(worker: Any, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not getattr(worker, "done", False):
        _process(0.02)
        assert time.monotonic() < end, "worker did not finish"
    _process(0.1)


def test_open_3d_multichannel_and_render(viewer: Any, demo: dict[str, str]) -> None:
    layers = viewer.open(demo["v"], plugin="patchsieve")
    assert [type(x).__name__ for x in layers] == ["Image", "Image", "Labels"]
    _process()
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot[..., :3].std() > 0  # something was drawn
    viewer.dims.ndisplay = 3  # the coarsest level (the cell grid) is what 3D renders
    _process()
    assert viewer.screenshot(canvas_only=True)[..., :3].std() > 0


@pytest.mark.parametrize(("key", "n_images"), [("h", 1), ("v", 2), ("v1", 2)])
def test_reader_renders_2d_3d_and_level1(viewer: Any, demo: dict[str, str], key: str,
                                        n_images: int) -> None:
    layers = viewer.open(demo[key], plugin="patchsieve")
    images = [x for x in layers if type(x).__name__ == "Image"]
    labels = [x for x in layers if type(x).__name__ == "Labels"]
    assert len(images) == n_images and labels
    for lab in labels:
        assert lab.data.shape == images[0].data.shape
        np.testing.assert_allclose(lab.scale, images[0].scale)
    _process()
    images[0].visible = False  # only the labels: kept regions are drawn in the kept colour
    for other in images[1:]:
        other.visible = False
    _process()
    shot = viewer.screenshot(canvas_only=True)[..., :3].astype(int)
    assert (shot[..., 2] > shot[..., 0] + 20).any()  # blue (kept) pixels on screen


@pytest.mark.s3
def test_reader_s3_in_the_viewer(viewer: Any, s3_bucket: Any,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from patchsieve.demo import write_ome_zarr

    so = s3_bucket.storage_options
    img = np.random.default_rng(5).poisson(20.0, (64, 64)).astype("uint16")
    img[:32] += 200
    src = write_ome_zarr(f"{s3_bucket.url}/img.ome.zarr", img, "yx", chunks=(32, 32),
                         storage_options=so)
    out = f"{s3_bucket.url}/img.patchsieve.zarr"
    ps.compute(src, MeanStdPatchFilterConfig(mean_threshold=100.0), (16, 16), out,
               storage_options=so, cluster=LOCAL)
    for var, key in (("AWS_ACCESS_KEY_ID", "key"), ("AWS_SECRET_ACCESS_KEY", "secret"),
                     ("AWS_ENDPOINT_URL", "endpoint_url")):
        monkeypatch.setenv(var, so[key])
    layers = viewer.open(out, plugin="patchsieve")
    assert [type(x).__name__ for x in layers] == ["Image", "Labels"]
    _process()
    np.testing.assert_array_equal(np.asarray(layers[0].data), img)
    assert viewer.screenshot(canvas_only=True)[..., :3].std() > 0


def test_threshold_widget_live_update_and_apply(viewer: Any, demo: dict[str, str],
                                                tmp_path: Path) -> None:
    path = str(tmp_path / "h.patchsieve.zarr")
    shutil.copytree(demo["h"], path)
    viewer.open(path, plugin="patchsieve")
    _dock, widget = viewer.window.add_plugin_dock_widget("patchsieve", "Threshold")
    _process()
    layer = viewer.layers["shannon: kept"]
    before = viewer.screenshot(canvas_only=True)
    widget.slider.setValue(0)  # lowest threshold: every region kept
    _process()
    assert widget.live.state.n_background == 0
    assert np.asarray(layer.data[-1]).all()
    after = viewer.screenshot(canvas_only=True)
    assert not np.array_equal(before, after)  # the mask followed on screen
    widget.spin.setValue(8.0)
    _process()
    fo = open_sidecar(path).stats["entropy"] < 8.0
    np.testing.assert_array_equal(np.asarray(layer.data[-1]),
                                  cover_cells(~fo, (8, 8)).astype(np.uint8))
    _wait(widget.apply())
    assert open_sidecar(path).config("shannon").threshold == 8.0
    np.testing.assert_array_equal(open_sidecar(path).filter_out("shannon"), fo)


def test_preview_widget(viewer: Any, demo: dict[str, str]) -> None:
    pytest.importorskip("torch")
    viewer.open(demo["h"], plugin="patchsieve")
    _dock, widget = viewer.window.add_plugin_dock_widget("patchsieve", "Preview")
    widget.n.setValue(16)
    _wait(widget.preview())
    assert widget.grid.count() == 16 and widget.result is not None


def test_dropping_a_sidecar_opens_it(viewer: Any, demo: dict[str, str]) -> None:
    from napari.settings import get_settings
    from qtpy.QtCore import QMimeData, QPoint, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    from patchsieve.napari._reader import prefer_patchsieve_reader

    prefer_patchsieve_reader()  # what opening any patchsieve widget or reader does once
    assert get_settings().plugins.extension2reader["*.patchsieve.zarr" + os.sep] == "patchsieve"
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(demo["h"])])
    event = QDropEvent(QPoint(5, 5).toPointF(), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    viewer.window._qt_viewer.dropEvent(event)
    _process()
    assert [x.name for x in viewer.layers] == ["hagen2d", "shannon: kept"]
