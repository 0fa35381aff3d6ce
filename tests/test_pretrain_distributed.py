"""Pretraining under torchrun (issue 17): two gloo processes on this CPU train like one process
with the doubled batch, rank 0 alone writes, and a stopped multi-process run resumes exactly."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from test_core_pretrain import _fixed_batch_loss, _images

from napari_mdm.checkpoint import load_backbone, read_tensors
from napari_mdm.corruption import CorruptionConfig
from napari_mdm.io import write_array
from napari_mdm.pretrain import PretrainConfig, pretrain

STEPS, BATCH, CROP = 8, 2, 32


def _torchrun(images, out, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "napari_mdm.cli",
        "pretrain",
        "--images",
        str(images),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        str(BATCH),
        "--crop",
        str(CROP),
        "--lr",
        "2e-3",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    for i, image in enumerate(_images(n=3)):
        write_array(root / f"{i}.png", (image * 255).round().astype(np.uint8))
    return root


def test_two_gloo_processes_train_like_one_with_the_doubled_batch(folder, tmp_path):
    result = _torchrun(folder, tmp_path / "two.safetensors", "--steps", str(STEPS))
    assert result.stdout.count("finished at step") == 1  # rank 0 speaks for the job
    two = load_backbone(tmp_path / "two.safetensors")
    assert two.provenance["processes"] == 2 and two.provenance["steps"] == STEPS
    images = _images(n=3)
    config = PretrainConfig(steps=STEPS, batch_size=2 * BATCH, crop=CROP, lr=2e-3)
    one = pretrain(images, None, "tiny", CorruptionConfig(), config, device="cpu").backbone
    untrained = pretrain(images, None, "tiny", CorruptionConfig(), PretrainConfig(steps=0, crop=CROP), device="cpu")
    before = _fixed_batch_loss(untrained.backbone.model, images, CorruptionConfig())
    after_two = _fixed_batch_loss(two.model, images, CorruptionConfig())
    after_one = _fixed_batch_loss(one.model, images, CorruptionConfig())
    assert after_two < before and after_one < before
    assert abs(after_two - after_one) < 0.25 * (before - after_one)


def test_a_stopped_two_process_run_resumes_to_the_same_weights(folder, tmp_path):
    _torchrun(folder, tmp_path / "whole.safetensors", "--steps", str(STEPS))
    _torchrun(folder, tmp_path / "cut.safetensors", "--steps", str(STEPS // 2))
    _torchrun(folder, tmp_path / "cut.safetensors", "--steps", str(STEPS), "--resume")
    whole, cut = read_tensors(tmp_path / "whole.safetensors")[0], read_tensors(tmp_path / "cut.safetensors")[0]
    for name, tensor in whole.items():
        assert (cut[name] == tensor).all(), name
