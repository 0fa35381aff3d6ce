"""The face workflow: the face sample's classes, the backbone it asks for, and the headless face
demo (``napari-mdm demo --faces``): scripted strokes on scikit-image's ``astronaut`` portrait.

The face demo prints no accuracy: the faces with masks we benchmark on (FASSEG, in
``../shared/data``) may not be copied into the package, and scikit-image's faces have no masks.
``benchmarks/faces.py`` measures accuracy on FASSEG where it is available.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

FACE_CLASSES = {
    1: ("skin", "#e0ac69"),
    2: ("hair", "#6f4e37"),
    3: ("eyes", "#4e79a7"),
    4: ("nose", "#f28e2b"),
    5: ("mouth", "#e15759"),
    6: ("background", "#bab0ac"),
}
"""Label id -> (name, '#rrggbb') of the face sample, ready to paint."""

FACES = "faces"
"""The image kind of the face sample, and the name of the backbone pretrained on faces."""

NO_SCORE = (
    "no score: the face images with masks (FASSEG) may not be shipped with napari-mdm (licence) and "
    "the astronaut has no mask; benchmarks/faces.py scores faces where FASSEG is available"
)

STROKES = {
    1: [(118, 190, 134, 198), (118, 266, 130, 270), (163, 224, 164, 246), (88, 215, 88, 245)],
    2: [(45, 200, 45, 280), (66, 168, 104, 168), (72, 288, 100, 289), (32, 230, 36, 260)],
    3: [(102, 199, 102, 208), (104, 248, 104, 257)],
    4: [(112, 232, 128, 232), (128, 226, 128, 238)],
    5: [(147, 216, 147, 254)],
    6: [
        (60, 310, 140, 315),
        (25, 155, 40, 160),
        (190, 205, 190, 255),
        (300, 100, 300, 200),
        (420, 300, 470, 330),
        (100, 20, 100, 60),
        (250, 20, 300, 40),
        (150, 410, 230, 412),
        (430, 400, 470, 440),
        (215, 165, 240, 180),
    ],
}
"""Scripted strokes per class, (y0, x0, y1, x1) segments on the 512 x 512 astronaut: cheeks, chin
and forehead; crown and sides of the hair; each eye; the nose; the smile; and the background
(wall, turtleneck, suit, flag, shuttle, helmet, collar ring)."""


def face_image() -> np.ndarray:
    """The ``astronaut`` portrait (512 x 512 RGB uint8), bundled with scikit-image."""
    from skimage import data

    return data.astronaut()


def face_strokes(shape: tuple[int, int] = (512, 512), width: int = 1) -> np.ndarray:
    """Labels (0 = unlabelled) holding :data:`STROKES`, each segment thickened by ``width`` pixels."""
    from scipy import ndimage as ndi
    from skimage.draw import line
    from skimage.morphology import disk

    labels = np.zeros(shape, dtype=np.uint8)
    for value, segments in STROKES.items():
        stroke = np.zeros(shape, dtype=bool)
        for y0, x0, y1, x1 in segments:
            stroke[line(y0, x0, y1, x1)] = True
        labels[ndi.binary_dilation(stroke, disk(width)) if width else stroke] = value
    return labels


FACE_DEMO_OUTPUTS = (
    "astronaut.tif",
    "astronaut_scribbles.tif",
    "astronaut_prediction.tif",
    "astronaut_uncertainty.tif",
    "head.safetensors",
    "summary.json",
)


def run_face_demo(out: str | os.PathLike, backbone: str | None = None, device: str = "auto", head=None) -> int:
    """Scribble, train, segment and export on the astronaut: the face flow of the plugin, headless.

    ``backbone`` None picks the shipped ``faces`` backbone, else the default (and says so);
    ``head`` is a :class:`~napari_mdm.head.HeadConfig` (None: the default). Writes into ``out``
    the image, strokes, prediction and uncertainty (tif), the head and ``summary.json``, and
    prints how much of the image each class takes. Returns a process exit code."""
    from .checkpoint import backbone_for, load_backbone
    from .demo import timed, write_outputs
    from .devices import resolve_device
    from .features import FeatureCache, FeatureConfig, resolve_config
    from .files import plan_outputs
    from .io import normalize_image
    from .pipeline import train_head

    out = Path(out)
    plan_outputs([out / f for f in FACE_DEMO_OUTPUTS], overwrite=True)
    name, note = (backbone, None) if backbone else backbone_for(FACES)
    timings: dict[str, float] = {}
    print(
        f"napari-mdm demo --faces: astronaut sample, backbone {name}, device {resolve_device(device)}", file=sys.stderr
    )
    if note:
        print(f"  {note}", file=sys.stderr)
    image, strokes = face_image(), face_strokes()
    loaded = timed(timings, "backbone", lambda: load_backbone(name, device=resolve_device(device)))
    config, cache, normalized = resolve_config(loaded, FeatureConfig()), FeatureCache(), normalize_image(image)
    classes = {i: n for i, (n, _) in FACE_CLASSES.items()}
    trained = timed(
        timings,
        "features and head",
        lambda: train_head(loaded, [normalized], [strokes], config, head, cache=cache, class_names=classes),
    )
    prediction = timed(timings, "prediction", lambda: trained.predict(cache.get(normalized, loaded, config)))
    shares = {n: round(100 * float((prediction.labels == i).mean()), 1) for i, n in classes.items()}
    summary = {
        "backbone": loaded.name,
        "backbone_note": note,
        "device": str(loaded.device),
        "scribbled_pixels": int((strokes > 0).sum()),
        "predicted_percent_of_image": shares,
        "score": NO_SCORE,
        "seconds": timings,
    }
    layers = {"scribbles": strokes, "prediction": prediction.labels}
    write_outputs(out, "astronaut", image, layers, prediction.uncertainty, trained, summary)
    print("predicted share of the image: " + ", ".join(f"{k} {v} %" for k, v in shares.items()), file=sys.stderr)
    print(NO_SCORE, file=sys.stderr)
    print(f"wrote {out}/: {', '.join(FACE_DEMO_OUTPUTS)} (look: napari-mdm gui {out}/*.tif)", file=sys.stderr)
    return 0
