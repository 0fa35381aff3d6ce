"""The benchmark's datasets and fixed splits, read from ``../shared/data`` (never copied here).

GlaS: the official 85 training and 80 test images. MoNuSeg: only its 30 training images are
available, so the last 10 of the sorted names are held out as the test split and never used
for training or pretraining.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ROOT = Path(os.environ.get("NAPARI_MDM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MONUSEG_HELD_OUT = 10


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class Split:
    dataset: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]


def _natural_key(path: Path) -> tuple:
    stem = path.stem
    head = stem.rstrip("0123456789")
    tail = stem[len(head) :]
    return head, int(tail) if tail else -1


def _samples(folder: Path) -> list[Sample]:
    images = sorted((p for p in folder.glob("*.png") if not p.stem.endswith(("_mask", "_inst"))), key=_natural_key)
    return [Sample(p.stem, p, p.with_name(p.stem + "_mask.png")) for p in images]


def available(root: Path = DATA_ROOT) -> bool:
    return (root / "glas" / "train").is_dir() and (root / "monuseg" / "train").is_dir()


def load_split(dataset: str, root: Path = DATA_ROOT) -> Split:
    """The fixed train/test split of ``glas`` or ``monuseg``."""
    if dataset == "glas":
        return Split("glas", tuple(_samples(root / "glas" / "train")), tuple(_samples(root / "glas" / "test")))
    if dataset == "monuseg":
        samples = _samples(root / "monuseg" / "train")
        return Split("monuseg", tuple(samples[:-MONUSEG_HELD_OUT]), tuple(samples[-MONUSEG_HELD_OUT:]))
    raise ValueError(f"unknown dataset {dataset!r}: glas or monuseg")


def pretraining_images(root: Path = DATA_ROOT) -> list[Path]:
    """Every training image of both datasets (GlaS train, MoNuSeg minus its held-out test images)."""
    return [s.image for name in ("glas", "monuseg") for s in load_split(name, root).train]
