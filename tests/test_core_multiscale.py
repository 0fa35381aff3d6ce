"""Coarse decoder blocks held on their own grid (``multiscale``): every pixel reads what upsampling
the grid would give, the head's products equal those on decoded values, and they take a fraction
of per-pixel codes' memory."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from napari_mdm.checkpoint import random_backbone
from napari_mdm.compact import CODE_MAX, CompactFeatures
from napari_mdm.features import (
    MARGIN,
    FeatureConfig,
    extract_features,
    features_nbytes,
    group_strides,
    group_widths,
    num_channels,
    resolve_config,
)
from napari_mdm.multiscale import MultiscaleFeatures


@pytest.fixture(scope="module")
def backbone():
    return random_backbone("tiny")


def _tile_maps(rng: np.random.Generator, channels: int, h: int, w: int, stride: int) -> torch.Tensor:
    """A tile's (c, rows, cols) maps on a stride grid over the tile and its mirrored margin."""
    return torch.from_numpy(rng.normal(size=(channels, (h + 2 * MARGIN) // stride, (w + 2 * MARGIN) // stride)))


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_every_pixel_reads_what_upsampling_the_tile_grid_gives(stride):
    rng = np.random.default_rng(stride)
    h, w = 48, 80
    features = MultiscaleFeatures.empty(6, h, w, [4], [stride])
    maps = _tile_maps(rng, 4, h, w, stride).float()
    features.add_tile(0, (0, h, 0, w), maps.clone(), MARGIN, None)  # the maps are overwritten
    upsampled = F.interpolate(maps[None], scale_factor=stride, mode="bilinear", align_corners=False)[0]
    expected = upsampled[:, MARGIN : MARGIN + h, MARGIN : MARGIN + w].numpy()
    got = features.to_float16()[:4].astype(np.float32)
    assert np.abs(got - expected).max() <= 1.01 * np.abs(maps.numpy()).max() / CODE_MAX


def test_overlapping_tiles_blend_cell_by_cell_with_weights_summing_to_one():
    rng = np.random.default_rng(0)
    h, w, stride = 32, 96, 4
    features = MultiscaleFeatures.empty(4, h, w, [4], [stride])
    same = _tile_maps(rng, 4, h, w, stride).float()[:, :, :1].expand(-1, -1, 100).contiguous()
    boxes = [(0, h, 0, 64), (0, h, 32, 96)]
    ramp = np.clip((np.arange(w) - 32) / 32, 0, 1).astype(np.float32)
    weights = [np.broadcast_to(1 - ramp[:64], (h, 64)), np.broadcast_to(ramp[32:], (h, 64))]
    for (y0, y1, x0, x1), weight in zip(boxes, weights, strict=True):
        cols = (x1 - x0 + 2 * MARGIN) // stride
        features.add_tile(0, (y0, y1, x0, x1), same[:, :, :cols].clone(), MARGIN, weight)
    decoded = features.to_float16()[:4].astype(np.float32)
    # two tiles that agree blend into the same values everywhere, the overlap included
    assert np.abs(decoded - decoded[:, :, :1]).max() <= 2 * np.abs(same.numpy()).max() / CODE_MAX


def test_products_and_pixels_match_the_decoded_features():
    rng = np.random.default_rng(1)
    h, w = 40, 56
    features = MultiscaleFeatures.empty(13, h, w, [4, 3, 4], [2, 1, 4])
    for g, (stride, channels) in enumerate([(2, 4), (1, 3), (4, 4)]):
        if stride == 1:
            features.add_group(g, (0, h, 0, w), torch.from_numpy(rng.normal(size=(channels, h, w))).float(), None)
        else:
            features.add_tile(g, (0, h, 0, w), _tile_maps(rng, channels, h, w, stride).float(), MARGIN, None)
    filters = features.channels(11, 2)
    for k in range(2):
        filters[k] = rng.normal(size=(h, w)) + 3 * k
    decoded = torch.from_numpy(features.to_float16().astype(np.float32).reshape(13, -1))
    weight = torch.from_numpy(rng.normal(size=(5, 13)).astype(np.float32))
    product = features.product(weight, torch.float32)
    picks = torch.from_numpy(np.sort(rng.choice(h * w, 300, replace=False)))
    expected = weight @ decoded  # decoded values are coded per pixel once more: a code's error apart
    tolerance = 1e-2 * expected.abs().max().item()
    np.testing.assert_allclose(product(slice(0, h * w)), expected, atol=tolerance)
    np.testing.assert_allclose(product(picks), expected[:, picks], atol=tolerance)
    np.testing.assert_allclose(features.pixels(picks.numpy()), decoded[:, picks], atol=1e-2)
    codes, scales, rest = features.split_pixels(picks.numpy())
    again = np.concatenate([codes[a:b] * scales[g] for g, (a, b) in enumerate(features.groups)] + [rest])
    assert np.abs(again - decoded[:, picks].numpy()).max() <= 1.01 * decoded[:11].abs().max().item() / CODE_MAX + 1e-2


def test_a_network_map_holds_its_coarse_blocks_on_their_grid_in_a_fraction_of_the_memory(backbone):
    config = resolve_config(backbone, FeatureConfig(tile=128, blocks=(2, 3, 5), filters=False))
    strides = group_strides(backbone, config)
    assert strides == [backbone.model.block_scale(b) for b in config.blocks] and max(strides) > 1
    h, w = 300, 400
    channels, widths = num_channels(backbone, config), group_widths(backbone, config)
    per_pixel = CompactFeatures.pixel_bytes(channels, len(widths)) * h * w
    # blocks at 1/4, 1/2 and full resolution: 1/16 + 1/4 + 1 of three per-pixel groups
    assert features_nbytes(backbone, config, h, w) < 0.45 * per_pixel
    # features at another scale or projected are held per pixel
    assert group_strides(backbone, replace(config, scale=0.5)) == [1] * len(widths)
    assert group_strides(backbone, replace(config, compact=False)) == [1] * len(widths)


def test_multiscale_features_round_trip_through_zarr_and_a_malformed_store_is_refused(backbone, tmp_path):
    rng = np.random.default_rng(2)
    image = rng.random((70, 90, 3), dtype=np.float32)
    features = extract_features(backbone, image, FeatureConfig(tile=128, blocks=(3, 5)))
    assert isinstance(features, MultiscaleFeatures)
    group = features.write_zarr(str(tmp_path / "f.zarr"))
    again = MultiscaleFeatures.read_zarr(zarr.open_group(str(tmp_path / "f.zarr"), mode="r"))
    np.testing.assert_array_equal(again.to_float16(), features.to_float16())
    group.attrs["strides"] = {k: 2 * v for k, v in group.attrs["strides"].items()}
    with pytest.raises(ValueError, match="malformed"):
        MultiscaleFeatures.read_zarr(zarr.open_group(str(tmp_path / "f.zarr"), mode="r"))
