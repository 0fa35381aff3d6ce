"""Where to label next: the few windows where the ensemble disagrees most.

A stroke helps most where the head is least sure, so the uncertainty map (the ensemble's
Jensen-Shannon divergence) is averaged over square windows and the highest windows are picked
greedily, each one excluding windows that overlap it, so the suggestions are spread out.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

Box = tuple[int, int, int, int]
"""(y0, x0, y1, x1), end exclusive."""


def suggest_regions(uncertainty: np.ndarray, count: int = 5, size: int = 48) -> list[Box]:
    """Up to ``count`` non-overlapping ``size`` x ``size`` windows of an (H, W) uncertainty map,
    highest mean uncertainty first; windows with no uncertainty at all are never suggested."""
    h, w = uncertainty.shape
    size = max(1, min(size, h, w))
    mean = uniform_filter(np.asarray(uncertainty, dtype=np.float32), size=size, mode="constant")
    half = size // 2
    # only centres whose window lies inside the image
    valid = np.full((h, w), -np.inf, dtype=np.float32)
    valid[half : h - (size - half) + 1, half : w - (size - half) + 1] = mean[
        half : h - (size - half) + 1, half : w - (size - half) + 1
    ]
    boxes: list[Box] = []
    for _ in range(count):
        y, x = np.unravel_index(np.argmax(valid), valid.shape)
        if not valid[y, x] > 0:
            break
        y0, x0 = int(y) - half, int(x) - half
        boxes.append((y0, x0, y0 + size, x0 + size))
        valid[max(0, y - size + 1) : y + size, max(0, x - size + 1) : x + size] = -np.inf  # overlapping windows
    return boxes


def mean_in(boxes: list[Box], values: np.ndarray) -> float:
    """Mean of ``values`` over the boxes (how unsure the head still is where it was suggested)."""
    parts = [values[y0:y1, x0:x1] for y0, x0, y1, x1 in boxes]
    return float(np.mean(np.concatenate([p.ravel() for p in parts]))) if parts else 0.0
