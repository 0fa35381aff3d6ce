"""The one path from labelled images to a trained head: features (cached) -> head, with the
context the head needs to be applied later. The CLI, the plugin and the demo all train here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .backbone import Backbone
from .features import FeatureCache, FeatureConfig, resolve_config
from .head import Head, HeadConfig, HeadContext, check_labels, fit_head
from .jobs import ProgressFn, StopFn, UserError, staged


def train_head(
    backbone: Backbone,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    features: FeatureConfig | None = None,
    head: HeadConfig | None = None,
    *,
    cache: FeatureCache | None = None,
    ignore: int | None = 0,
    class_names: dict[int, str] | None = None,
    mpp: float | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Head:
    """Train a head on (H, W, 3) [0, 1] images (as :func:`napari_mdm.io.read_image` gives) and their
    (H, W) labels; label ``ignore`` means unlabelled (None: every value is a class). ``mpp``
    (microns per pixel of the images) lets whole slides be segmented at the matching level.

    Labels are checked before any feature is computed; features come from ``cache`` (computed
    and kept there on a miss), so a retrain after one more stroke costs only the head.
    """
    if len(images) != len(labels):
        raise UserError(f"{len(images)} images but {len(labels)} label images: give one per image")
    check_labels(labels, [image.shape[:2] for image in images], ignore)
    config = resolve_config(backbone, features)
    cache = cache if cache is not None else FeatureCache()
    feats = [
        cache.get(image, backbone, config, staged(progress, f"features {i + 1}/{len(images)}"), should_stop)
        for i, image in enumerate(images)
    ]
    return fit_head(
        feats,
        labels,
        head,
        ignore=ignore,
        context=HeadContext.for_backbone(backbone, config, class_names, mpp),
        device=backbone.device,
        progress=staged(progress, "head"),
        should_stop=should_stop,
    )
