"""Dock widgets: the only modules that import Qt or napari."""
from __future__ import annotations

from typing import Sequence

DOCK_WIDTH = 460
WIDGETS = ("Backbone", "Few-shot segmentation", "Reconstructions", "Segment & export")


def populate_viewer(viewer, paths: Sequence[str] = ()) -> dict:
    """What ``napari-mdm gui`` shows: the given files (our masks as labels, else napari's readers)
    or the histology sample, every napari-mdm widget tabbed with the Backbone widget in front,
    and the default backbone loading in the background. Returns the widgets by name."""
    from .._reader import get_reader

    for path in paths:
        viewer.open(path, plugin="napari-mdm" if get_reader(str(path)) else "napari")
    if not paths:
        viewer.open_sample("napari-mdm", "histology")
    docks = [viewer.window.add_plugin_dock_widget("napari-mdm", name, tabify=name != WIDGETS[0]) for name in WIDGETS]
    front, backbone_widget = docks[0]
    from qtpy.QtCore import Qt, QTimer

    window = viewer.window._qt_window
    QTimer.singleShot(0, lambda: (window.resizeDocks([front], [DOCK_WIDTH], Qt.Horizontal), front.raise_()))
    backbone_widget.load(backbone_widget.shipped.value)
    return {name: widget for name, (_, widget) in zip(WIDGETS, docks)}
