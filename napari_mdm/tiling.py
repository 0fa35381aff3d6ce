"""Overlapping tiles blended with a Gaussian window, so large images show no seams and memory
is bounded by the tile, not the image.

Each tile's result is weighted by a Gaussian window divided by the sum of the windows of all
tiles covering each pixel, so contributions are added straight into the output array (numpy
or zarr) with no image-sized weight map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np
import torch

from .jobs import ProgressFn, StopFn, check_stop, report

TileFn = Callable[[int, int, int, int], np.ndarray]
"""``compute(y0, y1, x0, x1) -> (C, y1 - y0, x1 - x0)`` float32 result for one tile."""


SLACK = 8
"""Tiles may grow to 1/SLACK longer than the configured tile when that saves tiles: a 522-px side
is one tile (two 512-px tiles would overlap by 502 px), a 1024-px side two tiles of 576 px
instead of three of 512 (1.8x fewer pixels through the network)."""


def axis_tiles(length: int, tile: int, overlap: float, align: int = 1) -> list[tuple[int, int]]:
    """(start, end) of each tile along one axis: the fewest tiles of at most ``tile + tile //
    SLACK`` pixels that overlap by at least ``tile * overlap``, as long as the configured tile where
    that is enough, evenly spaced. Starts are multiples of ``align`` (the network's downsampling
    factor), so every tile's coarse feature grid lies on the image's and overlapping tiles agree;
    the last tile ends at the image's end and is up to ``align - 1`` pixels longer."""
    longest = tile + tile // SLACK
    if length <= longest:
        return [(0, length)]
    shared = tile - max(1, int(tile * (1 - overlap)))  # the overlap of tiles a stride apart
    n = -(-(length - shared) // (longest - shared))
    size = max(tile, -(-(length + (n - 1) * shared) // n))
    starts = [int(i * (length - size) / (n - 1)) // align * align for i in range(n)]
    return [(a, a + size) for a in starts[:-1]] + [(starts[-1], length)]


def tile_grid(shape: tuple[int, int], tile: int, overlap: float, align: int = 1) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every tile covering an image of ``shape`` (see :func:`axis_tiles`)."""
    rows, cols = (axis_tiles(n, tile, overlap, align) for n in shape)
    return [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]


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


Box = tuple[int, int, int, int]


def weighted_tiles(
    shape: tuple[int, int], tile: int, overlap: float, align: int = 1
) -> Iterator[tuple[Box, np.ndarray | None]]:
    """Each tile's (y0, y1, x0, x1) and its blending weights (h, w) float32, the share of the
    tile's result in each of its pixels; None when one tile covers the image (copy, no blend)."""
    tiles = tile_grid(shape, tile, overlap, align)
    for box in tiles:
        y0, y1, x0, x1 = box
        yield box, None if len(tiles) == 1 else gaussian_window(y1 - y0, x1 - x0) / _weight_sum(tiles, *box)


ROW_PASS_BYTES = 1 << 20
"""Float32 bytes blended per pass of rows, so the temporaries stay in cache."""


def add_weighted(dst: torch.Tensor, src: torch.Tensor, weight: np.ndarray | None) -> None:
    """``dst += src * weight`` (or ``dst[...] = src`` without weights) for (C, h, w) maps, summed
    in float32 a few rows at a time: the temporaries stay in cache (a transposing copy from the
    backbone's channels-last maps runs 4x faster so), and float16 ``dst`` is rounded once a tile."""
    rows = max(1, ROW_PASS_BYTES // (4 * dst.shape[0] * dst.shape[2]))
    w = None if weight is None else torch.from_numpy(weight)
    for r in range(0, dst.shape[1], rows):
        part, values = dst[:, r : r + rows], src[:, r : r + rows]
        if w is None:
            part.copy_(values)
        else:
            part.copy_(part.float().addcmul_(values.float(), w[r : r + rows]))


def _accumulate(out, box: Box, result: np.ndarray, weight: np.ndarray | None) -> None:
    """``out[:, box] += result * weight`` (``= result`` without weights): a numpy ``out`` through
    torch (6x faster than numpy's float16 arithmetic), any other array (zarr) in one pass."""
    y0, y1, x0, x1 = box
    if isinstance(out, np.ndarray):
        add_weighted(torch.from_numpy(out)[:, y0:y1, x0:x1], torch.from_numpy(result), weight)
    elif weight is None:
        out[:, y0:y1, x0:x1] = result
    else:
        out[:, y0:y1, x0:x1] = np.asarray(out[:, y0:y1, x0:x1], dtype=np.float32) + result * weight


def run_tiled(
    shape: tuple[int, int],
    compute: TileFn,
    out,
    tile: int,
    overlap: float = 0.25,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    align: int = 1,
) -> None:
    """Fill ``out`` (C, H, W), zero-initialised, with the blended results of ``compute`` per tile."""
    count = len(tile_grid(shape, tile, overlap, align))
    for i, (box, weight) in enumerate(weighted_tiles(shape, tile, overlap, align)):  # one tile's weights at a time
        check_stop(should_stop)
        _accumulate(out, box, compute(*box), weight)
        report(progress, i + 1, count, f"tile {i + 1}/{count}")
