"""Writes a Labels layer as a tif or zarr mask (atomically, in the smallest unsigned type)."""

from __future__ import annotations

from typing import Any

import numpy as np


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer; napari's save dialog has already confirmed any overwrite."""
    from .io import write_labels as write

    return [str(write(path, np.asarray(data), overwrite=True))]
