"""Coarse-to-fine prediction: exact where the answer can change, interpolated inside cells whose
corners agree and are sure, every pixel filled whatever the image's shape."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_mdm.features import float16_features
from napari_mdm.head import Head, HeadConfig, fit_head
from napari_mdm.jobs import Cancelled, UserError
from napari_mdm.refinement import coarse_to_fine, grid_lines


def _oracle(classes: np.ndarray, unsure: np.ndarray | None = None):
    """A fake classifier of an (H, W) class map: maps = one-hot class, then 'sure' (1 or 0.5);
    it counts the pixels it is asked about."""
    flat = torch.from_numpy(classes.reshape(-1))
    sure = torch.ones(flat.shape) if unsure is None else torch.from_numpy(np.where(unsure, 0.5, 1.0).reshape(-1))
    asked = []

    def evaluate(pixels):
        index = torch.arange(flat.numel())[pixels]
        asked.append(index)
        one_hot = torch.nn.functional.one_hot(flat[index], int(classes.max()) + 1).T.float()
        return torch.cat([one_hot, sure[index][None].float()])

    def decide(maps):
        return maps[:-1].argmax(0), maps[-1] == 1

    return evaluate, decide, asked


def _run(classes, stride, unsure=None, chunk=1000):
    evaluate, decide, asked = _oracle(classes, unsure)
    out = torch.full((int(classes.max()) + 2, classes.size), float("nan"))
    done = coarse_to_fine(evaluate, decide, out, classes.shape, stride, chunk)
    asked = torch.cat(asked) if asked else torch.zeros(0, dtype=torch.long)
    assert done == len(asked) and len(torch.unique(asked)) == len(asked)  # no pixel asked twice
    return out.reshape(-1, *classes.shape), asked


def _disks(h=96, w=120):
    yy, xx = np.mgrid[:h, :w]
    classes = np.zeros((h, w), np.int64)
    classes[(yy - 40) ** 2 + (xx - 50) ** 2 < 25**2] = 1
    classes[(yy - 70) ** 2 + (xx - 95) ** 2 < 12**2] = 2
    return classes


def test_regions_wider_than_the_grid_come_out_exact_from_a_fraction_of_the_pixels():
    classes = _disks()
    for stride in (2, 4, 8):
        maps, asked = _run(classes, stride)
        assert not torch.isnan(maps).any()
        np.testing.assert_array_equal(maps[:-1].argmax(0).numpy(), classes)
        assert len(asked) < 0.45 * classes.size
    exact, asked = _run(classes, 1)
    assert len(asked) == classes.size
    np.testing.assert_array_equal(maps.numpy(), exact.numpy())  # one-hot corners interpolate to themselves


def test_unsure_corners_send_their_cells_to_exact_evaluation():
    classes = _disks()
    unsure = np.zeros_like(classes, bool)
    unsure[:, :30] = True  # the ensemble disagrees on the left quarter
    _, asked = _run(classes, 4, unsure)
    asked_map = np.zeros(classes.size, bool)
    asked_map[asked.numpy()] = True
    assert asked_map.reshape(classes.shape)[:, :28].all()  # every unsure pixel was evaluated


def test_the_grid_reaches_every_edge_and_thin_images_are_filled():
    assert (
        list(grid_lines(10, 4)) == [0, 4, 8, 9]
        and list(grid_lines(9, 4)) == [0, 4, 8]
        and list(grid_lines(1, 4)) == [0]
    )
    for shape in ((1, 1), (1, 17), (17, 1), (2, 2), (3, 5), (5, 3), (9, 13), (33, 4)):
        yy, xx = np.indices(shape)
        classes = (yy + 2 * xx >= shape[1]).astype(np.int64)  # half-planes: each holds a corner of any cell it enters
        for stride in (1, 2, 4, 16):
            maps, _ = _run(classes, stride, chunk=7)
            assert not torch.isnan(maps).any(), (shape, stride)
            np.testing.assert_array_equal(maps[:-1].argmax(0).numpy(), classes)


def test_a_stop_request_cancels_between_chunks():
    evaluate, decide, _ = _oracle(_disks())
    out = torch.empty(4, _disks().size)
    with pytest.raises(Cancelled):
        coarse_to_fine(evaluate, decide, out, _disks().shape, 4, 100, should_stop=lambda: True)


def test_the_head_predicts_coarse_to_fine_the_labels_of_every_pixel(tiny_backbone):
    classes = _disks(128, 128)
    rng = np.random.default_rng(0)
    img = np.clip(0.2 + 0.3 * classes[..., None] + 0.05 * rng.standard_normal((128, 128, 3)), 0, 1).astype(np.float32)
    feats = float16_features(tiny_backbone, img)
    strokes = np.zeros_like(classes)
    strokes[::6, ::6] = classes[::6, ::6] + 1
    head = fit_head([feats], [strokes], HeadConfig(ensemble=3, steps=60, batch_size=256))
    assert head.config.coarse_stride == 4
    exact = Head(head.net, head.class_values, head.mean, head.std, replace(head.config, coarse_stride=1))
    fast, slow = head.predict_maps(feats), exact.predict_maps(feats)
    grid = np.ix_(grid_lines(128, 4), grid_lines(128, 4))
    np.testing.assert_allclose(fast[:, grid[0], grid[1]], slow[:, grid[0], grid[1]], atol=1e-5)  # evaluated: exact
    assert (head.predict(feats).labels == exact.predict(feats).labels).mean() > 0.995


def test_the_coarse_stride_is_a_power_of_two_and_old_heads_evaluate_every_pixel():
    legacy = {k: v for k, v in HeadConfig().to_dict().items() if k != "coarse_stride"}
    assert HeadConfig.from_dict(legacy).coarse_stride == 1
    with pytest.raises(ValueError, match="power of two"):
        HeadConfig.from_dict({**HeadConfig().to_dict(), "coarse_stride": 3})
    feats = np.random.default_rng(0).random((4, 16, 16)).astype(np.float16)
    labels = np.zeros((16, 16), np.int64)
    labels[:4], labels[-4:] = 1, 2
    with pytest.raises(UserError, match="power of two"):
        fit_head([feats], [labels], HeadConfig(coarse_stride=6))
