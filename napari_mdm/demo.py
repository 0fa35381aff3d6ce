"""The headless demo: what a user does in the plugin, end to end, on a sample that ships with
scikit-image, without a screen.

The sample is the ``ihc`` image (immunohistochemistry of colon tissue). A reference mask with
three classes is derived from its stains by colour deconvolution: 1 = stroma and lumen,
2 = haematoxylin-stained nuclei outside the glands, 3 = DAB-positive gland epithelium. A few
scribbles are drawn inside the reference regions of the *left half* only, the head is trained on
them, the whole image is segmented, and agreement with the reference is measured on the
*right half*, which no scribble touched.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

CLASS_NAMES = {1: "stroma/lumen", 2: "nuclei", 3: "DAB+ epithelium"}


def sample_image() -> np.ndarray:
    """The ``ihc`` sample (512 x 512 RGB uint8), bundled with scikit-image."""
    from skimage import data

    return data.immunohistochemistry()


def _without_small_parts(mask: np.ndarray, area: int) -> np.ndarray:
    from scipy import ndimage as ndi

    parts, _ = ndi.label(mask)
    keep = np.bincount(parts.ravel()) >= area
    keep[0] = False
    return keep[parts]


def stain_reference(image: np.ndarray) -> np.ndarray:
    """Three-class reference from colour deconvolution (Otsu thresholds on the stains)."""
    from skimage.color import rgb2hed
    from skimage.filters import gaussian, threshold_otsu

    hed = rgb2hed(image)
    dab = gaussian(hed[..., 2], 4)
    haematoxylin = gaussian(hed[..., 0], 1)
    epithelium = _without_small_parts(dab > threshold_otsu(dab), 256)
    epithelium |= ~_without_small_parts(~epithelium, 256)  # fill small holes
    reference = np.ones(image.shape[:2], dtype=np.uint8)
    reference[haematoxylin > threshold_otsu(haematoxylin)] = 2
    reference[epithelium] = 3
    return reference


def demo_scribbles(reference: np.ndarray, seed: int = 0) -> np.ndarray:
    """A few strokes per class on the left half of the image (the right half stays unlabelled)."""
    from .scribbles import scribbles_from_mask

    labels = scribbles_from_mask(reference, strokes=(6, 25, 6), erode=(3, 1, 4), seed=seed)
    labels[:, reference.shape[1] // 2 :] = 0
    return labels


DEMO_OUTPUTS = (
    "ihc.tif",
    "ihc_scribbles.tif",
    "ihc_reference.tif",
    "ihc_prediction.tif",
    "ihc_uncertainty.tif",
    "head.safetensors",
    "summary.json",
)


def timed(timings: dict[str, float], label: str, work):
    """Run ``work()``, record and print how long it took."""
    start = time.perf_counter()
    result = work()
    timings[label] = round(time.perf_counter() - start, 2)
    print(f"  {label:<22} {timings[label]:6.1f} s", file=sys.stderr)
    return result


def write_outputs(
    out: Path, stem: str, image: np.ndarray, layers: dict[str, np.ndarray], uncertainty: np.ndarray, head, summary: dict
) -> None:
    """The files a user opens afterwards (STEM.tif, STEM_KIND.tif, ...), named so napari shows them as layers."""
    from .files import atomic_output
    from .io import write_array, write_labels

    write_array(out / f"{stem}.tif", image, overwrite=True)
    for kind, labels in layers.items():
        write_labels(out / f"{stem}_{kind}.tif", labels, overwrite=True)
    write_array(out / f"{stem}_uncertainty.tif", uncertainty, overwrite=True)
    head.save(out / "head.safetensors", overwrite=True)
    with atomic_output(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")


def run_demo(out: str | os.PathLike, backbone: str | None = None, device: str = "auto") -> int:
    """Scribble, train, segment and export on the ``ihc`` sample; print what happened.

    Writes into ``out``: the image, its scribbles, reference, prediction and uncertainty (tif,
    named so that napari opens them as layers), the trained head, and ``summary.json``. Returns a process exit code.
    """
    from .checkpoint import default_backbone_name, load_backbone
    from .devices import resolve_device
    from .features import FeatureCache, FeatureConfig, resolve_config
    from .files import plan_outputs
    from .io import normalize_image
    from .metrics import dice
    from .pipeline import train_head

    out = Path(out)
    plan_outputs([out / f for f in DEMO_OUTPUTS], overwrite=True)  # a demo folder is rewritten, but checked first
    name = backbone or default_backbone_name()
    timings: dict[str, float] = {}
    print(f"napari-mdm demo: ihc sample, backbone {name}, device {resolve_device(device)}", file=sys.stderr)

    def prepare():
        image = sample_image()
        reference = stain_reference(image)
        return image, reference, demo_scribbles(reference), load_backbone(name, device=resolve_device(device))

    image, reference, scribbles, loaded = timed(timings, "sample and backbone", prepare)
    config, cache, normalized = resolve_config(loaded, FeatureConfig()), FeatureCache(), normalize_image(image)
    features = timed(timings, "features", lambda: cache.get(normalized, loaded, config))
    head = timed(timings, "head training", lambda: train_head(loaded, [normalized], [scribbles], config, cache=cache))
    prediction = timed(timings, "prediction", lambda: head.predict(features))

    right = np.s_[:, image.shape[1] // 2 :]
    scores = {
        CLASS_NAMES[c]: round(100 * dice(prediction.labels[right] == c, reference[right] == c), 1) for c in CLASS_NAMES
    }
    summary = {
        "backbone": loaded.name,
        "device": str(loaded.device),
        "feature_channels": int(features.shape[0]),
        "scribbled_pixels": int((scribbles > 0).sum()),
        "scribbled_percent": round(100 * float((scribbles > 0).mean()), 2),
        "dice_right_half_percent": scores,
        "seconds": timings,
    }
    layers = {"scribbles": scribbles, "reference": reference, "prediction": prediction.labels}
    write_outputs(out, "ihc", image, layers, prediction.uncertainty, head, summary)
    print(
        "Dice against the stain reference on the unscribbled right half: "
        + ", ".join(f"{k} {v}" for k, v in scores.items()),
        file=sys.stderr,
    )
    print(
        f"wrote {out}/: ihc.tif, ihc_{{scribbles,reference,prediction,uncertainty}}.tif, head.safetensors, "
        f"summary.json (look at them: napari-mdm gui {out}/*.tif)",
        file=sys.stderr,
    )
    return 0
