"""Drive each napari-mdm dock widget in a real napari window and save docs/*.png.

Run under an X display (e.g. ``Xvfb :99 & DISPLAY=:99 python docs/make_screenshots.py``); it
pretrains a tiny backbone for a few steps on the sample for the Backbone screenshot, then loads
the shipped ``histology`` backbone for the others; a few minutes on a CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_mdm._widgets import WIDGETS

DOCS = Path(__file__).resolve().parent


def settle(seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait(panel) -> None:
    while panel.busy:
        QApplication.processEvents()
        time.sleep(0.05)
    settle()


def show_only(viewer, docks: dict, name: str) -> None:
    """One dock visible, 480 px wide, in a 1400 x 900 window (Qt calls on the dock widgets)."""
    for key, dock in docks.items():
        dock.setVisible(key == name)
    viewer.window.resize(1400, 900)
    settle()
    dock = docks[name]
    dock.parent().resizeDocks([dock], [480], Qt.Orientation.Horizontal)
    settle()


def shoot(viewer, name: str) -> None:
    viewer.window.resize(1400, 900)
    viewer.reset_view()
    settle()
    viewer.screenshot(str(DOCS / f"{name}.png"), canvas_only=False)
    print("wrote", DOCS / f"{name}.png")


def strokes(image: np.ndarray) -> np.ndarray:
    """A few brush-like discs: class 2 on the brown (DAB) stain, class 1 on the rest."""
    from skimage.color import rgb2hed
    from skimage.draw import disk

    dab = rgb2hed(image)[..., 2]
    labels = np.zeros(image.shape[:2], dtype=np.uint8)
    rng = np.random.default_rng(1)
    for value, pool in ((2, dab > np.percentile(dab, 97)), (1, dab < np.percentile(dab, 40))):
        ys, xs = np.nonzero(pool[20:-20, 20:-20])
        for i in rng.choice(len(ys), 12, replace=False):
            rr, cc = disk((ys[i] + 20, xs[i] + 20), 4, shape=labels.shape)
            labels[rr, cc] = value
    return labels


def main(steps: int) -> None:
    viewer = napari.Viewer(title="napari-mdm")
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-mdm", "histology")
    docks, widgets = {}, {}
    for name in WIDGETS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget("napari-mdm", name)
    settle(1)

    backbone = widgets["Backbone"]
    show_only(viewer, docks, "Backbone")
    backbone.steps.value, backbone.batch.value = steps, 4
    backbone.start_training()
    wait(backbone.jobs)
    shoot(viewer, "backbone")
    backbone.load("histology")  # the rest shows what a user gets: the shipped backbone
    wait(backbone.jobs)

    seg = widgets["Few-shot segmentation"]
    show_only(viewer, docks, "Few-shot segmentation")
    image, labels = viewer.layers["ihc"], viewer.layers["ihc labels"]
    labels.data = strokes(image.data)
    seg.ensemble.value, seg.steps.value = 5, 150
    seg.start_training()
    wait(seg.jobs)
    viewer.layers["ihc uncertainty"].visible = False
    viewer.layers.selection.active = labels
    shoot(viewer, "segmentation")
    viewer.layers["ihc prediction"].visible = False
    viewer.layers["ihc uncertainty"].visible = True
    shoot(viewer, "uncertainty")
    viewer.layers["ihc prediction"].visible = True

    rec = widgets["Reconstructions"]
    show_only(viewer, docks, "Reconstructions")
    rec.image.value = image
    rec.start()
    wait(rec.jobs)
    for layer in viewer.layers:
        layer.visible = "reconstruction" in layer.name
    viewer.dims.set_current_step(0, 2)
    shoot(viewer, "reconstruction")
    for layer in viewer.layers:
        layer.visible = "masked input" in layer.name
    shoot(viewer, "masked_input")

    export = widgets["Segment and export"]
    show_only(viewer, docks, "Segment and export")
    for layer in [layer for layer in viewer.layers if layer.name != "ihc"]:
        viewer.layers.remove(layer)
    image.visible = True
    settle()
    export.image_layers.value = [image]
    export.out_dir.value = DOCS.parent / "build" / "screenshot_masks"
    export.overwrite.value = True
    export.start()
    wait(export.jobs)
    shoot(viewer, "export")
    viewer.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
