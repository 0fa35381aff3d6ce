from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mdm.backbone import Backbone, build_backbone, randomize
from napari_mdm.checkpoint import random_backbone
from napari_mdm.corruption import CorruptionConfig
from napari_mdm.features import FeatureConfig, float16_features
from napari_mdm.head import LOW_RANK_MIN_PIXELS, Head, HeadConfig, HeadContext, fit_head, low_rank_first_layer
from napari_mdm.jobs import UserError
from napari_mdm.metrics import dice

GLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "glas"
FAST = HeadConfig(ensemble=3, steps=120, batch_size=512)


def _two_textures(seed: int, size: int = 96):
    """Left/right halves with different stripe orientation and the same mean colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    boundary = size // 2 + int(rng.integers(-10, 10))
    truth = np.where(xx < boundary, 1, 2)
    stripes = np.where(truth == 1, np.sin(xx * 1.2), np.sin(yy * 1.2))
    img = 0.5 + 0.3 * stripes[..., None] + 0.05 * rng.standard_normal((size, size, 3))
    return np.clip(img, 0, 1).astype(np.float32), truth


@pytest.fixture(scope="module")
def backbone():
    return random_backbone("tiny")


def test_head_separates_textures_from_sparse_strokes():
    # Stripe orientation needs non-linear features: the untrained control's are linear filters
    # (about 0.8 here) and the rotation-invariant filter bank cannot tell orientations apart, so
    # this test of the head uses a network with every layer random (about 0.87).
    torch.manual_seed(0)
    backbone = Backbone(randomize(build_backbone("tiny")).eval(), CorruptionConfig(), digest="randomized")
    config = FeatureConfig(filters=False)
    img, truth = _two_textures(0)
    labels = np.zeros_like(truth)
    labels[10:86:4, 8:20] = 1  # a few strokes per class
    labels[10:86:4, 76:88] = 2
    head = fit_head([float16_features(backbone, img, config)], [labels], FAST)
    test_img, test_truth = _two_textures(1)
    pred = head.predict(float16_features(backbone, test_img, config))
    assert pred.class_values == [1, 2]
    assert (pred.labels == test_truth).mean() > 0.85
    assert pred.probabilities.shape == (2, 96, 96)
    np.testing.assert_allclose(pred.probabilities.sum(0), 1, atol=1e-4)
    assert pred.uncertainty.min() >= 0 and pred.uncertainty.max() <= np.log(2) + 1e-6


def test_uncertainty_is_higher_where_classes_meet(backbone):
    img, truth = _two_textures(2)
    head = fit_head([float16_features(backbone, img)], [truth], FAST)
    pred = head.predict(float16_features(backbone, img))
    border = np.abs(np.diff(truth, axis=1, prepend=truth[:, :1])) > 0
    near = np.zeros_like(border)
    for shift in range(-3, 4):
        near |= np.roll(border, shift, axis=1)
    assert pred.uncertainty[near].mean() > pred.uncertainty[~near].mean()


@pytest.mark.skipif(not (GLAS / "train" / "train_1.png").exists(), reason="GlaS not in ../shared/data")
def test_head_segments_real_glands_above_chance(backbone):
    """Trained on the left half of a GlaS image, it finds the glands of the right half. (How well
    heads carry over to other images is the benchmark's question, not a unit test's.)"""
    from napari_mdm.io import read_image, read_labels

    image, mask = read_image(GLAS / "train" / "train_1.png"), read_labels(GLAS / "train" / "train_1_mask.png")
    half = image.shape[1] // 2
    feats = float16_features(backbone, image, FeatureConfig(scale=0.5))
    head = fit_head([feats[:, :, :half]], [mask[:, :half]], HeadConfig(ensemble=3, steps=200), ignore=None)
    pred = head.predict(feats[:, :, half:])
    truth = mask[:, half:]
    chance = dice(np.ones_like(truth), truth)  # everything called gland
    assert dice(pred.labels, truth) > chance + 0.1


def test_save_load_round_trip_predicts_the_same(backbone, tmp_path):
    img, truth = _two_textures(3)
    feats = float16_features(backbone, img)
    head = fit_head([feats], [truth], FAST, context=HeadContext(features=FeatureConfig(), class_names={1: "a"}))
    head.save(tmp_path / "head.safetensors")
    loaded = Head.load(tmp_path / "head.safetensors")
    assert loaded.class_values == head.class_values
    assert loaded.context.features == FeatureConfig()
    assert loaded.context.class_names == {1: "a"} and loaded.context.pixels == head.context.pixels > 0
    np.testing.assert_allclose(loaded.predict_maps(feats), head.predict_maps(feats), atol=1e-5)


def test_label_problems_are_clear_errors(backbone):
    img, truth = _two_textures(4, size=32)
    feats = float16_features(backbone, img)
    with pytest.raises(UserError, match="no labels"):
        fit_head([feats], [np.zeros((32, 32), int)], FAST)
    with pytest.raises(UserError, match="only one class"):
        fit_head([feats], [np.ones((32, 32), int)], FAST)
    with pytest.raises(UserError, match="shape"):
        fit_head([feats], [np.ones((30, 32), int)], FAST)
    head = fit_head([feats], [truth], FAST)
    with pytest.raises(UserError, match="feature channels"):
        head.predict(feats[:10])


def test_label_values_that_skip_numbers_are_kept(backbone):
    img, truth = _two_textures(5, size=48)
    labels = np.where(truth == 1, 3, 7)
    head = fit_head([float16_features(backbone, img)], [labels], FAST)
    assert set(np.unique(head.predict(float16_features(backbone, img)).labels)) <= {3, 7}


def test_bfloat16_products_predict_what_float32_does(backbone):
    # bfloat16 is used only where it is native (fast_bfloat16); elsewhere both configs run float32
    img, truth = _two_textures(3)
    flat = np.full((1, *truth.shape), 3.7, np.float16)  # no spread in training: its std is clamped to 1e-3
    feats = np.concatenate([float16_features(backbone, img), flat])
    head = fit_head([feats], [truth], FAST)
    fast = head.predict_maps(feats)
    head.config = replace(head.config, bfloat16=False)
    exact = head.predict_maps(feats)
    np.testing.assert_allclose(fast[:2], exact[:2], atol=0.03)  # mean probabilities
    assert (fast[2:4].argmax(0) == exact[2:4].argmax(0)).mean() > 0.99  # votes


def test_low_rank_first_layer_is_exact_where_the_pixels_span_few_directions():
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(64, 200, generator=gen), torch.randn(64, 1, generator=gen)
    directions, offset = torch.randn(200, 5, generator=gen), torch.randn(200, 1, generator=gen)
    sample = directions @ torch.randn(5, 1000, generator=gen) + offset  # pixels in a 5-d affine subspace
    layer = low_rank_first_layer(weight, bias, sample, 1e-4)
    assert layer.reduce.shape == (5, 200) and layer.expand.shape == (64, 5)
    unseen = directions @ torch.randn(5, 300, generator=gen) + offset
    torch.testing.assert_close(
        layer.expand @ (layer.reduce @ unseen) + layer.bias, weight @ unseen + bias, atol=1e-3, rtol=1e-4
    )
    assert low_rank_first_layer(weight, bias, torch.randn(200, 1000, generator=gen), 1e-4) is None  # not cheaper
    assert low_rank_first_layer(weight, bias, torch.zeros(200, 10), 0.01) is None  # no variance to keep


def test_prediction_through_the_low_rank_first_layer_keeps_the_labels(backbone):
    img, truth = _two_textures(6, size=256)
    feats = float16_features(backbone, img)
    head = fit_head([feats], [truth], replace(FAST, coarse_stride=1))  # every pixel evaluated by both
    first = head.first_layer(torch.from_numpy(feats).reshape(len(feats), -1))
    assert first is not None and first.reduce.shape[0] * 2 < first.expand.shape[0]  # rank well below E * h
    fast = head.predict_maps(feats)
    exact_head = Head(head.net, head.class_values, head.mean, head.std, replace(head.config, rank_tolerance=0))
    exact = exact_head.predict_maps(feats)
    assert (np.abs(fast[:2] - exact[:2]) > 0.05).mean() < 1e-3  # mean probabilities, off along the border only
    assert (fast[:2].argmax(0) == exact[:2].argmax(0)).mean() > 0.99
    small = feats[:, :128, : LOW_RANK_MIN_PIXELS // 128 - 1]  # below the size where it pays: exact
    np.testing.assert_array_equal(head.predict_maps(small), exact_head.predict_maps(small))


def test_heads_saved_before_the_bfloat16_option_ran_in_float32():
    legacy = {k: v for k, v in HeadConfig().to_dict().items() if k not in ("bfloat16", "rank_tolerance")}
    assert HeadConfig.from_dict(legacy).bfloat16 is False
    assert HeadConfig.from_dict(legacy).rank_tolerance == 0  # and with the exact first layer
    assert FeatureConfig.from_dict({"timesteps": [50]}).bfloat16 is False
    assert HeadConfig().bfloat16 and FeatureConfig().bfloat16  # new heads: bfloat16 where native


def test_a_head_with_no_hidden_layer_predicts(backbone):
    img, truth = _two_textures(4)
    feats = float16_features(backbone, img)
    head = fit_head([feats], [truth], replace(FAST, hidden=()))
    assert (head.predict(feats).labels == truth).mean() > 0.8


def test_automatic_steps_follow_the_labelled_pixels(backbone):
    from napari_mdm.head import MASK_STEPS, STROKE_STEPS, training_steps

    assert training_steps(HeadConfig(), 1_000) == STROKE_STEPS and training_steps(HeadConfig(), 10**6) == MASK_STEPS
    assert training_steps(HeadConfig(steps=7), 10**6) == 7
    img, truth = _two_textures(5)
    feats = float16_features(backbone, img)
    strokes = np.zeros_like(truth)
    strokes[10:86:8, 8:20], strokes[10:86:8, 76:88] = 1, 2
    head = fit_head([feats], [strokes], HeadConfig(ensemble=2))
    assert head.config.steps == STROKE_STEPS  # the head file records the steps it trained for


def test_the_automatic_batch_gives_every_class_the_same_pixels_however_many_classes():
    from napari_mdm.head import CLASS_BATCH, batch_per_class

    assert HeadConfig().batch_size == 0
    assert batch_per_class(HeadConfig(), 2) == batch_per_class(HeadConfig(), 6) == CLASS_BATCH
    assert batch_per_class(HeadConfig(batch_size=256), 6) == 42  # an explicit batch is shared
    assert HeadConfig.from_dict({**HeadConfig().to_dict(), "batch_size": 1024}).batch_size == 1024
    with pytest.raises(ValueError, match="batch_size"):
        HeadConfig.from_dict({**HeadConfig().to_dict(), "batch_size": -1})
    img, truth = _two_textures(5)
    with pytest.raises(UserError, match=r"batch size \(-1\) 0 \(automatic\) or more"):
        fit_head([img.transpose(2, 0, 1)], [truth], HeadConfig(batch_size=-1))


def test_the_heads_adam_takes_torchs_adam_steps_exactly():
    """napari_mdm.adam avoids importing torch._dynamo (1.4 s at a session's first training); its
    update must be torch's, so heads are the same as with torch.optim.Adam."""
    from napari_mdm.adam import Adam

    torch.manual_seed(0)
    ours, theirs = (
        torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)) for _ in range(2)
    )
    theirs.load_state_dict(ours.state_dict())
    opts = Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    x, y = torch.randn(64, 7), torch.randint(3, (64,))
    for _ in range(25):
        for net, opt in zip((ours, theirs), opts, strict=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
