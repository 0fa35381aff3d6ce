"""The core's one training path (napari_mdm.pipeline.train_head), used by the CLI, widget and demo."""

import numpy as np
import pytest

from napari_mdm.features import FeatureCache, FeatureConfig
from napari_mdm.head import HeadConfig
from napari_mdm.inference import segment
from napari_mdm.jobs import UserError
from napari_mdm.pipeline import train_head

FAST = HeadConfig(ensemble=2, steps=30, batch_size=128)
FEATURES = FeatureConfig(tile=64)


def _halves(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.full((40, 40, 3), 0.2, np.float32)
    image[:, 20:] = 0.8
    labels = np.zeros((40, 40), np.uint8)
    labels[:, 2:8], labels[:, -8:-2] = 1, 7
    return np.clip(image + rng.normal(0, 0.03, image.shape).astype(np.float32), 0, 1), labels


def test_a_head_from_train_head_applies_to_new_images(tiny_backbone):
    image, labels = _halves(0)
    head = train_head(tiny_backbone, [image], [labels], FEATURES, FAST, class_names={7: "bright"})
    assert head.context.features.timesteps == FEATURES.timesteps and head.context.features.blocks  # resolved
    assert head.context.backbone_digest == tiny_backbone.digest and head.context.class_names == {7: "bright"}
    other, _ = _halves(1)
    prediction = segment(tiny_backbone, head, other)  # no context to pass: the head knows its features
    assert (prediction.labels[:, :15] == 1).mean() > 0.9 and (prediction.labels[:, 25:] == 7).mean() > 0.9


def test_train_head_fills_and_reuses_the_cache(tiny_backbone):
    image, labels = _halves(0)
    cache = FeatureCache()
    reported = []
    train_head(
        tiny_backbone,
        [image],
        [labels],
        FEATURES,
        FAST,
        cache=cache,
        progress=lambda done, total, info: reported.append(info),
    )
    assert len(cache) == 1 and any(info.startswith("features 1/1") for info in reported)
    assert any(info.startswith("head") for info in reported)
    reported.clear()
    train_head(
        tiny_backbone,
        [image],
        [labels],
        FEATURES,
        FAST,
        cache=cache,
        progress=lambda done, total, info: reported.append(info),
    )
    assert len(cache) == 1 and not any(info.startswith("features 1/1 tile") for info in reported)


@pytest.mark.parametrize("case", ["count", "shape", "one class"])
def test_label_mistakes_are_refused_before_any_feature_is_computed(tiny_backbone, case):
    image, labels = _halves(0)
    if case == "count":
        images, label_images, message = [image, image], [labels], "2 images but 1 label"
    elif case == "shape":
        images, label_images, message = [image], [labels[:30]], "have shape"
    else:
        images, label_images, message = [image], [np.where(labels == 7, 0, labels)], "only one class"
    cache = FeatureCache()
    with pytest.raises(UserError, match=message):
        train_head(tiny_backbone, images, label_images, FEATURES, FAST, cache=cache)
    assert len(cache) == 0
