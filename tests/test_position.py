"""Position channels (issue 16, point 3): each pixel's image-wide row and column as two optional
feature channels, the same on every path that computes features (whole image, tiles, the
per-tile prediction path, slide chunks), recorded in heads, and what they are for: telling a
left thing from an identical right one, which nothing else in the features or the training does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mdm import inference
from napari_mdm.checkpoint import random_backbone
from napari_mdm.features import (
    FeatureConfig,
    Frame,
    float16_features,
    num_channels,
    position_channels,
    resolve_config,
    tile_features,
)
from napari_mdm.head import Head, HeadConfig, fit_head
from napari_mdm.pipeline import train_head

H, W = 70, 90
FAST_HEAD = HeadConfig(ensemble=2, steps=60, batch_size=256)


@pytest.fixture(scope="module")
def backbone():
    return random_backbone("tiny")


def _expected(shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(shape[0]) / (shape[0] - 1), np.arange(shape[1]) / (shape[1] - 1), indexing="ij")
    return np.stack([rows, cols])


def test_position_adds_two_channels_of_image_wide_coordinates_on_every_tiling(backbone):
    image = np.random.default_rng(0).random((H, W, 3), dtype=np.float32)
    plain = FeatureConfig(tile=32, filters=False, project=0)
    placed = FeatureConfig(tile=32, filters=False, project=0, position=True)
    assert num_channels(backbone, placed) == num_channels(backbone, plain) + 2
    tiled = float16_features(backbone, image, placed)
    assert tiled.shape == (num_channels(backbone, placed), H, W) and tiled.dtype == np.float16
    # the other channels are untouched, and the position ones are the whole image's, not the tile's
    np.testing.assert_array_equal(tiled[:-2], float16_features(backbone, image, plain))
    np.testing.assert_allclose(tiled[-2:].astype(np.float32), _expected((H, W)), atol=1e-3)
    one_tile = float16_features(backbone, image, FeatureConfig(tile=128, filters=False, project=0, position=True))
    np.testing.assert_allclose(tiled[-2:].astype(np.float32), one_tile[-2:].astype(np.float32), atol=1e-3)
    assert tiled[-2:].min() == 0 and tiled[-2:].max() == 1


def test_a_tile_and_a_chunk_know_where_they_lie_in_the_whole():
    config = FeatureConfig(diffusion=False, position=True)
    region = np.zeros((20, 30, 3), np.float32)
    # a tile at (5, 7) of an image that is itself a chunk at (100, 200) of a 301 x 401 slide
    tiny = random_backbone("tiny")  # never run: these features read no network
    feats = tile_features(tiny, region, 5, 7, config, frame=Frame(100, 200, 301, 401))
    np.testing.assert_allclose(feats[-2:].float().numpy(), _expected((301, 401))[:, 105:125, 207:237], atol=1e-3)
    with pytest.raises(ValueError, match="frame"):
        tile_features(tiny, region, 5, 7, config)
    np.testing.assert_array_equal(position_channels(0, 0, (1, 1), (1, 1)).numpy(), np.zeros((2, 1, 1)))


def test_heads_saved_before_position_channels_load_without_them(backbone, tmp_path):
    from napari_mdm.checkpoint import read_tensors, write_tensors

    image, labels = _twin_blobs()
    train_head(backbone, [image], [labels], FeatureConfig(diffusion=False), FAST_HEAD).save(tmp_path / "h.safetensors")
    tensors, meta = read_tensors(tmp_path / "h.safetensors")
    del meta["context"]["features"]["position"]  # as code from before the option wrote it
    write_tensors(tmp_path / "old.safetensors", tensors, meta)
    old_head = Head.load(tmp_path / "old.safetensors")
    assert old_head.context.features.position is False
    assert (inference.segment(backbone, old_head, image).labels == labels).mean() > 0.5
    old = {"timesteps": [50], "blocks": [3, 4], "tile": 512, "overlap": 0.25, "scale": 1.0, "seed": 0}
    assert FeatureConfig.from_dict(old).position is False
    assert FeatureConfig.from_dict({**old, "position": True}).position is True
    with pytest.raises(ValueError, match="position"):
        FeatureConfig.from_dict({**old, "position": 1})


def _twin_blobs() -> tuple[np.ndarray, np.ndarray]:
    """Two identical blobs placed mirror-symmetrically, the left one class 1, the right one class
    2, the background class 3: the image is its own mirror image, only the labels are not."""
    yy, xx = np.mgrid[:H, :W]
    image = np.full((H, W, 3), 0.8, np.float32)
    labels = np.full((H, W), 3, np.uint8)
    for cx, value in ((W // 4, 1), (W - 1 - W // 4, 2)):
        blob = (yy - H // 2) ** 2 + (xx - cx) ** 2 <= 10**2
        image[blob] = (0.2, 0.3, 0.6)
        labels[blob] = value
    assert np.array_equal(image, image[:, ::-1])
    return image, labels


def _blob_accuracy(backbone, image, labels, config) -> tuple[Head, float]:
    head = train_head(backbone, [image], [labels], config, FAST_HEAD, ignore=None)
    blobs = labels < 3
    return head, float((inference.segment(backbone, head, image).labels[blobs] == labels[blobs]).mean())


def test_position_channels_tell_mirrored_twins_apart_and_mirroring_swaps_them(backbone):
    """On the filter bank, which responds alike to mirrored twins (its filters and eigenvalues
    are mirror-symmetric), only the position channels can tell them apart."""
    image, labels = _twin_blobs()
    config = FeatureConfig(diffusion=False, position=True)
    head, accuracy = _blob_accuracy(backbone, image, labels, config)
    assert accuracy > 0.95
    assert resolve_config(backbone, head.context.features).position  # recorded in the head
    mirrored = inference.segment(backbone, head, np.ascontiguousarray(image[:, ::-1])).labels[:, ::-1]
    left, right = labels == 1, labels == 2
    assert (mirrored[left] == 2).mean() > 0.95 and (mirrored[right] == 1).mean() > 0.95
    # without them the twins look alike to the head: no better than a coin between the two
    _, blind = _blob_accuracy(backbone, image, labels, FeatureConfig(diffusion=False))
    assert blind < 0.75


def test_the_head_never_trains_on_flipped_copies(backbone, monkeypatch):
    """No augmentation makes a head flip-invariant: training never flips anything."""
    image, labels = _twin_blobs()
    feats = float16_features(backbone, image, FeatureConfig(tile=64, project=0, position=True))

    def no_flip(*args, **kwargs):
        raise AssertionError("the head's training flipped its inputs")

    for module, name in ((torch, "flip"), (torch, "fliplr"), (torch.Tensor, "flip"), (np, "flip"), (np, "fliplr")):
        monkeypatch.setattr(module, name, no_flip)
    head = fit_head([feats], [labels], FAST_HEAD, ignore=None)
    assert (head.predict(feats).labels[labels == 1] == 1).mean() > 0.95


def test_the_per_tile_prediction_path_gives_the_whole_image_path_s_maps(backbone, monkeypatch):
    image, labels = _twin_blobs()
    head = train_head(backbone, [image], [labels], FeatureConfig(tile=32, project=0, position=True), FAST_HEAD)
    whole = inference.segment(backbone, head, image)
    monkeypatch.setattr(inference, "WHOLE_IMAGE_FEATURES_BYTES", 0)  # features and head tile by tile
    tiled = inference.segment(backbone, head, image)
    assert (tiled.labels == whole.labels).mean() > 0.99
    blobs = labels < 3
    assert (tiled.labels[blobs] == labels[blobs]).mean() > 0.95


def test_slide_chunks_see_the_slide_wide_position(tmp_path):
    """A head that learnt 'left half 1, right half 2' on a uniform texture: each chunk must be
    placed in the slide, or every chunk would repeat the split within itself."""
    import zarr

    from napari_mdm.slide_segmentation import segment_slide

    size, chunk = (128, 256), 64
    # a texture alike on both sides (constant pixels would leave the filter bank without spread)
    pixels = np.random.default_rng(0).integers(100, 156, (*size, 3), dtype=np.uint8)
    zarr.create_array(str(tmp_path / "slide.zarr"), shape=(*size, 3), chunks=(64, 64, 3), dtype="uint8")[...] = pixels
    image = pixels.astype(np.float32) / np.float32(255)  # the slide's pixels as the slide reader gives them
    labels = np.where(np.arange(size[1]) < size[1] // 2, 1, 2)[None].repeat(size[0], 0).astype(np.uint8)
    config = FeatureConfig(diffusion=False, position=True)
    train_head(random_backbone("tiny"), [image], [labels], config, FAST_HEAD).save(tmp_path / "head.safetensors")
    out = tmp_path / "labels.ome.zarr"
    segment_slide("random-tiny", tmp_path / "head.safetensors", tmp_path / "slide.zarr", out, chunk=chunk, halo=8)
    predicted = zarr.open_group(str(out), mode="r")["0"][:]
    margin = 16  # the boundary itself blurs by a few pixels
    left, right = predicted[:, : size[1] // 2 - margin], predicted[:, size[1] // 2 + margin :]
    assert (left == 1).mean() > 0.95 and (right == 2).mean() > 0.95  # chunks placed alone: about half wrong


def test_the_face_benchmark_s_position_rows_hold_the_library_s_position_features(backbone):
    from benchmarks.faces import Features

    image = np.random.default_rng(1).random((40, 50, 3), dtype=np.float32)
    rows = Features({"random-tiny": backbone}, position=True).of(image)
    expected = float16_features(backbone, image, FeatureConfig(position=True))
    np.testing.assert_array_equal(rows["random-tiny+position"], expected)
    np.testing.assert_array_equal(rows["random-tiny"], expected[:-2])


def test_train_head_position_on_the_command_line(tmp_path):
    from napari_mdm.cli import main
    from napari_mdm.filterbank import num_filter_channels
    from napari_mdm.io import write_array, write_labels

    image, labels = _twin_blobs()
    write_array(tmp_path / "twins.png", (image * 255).astype(np.uint8))
    write_labels(tmp_path / "twins_mask.png", labels)
    args = ["train-head", "--images", str(tmp_path / "twins.png"), "--labels", str(tmp_path / "twins_mask.png")]
    args += ["--features", "filters", "--steps", "20", "--ensemble", "1", "--out", str(tmp_path / "h.safetensors")]
    assert main([*args, "--position"]) == 0
    head = Head.load(tmp_path / "h.safetensors")
    assert head.context.features.position is True and head.in_channels == num_filter_channels() + 2
