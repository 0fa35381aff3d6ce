"""Dock widget 'napari-mdm': the four tools as tabs of one narrow, scrollable panel, so opening
the plugin gives one dock instead of four stacked ones taller than the screen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from .backbone_widget import BackboneWidget
from .export_widget import ExportWidget
from .reconstruction_widget import ReconstructionWidget
from .segmentation_widget import SegmentationWidget

if TYPE_CHECKING:
    import napari

PANEL_WIDTH = 370
TABS = (
    ("Backbone", "Backbone", BackboneWidget),
    ("Few-shot", "Few-shot segmentation", SegmentationWidget),
    ("Reconstruct", "Reconstructions", ReconstructionWidget),
    ("Export", "Segment and export", ExportWidget),
)
"""(tab title, tool name, widget): short titles keep the four tabs within the panel's width."""


def scrollable(widget: QWidget) -> QScrollArea:
    """``widget`` in a vertical scroll area that never scrolls sideways (the panel stays narrow)."""
    layout = widget.layout()
    if hasattr(layout, "addStretch"):
        layout.addStretch(1)  # controls stay packed at the top of a tall tab
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(widget)
    return area


class MdmPanel(QWidget):
    """All napari-mdm tools in tabs; ``tools`` gives each widget by its tool name."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.tabs = QTabWidget()
        self.tabs.setUsesScrollButtons(True)
        self.tools = {}
        for title, name, make in TABS:
            tool = make(viewer)
            self.tools[name] = tool
            index = self.tabs.addTab(scrollable(tool.native), title)
            self.tabs.setTabToolTip(index, name)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name): the width napari docks it at
        return QSize(PANEL_WIDTH, super().sizeHint().height())

    def show_tool(self, name: str) -> None:
        self.tabs.setCurrentIndex([tool for _, tool, _ in TABS].index(name))
