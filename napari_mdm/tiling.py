"""Overlapping tiles blended with a Gaussian window, so large images show no seams and memory
is bounded by the tile, not the image.

Each tile's result is weighted by a Gaussian window divided by the sum of the windows of all
tiles covering each pixel, so contributions are added straight into the output array (numpy
or zarr) with no image-sized weight map.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from .jobs import ProgressFn, StopFn, check_stop, report

TileFn = Callable[[int, int, int, int], np.ndarray]
"""``compute(y0, y1, x0, x1) -> (C, y1 - y0, x1 - x0)`` float32 result for one tile."""


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile start offsets along one axis: evenly strided, the last tile flush with the end."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_grid(shape: tuple[int, int], tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every tile covering an image of ``shape``."""
    h, w = shape
    th, tw = min(tile, h), min(tile, w)
    return [(y, y + th, x, x + tw) for y in tile_starts(h, th, overlap) for x in tile_starts(w, tw, overlap)]


def pad_to(x: np.ndarray, divisor: int) -> np.ndarray:
    """Mirror-pad the last two axes of ``x`` up to multiples of ``divisor`` (what a U-Net needs)."""
    h, w = x.shape[-2:]
    ph, pw = -h % divisor, -w % divisor
    pads = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(x, pads, mode="symmetric") if ph or pw else x


@lru_cache(maxsize=16)
def gaussian_window(h: int, w: int) -> np.ndarray:
    """Separable Gaussian (sigma = size / 4) lowered to reach 0 at the tile's edges, so a tile's
    share of a blended pixel fades out before its edge instead of stopping there (a Gaussian cut
    at 2 sigma keeps 13 % at the edge: a step, a seam, where neighbouring tiles disagree). Each
    axis is floored, so pixels only tile edges cover (the image's border) still get a weight and
    keep the other axis's blend."""

    def axis(n: int) -> np.ndarray:
        r = (np.arange(n) - (n - 1) / 2) / max(n / 4, 1e-6)
        g = np.exp(-0.5 * r**2)
        return np.maximum((g - g[0]) / (g.max() - g[0]), 1e-3) if n > 2 else np.ones(n)

    return np.outer(axis(h), axis(w)).astype(np.float32)


def _weight_sum(tiles: list[tuple[int, int, int, int]], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    total = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    for ty0, ty1, tx0, tx1 in tiles:
        oy0, oy1, ox0, ox1 = max(y0, ty0), min(y1, ty1), max(x0, tx0), min(x1, tx1)
        if oy0 < oy1 and ox0 < ox1:
            win = gaussian_window(ty1 - ty0, tx1 - tx0)
            total[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] += win[oy0 - ty0 : oy1 - ty0, ox0 - tx0 : ox1 - tx0]
    return total


def _accumulate(
    out, box: tuple[int, int, int, int], result: np.ndarray, weight: np.ndarray, channels: int = 32
) -> None:
    """``out[:, box] += result * weight`` a few channels at a time in float32: the temporaries stay
    small, and float16 arithmetic in numpy is slow."""
    y0, y1, x0, x1 = box
    for c in range(0, result.shape[0], channels):
        part = np.asarray(out[c : c + channels, y0:y1, x0:x1], dtype=np.float32)
        part += result[c : c + channels] * weight
        out[c : c + channels, y0:y1, x0:x1] = part


def run_tiled(
    shape: tuple[int, int],
    compute: TileFn,
    out,
    tile: int,
    overlap: float = 0.25,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> None:
    """Fill ``out`` (C, H, W), zero-initialised, with the blended results of ``compute`` per tile."""
    tiles = tile_grid(shape, tile, overlap)
    for i, (y0, y1, x0, x1) in enumerate(tiles):
        check_stop(should_stop)
        result = compute(y0, y1, x0, x1)
        if len(tiles) == 1:
            out[:, y0:y1, x0:x1] = result
        else:
            _accumulate(
                out, (y0, y1, x0, x1), result, gaussian_window(y1 - y0, x1 - x0) / _weight_sum(tiles, y0, y1, x0, x1)
            )
        report(progress, i + 1, len(tiles), f"tile {i + 1}/{len(tiles)}")
