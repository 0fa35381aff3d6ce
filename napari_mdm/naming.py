"""How files are named: an image's stem, its labels beside it, and the outputs made from it.

One rule everywhere: only the last suffix is the extension, so ``scan.01.png`` has the stem
``scan.01`` (pairs with ``scan.01_mask.png``, segments to ``scan.01.tif``), never ``scan``.
"""

from __future__ import annotations

import os
from pathlib import Path

LABEL_TAGS = ("_mask", "_labels")
"""Suffixes of the stem that mark a label image of the image NAME: NAME_mask.*, NAME_labels.*."""
TRUTH_TAGS = (*LABEL_TAGS, "_inst")
UNCERTAINTY_TAG = "_uncertainty"


def stem(path: str | os.PathLike) -> str:
    """The file name without its last suffix (``scan.01.png`` -> ``scan.01``)."""
    name = Path(path).name
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


def is_uncertainty(path: str | os.PathLike) -> bool:
    """True for an uncertainty map written by :func:`segmentation_outputs`."""
    return stem(path).endswith(UNCERTAINTY_TAG)


def companion(
    image: str | os.PathLike, folder: str | os.PathLike, tags: tuple[str, ...], suffixes: tuple[str, ...]
) -> Path | None:
    """The first existing FOLDER/STEM{tag}{suffix} for the image's stem (tags in order, then the
    bare stem), other than the image itself; None when there is none."""
    name, folder = stem(image), Path(folder)
    for tag in (*tags, ""):
        for suffix in suffixes:
            candidate = folder / f"{name}{tag}{suffix}"
            if candidate.exists() and candidate != Path(image):
                return candidate
    return None


def segmentation_outputs(
    name: str, out_dir: str | os.PathLike, fmt: str, uncertainty: bool, mask_suffix: str = ""
) -> tuple[Path, Path | None]:
    """Where the mask of the image (or layer) ``name`` goes, and its uncertainty map when asked:
    OUT/NAME{mask_suffix}.fmt and OUT/NAME_uncertainty.tif (.zarr when fmt is zarr: png cannot
    hold floats)."""
    out_dir = Path(out_dir)
    unc = out_dir / f"{name}{UNCERTAINTY_TAG}.{'zarr' if fmt == 'zarr' else 'tif'}" if uncertainty else None
    return out_dir / f"{name}{mask_suffix}.{fmt}", unc
