"""A tiny live loss curve drawn with QPainter (no plotting library to import at start-up)."""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget


class LossPlot(QWidget):
    """Loss per step, scaled to the widget; the latest value is written in the corner."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.losses: list[float] = []
        self.setMinimumHeight(70)

    def clear(self) -> None:
        self.losses = []
        self.update()

    def add(self, loss: float) -> None:
        self.losses.append(loss)
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(30, 30, 35))
        painter.setPen(QColor(160, 160, 160))
        if not self.losses:
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "loss curve appears while training")
            return
        lo, hi = min(self.losses), max(self.losses)
        span = hi - lo or 1.0
        w, h, n = self.width() - 8, self.height() - 8, max(len(self.losses) - 1, 1)
        points = [QPointF(4 + w * i / n, 4 + h * (1 - (v - lo) / span)) for i, v in enumerate(self.losses)]
        painter.setPen(QPen(QColor(80, 200, 255), 1.5))
        painter.drawPolyline(QPolygonF(points))
        painter.setPen(QColor(220, 220, 220))
        painter.drawText(8, 16, f"loss {self.losses[-1]:.4f}  (min {lo:.4f}, {len(self.losses)} steps)")
