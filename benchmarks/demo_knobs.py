"""Which feature knob costs what on the demo (ihc sample, strokes on the left half, Dice on the right
half): decoder blocks up to the first full-resolution block or all of them, every channel or 64
projected ones. ``python -m benchmarks.demo_knobs`` (about a minute on 2 cores)."""

import time

import numpy as np

from napari_mdm.checkpoint import load_backbone
from napari_mdm.demo import CLASS_NAMES, demo_scribbles, sample_image, stain_reference
from napari_mdm.features import FeatureCache, FeatureConfig
from napari_mdm.io import normalize_image
from napari_mdm.metrics import dice
from napari_mdm.pipeline import train_head

VARIANTS = {
    "new: blocks 3-7, project 64": FeatureConfig(project=64),
    "blocks 3-7, all channels": FeatureConfig(project=0),
    "blocks 3-9, project 64": FeatureConfig(blocks=tuple(range(3, 10)), project=64),
    "old: blocks 3-9, all channels": FeatureConfig(blocks=tuple(range(3, 10)), project=0),
}


def main() -> None:
    image = sample_image()
    reference = stain_reference(image)
    strokes, backbone, x = demo_scribbles(reference), load_backbone(), normalize_image(image)
    right = np.s_[:, image.shape[1] // 2 :]
    for name, config in VARIANTS.items():
        start, cache = time.time(), FeatureCache()
        features = cache.get(x, backbone, config)
        t_features, start = time.time() - start, time.time()
        head = train_head(backbone, [x], [strokes], config, cache=cache)
        t_head, start = time.time() - start, time.time()
        prediction = head.predict(features)
        t_predict = time.time() - start
        scores = [round(100 * dice(prediction.labels[right] == c, reference[right] == c), 1) for c in CLASS_NAMES]
        print(
            f"{name:<32} channels {features.shape[0]:4d}  features {t_features:5.1f} s  head {t_head:5.1f} s  "
            f"predict {t_predict:4.1f} s  Dice {scores}",
            flush=True,
        )


if __name__ == "__main__":
    main()
