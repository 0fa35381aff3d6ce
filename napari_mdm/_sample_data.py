"""Sample images that ship with scikit-image (no download), each opened ready to annotate:
the image plus an empty labels layer of its shape named 'NAME labels'. The face sample's labels
come with the face classes named and coloured, and its image asks for the face backbone."""

from __future__ import annotations

import numpy as np

KIND_KEY = "napari_mdm_kind"
"""Image layer metadata: the kind of image (``faces``), so the plugin preselects its backbone."""
CLASSES_KEY = "napari_mdm_classes"
"""Labels layer metadata: {label id: (name, colour)} the plugin's class table takes on."""


def _ready_to_annotate(
    image: np.ndarray, name: str, classes: dict[int, tuple[str, str]] | None = None, kind: str | None = None
) -> list[tuple]:
    labels = np.zeros(image.shape[:2], dtype=np.uint8)
    named = {"name": f"{name} labels"}
    if classes:  # named and coloured even before the plugin opens (as _widgets.classes.apply_classes does)
        ids = sorted(classes)
        named["metadata"] = {CLASSES_KEY: classes}
        named["features"] = {"index": [0, *ids], "class": ["unlabelled", *(classes[i][0] for i in ids)]}
        named["colormap"] = {None: "gray", 0: "transparent", **{i: classes[i][1] for i in ids}}
    shown = {"name": name, "rgb": True, "metadata": {KIND_KEY: kind} if kind else {}}
    return [(image, shown, "image"), (labels, named, "labels")]


def histology_sample() -> list[tuple]:
    """Immunohistochemistry (IHC) staining of colon tissue, 512 x 512 RGB (scikit-image ``ihc``)."""
    from skimage import data

    return _ready_to_annotate(data.immunohistochemistry(), "ihc")


def face_sample() -> list[tuple]:
    """Portrait of the astronaut Eileen Collins, 512 x 512 RGB (scikit-image ``astronaut``), with
    the classes skin, hair, eyes, nose, mouth and background ready to paint."""
    from .faces import FACE_CLASSES, FACES, face_image

    return _ready_to_annotate(face_image(), "astronaut", FACE_CLASSES, FACES)
