"""Instance output: one id per connected region of a class (e.g. each nucleus its own label)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import label


def connected_instances(labels: np.ndarray, value: int) -> np.ndarray:
    """Connected regions (8-connectivity) of ``labels == value`` numbered 1, 2, ...; a stack
    (N, H, W) is numbered plane by plane, continuing the count so ids stay unique."""
    planes = labels[None] if labels.ndim == 2 else labels
    out = np.zeros(planes.shape, dtype=np.uint32)
    offset = 0
    for i, plane in enumerate(planes):
        numbered, count = label(plane == value, structure=np.ones((3, 3), dtype=bool))
        out[i] = np.where(numbered > 0, numbered + offset, 0)
        offset += count
    return out[0] if labels.ndim == 2 else out
