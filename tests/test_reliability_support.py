"""Shared pieces of the reliability suite (no tests here): a tiny saved backbone and head, a CLI
runner and a folder snapshot, so every bad-input test can check "clear error, nothing changed".

The other ``test_reliability_*`` modules import the helpers from here; the ``kit`` fixture is in conftest.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_mdm.backbone import Backbone, build_backbone
from napari_mdm.checkpoint import load_backbone, save_backbone
from napari_mdm.corruption import CorruptionConfig
from napari_mdm.features import FeatureConfig, extract_features, resolve_config
from napari_mdm.head import Head, HeadConfig, HeadContext, fit_head

CLASS_VALUES = [1, 5]
"""Label ids that skip numbers on purpose: outputs must keep 1 and 5, not renumber them 1 and 2."""

TINY_HEAD = HeadConfig(ensemble=2, steps=15, batch_size=64)


@dataclass
class Kit:
    """A saved tiny backbone, a second one with other weights, and a head trained on the first."""

    root: Path
    backbone_path: Path
    backbone: Backbone
    other_backbone_path: Path
    head_path: Path
    head: Head
    features: FeatureConfig
    image: np.ndarray  # (H, W, 3) float32, left half dark, right half bright
    labels: np.ndarray  # sparse: 1 on the dark side, 5 on the bright side, 0 elsewhere


def two_region_image(h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
    """A dark left half and a bright right half with a little noise: easy for any head."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 0.2, dtype=np.float32)
    img[:, w // 2 :] = 0.8
    return np.clip(img + rng.normal(0, 0.03, img.shape).astype(np.float32), 0, 1)


def sparse_labels(h: int = 48, w: int = 48) -> np.ndarray:
    labels = np.zeros((h, w), dtype=np.int64)
    labels[4:-4, 2:10] = CLASS_VALUES[0]
    labels[4:-4, -10:-2] = CLASS_VALUES[1]
    return labels


def train_head(backbone: Backbone, config: FeatureConfig, image: np.ndarray, labels: np.ndarray) -> Head:
    feats = extract_features(backbone, image, config)
    return fit_head([feats], [labels], TINY_HEAD, context=HeadContext.for_backbone(backbone, config))


def build_kit(root: Path) -> Kit:
    """The saved backbones and head in ``root`` (the ``kit`` fixture of conftest.py builds it once per session)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone_path = save_backbone(root / "tiny.safetensors", build_backbone("tiny").eval(), CorruptionConfig())
    torch.manual_seed(1)
    other_path = save_backbone(root / "other.safetensors", build_backbone("tiny").eval(), CorruptionConfig())
    backbone = load_backbone(backbone_path)
    features = resolve_config(backbone, FeatureConfig(timesteps=(50,), tile=64))
    image, labels = two_region_image(), sparse_labels()
    head = train_head(backbone, features, image, labels)
    head_path = root / "head.safetensors"
    head.save(head_path)
    return Kit(root, backbone_path, backbone, other_path, head_path, head, features, image, labels)


def cli_env() -> dict[str, str]:
    """One thread per subprocess: the machine's cores are shared."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli_command(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "napari_mdm.cli", *map(str, args)]


def run_cli(*args: str | os.PathLike, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(*args), capture_output=True, text=True, env=cli_env(), cwd=cwd, timeout=300, check=False
    )


def assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one ``napari-mdm CMD: error: ...`` line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with a content hash: equal snapshots = nothing changed."""
    state = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = str(path.relative_to(folder))
        state[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return state


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes."""
    return [p for p in Path(folder).rglob("*") if p.name.endswith((".part", ".old"))]
