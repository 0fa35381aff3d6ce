"""On a CUDA machine: the core trains in bf16 there, and features and masks computed on the GPU
agree with the CPU's. Skipped without CUDA (CI has none); `benchmarks/gpu_session.sh device`
runs this file first on a lent GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_core_pretrain import _fixed_batch_loss, _images

from napari_mdm.checkpoint import random_backbone
from napari_mdm.corruption import CorruptionConfig
from napari_mdm.features import FeatureConfig, extract_features
from napari_mdm.head import HeadConfig, HeadContext, fit_head
from napari_mdm.inference import segment
from napari_mdm.pretrain import PretrainConfig, pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _two_textures(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Left half smooth and dark, right half bright stripes; labels: a stroke in each half."""
    rng = np.random.default_rng(0)
    image = np.empty((h, w, 3), np.float32)
    image[:, : w // 2] = 0.3 + 0.02 * rng.standard_normal((h, w // 2, 1))
    image[:, w // 2 :] = 0.6 + 0.3 * (np.arange(w - w // 2) % 6 < 3)[None, :, None]
    labels = np.zeros((h, w), np.uint8)
    labels[20:70, 10:20], labels[20:70, 100:110] = 1, 2
    return image.clip(0, 1), labels


def test_pretraining_on_cuda_runs_in_bf16_and_lowers_the_loss():
    images = _images()
    result = pretrain(
        images, None, "tiny", config=PretrainConfig(steps=40, batch_size=4, crop=32, lr=2e-3), device="cuda"
    )
    provenance = result.backbone.provenance
    assert provenance["device"].startswith("cuda") and provenance["precision"] == "bf16"
    assert np.isfinite(result.losses).all()
    corruption = CorruptionConfig()
    untrained = pretrain(images, None, "tiny", config=PretrainConfig(steps=0, crop=32), device="cpu")
    trained = result.backbone.model.cpu().float()
    assert _fixed_batch_loss(trained, images, corruption) < 0.8 * _fixed_batch_loss(
        untrained.backbone.model, images, corruption
    )


def test_features_and_masks_on_cuda_match_the_cpu():
    image, labels = _two_textures()
    config = FeatureConfig(tile=64)
    cpu_backbone = random_backbone("tiny")
    on_cpu = extract_features(cpu_backbone, image, config).astype(np.float32)
    gpu_backbone = random_backbone("tiny").to("cuda")
    on_gpu = extract_features(gpu_backbone, image, config).astype(np.float32)
    assert on_gpu.shape == on_cpu.shape
    np.testing.assert_allclose(on_gpu, on_cpu, atol=2e-2 * float(np.abs(on_cpu).max()))

    head = fit_head(
        [on_cpu.astype(np.float16)],
        [labels],
        HeadConfig(ensemble=2, steps=100),
        context=HeadContext.for_backbone(cpu_backbone, config),
    )
    cpu_labels = segment(cpu_backbone, head, image).labels
    gpu_labels = segment(gpu_backbone, head, image).labels
    assert set(np.unique(cpu_labels)) == {1, 2}
    assert (gpu_labels == cpu_labels).mean() > 0.99
