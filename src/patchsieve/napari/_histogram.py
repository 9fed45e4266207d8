"""A small Qt histogram of a region statistic with the threshold line (painted with QPainter).

Bars below the threshold (background) are orange, bars above (kept) blue; the applied threshold is
a dashed grey line, the moving one black. Clicking or dragging on the plot moves the threshold.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

KEPT, BACKGROUND = QColor("#0072B2"), QColor("#E69F00")  # as the analysis figures

__all__ = ["HistogramView"]


class HistogramView(QWidget):
    """Histogram with a threshold marker; ``on_pick(value)`` is called on click/drag."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.counts: NDArray[np.int64] = np.zeros(0, np.int64)
        self.edges: NDArray[np.float64] = np.zeros(1)
        self.threshold: float | None = None
        self.applied: float | None = None
        self.log = False
        self.on_pick: Callable[[float], None] | None = None

    def set_data(self, counts: NDArray[np.int64], edges: NDArray[np.float64]) -> None:
        self.counts, self.edges = np.asarray(counts), np.asarray(edges, np.float64)
        nz = self.counts[self.counts > 0]
        self.log = bool(nz.size and self.counts.max() > 50 * max(float(np.median(nz)), 1.0))
        self.update()

    def set_threshold(self, value: float | None, applied: float | None = None) -> None:
        self.threshold, self.applied = value, applied
        self.update()

    def _plot_rect(self) -> QRectF:
        return QRectF(4, 4, max(1, self.width() - 8), max(1, self.height() - 8))

    def _x(self, value: float, r: QRectF) -> float:
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        return r.left() + (value - lo) / (hi - lo or 1.0) * r.width()

    def paintEvent(self, event: QPaintEvent | None) -> None:  # noqa: N802 - Qt API
        if self.counts.size == 0:
            return
        p = QPainter(self)
        r = self._plot_rect()
        p.fillRect(r, QColor(255, 255, 255, 20))
        heights = np.log1p(self.counts) if self.log else self.counts.astype(float)
        top = float(heights.max()) or 1.0
        centres = (self.edges[:-1] + self.edges[1:]) / 2
        thr = self.threshold
        for i, h in enumerate(heights):
            x0, x1 = self._x(self.edges[i], r), self._x(self.edges[i + 1], r)
            bh = h / top * r.height()
            colour = BACKGROUND if thr is not None and centres[i] < thr else KEPT
            p.fillRect(QRectF(x0, r.bottom() - bh, max(1.0, x1 - x0 - 0.5), bh), colour)
        if self.applied is not None and np.isfinite(self.applied):
            p.setPen(QPen(QColor(160, 160, 160), 1.5, Qt.PenStyle.DashLine))
            xa = self._x(self.applied, r)
            p.drawLine(QPointF(xa, r.top()), QPointF(xa, r.bottom()))
        if thr is not None:
            p.setPen(QPen(QColor(240, 240, 240), 2))
            xt = self._x(thr, r)
            p.drawLine(QPointF(xt, r.top()), QPointF(xt, r.bottom()))
        p.end()

    def _pick(self, event: QMouseEvent | None) -> None:
        if event is None or self.on_pick is None or self.counts.size == 0:
            return
        r = self._plot_rect()
        frac = (event.position().x() - r.left()) / r.width()
        frac = min(max(frac, 0.0), 1.0)
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        self.on_pick(lo + frac * (hi - lo))

    def mousePressEvent(self, event: QMouseEvent | None) -> None:  # noqa: N802 - Qt API
        self._pick(event)

    def mouseMoveEvent(self, event: QMouseEvent | None) -> None:  # noqa: N802 - Qt API
        self._pick(event)
