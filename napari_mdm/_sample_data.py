"""Sample images that ship with scikit-image (no download), each opened ready to annotate:
the image plus an empty labels layer of its shape named 'NAME labels'."""

from __future__ import annotations

import numpy as np


def _ready_to_annotate(image: np.ndarray, name: str) -> list[tuple]:
    labels = np.zeros(image.shape[:2], dtype=np.uint8)
    return [(image, {"name": name, "rgb": True}, "image"), (labels, {"name": f"{name} labels"}, "labels")]


def histology_sample() -> list[tuple]:
    """Immunohistochemistry (IHC) staining of colon tissue, 512 x 512 RGB (scikit-image ``ihc``)."""
    from skimage import data

    return _ready_to_annotate(data.immunohistochemistry(), "ihc")


def face_sample() -> list[tuple]:
    """Portrait of the astronaut Eileen Collins, 512 x 512 RGB (scikit-image ``astronaut``)."""
    from skimage import data

    return _ready_to_annotate(data.astronaut(), "astronaut")
