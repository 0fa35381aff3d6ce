"""Pretraining streams its crops (issue 17): a folder is indexed up front and read crop by crop
from a few open images, with the very batches (so losses and resumes) of reading it whole."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import zarr
from PIL import Image

from napari_mdm.inference import open_planes
from napari_mdm.io import collect_images
from napari_mdm.pretrain import PretrainConfig, _crop_batch, pretrain
from napari_mdm.pretrain_images import PretrainImages

CROP = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Nine 2-D images in five files of several kinds (a stack of five planes), one thinner than the crop."""
    root = tmp_path_factory.mktemp("pretrain_folder")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 70, 3), dtype=np.uint8)).save(root / "a.png")
    tifffile.imwrite(root / "b.tif", rng.integers(0, 4000, (40, 52), dtype=np.uint16))  # grey, 12 bits
    tifffile.imwrite(root / "c.tif", rng.integers(0, 256, (5, 36, 44), dtype=np.uint8), photometric="minisblack")
    Image.fromarray(rng.integers(0, 256, (20, 90, 3), dtype=np.uint8)).save(root / "d.png")  # thinner than a crop
    zarr.open_array(str(root / "e.zarr"), mode="w", shape=(64, 64), dtype="float32")[...] = rng.random((64, 64))
    return root


def _whole(paths, scale=1.0):
    from skimage.transform import rescale

    planes = [plane.read() for path in paths for plane in open_planes(path)]
    if scale != 1:
        planes = [rescale(p, scale, channel_axis=-1, anti_aliasing=True).astype(np.float32) for p in planes]
    return PretrainImages.from_arrays(planes)


@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_a_folder_is_read_crop_by_crop_from_a_few_open_images_with_the_batches_of_reading_it_whole(folder, scale):
    paths = collect_images([folder])
    streamed, whole = PretrainImages.from_files(paths, scale, keep=2), _whole(paths, scale)
    assert len(streamed) == len(whole) == 9 and streamed.shapes == whole.shapes
    assert streamed.held == 0  # indexing read the sizes and let the images go
    for step in range(12):
        rng = [np.random.default_rng([3, step]) for _ in range(2)]
        np.testing.assert_array_equal(_crop_batch(streamed, CROP, 4, rng[0]), _crop_batch(whole, CROP, 4, rng[1]))
        assert streamed.held <= 2
    assert streamed.opened > 9  # images left and came back: never all of them at once


def test_pretraining_on_a_streamed_folder_trains_as_on_the_images_in_memory(folder):
    paths = collect_images([folder])
    config = PretrainConfig(steps=3, batch_size=3, crop=CROP, seed=1)
    streamed = pretrain(PretrainImages.from_files(paths, keep=1), None, "tiny", config=config, device="cpu")
    whole = pretrain(_whole(paths), None, "tiny", config=config, device="cpu")
    assert streamed.losses == whole.losses and streamed.backbone.provenance["images"] == 9
    for key, value in whole.backbone.model.state_dict().items():
        torch.testing.assert_close(streamed.backbone.model.state_dict()[key], value, rtol=0, atol=0)


def test_a_streamed_run_resumes_exactly(folder, tmp_path):
    from napari_mdm.checkpoint import read_tensors
    from napari_mdm.pretrain import state_path

    paths = collect_images([folder])
    config = PretrainConfig(steps=6, batch_size=2, crop=CROP, checkpoint_every=3)

    def run(out, **kwargs):
        return pretrain(PretrainImages.from_files(paths, keep=2), out, "tiny", config=config, device="cpu", **kwargs)

    run(tmp_path / "whole.safetensors")
    polls = []
    assert run(tmp_path / "cut.safetensors", should_stop=lambda: polls.append(1) or len(polls) > 4).step == 4
    assert run(tmp_path / "cut.safetensors", resume=True).step == 6
    whole, cut = (read_tensors(state_path(tmp_path / f"{n}.safetensors"))[0] for n in ("whole", "cut"))
    for key, value in whole.items():
        torch.testing.assert_close(cut[key], value, rtol=1e-4, atol=1e-5, msg=key)
