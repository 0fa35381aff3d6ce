"""Interrupted work (issue 5): a killed pretraining run resumes to the very weights of an
uninterrupted one; a cancelled segmentation keeps its finished outputs and leaves no partial
file; exports never overwrite unless asked; a failing write leaves the previous file intact.
"""

from __future__ import annotations

import subprocess
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from test_reliability_support import (
    CLASS_VALUES,
    assert_clean_failure,
    cli_command,
    cli_env,
    leftovers,
    run_cli,
    snapshot,
    two_region_image,
)

from napari_mdm import checkpoint, inference
from napari_mdm.backbone import build_backbone
from napari_mdm.checkpoint import read_tensors, save_backbone
from napari_mdm.corruption import CorruptionConfig
from napari_mdm.inference import segment, segment_files
from napari_mdm.io import read_image, read_labels, write_labels
from napari_mdm.jobs import Cancelled, UserError
from napari_mdm.pretrain import PretrainConfig, pretrain, state_path

STEPS = 12


def _pretrain_args(images, out, *extra):
    return [
        "pretrain",
        "--images",
        images,
        "--out",
        out,
        "--preset",
        "tiny",
        "--steps",
        STEPS,
        "--batch-size",
        2,
        "--crop",
        32,
        "--checkpoint-every",
        3,
        "--loss",
        "l2",
        "--seed",
        3,
        "--device",
        "cpu",
        *extra,
    ]


def _saved_step(path) -> int:
    return int(read_tensors(path)[1]["step"])


def test_a_killed_or_time_limited_pretraining_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        iio.imwrite(images / f"img{i}.png", (two_region_image(40, 48, seed=i) * 255).astype(np.uint8))
    whole, interrupted = tmp_path / "whole" / "bb.safetensors", tmp_path / "interrupted" / "bb.safetensors"
    # the reference: the same run, uninterrupted, through the library (the CLI must agree with it)

    torch.set_num_threads(1)
    config = PretrainConfig(steps=STEPS, batch_size=2, crop=32, checkpoint_every=3, loss="l2", seed=3)
    pretrain([read_image(p) for p in sorted(images.iterdir())], whole, "tiny", config=config, device="cpu")

    proc = subprocess.Popen(
        cli_command(*_pretrain_args(images, interrupted)),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not state_path(interrupted).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no cleanup, no final save
    finally:
        proc.wait()
    killed_at = _saved_step(state_path(interrupted))
    assert 0 < killed_at < STEPS, "the run finished before it could be killed"

    refused = run_cli(*_pretrain_args(images, interrupted))  # without --resume it must not start over
    assert_clean_failure(refused, "already exists")
    # a time-limited machine: stop after a budget, save, and let the next --resume go on
    paused = run_cli(*_pretrain_args(images, interrupted, "--resume", "--max-minutes", "0.0001"))
    assert paused.returncode == 0 and "stopped after --max-minutes" in paused.stdout, paused.stderr
    assert killed_at <= _saved_step(state_path(interrupted)) < STEPS
    resumed = run_cli(*_pretrain_args(images, interrupted, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"finished at step {STEPS}" in resumed.stdout

    expected, got = read_tensors(state_path(whole))[0], read_tensors(state_path(interrupted))[0]
    assert sorted(expected) == sorted(got) and any(k.startswith("optim.") for k in got)
    for name in expected:  # model, EMA and optimizer moments
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    for name, tensor in read_tensors(whole)[0].items():  # the exported float16 EMA weights
        torch.testing.assert_close(read_tensors(interrupted)[0][name], tensor, rtol=1e-3, atol=1e-4, msg=name)
    assert _saved_step(state_path(interrupted)) == STEPS


def test_resume_without_saved_state_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    iio.imwrite(tmp_path / "images" / "a.png", np.zeros((32, 32, 3), np.uint8))
    result = run_cli(*_pretrain_args(tmp_path / "images", tmp_path / "none.safetensors", "--resume"))
    assert_clean_failure(result, "no saved training state")
    assert snapshot(tmp_path) == {"images": "dir", "images/a.png": snapshot(tmp_path)["images/a.png"]}


# --- cancelling a segmentation ------------------------------------------------------------------


@pytest.fixture
def three_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(3):
        paths.append(folder / f"img{i}.png")
        iio.imwrite(paths[-1], (two_region_image(100, 90, seed=i) * 255).astype(np.uint8))
    return paths


class StopAfter:
    """should_stop() that turns True once ``images`` images are done and ``polls`` more polls passed."""

    def __init__(self, images: int, polls: int):
        self.images, self.polls, self.done = images, polls, 0

    def progress(self, done: int, total: int, info: str) -> None:
        self.done = done

    def __call__(self) -> bool:
        if self.done >= self.images:
            self.polls -= 1
        return self.done >= self.images and self.polls < 0


@pytest.mark.parametrize("polls", [0, 2], ids=["between images", "inside the second image"])
def test_cancel_keeps_finished_outputs_whole_and_leaves_no_partial_file(kit, three_images, tmp_path, polls):
    out = tmp_path / "out"
    stop = StopAfter(images=1, polls=polls)
    with pytest.raises(Cancelled):
        segment_files(
            kit.backbone, kit.head, three_images, out, uncertainty=True, progress=stop.progress, should_stop=stop
        )
    assert sorted(p.name for p in out.iterdir()) == ["img0.tif", "img0_uncertainty.tif"]
    expected = segment(kit.backbone, kit.head, read_image(three_images[0]))
    assert np.array_equal(read_labels(out / "img0.tif"), expected.labels)
    assert leftovers(tmp_path) == []


def test_cancel_inside_a_large_image_leaves_no_partial_zarr(kit, three_images, tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "IN_MEMORY_MAPS_BYTES", 0)
    monkeypatch.setattr(inference, "ZARR_CHUNK", 32)
    out = tmp_path / "out"
    stop = StopAfter(images=1, polls=3)
    with pytest.raises(Cancelled):
        segment_files(kit.backbone, kit.head, three_images, out, fmt="zarr", progress=stop.progress, should_stop=stop)
    assert sorted(p.name for p in out.iterdir()) == ["img0.zarr"]
    assert leftovers(tmp_path) == []


# --- exports never overwrite unless asked ---------------------------------------------------------


def test_segment_files_never_overwrites_unless_asked(kit, three_images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "img1.tif").write_bytes(b"an earlier result")
    before = snapshot(out)
    with pytest.raises(UserError, match="img1.tif already exists"):
        segment_files(kit.backbone, kit.head, three_images, out)
    assert snapshot(out) == before  # refused before any image was segmented
    segment_files(kit.backbone, kit.head, three_images[:2], out, overwrite=True)
    assert read_labels(out / "img1.tif").shape == (100, 90)


def test_two_images_that_would_share_an_output_name_are_refused(kit, three_images, tmp_path):
    twin = three_images[0].with_suffix(".tif")
    twin.write_bytes(three_images[0].read_bytes())
    with pytest.raises(UserError, match="same output img0.tif"):
        segment_files(kit.backbone, kit.head, [three_images[0], twin], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_writers_and_savers_refuse_existing_files_unless_asked(kit, tmp_path):
    mask = tmp_path / "mask.tif"
    mask.write_bytes(b"keep me")
    with pytest.raises(UserError, match="already exists"):
        write_labels(mask, np.ones((4, 4), np.uint8))
    assert mask.read_bytes() == b"keep me"
    write_labels(mask, np.ones((4, 4), np.uint8), overwrite=True)
    assert read_labels(mask).sum() == 16

    head_file = tmp_path / "head.safetensors"
    head_file.write_bytes(b"keep me")
    with pytest.raises(UserError, match="already exists"):
        kit.head.save(head_file, overwrite=False)
    with pytest.raises(UserError, match="already exists"):
        save_backbone(head_file, build_backbone("tiny"), CorruptionConfig(), overwrite=False)
    assert head_file.read_bytes() == b"keep me"


def test_cli_segment_and_train_head_refuse_to_overwrite(kit, tmp_path):
    """(train-head's refusal is in test_reliability_inputs; here: --overwrite really replaces.)"""
    (tmp_path / "images").mkdir()
    iio.imwrite(tmp_path / "images" / "a.png", (two_region_image(24, 24) * 255).astype(np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.tif").write_bytes(b"an earlier result")
    args = [
        "segment",
        "--backbone",
        kit.backbone_path,
        "--head",
        kit.head_path,
        "--images",
        tmp_path / "images",
        "--out",
        out,
        "--device",
        "cpu",
    ]
    assert_clean_failure(run_cli(*args), "already exists", "--overwrite")
    assert (out / "a.tif").read_bytes() == b"an earlier result"
    replaced = run_cli(*args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert read_labels(out / "a.tif").shape == (24, 24)


# --- atomic saves: a failure while writing leaves the previous file intact ------------------------


def _half_then_fail(error: BaseException):
    """A writer that writes some bytes to its temporary file, then fails as a full disk would."""

    def write(*args, **kwargs):
        path = next(a for a in args if isinstance(a, str) and a.endswith(".part"))
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise error

    return write


@pytest.mark.parametrize(
    "error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["disk full", "interrupted"]
)
def test_a_failed_head_or_backbone_save_leaves_the_old_file_intact(kit, tmp_path, monkeypatch, error):
    head_file, backbone_file = tmp_path / "head.safetensors", tmp_path / "bb.safetensors"
    kit.head.save(head_file)
    save_backbone(backbone_file, build_backbone("tiny"), CorruptionConfig())
    before = snapshot(tmp_path)
    monkeypatch.setattr(checkpoint, "save_file", _half_then_fail(error))
    expected = UserError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        kit.head.save(head_file)
    with pytest.raises(expected):
        save_backbone(backbone_file, build_backbone("tiny"), CorruptionConfig())
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []
    monkeypatch.undo()
    assert type(kit.head).load(head_file).class_values == CLASS_VALUES


def test_a_failed_mask_write_leaves_the_old_mask_intact(tmp_path, monkeypatch):
    import tifffile

    mask = tmp_path / "mask.tif"
    write_labels(mask, np.full((8, 8), 5, np.uint8))
    before = snapshot(tmp_path)
    monkeypatch.setattr(tifffile, "imwrite", _half_then_fail(OSError(28, "No space left on device")))
    with pytest.raises(UserError, match="No space left"):
        write_labels(mask, np.ones((8, 8), np.uint8), overwrite=True)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_an_output_folder_that_cannot_be_created_is_a_clear_error(kit, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write"):
        write_labels(blocker / "mask.tif", np.ones((4, 4), np.uint8))
    (tmp_path / "images").mkdir()
    iio.imwrite(tmp_path / "images" / "a.png", np.zeros((16, 16, 3), np.uint8))
    result = run_cli(
        "segment",
        "--backbone",
        kit.backbone_path,
        "--head",
        kit.head_path,
        "--images",
        tmp_path / "images",
        "--out",
        blocker / "out",
        "--device",
        "cpu",
    )
    assert_clean_failure(result, "cannot write")
