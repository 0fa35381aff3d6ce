"""Scribbles from a reference mask: a few thin strokes per class, as a user would paint them.

Used by the headless demo (strokes from a stain-derived reference) and by the benchmark's
scribble protocol (strokes from ground-truth masks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk, skeletonize


def _branches(skeleton: np.ndarray) -> np.ndarray:
    """The skeleton without its junction pixels, so a web falls apart into stroke-like branches."""
    neighbours = ndi.convolve(skeleton.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant") - 1
    return skeleton & (neighbours <= 2)


def scribbles_from_mask(
    reference: np.ndarray, strokes: Sequence[int], erode: Sequence[int], seed: int, width: int = 1
) -> np.ndarray:
    """Labels (0 = unlabelled) with a few strokes inside each class region of ``reference``.

    ``reference`` holds class values 1..K; ``strokes[k]`` and ``erode[k]`` are for class k + 1.
    Each region is eroded (users do not paint on boundaries), skeletonised and cut at its
    junctions into branches; ``strokes`` pieces chosen at random among the longer half are
    thickened by ``width`` pixels, staying inside the region.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(reference.shape, dtype=np.uint8)
    for index, (count, radius) in enumerate(zip(strokes, erode, strict=False)):
        value = index + 1
        region = reference == value
        inner = ndi.binary_erosion(region, disk(radius)) if radius else region
        if not inner.any():
            inner = region
        pieces, found = ndi.label(_branches(skeletonize(inner)), structure=np.ones((3, 3)))
        if not found:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        longer = np.argsort(sizes)[::-1][: max(count, (found + 1) // 2)] + 1
        chosen = rng.choice(longer, size=min(count, len(longer)), replace=False)
        stroke = np.isin(pieces, chosen)
        if width:
            stroke = ndi.binary_dilation(stroke, disk(width)) & region
        labels[stroke] = value
    return labels
