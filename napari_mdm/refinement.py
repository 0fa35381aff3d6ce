"""Coarse-to-fine evaluation of a per-pixel classifier: exact where the answer changes, interpolated
where it cannot.

The head's maps are evaluated first on every ``stride``-th pixel of every ``stride``-th row. A
grid cell whose four corners are all sure of the same class (every ensemble member votes for it)
is filled by bilinear interpolation of its corners' maps; the other cells are split in four and
their new corners evaluated, down to single pixels. Most of an image lies inside large regions of
one class, so the head runs on a fraction of the pixels (on the ``benchmarks.loop`` images: a fifth
to a third at stride 4) and the labels match the exact evaluation's on all but a few pixels in
10,000: a thing thinner than the grid that no corner sees is the only thing it can miss.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .jobs import ProgressFn, StopFn, check_stop, report

Evaluate = Callable[[slice | torch.Tensor], torch.Tensor]
"""``evaluate(pixels)`` -> the (M, n) maps of flat pixel indices ``pixels`` (a slice or a sorted int64 tensor)."""
Decide = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``decide(maps)`` -> per pixel of (M, n) maps: its class index and whether it is sure of it."""


def grid_lines(n: int, stride: int) -> np.ndarray:
    """Rows (or columns) of a stride grid over n: every stride-th from 0, and the last one."""
    lines = np.arange(0, n, stride)
    return lines if lines[-1] == n - 1 else np.append(lines, n - 1)


def _on_grid(h: int, w: int, stride: int) -> np.ndarray:
    """(H, W) mask of the pixels where a stride grid's rows and columns cross."""
    mask = np.zeros((h, w), bool)
    mask[np.ix_(grid_lines(h, stride), grid_lines(w, stride))] = True
    return mask


def _cell_of(n: int, lines: np.ndarray) -> np.ndarray:
    """For each of n rows, the grid cell (between lines i and i + 1) it lies in."""
    return np.clip(np.searchsorted(lines, np.arange(n), side="right") - 1, 0, len(lines) - 2)


def _sure_cells(classes: np.ndarray, sure: np.ndarray) -> np.ndarray:
    """Cells of a grid whose four corners are sure of the same class."""
    same = classes[:-1, :-1]
    corners = (classes[1:, :-1], classes[:-1, 1:], classes[1:, 1:])
    ok = sure[:-1, :-1] & sure[1:, :-1] & sure[:-1, 1:] & sure[1:, 1:]
    for other in corners:
        ok &= other == same
    return ok


def _interpolate(
    corner_maps: torch.Tensor,
    rows: np.ndarray,
    cols: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
) -> torch.Tensor:
    """Bilinear (M, n) maps at pixels (ys, xs), which lie in the grid's cells (i, j), from the
    (M, R, C) maps at the grid's corners."""
    fy = torch.from_numpy(((ys - rows[i]) / (rows[i + 1] - rows[i])).astype(np.float32))
    fx = torch.from_numpy(((xs - cols[j]) / (cols[j + 1] - cols[j])).astype(np.float32))
    corners = corner_maps.reshape(len(corner_maps), -1)
    k = torch.from_numpy(i * len(cols) + j)
    top = torch.lerp(corners.index_select(1, k), corners.index_select(1, k + 1), fx)
    k += len(cols)
    bottom = torch.lerp(corners.index_select(1, k), corners.index_select(1, k + 1), fx)
    return torch.lerp(top, bottom, fy)


def coarse_to_fine(
    evaluate: Evaluate,
    decide: Decide,
    out: torch.Tensor,
    shape: tuple[int, int],
    stride: int,
    chunk: int,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> int:
    """Fill ``out`` (M, H * W) with the maps of an (H, W) image, coarse to fine from a grid of
    ``stride`` (a power of two) as the module says, or every pixel where ``stride`` is 1 or the image
    thinner than 2 pixels; ``chunk`` pixels evaluated at a time. Returns the number evaluated."""
    h, w = shape
    done = 0

    def run(pixels: list[slice | torch.Tensor]) -> None:
        nonlocal done
        for part in pixels:
            check_stop(should_stop)
            out[:, part] = evaluate(part)
            done += part.stop - part.start if isinstance(part, slice) else len(part)
            report(progress, done, h * w, "pixels")  # no pixel is evaluated twice

    if stride == 1 or min(h, w) < 2:
        run([slice(s, min(s + chunk, h * w)) for s in range(0, h * w, chunk)])
        return done
    final = np.zeros((h, w), bool)
    maps = out.view(-1, h, w)

    def run_where(mask: np.ndarray) -> None:
        index = torch.from_numpy(np.flatnonzero(mask))
        run([index[s : s + chunk] for s in range(0, len(index), chunk)])
        final[mask] = True

    run_where(_on_grid(h, w, stride))
    while stride > 1:
        rows, cols = grid_lines(h, stride), grid_lines(w, stride)
        corner_maps = maps[:, torch.from_numpy(rows)][:, :, torch.from_numpy(cols)]
        classes, sure = decide(corner_maps.reshape(len(corner_maps), -1).numpy())
        cells = _sure_cells(classes.reshape(len(rows), len(cols)), sure.reshape(len(rows), len(cols)))
        cell_rows, cell_cols = _cell_of(h, rows), _cell_of(w, cols)
        fill = cells[np.ix_(cell_rows, cell_cols)] & ~final
        filled = np.flatnonzero(fill)
        ys, xs = filled // w, filled % w
        out[:, torch.from_numpy(filled)] = _interpolate(corner_maps, rows, cols, cell_rows[ys], cell_cols[xs], ys, xs)
        final |= fill
        stride //= 2
        run_where(_on_grid(h, w, stride) & ~final)
    report(progress, h * w, h * w, "pixels")
    return done
