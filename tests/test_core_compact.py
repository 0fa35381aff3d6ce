"""Compact features (issue 14): int8 codes, one byte a value, that the head predicts from without
decoding them, as a float16 map would predict."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

from napari_mdm.checkpoint import random_backbone
from napari_mdm.compact import CODE_MAX, CompactFeatures
from napari_mdm.features import (
    FeatureCache,
    FeatureConfig,
    extract_features,
    features_nbytes,
    group_widths,
    resolve_config,
)
from napari_mdm.filterbank import filter_features, num_filter_channels
from napari_mdm.head import HeadConfig, fit_head
from napari_mdm.multiscale import CODED


@pytest.fixture(scope="module")
def backbone():
    return random_backbone("tiny")


@pytest.fixture(scope="module")
def image():
    """Two textures side by side, 150 x 300: wider than one 128-px tile, so tiles blend."""
    rng = np.random.default_rng(0)
    img = rng.random((150, 300, 3), dtype=np.float32) * 0.2 + 0.4
    img[:, 150:] += np.sin(np.arange(150) / 3)[None, :, None] * 0.3
    return np.clip(img, 0, 1).astype(np.float32)


def _groups_and_channels(rng: np.random.Generator) -> np.ndarray:
    """(10, 20, 30) values: two unit-normalised groups of 4 channels, then two per-channel ones
    (one of them far from zero with a small spread, as a smoothed intensity is)."""
    groups = rng.normal(size=(8, 20, 30))
    for a in (0, 4):
        groups[a : a + 4] *= 2 / np.linalg.norm(groups[a : a + 4], axis=0, keepdims=True)
    channels = np.stack([rng.normal(size=(20, 30)) * 0.01, 0.7 + rng.normal(size=(20, 30)) * 0.05])
    return np.concatenate([groups, channels]).astype(np.float16)


def test_codes_keep_each_value_within_half_a_step():
    x = _groups_and_channels(np.random.default_rng(0))
    coded = CompactFeatures.from_array(x, [4, 4])
    assert coded.codes.dtype == np.int8 and coded.nbytes < x.nbytes * 0.75  # 10 + 2 x 2 bytes a pixel, not 20
    decoded = coded.to_float16().astype(np.float32)
    err = np.abs(decoded - x.astype(np.float32))
    for a in (0, 4):  # per pixel: half its group's step, the largest magnitude / 127 (float16 scale)
        step = np.abs(x[a : a + 4].astype(np.float32)).max(0) / CODE_MAX
        assert (err[a : a + 4] <= 0.51 * step + 1e-3).all()
    for c in (8, 9):  # per channel: half of its range / 254
        step = np.ptp(x[c].astype(np.float32)) / (2 * CODE_MAX)
        assert err[c].max() <= 0.51 * step + 1e-3


def test_constant_and_zero_channels_decode_exactly():
    x = np.zeros((6, 8, 8), np.float16)
    x[5] = 0.25
    decoded = CompactFeatures.from_array(x, [4]).to_float16()
    assert np.isfinite(decoded).all() and np.array_equal(decoded, x)


def test_the_product_on_codes_is_the_product_on_decoded_values():
    x = _groups_and_channels(np.random.default_rng(1))
    coded = CompactFeatures.from_array(x, [4, 4])
    weight = torch.from_numpy(np.random.default_rng(2).normal(size=(5, 10)).astype(np.float32))
    decoded = torch.from_numpy(coded.to_float16().reshape(10, -1).astype(np.float32))
    # float32 products: the same numbers up to float16's rounding of the decoded values
    np.testing.assert_allclose(
        coded.product(weight, torch.float32)(slice(100, 400)), weight @ decoded[:, 100:400], atol=2e-2
    )
    picks = torch.tensor([3, 17, 18, 250, 599])  # scattered pixels: as a range's (up to summation order)
    whole = coded.product(weight, torch.float32)(slice(0, 600))
    np.testing.assert_allclose(coded.product(weight, torch.float32)(picks), whole[:, picks], rtol=1e-5, atol=1e-5)
    bf16 = coded.product(weight, torch.bfloat16)(slice(0, 600))
    np.testing.assert_allclose(bf16, weight @ decoded, atol=0.05 * float((weight @ decoded).abs().max()))


def test_blended_tiles_code_what_float16_blending_holds(backbone, image):
    config = resolve_config(backbone, FeatureConfig(tile=128, blocks=(3, 5), timesteps=(50, 200)))
    exact = extract_features(backbone, image, replace(config, compact=False)).astype(np.float32)
    coded = extract_features(backbone, image, config)
    assert isinstance(coded, CODED) and coded.shape == exact.shape
    assert [b - a for a, b in coded.groups] == group_widths(backbone, config)
    spread = exact.reshape(exact.shape[0], -1).std(1)
    err = np.abs(coded.to_float16().astype(np.float32) - exact).reshape(exact.shape[0], -1)
    assert np.median(np.sqrt((err**2).mean(1)) / np.maximum(spread, 1e-6)) < 0.03


def test_a_head_predicts_from_codes_the_labels_of_float16_features(backbone, image):
    config = resolve_config(backbone, FeatureConfig(tile=128, blocks=(3, 5)))
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[20:130:8, 10:140:8], labels[20:130:8, 160:290:8] = 1, 2
    coded = extract_features(backbone, image, config)
    exact = extract_features(backbone, image, replace(config, compact=False))
    # every pixel evaluated: coarse to fine, either input's corners may interpolate where the other's evaluate
    head = fit_head([coded], [labels], HeadConfig(ensemble=2, steps=40, batch_size=128, coarse_stride=1))
    from_codes, from_float16 = head.predict(coded), head.predict(exact)
    assert (from_codes.labels == from_float16.labels).mean() > 0.99
    np.testing.assert_allclose(from_codes.probabilities, from_float16.probabilities, atol=0.1)
    assert (from_codes.labels[:, :140] == 1).mean() > 0.9 and (from_codes.labels[:, 160:] == 2).mean() > 0.9


def test_a_large_image_predicts_through_the_low_rank_layer_on_codes(backbone):
    rng = np.random.default_rng(3)
    image = np.clip(rng.random((260, 260, 3), dtype=np.float32) * 0.3 + np.linspace(0.2, 0.7, 260)[None, :, None], 0, 1)
    config = resolve_config(backbone, FeatureConfig(tile=128, blocks=(3,), filters=False))
    labels = np.zeros((260, 260), np.uint8)
    labels[::10, :60], labels[::10, 200:] = 1, 2
    coded = extract_features(backbone, image, config)
    head = fit_head([coded], [labels], HeadConfig(ensemble=2, steps=30, batch_size=128, rank_tolerance=0.004))
    exact = replace(head.config, rank_tolerance=0)
    fast = head.predict(coded).labels
    head.config = exact
    assert (fast == head.predict(coded).labels).mean() > 0.99


def test_the_filter_bank_codes_channel_by_channel_into_compact_features(image):
    out = CompactFeatures.empty(num_filter_channels(), *image.shape[:2], [])
    filter_features(image, out=out.channels(0, num_filter_channels()))
    exact = filter_features(image).astype(np.float32)
    step = out.channel_steps[:, None, None]
    assert (np.abs(out.to_float16().astype(np.float32) - exact) <= 0.51 * step + 2e-3).mean() > 0.999


def test_compact_features_survive_the_disk_cache_and_a_damaged_one_is_recomputed(backbone, image, tmp_path):
    config = FeatureConfig(tile=128, blocks=(3,))
    first = FeatureCache(directory=str(tmp_path)).get(image, backbone, config)
    again = FeatureCache(directory=str(tmp_path)).get(image, backbone, config)
    assert isinstance(again, type(first)) and isinstance(again, CODED) and again is not first
    np.testing.assert_array_equal(again.to_float16(), first.to_float16())
    (stored,) = tmp_path.glob("*.zarr")
    zarr.open_group(str(stored), mode="r+").attrs["groups"] = [[0, 10_000]]
    recomputed = FeatureCache(directory=str(tmp_path)).get(image, backbone, config)
    np.testing.assert_array_equal(recomputed.to_float16(), first.to_float16())


def test_heads_saved_before_compact_features_read_float16():
    assert FeatureConfig.from_dict({"timesteps": [50]}).compact is False
    assert FeatureConfig().compact is True


def test_blending_decodes_only_what_earlier_tiles_wrote():
    """Three overlapping writes with partition-of-unity weights: the codes equal those of blending
    by decoding the whole region each time, and pixels written once hold their tile's values."""
    rng = np.random.default_rng(1)
    values = torch.from_numpy(rng.normal(size=(4, 12, 40)).astype(np.float32))
    boxes = [(0, 12, 0, 20), (0, 12, 12, 32), (0, 12, 26, 40)]
    weights = [np.ones((12, b[3] - b[2]), np.float32) for b in boxes]
    for (_, _, a0, a1), (_, _, b0, _), wa, wb in zip(boxes, boxes[1:], weights, weights[1:], strict=False):
        shared = np.linspace(1, 0, a1 - b0, dtype=np.float32)
        wa[:, b0 - a0 :] = shared
        wb[:, : a1 - b0] = 1 - shared
    fresh, whole = (CompactFeatures.empty(4, 12, 40, [4]) for _ in range(2))
    for box, weight in zip(boxes, weights, strict=True):
        part = values[:, :, box[2] : box[3]]
        fresh.add_group(0, box, part.clone(), weight)
        codes = torch.from_numpy(whole.codes[:, :, box[2] : box[3]]).float()
        decoded = codes * torch.from_numpy(whole.pixel_scales[0, :, box[2] : box[3]]).float()
        whole.add_group(0, box, decoded.addcmul_(part, torch.from_numpy(weight)), None)
    assert np.array_equal(fresh.codes, whole.codes) and np.array_equal(fresh.pixel_scales, whole.pixel_scales)
    alone = fresh.to_float16()[:, :, :12].astype(np.float32)
    assert np.abs(alone - values[:, :, :12].numpy()).max() <= np.abs(values.numpy()).max() / CODE_MAX


def test_whole_image_budgets_count_the_bytes_features_are_held_in(backbone, image):
    """``features_nbytes`` (which decides whether an image is featurised whole) counts int8 codes
    and their scales for compact features (all but the per-channel steps and offsets, 8 bytes a
    channel) and two bytes a value for float16 ones."""
    config = resolve_config(backbone, FeatureConfig(tile=128, blocks=(3, 5)))
    h, w = image.shape[:2]
    coded = extract_features(backbone, image, config)
    assert features_nbytes(backbone, config, h, w) == coded.nbytes - 8 * coded.shape[0]
    exact = extract_features(backbone, image, replace(config, compact=False))
    assert features_nbytes(backbone, replace(config, compact=False), h, w) == exact.nbytes
