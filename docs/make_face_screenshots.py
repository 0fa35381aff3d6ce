"""The face flow of the plugin in a real napari window, as a user goes through it: docs/faces*.png.

Opens the face sample (File > Open Sample > napari-mdm > Face), which preselects the ``faces``
backbone (or, without one, the default with a note) and names the six face classes; paints the
scripted face strokes (:data:`napari_mdm.faces.STROKES`); trains and predicts with the default
settings; shows the prediction and the uncertainty. Then fine-tunes the backbone in use for a
few steps on a temporary folder of face images made from scikit-image's ``astronaut`` (no face
data may be copied here), saves it as a checkpoint there and loads it back.

Run under an X display from the repository root
(``Xvfb :99 & DISPLAY=:99 python docs/make_face_screenshots.py``); a few minutes on a CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import napari
import numpy as np
from make_screenshots import settle, shoot, shoot_suggestions, wait

from napari_mdm._widgets import PANEL
from napari_mdm._widgets.backbone_widget import FOLDER
from napari_mdm.faces import face_image, face_strokes

FACE = {"center": (170, 235), "zoom": 2.6}
"""The camera on the astronaut's face and hair: the small classes (eyes, nose, mouth) show."""
FINE_TUNE = {"steps": 40, "batch": 2, "crop": 64}
"""A few small steps: the point is the flow (progress, loss curve, cancel, save), not a better backbone."""


def face_folder(folder: Path) -> Path:
    """A few face images for fine-tuning: the astronaut, mirrored, and crops around her face."""
    from skimage.io import imsave

    image = face_image()
    variants = {
        "astronaut": image,
        "astronaut_mirrored": image[:, ::-1],
        "face_crop": image[:320, 96:416],
        "face_crop_mirrored": image[:320, 96:416][:, ::-1],
    }
    for name, picture in variants.items():
        imsave(folder / f"{name}.png", np.ascontiguousarray(picture), check_contrast=False)
    return folder


def states(viewer, panel) -> None:
    """What the user reads after opening the sample: the backbone lines and the class table."""
    backbone, seg = panel.tools["Backbone"], panel.tools["Few-shot segmentation"]
    print("Backbone tab: built-in =", backbone.shipped.value, "|", backbone.current.value)
    print("Few-shot tab:", seg.backbone_info.value)
    table = seg.class_table.table
    print("classes:", [table.item(r, 1).text() for r in range(table.rowCount())])
    print("labels layer:", [layer.name for layer in seg.label_layers.value])


def segment(viewer, panel) -> None:
    """Paint the scripted strokes, Train & predict with the defaults, shoot prediction and uncertainty."""
    seg = panel.tools["Few-shot segmentation"]
    labels = viewer.layers["astronaut labels"]
    labels.data = face_strokes()
    viewer.layers.selection.active = labels
    labels.mode = "paint"
    shoot(viewer, panel, "Few-shot segmentation", "faces_strokes", FACE)
    print(f"head defaults: ensemble {seg.ensemble.value}, steps {seg.steps.value} (0 = automatic)")
    seg.start_training()
    wait(seg.jobs)
    print("after training:", seg.jobs.status.value, "|", seg.backbone_info.value)
    shoot(viewer, panel, "Few-shot segmentation", "faces", FACE)
    shoot_suggestions(viewer, panel, "astronaut", "faces_uncertainty")


def fine_tune(viewer, panel, work: Path) -> None:
    """Fine-tune the backbone in use on a folder of faces, shoot it while it runs, save and load it."""
    backbone = panel.tools["Backbone"]
    backbone.data.value, backbone.folder.value = FOLDER, face_folder(work)
    backbone.fine_tune.value = True
    backbone.steps.value, backbone.batch.value, backbone.crop.value = FINE_TUNE.values()
    backbone.start_training()
    while backbone.jobs.busy and len(backbone.loss_plot.losses) < FINE_TUNE["steps"] * 2 // 3:
        settle(0.2)
    print("while fine-tuning:", backbone.jobs.status.value, "| cancel enabled:", backbone.jobs.cancel_button.enabled)
    shoot(viewer, panel, "Backbone", "faces_finetune")
    wait(backbone.jobs)
    print("fine-tuned:", backbone.current.value)
    backbone.save_path.value = work / "faces_finetuned.safetensors"
    backbone.save.clicked.emit()  # what pressing Save checkpoint does
    wait(backbone.jobs)
    backbone.checkpoint.value = work / "faces_finetuned.safetensors"
    backbone.load_file.clicked.emit()
    wait(backbone.jobs)
    print("loaded back:", backbone.current.value)
    shoot(viewer, panel, "Backbone", "faces_finetune_saved")


def main() -> None:
    viewer = napari.Viewer(title="napari-mdm")
    viewer.window.resize(1400, 900)
    _, panel = viewer.window.add_plugin_dock_widget("napari-mdm", PANEL)
    viewer.open_sample("napari-mdm", "face")  # what File > Open Sample > napari-mdm > Face does
    panel.show_tool("Few-shot segmentation")
    settle(1)
    states(viewer, panel)
    segment(viewer, panel)
    with tempfile.TemporaryDirectory(prefix="napari-mdm-faces-") as work:
        fine_tune(viewer, panel, Path(work))
    viewer.close()


if __name__ == "__main__":
    main()
