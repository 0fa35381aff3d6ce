"""The head's pool of labelled pixels (issue 14): gathered in blocks, standardised, and for large
pools of compact features kept as int8 codes with the first layer applied to them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mdm import pixel_pool
from napari_mdm.checkpoint import random_backbone
from napari_mdm.features import FeatureConfig, extract_features, resolve_config
from napari_mdm.head import HeadConfig, fit_head
from napari_mdm.pixel_pool import coded_pool, draw_pixels, gather, keeps_codes, standardised


@pytest.fixture(scope="module")
def features():
    """Compact features of two 150 x 300 textures (several tiles, so blended codes)."""
    rng = np.random.default_rng(0)
    image = rng.random((150, 300, 3), dtype=np.float32) * 0.3 + 0.3
    image[:, 150:] += np.sin(np.arange(150) / 3)[None, :, None] * 0.3
    backbone = random_backbone("tiny")
    config = resolve_config(backbone, FeatureConfig(tile=128, blocks=(3, 5)))
    return [extract_features(backbone, np.clip(im, 0, 1), config) for im in (image, image[::-1].copy())]


@pytest.fixture(scope="module")
def labels():
    """The left texture class 1, the right one class 2, on bands of rows (the rest unlabelled)."""
    lab = np.zeros((150, 300), np.uint8)
    lab[::3, 10:130], lab[::3, 170:290] = 1, 2
    return [lab, lab]


def test_float32_pixels_are_standardised_without_being_overwritten_first():
    """A float32 block converted with .float() is the pixels themselves: squaring it in place for
    the variance used to square the pool (found in this session's review)."""
    x = torch.from_numpy(np.random.default_rng(2).normal(3, 2, size=(5000, 7)).astype(np.float32))
    expected = (x - x.mean(0)) / x.std(0)
    out, mean, std = standardised(x.clone(), torch.float32, rows=512)
    assert torch.allclose(mean, x.mean(0), atol=1e-4) and torch.allclose(std, x.std(0), rtol=1e-4)
    assert torch.allclose(out, expected, atol=1e-4)


def test_the_first_layer_on_codes_is_the_first_layer_on_standardised_pixels(features, labels):
    picks, _ = draw_pixels(labels, [1, 2], 800, np.random.default_rng(3))
    pool = coded_pool(features, picks, torch.float32)
    dense, mean, std = standardised(torch.from_numpy(gather(features, picks).astype(np.float32)), torch.float32)
    assert len(pool) == len(dense) and pool.channels == dense.shape[1]
    assert torch.allclose(pool.mean, mean, atol=1e-3) and torch.allclose(pool.std, std, rtol=1e-3)
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3, dense.shape[1], 16, generator=gen), torch.randn(3, 1, 16, generator=gen)
    index = torch.randint(len(dense), (3, 40), generator=gen)
    expected = torch.baddbmm(bias, dense[index], weight)
    got = pool.first_layer(index, weight, bias)
    assert (got - expected).abs().max() < 2e-3 * expected.abs().max()  # float16 decoding of the reference


def test_only_large_pools_of_compact_features_keep_their_codes(features, labels, monkeypatch):
    picks, _ = draw_pixels(labels, [1, 2], 800, np.random.default_rng(3))
    assert not keeps_codes(features, picks)  # 1600 pixels: decoded, the faster fit
    monkeypatch.setattr(pixel_pool, "CODED_POOL_BYTES", 0)
    assert keeps_codes(features, picks)
    assert not keeps_codes([features[0].to_float16(), features[1]], picks)


def test_a_head_fitted_on_codes_predicts_as_one_fitted_on_decoded_pixels(features, labels, monkeypatch):
    config = HeadConfig(ensemble=2, steps=60, bfloat16=False)
    dense = fit_head(features, labels, config).predict(features[0]).labels
    monkeypatch.setattr(pixel_pool, "CODED_POOL_BYTES", 0)
    coded = fit_head(features, labels, config)
    assert coded.in_channels == features[0].shape[0]
    assert (coded.predict(features[0]).labels == dense).mean() > 0.99
