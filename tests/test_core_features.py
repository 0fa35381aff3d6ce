from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mdm.backbone import Backbone, build_backbone, randomize
from napari_mdm.checkpoint import random_backbone
from napari_mdm.corruption import CorruptionConfig
from napari_mdm.feature_sets import FEATURE_SETS
from napari_mdm.features import FeatureCache, FeatureConfig, float16_features, num_channels
from napari_mdm.filterbank import filter_features, num_filter_channels
from napari_mdm.jobs import Cancelled, UserError
from napari_mdm.tiling import weighted_tiles

GLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "glas"


@pytest.fixture(scope="module")
def backbone():
    return random_backbone("tiny")


@pytest.fixture(scope="module")
def image():
    if (GLAS / "train" / "train_1.png").exists():
        from napari_mdm.io import read_image

        return read_image(GLAS / "train" / "train_1.png")[100:300, 200:460]
    rng = np.random.default_rng(0)
    return rng.random((200, 260, 3), dtype=np.float32)


def test_features_have_the_promised_shape_dtype_and_channels(backbone, image):
    cfg = FeatureConfig(timesteps=(50, 200), blocks=(3, 5, 7), project=0)
    feats = float16_features(backbone, image, cfg)
    expected = 2 * sum(backbone.model.block_channels[b] for b in (3, 5, 7)) + num_filter_channels()
    assert feats.shape == (expected, *image.shape[:2]) and feats.dtype == np.float16
    assert num_channels(backbone, cfg) == expected
    assert np.isfinite(feats).all()
    # each block is L2-normalised per cell of its own grid: a full-resolution block (7) has unit RMS
    # over its channels at every pixel; a coarser one (3, at 1/2) at its cells, and pixels between
    # them interpolate unit vectors, which can only be shorter (as can blended tile overlaps)
    widths = [backbone.model.block_channels[b] for b in (3, 5, 7)]
    assert backbone.model.block_scale(3) > 1 and backbone.model.block_scale(7) == 1
    for start, width, coarse in ((0, widths[0], True), (sum(widths[:2]), widths[2], False)):
        rms = np.sqrt((feats[start : start + width].astype(np.float32) ** 2).mean(0))
        assert rms.max() < 1.01 and rms.min() > 0.8
        assert np.median(np.abs(rms - 1)) < (0.05 if coarse else 0.01)
    # the filter bank comes last, and only when asked for
    diffusion_only = float16_features(
        backbone, image, FeatureConfig(timesteps=(50, 200), blocks=(3, 5, 7), filters=False, project=0)
    )
    assert np.array_equal(diffusion_only, feats[: expected - num_filter_channels()])
    np.testing.assert_allclose(
        feats[-num_filter_channels() :].astype(np.float32), filter_features(image).astype(np.float32), atol=0.02
    )


def test_filter_bank_alone_skips_the_network(image, monkeypatch):
    backbone = random_backbone("tiny")

    def must_not_run(*args):
        raise AssertionError("the backbone ran for filter-bank-only features")

    monkeypatch.setattr(backbone.model, "decoder_features", must_not_run)
    config = FeatureConfig(**FEATURE_SETS["filters"])
    feats = float16_features(backbone, image, config)
    assert num_channels(backbone, config) == num_filter_channels() == feats.shape[0]
    np.testing.assert_allclose(feats.astype(np.float32), filter_features(image).astype(np.float32), atol=0.02)
    with pytest.raises(UserError, match="no features chosen"):
        float16_features(backbone, image, FeatureConfig(diffusion=False, filters=False))
    # heads saved before the choice existed read the backbone
    assert FeatureConfig.from_dict({"timesteps": [50]}).diffusion


def test_projection_keeps_the_leading_principal_components_the_same_everywhere(backbone, image):
    from napari_mdm import projection

    small = float16_features(backbone, image, FeatureConfig(timesteps=(50, 200), project=8, filters=False))
    assert small.shape == (2 * 8, *image.shape[:2]) and small.dtype == np.float16 and np.isfinite(small).all()
    larger = float16_features(backbone, image, FeatureConfig(timesteps=(50, 200), project=16, filters=False))
    # components are nested: the first 8 of 16 are the 8, for each timestep
    np.testing.assert_allclose(larger[np.r_[0:8, 16:24]].astype(np.float32), small.astype(np.float32), atol=0.02)
    # the basis is fitted on fixed reference images: the same after it is forgotten
    projection._BASES.clear()
    again = float16_features(backbone, image, FeatureConfig(timesteps=(50, 200), project=8, filters=False))
    np.testing.assert_array_equal(again, small)
    # leading components carry far more of the variance than the 8/256 a random projection keeps
    full = float16_features(backbone, image, FeatureConfig(timesteps=(50,), project=0, filters=False)).astype(
        np.float32
    )
    centred = full.reshape(len(full), -1) - full.reshape(len(full), -1).mean(1, keepdims=True)
    kept = small[:8].astype(np.float32).reshape(8, -1)
    assert (kept - kept.mean(1, keepdims=True)).var(1).sum() > 0.1 * centred.var(1).sum()
    # more components than the blocks have: all channels, unprojected
    assert num_channels(backbone, FeatureConfig(project=10_000, filters=False)) == num_channels(
        backbone, FeatureConfig(project=0, filters=False)
    )
    with pytest.raises(UserError, match="project must be"):
        float16_features(backbone, image, FeatureConfig(project=-1))
    # heads saved before the projection existed read every channel
    assert FeatureConfig.from_dict({"timesteps": [50]}).project == 0


def test_projection_basis_is_fitted_on_exact_attention_whatever_the_features_use(backbone, monkeypatch):
    from napari_mdm import features, projection

    seen = []
    real = features.decoder_activations
    monkeypatch.setattr(features, "decoder_activations", lambda *a: seen.append(a[4]) or real(*a))
    projection._BASES.clear()
    projection.projection_basis(backbone, FeatureConfig(timesteps=(50,), project=8, attention_pool=2, blocks=(2,)))
    assert seen and all(config.attention_pool == 1 and not config.bfloat16 for config in seen)


def test_pooled_attention_is_a_recorded_setting_that_older_heads_do_not_have(backbone, image):
    with pytest.raises(UserError, match="attention_pool must be at least 1"):
        float16_features(backbone, image, FeatureConfig(attention_pool=0))
    # heads saved before the setting existed were trained on exact attention
    assert FeatureConfig.from_dict({"timesteps": [50]}).attention_pool == 1
    assert FeatureConfig.from_dict(FeatureConfig(attention_pool=4).to_dict()).attention_pool == 4


def test_projection_basis_is_kept_on_disk_for_saved_backbones_and_recomputed_when_unreadable(
    kit, tmp_path, monkeypatch
):
    from napari_mdm import projection
    from napari_mdm.checkpoint import load_backbone
    from napari_mdm.features import resolve_config

    monkeypatch.setenv("NAPARI_MDM_CACHE", str(tmp_path))
    monkeypatch.setattr(projection, "_BASES", {})
    backbone = load_backbone(kit.backbone_path)
    config = resolve_config(backbone, FeatureConfig(project=8))
    first = projection.projection_basis(backbone, config)
    (stored,) = tmp_path.glob("projection-*.safetensors")
    monkeypatch.setattr(projection, "_BASES", {})
    fit = projection.fit_basis
    monkeypatch.setattr(projection, "fit_basis", lambda *a: pytest.fail("the stored basis was not used"))
    again = projection.projection_basis(backbone, config)
    assert all(torch.equal(first[b], again[b]) for b in first)
    stored.write_bytes(b"not a safetensors file")  # a damaged cache is recomputed, not an error
    monkeypatch.setattr(projection, "_BASES", {})
    monkeypatch.setattr(projection, "fit_basis", fit)
    third = projection.projection_basis(backbone, config)
    assert all(torch.allclose(first[b], third[b]) for b in first)
    # an unsaved backbone (no content hash) never goes to disk
    stored.unlink()
    monkeypatch.setattr(projection, "_BASES", {})
    projection.projection_basis(random_backbone("tiny"), resolve_config(random_backbone("tiny"), config))
    assert not list(tmp_path.glob("projection-*"))


def test_tiles_blend_without_seams(backbone, image):
    # The untrained control has zero-initialised residual branches (a fresh diffusion U-Net), so
    # no tile-wide GroupNorm/attention context: tiled and whole-image features must agree up to
    # the tiling itself. This checks blending and image-wide corruption, not the network.
    whole = float16_features(backbone, image, FeatureConfig(tile=512, filters=False)).astype(np.float32)
    tiled = float16_features(backbone, image, FeatureConfig(tile=96, overlap=0.25, filters=False)).astype(np.float32)
    rel = np.abs(whole - tiled).mean() / np.abs(whole).mean()
    assert rel < 0.03
    assert np.corrcoef(whole.ravel(), tiled.ravel())[0, 1] > 0.99
    # no seam: the error along tile borders is not much larger than elsewhere
    err = np.abs(whole - tiled).mean(0)
    assert err[:, 66:78].mean() < 3 * err.mean() + 1e-3


@pytest.mark.parametrize("shape", [(522, 775), (1024, 1024), (576, 577), (577, 300), (40, 1100)])
def test_tiles_cover_the_image_and_their_blend_weights_sum_to_one(shape):
    tiles = list(weighted_tiles(shape, 512, 0.25, align=16))
    total = np.zeros(shape, np.float32)
    for (y0, y1, x0, x1), weight in tiles:
        assert 0 < y1 - y0 < 512 + 512 // 8 + 16 and 0 < x1 - x0 < 512 + 512 // 8 + 16
        assert y0 % 16 == 0 and x0 % 16 == 0  # on the network's coarse grid: overlapping tiles agree
        total[y0:y1, x0:x1] += 1 if weight is None else weight
    np.testing.assert_allclose(total, 1, atol=1e-5)
    # the fewest tiles at most 1/8 longer than the tile: a 522-px side one tile, 1024 px two of 576
    expected = {(522, 775): 2, (1024, 1024): 4, (576, 577): 2, (577, 300): 2, (40, 1100): 3}[shape]
    assert len(tiles) == expected


def test_images_smaller_than_a_tile_and_odd_sizes_work(backbone):
    small = np.random.default_rng(1).random((13, 21, 3), dtype=np.float32)
    feats = float16_features(backbone, small, FeatureConfig(tile=64))
    assert feats.shape[1:] == (13, 21)


def test_tiled_features_of_a_random_network_stay_close_to_whole_image_ones(image):
    # every layer random: GroupNorm and attention now see only their tile
    torch.manual_seed(0)
    backbone = Backbone(randomize(build_backbone("tiny")).eval(), CorruptionConfig(), digest="randomized")
    whole = float16_features(backbone, image, FeatureConfig(tile=512)).astype(np.float32)
    tiled = float16_features(backbone, image, FeatureConfig(tile=128, overlap=0.5)).astype(np.float32)
    assert np.corrcoef(whole.ravel(), tiled.ravel())[0, 1] > 0.9


def test_scale_computes_at_lower_resolution_and_returns_full_size(backbone, image):
    half = float16_features(backbone, image, FeatureConfig(scale=0.5))
    assert half.shape == (num_channels(backbone, FeatureConfig()), *image.shape[:2]) and np.isfinite(half).all()
    assert not np.allclose(half, float16_features(backbone, image))


def test_draws_average_several_masks(backbone, image):
    one = float16_features(backbone, image[:64, :64], FeatureConfig(timesteps=(300,), draws=1))
    avg = float16_features(backbone, image[:64, :64], FeatureConfig(timesteps=(300,), draws=3))
    assert one.shape == avg.shape and not np.array_equal(one, avg)


def test_bad_settings_are_user_errors(backbone, image):
    with pytest.raises(UserError, match="blocks"):
        float16_features(backbone, image, FeatureConfig(blocks=(42,)))
    with pytest.raises(UserError, match="timesteps"):
        float16_features(backbone, image, FeatureConfig(timesteps=(5000,)))
    with pytest.raises(UserError, match="tile"):
        float16_features(backbone, image, FeatureConfig(tile=100))


def test_progress_and_cancel(backbone, image):
    seen = []
    float16_features(backbone, image, FeatureConfig(tile=96), progress=lambda d, t, i: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] > 1
    with pytest.raises(Cancelled):
        float16_features(backbone, image, FeatureConfig(tile=96), should_stop=lambda: True)


def test_cache_reuses_only_on_an_identical_signature(backbone, image, tmp_path):
    cache = FeatureCache(directory=str(tmp_path))
    crop = image[:64, :64].copy()
    a = cache.get(crop, backbone, FeatureConfig(compact=False))
    assert cache.get(crop, backbone, FeatureConfig(compact=False)) is a
    b = cache.get(crop, backbone, FeatureConfig(timesteps=(100,), compact=False))
    assert b is not a and len(cache) == 2
    changed = crop.copy()
    changed[0, 0, 0] += 0.5
    assert cache.get(changed, backbone, FeatureConfig(compact=False)) is not a
    other = Backbone(backbone.model, backbone.corruption, digest="another")
    assert cache.get(crop, other, FeatureConfig(compact=False)) is not a
    # a new cache finds the features on disk, signature-checked
    again = FeatureCache(directory=str(tmp_path)).get(crop, backbone, FeatureConfig(compact=False))
    np.testing.assert_array_equal(again, a)
    assert len(list(tmp_path.glob("*.zarr"))) == 4


def test_channels_last_weights_and_bfloat16_change_features_only_by_rounding(image):
    plain, moved = random_backbone("tiny"), random_backbone("tiny").to("cpu")  # .to: channels-last weights
    assert moved.model.input_conv.weight.is_contiguous(memory_format=torch.channels_last)
    exact = FeatureConfig(filters=False, bfloat16=False)
    reference = float16_features(plain, image, exact).astype(np.float32)
    np.testing.assert_allclose(float16_features(moved, image, exact), reference, atol=2e-2)
    fast = float16_features(moved, image, FeatureConfig(filters=False)).astype(np.float32)  # bf16 where native
    assert np.abs(fast - reference).mean() < 0.05 * np.abs(reference).mean()


@pytest.mark.parametrize(("grid", "scale"), [((9, 11), 1), ((9, 11), 2), ((9, 11), 4), ((8, 10), 2)])
def test_maps_are_upsampled_band_by_band_exactly_as_in_one_step(grid, scale, monkeypatch):
    """A block's maps at 1/8 of the network's padded input, the region ``scale`` times the input
    (features at scale 1/scale): bands of rows (small here, so there are many) hold the rows of
    one whole upsampling (to float rounding) by the combined factor, the margin cut off, with each
    grid cell normalised first where asked (bfloat16 maps, as the network gives them)."""
    from napari_mdm import features

    monkeypatch.setattr(features, "BAND_BYTES", 4096)
    maps = torch.randn(2, 3, *grid)
    padded = (grid[0] * 8, grid[1] * 8)
    scaled = (padded[0] - 2 * features.MARGIN - 5, padded[1] - 2 * features.MARGIN - 3)
    size = (scaled[0] * scale, scaled[1] * scale)
    margin = features.MARGIN * scale
    for normalize in (False, True):
        bands = list(features._region_bands(maps.bfloat16() if normalize else maps, padded, scaled, size, normalize))
        assert len(bands) > 2 and [row for row, _ in bands] == sorted({row for row, _ in bands})
        source = features.unit_norm(maps.bfloat16().float()) if normalize else maps
        whole = torch.nn.functional.interpolate(source, scale_factor=8 * scale, mode="bilinear", align_corners=False)
        expected = whole[:, :, margin : margin + size[0], margin : margin + size[1]]
        torch.testing.assert_close(torch.cat([band for _, band in bands], dim=2), expected, rtol=0, atol=1e-5)


def test_maps_of_a_region_that_is_no_power_of_two_of_the_input_are_resized_whole():
    from napari_mdm import features

    maps, padded, scaled = torch.randn(1, 2, 8, 8), (64, 64), (40, 40)
    (row, band), *rest = features._region_bands(maps, padded, scaled, (81, 80), True)
    assert row == 0 and rest == [] and band.shape == (1, 2, 81, 80)
