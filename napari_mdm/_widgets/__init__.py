"""Dock widgets: the only modules that import Qt or napari."""

from __future__ import annotations

from collections.abc import Sequence

PANEL = "napari-mdm"
WIDGETS = ("Backbone", "Few-shot segmentation", "Reconstructions", "Segment and export")


def populate_viewer(viewer, paths: Sequence[str] = ()) -> dict:
    """What ``napari-mdm gui`` shows: the given files (our masks as labels, else napari's readers)
    or the histology sample, the tabbed napari-mdm panel with the Backbone tab in front, and the
    default backbone loading in the background. Returns the widgets by tool name."""
    from .._reader import get_reader, prefer_this_reader

    prefer_this_reader()
    for path in paths:
        viewer.open(path, plugin="napari-mdm" if get_reader(str(path)) else "napari")
    if not paths:
        viewer.open_sample("napari-mdm", "histology")
    _, panel = viewer.window.add_plugin_dock_widget("napari-mdm", PANEL)
    backbone_widget = panel.tools["Backbone"]
    backbone_widget.load(backbone_widget.shipped.value)
    return dict(panel.tools)
