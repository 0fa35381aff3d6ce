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
from qtpy.QtWidgets import QApplication

from napari_mdm._widgets import PANEL

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


def dismiss_notifications() -> None:
    """Close napari's notification pop-ups so they do not cover the screenshots."""
    for widget in QApplication.allWidgets():
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()


def shoot(viewer, panel, tool: str, name: str, camera: dict | None = None) -> None:
    """The panel on the tab of ``tool``, the window at 1400 x 900, saved as docs/NAME.png;
    ``camera`` (e.g. ``{"center": (y, x), "zoom": 2}``) frames a detail, else the whole image."""
    panel.show_tool(tool)
    dismiss_notifications()
    viewer.window.resize(1400, 900)
    viewer.reset_view()
    settle()
    if camera:
        getattr(viewer, "scene", viewer).camera.update(camera)  # napari >= 0.9 moved the camera to the scene
        settle()
    viewer.screenshot(str(DOCS / f"{name}.png"), canvas_only=False)
    print("wrote", DOCS / f"{name}.png")


def shoot_suggestions(viewer, panel, image: str, name: str) -> None:
    """The uncertainty of the layer ``image`` with the boxes of 'Where should I label next?', saved
    as docs/NAME.png; then the boxes go and the prediction shows again."""
    viewer.layers[f"{image} prediction"].visible = False
    viewer.layers[f"{image} uncertainty"].visible = True
    panel.tools["Few-shot segmentation"].suggest_regions()
    shoot(viewer, panel, "Few-shot segmentation", name)
    viewer.layers.remove(f"{image}: label here")
    viewer.layers[f"{image} prediction"].visible = True
    viewer.layers[f"{image} uncertainty"].visible = False


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
    viewer.window.resize(1400, 900)
    viewer.open_sample("napari-mdm", "histology")
    _, panel = viewer.window.add_plugin_dock_widget("napari-mdm", PANEL)
    tools = panel.tools
    settle(1)

    backbone = tools["Backbone"]
    backbone.steps.value, backbone.batch.value = steps, 4
    backbone.start_training()
    wait(backbone.jobs)
    shoot(viewer, panel, "Backbone", "backbone")
    backbone.load("histology")  # the rest shows what a user gets: the shipped backbone
    wait(backbone.jobs)

    seg = tools["Few-shot segmentation"]
    image, labels = viewer.layers["ihc"], viewer.layers["ihc labels"]
    labels.data = strokes(image.data)
    seg.class_table.table.item(0, 1).setText("tissue")
    seg.class_table.table.item(1, 1).setText("DAB stain")
    seg.start_training()
    wait(seg.jobs)
    viewer.layers.selection.active = labels
    shoot(viewer, panel, "Few-shot segmentation", "segmentation")
    shoot_suggestions(viewer, panel, "ihc", "uncertainty")

    rec = tools["Reconstructions"]
    rec.image.value = image
    rec.start()
    wait(rec.jobs)
    for layer in viewer.layers:
        layer.visible = "reconstruction" in layer.name
    viewer.dims.set_current_step(0, 2)
    shoot(viewer, panel, "Reconstructions", "reconstruction")
    for layer in viewer.layers:
        layer.visible = "masked input" in layer.name
    shoot(viewer, panel, "Reconstructions", "masked_input")

    export = tools["Segment and export"]
    for layer in [layer for layer in viewer.layers if layer.name not in ("ihc", "ihc prediction")]:
        viewer.layers.remove(layer)
    image.visible, viewer.layers["ihc prediction"].visible = True, False
    settle()
    export.image_layers.value = [image]
    export.out_dir.value = DOCS.parent / "build" / "screenshot_masks"
    export.overwrite.value, export.uncertainty.value = True, True
    export.start()
    wait(export.jobs)
    viewer.layers["ihc_uncertainty"].visible = False
    shoot(viewer, panel, "Segment and export", "export")
    viewer.close()


WORKFLOW = (
    ("segmentation", "1. Paint a few strokes per class, name the classes, Train & predict"),
    ("uncertainty", "2. 'Where should I label next?': paint in the yellow boxes, train again"),
    ("reconstruction", "3. Optional: see what the backbone sees (slider: t)"),
    ("export", "4. Segment and export the masks (NAME_mask.tif opens as labels)"),
)


def workflow_figure() -> None:
    """docs/workflow.png: the four steps side by side, from the screenshots just taken."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9.4), dpi=90)
    for ax, (name, caption) in zip(axes.ravel(), WORKFLOW, strict=True):
        ax.imshow(plt.imread(DOCS / f"{name}.png"))
        ax.set_title(caption, fontsize=11, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(DOCS / "workflow.png")
    print("wrote", DOCS / "workflow.png")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
    workflow_figure()
