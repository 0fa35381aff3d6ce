import numpy as np
import pytest
import torch

from napari_mdm.corruption import (
    CorruptionConfig,
    alpha_bar,
    corrupt_batch,
    corrupt_region,
    hashed_patch_mask,
    random_mask,
)


def test_mdm_mask_ratio_follows_t_over_T_and_masked_pixels_are_zero():
    cfg = CorruptionConfig(mode="mdm")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 3, 64, 64) * 2 - 1 + 2  # strictly positive so zeros mean "masked"
    c = corrupt_batch(x0, cfg, gen)
    ratios = c.mask.mean(dim=(1, 2, 3))
    expected = c.t.float() / cfg.num_timesteps
    assert torch.corrcoef(torch.stack([ratios, expected]))[0, 1] > 0.95
    assert (ratios - expected).abs().mean() < 0.05
    assert torch.all(c.x_t[c.mask.expand_as(c.x_t) == 1] == 0)
    assert torch.all(c.x_t[c.mask.expand_as(c.x_t) == 0] != 0)


def test_patch_masks_are_aligned_8x8_blocks_and_reproducible_from_a_seed():
    cfg = CorruptionConfig()
    ratio = torch.full((4,), 0.5)
    a = random_mask((4, 64, 64), ratio, cfg, torch.Generator().manual_seed(3), "cpu")
    b = random_mask((4, 64, 64), ratio, cfg, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(a, b)
    blocks = a.reshape(4, 1, 8, 8, 8, 8)
    assert torch.all(blocks.amax(dim=(3, 5)) == blocks.amin(dim=(3, 5)))  # constant inside each patch


@pytest.mark.parametrize("shape", ["patch", "block", "crop"])
def test_maskdm_shapes_hit_their_ratio(shape):
    cfg = CorruptionConfig(mode="maskdm", mask_shape=shape, maskdm_mask_ratio=0.5)
    mask = random_mask((32, 128, 128), torch.full((32,), 0.5), cfg, torch.Generator().manual_seed(0), "cpu")
    assert abs(mask.mean().item() - 0.5) < 0.1
    if shape == "crop":  # one visible rectangle per sample
        visible = (mask[0, 0] == 0).nonzero()
        ys, xs = visible[:, 0], visible[:, 1]
        assert len(visible) == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)


def test_noise_schedules_decrease_and_ddpm_adds_noise_without_mask():
    for schedule in ("linear", "cosine"):
        cfg = CorruptionConfig(mode="ddpm", schedule=schedule)
        ab = alpha_bar(torch.arange(0, 1001), cfg)
        assert ab[0] == 1 and torch.all(ab[1:] <= ab[:-1]) and torch.all(ab[1:500] < ab[:499]) and ab[-1] < 0.01
    cfg = CorruptionConfig(mode="ddpm")
    c = corrupt_batch(torch.zeros(4, 3, 32, 32), cfg, torch.Generator().manual_seed(0))
    assert c.mask.sum() == 0 and c.noise is not None and c.x_t.std() > 0


def test_umd_mixes_clean_high_mask_and_noisy_low_mask_samples():
    cfg = CorruptionConfig(mode="umd")
    c = corrupt_batch(torch.ones(200, 3, 32, 32), cfg, torch.Generator().manual_seed(0))
    clean = c.t == 0
    assert 0.3 < clean.float().mean() < 0.7
    assert abs(c.mask[clean].mean().item() - 0.75) < 0.05
    assert abs(c.mask[~clean].mean().item() - 0.375) < 0.05


def test_hashed_masks_do_not_depend_on_the_tile():
    whole = hashed_patch_mask(0, 0, 120, 200, 0.3, 8, seed=7)
    part = hashed_patch_mask(37, 61, 50, 70, 0.3, 8, seed=7)
    np.testing.assert_array_equal(part, whole[37:87, 61:131])
    assert abs(whole.mean() - 0.3) < 0.08
    assert not np.array_equal(whole, hashed_patch_mask(0, 0, 120, 200, 0.3, 8, seed=8))


def test_corrupt_region_noise_is_tile_independent():
    cfg = CorruptionConfig(mode="ddpm")
    x = np.zeros((3, 64, 64), np.float32)
    whole = corrupt_region(x, 0, 0, 500, cfg, seed=1)
    part = corrupt_region(x[:, 10:40, 20:50], 10, 20, 500, cfg, seed=1)
    np.testing.assert_allclose(part, whole[:, 10:40, 20:50])


def test_unknown_modes_are_refused():
    with pytest.raises(ValueError, match="unknown corruption mode"):
        CorruptionConfig(mode="blur")
