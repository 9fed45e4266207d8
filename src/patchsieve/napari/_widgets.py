"""The plugin's dock widgets: *Threshold*, *Preview* and *Open side-car* (Qt).

They hold no logic of their own: :class:`~patchsieve.napari.LiveThreshold` computes decisions
and counts, :mod:`patchsieve.analysis` suggests and applies thresholds and previews patches,
:class:`~patchsieve.napari.SidecarScene` opens side-cars. Work that reads or writes storage
(Apply, Preview, Open) runs in a napari thread worker (``self.worker``) so the viewer stays
responsive; its errors become one notification.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from patchsieve.napari._histogram import HistogramView
from patchsieve.napari._live import LiveThreshold, ThresholdState
from patchsieve.napari._reader import napari_layer_data, prefer_patchsieve_reader
from patchsieve.napari._scene import SidecarScene

logger = logging.getLogger(__name__)

__all__ = ["OpenSidecarWidget", "PreviewWidget", "ThresholdWidget", "decision_layers"]

SLIDER_STEPS = 1000


def decision_layers(viewer: Any) -> list[Any]:
    """The viewer's Labels layers made by the patchsieve reader (one per side-car filter)."""
    return [layer for layer in viewer.layers
            if (layer.metadata.get("patchsieve") or {}).get("role") == "decisions"]


def _notify_error(err: BaseException) -> None:
    from napari.utils.notifications import show_error

    logger.warning("patchsieve: %s", err)
    show_error(f"patchsieve: {err}")


def _run(widget: Any, fn: Callable[[], Any], done: Callable[[Any], None]) -> Any:
    """Run ``fn`` in a napari thread worker; ``done(result)`` in the GUI thread; errors notify."""
    from superqt.utils import create_worker  # napari's would also relay errors: one message

    worker = create_worker(fn, _start_thread=False,
                           _connect={"returned": done, "errored": _notify_error})
    worker.finished.connect(lambda: _finished(widget, worker))
    widget._set_busy(True)
    widget.worker = worker
    worker.start()
    return worker


def _finished(widget: Any, worker: Any) -> None:
    widget._set_busy(False)
    worker.done = True  # results and errors were delivered before this (queued in order)


class _LayerPicker(QComboBox):
    """A combo box of the viewer's patchsieve decision layers, kept in sync with the viewer."""

    def __init__(self, viewer: Any, on_change: Callable[[Any], None]):
        super().__init__()
        self.viewer, self._on_change = viewer, on_change
        self._layers: list[Any] = []
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        self.currentIndexChanged.connect(self._changed)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        current = self.layer
        layers = decision_layers(self.viewer)
        if [id(x) for x in layers] == [id(x) for x in self._layers]:
            return
        self.blockSignals(True)
        self.clear()
        self._layers = layers
        for layer in layers:
            self.addItem(layer.name)
        index = next((i for i, x in enumerate(layers) if x is current), 0 if layers else -1)
        self.setCurrentIndex(index)
        self.blockSignals(False)
        if self.layer is not current:
            self._on_change(self.layer)

    @property
    def layer(self) -> Any:
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def _changed(self, *_: Any) -> None:
        self._on_change(self.layer)


class ThresholdWidget(QWidget):
    """Tune a filter's threshold: histogram, slider, number box, live counts, Suggest, Apply.

    Moving the threshold recomputes the decisions from the side-car's stored statistics and
    redraws the filter's Labels layer (no volume read). *Apply* writes it into the side-car as
    ``patchsieve suggest-threshold --apply`` does (the side-car lock is respected).

    Parameters
    ----------
    napari_viewer : napari.Viewer or napari.components.ViewerModel
        Injected by napari when the widget is opened from the Plugins menu.
    """

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.live: LiveThreshold | None = None
        self.layer: Any = None
        self.worker: Any = None
        self._lo, self._hi = 0.0, 1.0
        self._updating = False
        prefer_patchsieve_reader()
        self._build()
        self.picker = _LayerPicker(napari_viewer, self.set_layer)
        self.form.insertRow(0, "filter layer", self.picker)
        self.set_layer(self.picker.layer)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        self.form = QFormLayout()
        outer.addLayout(self.form)
        self.stat_box = QComboBox()
        self.stat_box.currentTextChanged.connect(self._stat_changed)
        self.form.addRow("statistic", self.stat_box)
        self.histogram = HistogramView()
        self.histogram.on_pick = self.set_threshold
        outer.addWidget(self.histogram)
        row = QHBoxLayout()
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.valueChanged.connect(self._slider_moved)
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(4)
        self.spin.setRange(-1e15, 1e15)
        self.spin.setKeyboardTracking(False)
        self.spin.valueChanged.connect(self.set_threshold)
        row.addWidget(self.slider, 3)
        row.addWidget(self.spin, 1)
        outer.addLayout(row)
        self.counts = QLabel("open a side-car (File > Open, or drop a *.patchsieve.zarr folder)")
        self.counts.setWordWrap(True)
        outer.addWidget(self.counts)
        suggest = QHBoxLayout()
        self.method = QComboBox()
        self.method.addItems(["otsu", "quantile"])
        self.fraction = QDoubleSpinBox()
        self.fraction.setRange(0.0, 1.0)
        self.fraction.setSingleStep(0.05)
        self.fraction.setValue(0.5)
        self.fraction.setToolTip("target background share (quantile method)")
        self.suggest_button = QPushButton("Suggest")
        self.suggest_button.clicked.connect(self.suggest)
        for w in (self.method, self.fraction, self.suggest_button):
            suggest.addWidget(w)
        outer.addLayout(suggest)
        self.apply_button = QPushButton("Apply: write into the side-car")
        self.apply_button.clicked.connect(self.apply)
        outer.addWidget(self.apply_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        outer.addStretch(1)

    def _set_busy(self, busy: bool) -> None:
        for w in (self.apply_button, self.suggest_button, self.slider, self.spin, self.stat_box):
            w.setEnabled(not busy and self.live is not None)

    # ------------------------------------------------------------------ model
    def set_layer(self, layer: Any) -> None:
        """Control the filter of ``layer`` (a Labels layer from the patchsieve reader)."""
        self.layer = layer
        if layer is None:
            self.live = None
            self._set_busy(False)
            return
        meta = layer.metadata["patchsieve"]
        live = meta.get("live")
        if live is None:
            live = LiveThreshold(meta["scene"], meta["filter"])
            meta["live"] = live  # the Preview widget samples with the same threshold
        self.live = live
        self._updating = True
        self.stat_box.clear()
        self.stat_box.addItems(live.stat_choices)
        self.stat_box.setCurrentText(live.stat)
        self._updating = False
        self._load_stat()

    def _stat_changed(self, stat: str) -> None:
        if self._updating or self.live is None or not stat or stat == self.live.stat:
            return
        self.live.select_stat(stat)
        self._load_stat()

    def _load_stat(self) -> None:
        live = self.live
        assert live is not None
        self._lo, self._hi = live.value_range
        counts, edges = live.histogram()
        self.histogram.set_data(counts, edges)
        self.fraction.setEnabled(True)
        self._set_busy(False)
        self._show(live.state)

    def set_threshold(self, value: float) -> None:
        """Move the threshold to ``value`` (slider, number box and histogram follow)."""
        if self._updating or self.live is None:
            return
        try:
            state = self.live.set_threshold(float(value))
        except Exception as err:  # noqa: BLE001 - a refused value: tell, keep the last one
            _notify_error(err)
            return
        if self.layer is not None:
            self.layer.refresh()
        self._show(state)

    def _slider_moved(self, step: int) -> None:
        if not self._updating:
            self.set_threshold(self._lo + (self._hi - self._lo) * step / SLIDER_STEPS)

    def _show(self, state: ThresholdState) -> None:
        live = self.live
        assert live is not None
        self._updating = True
        step = round((state.threshold - self._lo) / ((self._hi - self._lo) or 1.0) * SLIDER_STEPS)
        self.slider.setValue(int(min(max(step, 0), SLIDER_STEPS)))
        self.spin.setValue(state.threshold)
        self._updating = False
        self.histogram.set_threshold(state.threshold, live.applied_threshold)
        applied = "" if live.applied_state is None else (
            f"; applied {live.field} = {live.applied_threshold:.6g}: "
            f"{live.applied_state.background_fraction:.1%} background, "
            f"{live.applied_state.patches_per_epoch:,} patches")
        mark = " (applied)" if state.applied else ""
        self.counts.setText(
            f"{live.filter}: {live.field} = {state.threshold:.6g}{mark}\n"
            f"background {state.n_background:,} of {state.n_regions:,} regions "
            f"({state.background_fraction:.1%}), kept {state.n_kept:,}; "
            f"{state.patches_per_epoch:,} patches per epoch{applied}")

    # ------------------------------------------------------------------ actions
    def suggest(self) -> None:
        """Move to the threshold :func:`patchsieve.analysis.suggest_threshold` proposes."""
        if self.live is None:
            return
        method = self.method.currentText()
        try:
            sg = self.live.suggest(method, self.fraction.value())
        except Exception as err:  # noqa: BLE001 - e.g. Otsu on constant values: tell
            _notify_error(err)
            return
        self.set_threshold(sg.threshold)
        self.status.setText(f"suggested by {sg.method}: {sg.field} = {sg.threshold:.6g} "
                            f"({sg.background_fraction:.1%} background); not applied yet")

    def apply(self) -> Any:
        """Write the current threshold into the side-car (in a thread worker)."""
        live = self.live
        if live is None:
            return None
        value = live.state.threshold
        self.status.setText(f"writing {live.field} = {value:.6g} into {live.scene.path} ...")

        def done(_: Any) -> None:
            live.reload()
            if self.layer is not None:
                self.layer.refresh()
            self._load_stat()
            from napari.utils.notifications import show_info

            msg = (f"patchsieve: {live.scene.path} now uses {live.field} = {value:.6g} "
                   f"for {live.filter}")
            self.status.setText(msg.removeprefix("patchsieve: "))
            show_info(msg)

        return _run(self, lambda: live.write(value), done)


class PreviewWidget(QWidget):
    """A grid of the patches the sampler would draw with the current settings.

    Uses :func:`patchsieve.analysis.preview_patches` (a real
    :class:`~patchsieve.dataset.PatchDataset` epoch) over the side-car as the *Threshold* widget
    currently sets it (unapplied thresholds included). Background patches are framed orange,
    kept ones blue.
    """

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self.result: dict[str, Any] | None = None
        prefer_patchsieve_reader()
        outer = QVBoxLayout(self)
        form = QFormLayout()
        self.picker = _LayerPicker(napari_viewer, lambda _layer: None)
        form.addRow("filter layer", self.picker)
        self.n = QSpinBox()
        self.n.setRange(1, 400)
        self.n.setValue(36)
        form.addRow("patches", self.n)
        self.mode = QComboBox()
        self.mode.addItems(["per_epoch", "with_replacement", "fixed_subset"])
        form.addRow("mode", self.mode)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        form.addRow("seed", self.seed)
        outer.addLayout(form)
        self.button = QPushButton("Preview")
        self.button.clicked.connect(self.preview)
        outer.addWidget(self.button)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        outer.addWidget(self.summary)
        self.grid_host = QWidget()
        self.grid = QGridLayout(self.grid_host)
        self.grid.setSpacing(2)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.grid_host)
        outer.addWidget(scroll, 1)

    def _set_busy(self, busy: bool) -> None:
        self.button.setEnabled(not busy)

    def preview(self) -> Any:
        """Draw the first patches of an epoch (in a thread worker)."""
        layer = self.picker.layer
        if layer is None:
            _notify_error(ValueError("open a side-car first (no patchsieve Labels layer)"))
            return None
        meta = layer.metadata["patchsieve"]
        live = meta.get("live") or LiveThreshold(meta["scene"], meta["filter"])
        sidecar = live.preview_sidecar()
        n, mode, seed = self.n.value(), self.mode.currentText(), self.seed.value()
        self.summary.setText(f"drawing {n} patches ({mode}, seed {seed}) ...")

        def work() -> dict[str, Any]:
            from patchsieve.analysis import preview_patches

            return preview_patches(sidecar, n, mode=mode, seed=seed, filter=live.filter,
                                   storage_options=live.scene.storage_options or None)

        return _run(self, work, self.show_result)

    def show_result(self, res: dict[str, Any]) -> None:
        """Show a :func:`~patchsieve.analysis.preview_patches` result as a grid."""
        self.result = res
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item is not None and item.widget() is not None:
                item.widget().deleteLater()
        pats, bg = res["patches"], res["background"]
        lo, hi = res["display_range"]
        cols = max(1, int(np.ceil(np.sqrt(len(pats)))))
        for i, (patch, is_bg) in enumerate(zip(pats, bg)):
            label = QLabel()
            label.setPixmap(_patch_pixmap(patch, lo, hi, 64))
            colour = "#E69F00" if is_bg else "#0072B2"
            label.setStyleSheet(f"border: {4 if is_bg else 2}px solid {colour};")
            label.setToolTip(f"sample {res['samples'][i]}, origin {res['origins'][i]}, "
                             f"{'background' if is_bg else 'kept'} region")
            self.grid.addWidget(label, i // cols, i % cols)
        k = int(np.sum(bg))
        self.summary.setText(
            f"{len(pats)} patches of epoch {res['epoch']} ({res['mode']}, seed {res['seed']}, "
            f"filter {res['filter']}): {k} background ({k / max(len(pats), 1):.1%} realised, "
            f"{res['expected_background_fraction']:.1%} expected; {res['epoch_length']:,} "
            "patches per epoch). Orange frame: background region; blue: kept.")


def _patch_pixmap(patch: np.ndarray, lo: float, hi: float, size: int) -> QPixmap:
    scaled = np.clip((np.asarray(patch, np.float64) - lo) / ((hi - lo) or 1.0), 0, 1)
    grey = np.ascontiguousarray((scaled * 255).astype(np.uint8))
    h, w = grey.shape
    image = QImage(grey.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
    return QPixmap.fromImage(image).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio)


class OpenSidecarWidget(QWidget):
    """Open a side-car with storage options (object-storage credentials) or a moved source.

    Credentials typed here stay in memory (they are never written into the side-car or the layer
    metadata); without them the environment and fsspec's configuration are used, as for
    ``viewer.open``.
    """

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self.layers: list[Any] = []
        prefer_patchsieve_reader()
        form = QFormLayout(self)
        self.path = QLineEdit()
        self.path.setPlaceholderText("/data/cells.patchsieve.zarr or s3://bucket/cells.patchsieve.zarr")
        form.addRow("side-car", self.path)
        self.source = QLineEdit()
        self.source.setPlaceholderText("(optional) where the source is now, if it moved")
        form.addRow("source", self.source)
        self.endpoint = QLineEdit()
        self.endpoint.setPlaceholderText("(optional) e.g. https://s3.example.org")
        form.addRow("endpoint URL", self.endpoint)
        self.key = QLineEdit()
        form.addRow("access key", self.key)
        self.secret = QLineEdit()
        self.secret.setEchoMode(QLineEdit.EchoMode.Password)
        form.addRow("secret key", self.secret)
        self.anon = QCheckBox("anonymous (public bucket)")
        form.addRow("", self.anon)
        self.button = QPushButton("Open")
        self.button.clicked.connect(self.open)
        form.addRow(self.button)

    def _set_busy(self, busy: bool) -> None:
        self.button.setEnabled(not busy)

    def storage_options(self) -> dict[str, Any]:
        """The fsspec options typed into the form (empty fields left out)."""
        so: dict[str, Any] = {}
        if self.endpoint.text().strip():
            so["endpoint_url"] = self.endpoint.text().strip()
        if self.key.text().strip():
            so["key"] = self.key.text().strip()
        if self.secret.text():
            so["secret"] = self.secret.text()
        if self.anon.isChecked():
            so["anon"] = True
        return so

    def open(self) -> Any:
        """Open the side-car (in a thread worker) and add its layers to the viewer."""
        path, source = self.path.text().strip(), self.source.text().strip() or None
        so = self.storage_options()

        def done(scene: SidecarScene) -> None:
            self.layers = []
            for data, kwargs, kind in napari_layer_data(scene.layer_data()):
                added = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
                self.layers += added if isinstance(added, list) else [added]

        return _run(self, lambda: SidecarScene(path, storage_options=so, source=source), done)
