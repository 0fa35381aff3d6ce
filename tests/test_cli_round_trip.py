"""The CLI round trip on files: pretrain -> train-head -> segment -> evaluate, on crops of the
``ihc`` sample with the demo's stain reference as masks (DAB-positive epithelium vs the rest)."""

from __future__ import annotations

import numpy as np

from napari_mdm import cli
from napari_mdm.demo import sample_image, stain_reference
from napari_mdm.filterbank import num_filter_channels
from napari_mdm.head import Head
from napari_mdm.io import read_array, read_labels, write_array, write_labels

CROPS = {"a": np.s_[:160, :160], "b": np.s_[:160, 352:], "c": np.s_[352:, 176:336]}


def test_pretrain_train_head_segment_evaluate(tmp_path, capsys):
    image = sample_image()
    epithelium = (stain_reference(image) == 3).astype(np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "truth").mkdir()
    for name, crop in CROPS.items():
        write_array(tmp_path / "images" / f"{name}.png", image[crop])
        write_labels(tmp_path / "images" / f"{name}_mask.png", epithelium[crop])
        write_labels(tmp_path / "truth" / f"{name}.png", epithelium[crop])
    images, ckpt, head = tmp_path / "images", tmp_path / "bb.safetensors", tmp_path / "head.safetensors"

    assert (
        cli.main(
            [
                "pretrain",
                "--images",
                str(images),
                "--out",
                str(ckpt),
                "--preset",
                "tiny",
                "--steps",
                "4",
                "--batch-size",
                "2",
                "--crop",
                "32",
                "--scale",
                "0.5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert ckpt.is_file() and ckpt.with_suffix(".json").is_file()
    assert (
        cli.main(
            [
                "train-head",
                "--backbone",
                str(ckpt),
                "--images",
                str(images / "a.png"),
                str(images / "b.png"),
                "--labels",
                str(images),
                "--dense",
                "--ensemble",
                "2",
                "--steps",
                "60",
                "--float32",
                "--out",
                str(head),
            ]
        )
        == 0
    )
    saved = Head.load(head)  # --float32: both the backbone and the head ran in float32
    assert saved.config.bfloat16 is False and saved.context.features.bfloat16 is False
    assert (
        cli.main(
            [
                "segment",
                "--backbone",
                str(ckpt),
                "--head",
                str(head),
                "--images",
                str(images / "c.png"),
                "--out",
                str(tmp_path / "pred"),
                "--uncertainty",
            ]
        )
        == 0
    )
    prediction = read_labels(tmp_path / "pred" / "c.tif")
    assert prediction.shape == (160, 160) and set(np.unique(prediction)) <= {0, 1}
    assert read_array(tmp_path / "pred" / "c_uncertainty.tif").shape == (160, 160)

    capsys.readouterr()
    assert cli.main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth")]) == 0
    mean_line = capsys.readouterr().out.strip().splitlines()[-1]
    score = float(mean_line.split("\t")[2])
    truth = epithelium[CROPS["c"]]
    chance = 2 * truth.sum() / (truth.sum() + truth.size)  # every pixel called epithelium
    assert score > chance + 0.1, (score, chance)


def test_filter_bank_only_head_round_trip(tmp_path):
    image = sample_image()
    epithelium = (stain_reference(image) == 3).astype(np.uint8)
    write_array(tmp_path / "a.png", image[CROPS["a"]])
    write_labels(tmp_path / "a_mask.png", epithelium[CROPS["a"]])
    write_array(tmp_path / "c.png", image[CROPS["c"]])
    head = tmp_path / "head.safetensors"
    assert (
        cli.main(
            [
                "train-head",
                "--images",
                str(tmp_path / "a.png"),
                "--labels",
                str(tmp_path / "a_mask.png"),
                "--dense",
                "--features",
                "filters",
                "--ensemble",
                "2",
                "--steps",
                "60",
                "--rank-tolerance",
                "0",
                "--float16-features",
                "--attention-pool",
                "1",
                "--coarse-stride",
                "1",
                "--batch-size",
                "128",
                "--out",
                str(head),
            ]
        )
        == 0
    )
    # the head never read a network, so any backbone applies it
    assert (
        cli.main(
            [
                "segment",
                "--backbone",
                "random-small",
                "--head",
                str(head),
                "--images",
                str(tmp_path / "c.png"),
                "--out",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    loaded = Head.load(head)
    assert loaded.in_channels == num_filter_channels() and not loaded.context.features.diffusion
    features = loaded.context.features
    assert loaded.config.rank_tolerance == 0 and loaded.config.coarse_stride == 1  # exact
    assert loaded.config.batch_size == 128
    assert not features.compact and features.attention_pool == 1
    prediction = read_labels(tmp_path / "pred" / "c.tif")
    truth = epithelium[CROPS["c"]]
    dice = 2 * (prediction * truth).sum() / (prediction.sum() + truth.sum())
    assert dice > 0.5, dice
