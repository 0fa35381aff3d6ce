"""Compact features whose coarse channel groups stay on their own grid.

A decoder block at 1/2 or 1/4 of the image's resolution holds 4 or 16 times fewer values than its
upsampled maps: the shipped backbone's default blocks 3-6 are 448 of its 656 channels, so holding
them on their grid takes 42 % of per-pixel codes' memory, and none of them is upsampled or coded
per pixel (on the loop's 1024² image that took 2.2 of the features' 8.2 s on one thread). A group's value
at a pixel is the bilinear interpolation of its grid (``F.interpolate``'s, ``align_corners=False``)
there: where the head reads pixels (its fit's labelled ones, a low-rank layer's sample) they are
interpolated on the fly, and its first layer, linear, runs on the grid itself and the product is
interpolated at the pixels the prediction evaluates (:meth:`MultiscaleFeatures.product`).

Each coarse group's grid keeps one cell of context beyond the image on every side (from the tile's
mirrored margin), so the outermost pixels interpolate as the network saw them, not clamped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .compact import PIXEL_BLOCK, ChannelWriter, CompactFeatures, code_per_pixel, decoded_rows

PRODUCT_CELLS = 1 << 16
"""Grid cells multiplied at a time by :meth:`MultiscaleFeatures.product` (bounded temporaries)."""


def grid_cells(n: int, stride: int) -> int:
    """Cells of a ``stride`` grid along n pixels, with the cell of context at each end."""
    return -(-n // stride) + 2


@dataclass(frozen=True)
class Taps:
    """Where n pixels read a grid bilinearly: the flat index of each one's top-left cell and its
    fractions towards the cell to the right and the one below."""

    corner: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    row: int
    """Cells a grid row has (the step from a cell to the one below)."""

    @classmethod
    def of(cls, pixels: np.ndarray, shape: tuple[int, int], stride: int) -> Taps:
        """The taps of flat pixel indices ``pixels`` of an (H, W) image on a ``stride`` grid."""
        y, x = np.divmod(pixels.astype(np.int64), shape[1])
        (i, fy), (j, fx) = _axis(shape[0], stride), _axis(shape[1], stride)
        row = grid_cells(shape[1], stride)
        return cls(torch.from_numpy(i[y] * row + j[x]), torch.from_numpy(fx[x]), torch.from_numpy(fy[y]), row)

    def read(self, grid: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        """(n, c) values at the pixels of a (cells, c) flattened ``grid`` (cells' rows contiguous:
        a tap gathers whole rows): float32 times its (cells,) ``scales`` if given, else in the
        grid's dtype."""

        def at(k: torch.Tensor) -> torch.Tensor:
            rows = grid.index_select(0, k)
            return rows if scales is None else rows.float().mul_(scales[k, None])

        dtype = torch.float32 if scales is not None else grid.dtype
        k, fx, fy = self.corner, self.fx[:, None].to(dtype), self.fy[:, None].to(dtype)
        top = torch.lerp(at(k), at(k + 1), fx)
        bottom = torch.lerp(at(k + self.row), at(k + self.row + 1), fx)
        return torch.lerp(top, bottom, fy)


@lru_cache(maxsize=16)
def _axis(n: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of n pixels along an axis, the grid cell at or before it (the context cell being
    cell 0) and its fraction of the way to the next: ``F.interpolate``'s source coordinate."""
    u = (np.arange(n) + 0.5) / stride + 0.5
    i = np.floor(u).astype(np.int64)
    return i, (u - i).astype(np.float32)


def _index(pixels: slice | torch.Tensor) -> np.ndarray:
    return np.arange(pixels.start, pixels.stop) if isinstance(pixels, slice) else pixels.numpy()


@dataclass(eq=False)
class MultiscaleFeatures:
    """(C, H, W) features: the channel groups in ``coarse`` held on their block's grid (one
    single-group :class:`CompactFeatures` each, a cell a pixel, with a cell of context around),
    every other channel per pixel in ``full``, in channel order. Reads like CompactFeatures."""

    full: CompactFeatures
    coarse: dict[int, tuple[int, CompactFeatures]]
    """Group index -> (stride, its codes on a grid of (grid_cells(H), grid_cells(W)) cells)."""
    groups: tuple[tuple[int, int], ...]
    """All groups' channel ranges [start, stop), coarse or not, in order, from channel 0."""

    @classmethod
    def empty(
        cls, channels: int, height: int, width: int, widths: Sequence[int], strides: Sequence[int]
    ) -> MultiscaleFeatures:
        """All-zero features whose first channels form groups of ``widths``; those with a stride
        over 1 are held on that grid."""
        ends = np.cumsum([0, *widths])
        groups = tuple((int(a), int(b)) for a, b in zip(ends[:-1], ends[1:], strict=True))
        coarse = {
            g: (s, CompactFeatures.empty(b - a, grid_cells(height, s), grid_cells(width, s), [b - a]))
            for g, ((a, b), s) in enumerate(zip(groups, strides, strict=True))
            if s > 1
        }
        fine = [b - a for g, (a, b) in enumerate(groups) if g not in coarse]
        held = sum(b - a for g, (a, b) in enumerate(groups) if g in coarse)
        return cls(CompactFeatures.empty(channels - held, height, width, fine), coarse, groups)

    @staticmethod
    def nbytes_for(channels: int, height: int, width: int, widths: Sequence[int], strides: Sequence[int]) -> int:
        """Bytes such features take (:meth:`empty`'s arguments), without allocating them."""
        coarse = [(c, s) for c, s in zip(widths, strides, strict=True) if s > 1]
        held = sum(c for c, _ in coarse)
        fine = CompactFeatures.pixel_bytes(channels - held, len(widths) - len(coarse)) * height * width
        return fine + sum(
            CompactFeatures.pixel_bytes(c, 1) * grid_cells(height, s) * grid_cells(width, s) for c, s in coarse
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        held = sum(coded.shape[0] for _, coded in self.coarse.values())
        return (self.full.shape[0] + held, *self.full.shape[1:])

    @property
    def grouped(self) -> int:
        return self.groups[-1][1] if self.groups else 0

    @property
    def nbytes(self) -> int:
        return self.full.nbytes + sum(coded.nbytes for _, coded in self.coarse.values())

    def _full_channels(self) -> np.ndarray:
        """The channels ``full`` holds, in its order."""
        keep = np.ones(self.shape[0], bool)
        for g in self.coarse:
            keep[slice(*self.groups[g])] = False
        return np.flatnonzero(keep)

    def _full_group(self, group: int) -> int:
        return sum(1 for g in range(group) if g not in self.coarse)

    def stride(self, group: int) -> int:
        """The step in pixels of the grid group ``group`` is held on (1: per pixel)."""
        return self.coarse[group][0] if group in self.coarse else 1

    def add_group(
        self, group: int, box: tuple[int, int, int, int], values: torch.Tensor, weight: np.ndarray | None
    ) -> None:
        """:meth:`CompactFeatures.add_group` for a group held per pixel."""
        self.full.add_group(self._full_group(group), box, values, weight)

    def add_tile(
        self, group: int, box: tuple[int, int, int, int], maps: torch.Tensor, margin: int, weight: np.ndarray | None
    ) -> None:
        """Blend a tile's (c, rows, cols) float32 ``maps`` (overwritten) of coarse group ``group``,
        on the grid of the tile's input, which starts ``margin`` pixels before the tile's box (y0,
        y1, x0, x1): the cells whose centre pixel (clamped into the image) lies in the box, each by
        the tile's ``weight`` (h, w) there (None: one tile, no blend). Tiles' weights sum to 1 at
        every pixel, so the cells' blends do too."""
        stride, coded = self.coarse[group]
        (y0, y1, x0, x1), (h, w) = box, self.full.shape[1:]

        def axis(a: int, b: int, n: int, cells: int) -> tuple[np.ndarray, int, int]:
            centres = np.clip(np.arange(-1, cells - 1) * stride + stride // 2, 0, n - 1)
            inside = np.flatnonzero((centres >= a) & (centres < b))
            first = inside[0] - 1 + (margin - a) // stride  # the tile's own cell index (context cell: row 0)
            return centres[inside] - a, int(inside[0]), first

        ys, r0, k0 = axis(y0, y1, h, coded.shape[1])
        xs, c0, l0 = axis(x0, x1, w, coded.shape[2])
        part = maps[:, k0 : k0 + len(ys), l0 : l0 + len(xs)]
        cell_weight = None if weight is None else np.ascontiguousarray(weight[np.ix_(ys, xs)])
        coded.add_group(0, (r0, r0 + len(ys), c0, c0 + len(xs)), part, cell_weight)

    def channels(self, first: int, count: int) -> ChannelWriter:
        """Channels after the groups, as :meth:`CompactFeatures.channels`."""
        if first < self.grouped:
            raise IndexError(f"channel {first} is in a group, not coded per channel")
        return self.full.channels(first - (self.shape[0] - self.full.shape[0]), count)

    def _sample(self, group: int, taps: Taps) -> tuple[torch.Tensor, torch.Tensor]:
        """Coarse group ``group`` at ``taps``' pixels, interpolated and coded per pixel as a compact
        map's group: (c, n) int8 codes and (n,) float32 scales. What the head reads at a pixel
        (its fit, a low-rank layer's sample) is their product."""
        _, coded = self.coarse[group]
        codes = torch.from_numpy(coded.codes).view(coded.shape[0], -1)
        scales = torch.from_numpy(coded.pixel_scales).view(-1).float()
        coded, scale = code_per_pixel(taps.read(codes.T, scales).T)
        return coded.to(torch.int8), scale.float()

    def _taps(self, index: np.ndarray) -> dict[int, Taps]:
        shape = self.full.shape[1:]
        return {s: Taps.of(index, shape, s) for s in {s for s, _ in self.coarse.values()}}

    def split_pixels(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`CompactFeatures.split_pixels`, the coarse groups as :meth:`_sample` codes them."""
        full_codes, full_scales, rest = self.full.split_pixels(index)
        codes = np.empty((self.grouped, len(index)), np.int8)
        scales = np.empty((len(self.groups), len(index)), np.float32)
        taps, fine = self._taps(index), 0
        for g, (a, b) in enumerate(self.groups):
            if g in self.coarse:
                group_codes, scale = self._sample(g, taps[self.coarse[g][0]])
                codes[a:b], scales[g] = group_codes.numpy(), scale.numpy()
            else:
                start = self.full.groups[fine][0]
                codes[a:b], scales[g] = full_codes[start : start + b - a], full_scales[fine]
                fine += 1
        return codes, scales, rest

    def pixels(self, index: np.ndarray, dtype: type = np.float32, out: np.ndarray | None = None) -> np.ndarray:
        """(C, n) decoded features at flat pixel indices ``index`` (:meth:`CompactFeatures.pixels`)."""
        out = np.empty((self.shape[0], len(index)), dtype) if out is None else out
        full = self._full_channels()
        for a in range(0, len(index), PIXEL_BLOCK):
            part = index[a : a + PIXEL_BLOCK]
            out[full, a : a + len(part)] = self.full.pixels(part)
            taps = self._taps(part)
            for g, (s, _) in self.coarse.items():
                codes, scale = self._sample(g, taps[s])
                out[slice(*self.groups[g]), a : a + len(part)] = (codes.float() * scale).numpy()
        return out

    def to_float16(self) -> np.ndarray:
        """The decoded (C, H, W) float16 features."""
        return decoded_rows(self)

    def product(self, weight: torch.Tensor, dtype: torch.dtype) -> Callable[[slice | torch.Tensor], torch.Tensor]:
        """:meth:`CompactFeatures.product`: the per-pixel channels' product at the pixels, plus each
        grid's product with its groups' weights (computed once, on the grid: bilinear interpolation
        and a matrix product commute) interpolated there."""
        full = self.full.product(weight[:, torch.from_numpy(self._full_channels())], dtype)
        by_stride: dict[int, list[int]] = {}
        for g, (s, _) in self.coarse.items():
            by_stride.setdefault(s, []).append(g)

        def on_grid(g: int, cells: slice) -> torch.Tensor:  # (cells, r): a cell's row contiguous
            _, coded = self.coarse[g]
            codes = torch.from_numpy(coded.codes).view(coded.shape[0], -1)[:, cells]
            scales = torch.from_numpy(coded.pixel_scales).view(-1, 1)[cells]
            return torch.mm(codes.T.to(dtype), weight[:, slice(*self.groups[g])].T.to(dtype)).mul_(scales.to(dtype))

        grids: dict[int, torch.Tensor] = {}  # per stride, in ``dtype``: half the bytes to gather in bfloat16
        for s, members in by_stride.items():
            _, first = self.coarse[members[0]]
            grid = grids[s] = torch.empty(first.shape[1] * first.shape[2], weight.shape[0], dtype=dtype)
            for a in range(0, len(grid), PRODUCT_CELLS):
                cells = slice(a, a + PRODUCT_CELLS)
                grid[cells] = sum(on_grid(g, cells) for g in members)
        shape = self.full.shape[1:]

        def apply(pixels: slice | torch.Tensor) -> torch.Tensor:
            index, coarse = _index(pixels), None
            for s, grid in grids.items():  # summed pixel-major, then added to the (r, n) output once
                part = Taps.of(index, shape, s).read(grid).float()
                coarse = part if coarse is None else coarse.add_(part)
            out = full(pixels)
            return out if coarse is None else out.add_(coarse.T)

        return apply

    def write_zarr(self, store: str):
        """Write as a zarr group at ``store`` (``full`` and each coarse grid a subgroup)."""
        import zarr

        group = zarr.open_group(store, mode="w")
        self.full.write_into(group.create_group("full"))
        for g, (_, coded) in self.coarse.items():
            coded.write_into(group.create_group(f"coarse_{g}"))
        group.attrs["groups"] = [list(g) for g in self.groups]
        group.attrs["strides"] = {str(g): s for g, (s, _) in self.coarse.items()}
        return group

    @classmethod
    def read_zarr(cls, group) -> MultiscaleFeatures:
        """Features written by :meth:`write_zarr`, checked for consistent shapes."""
        groups = tuple((int(a), int(b)) for a, b in group.attrs["groups"])
        full = CompactFeatures.read_zarr(group["full"])
        coarse = {
            int(g): (int(s), CompactFeatures.read_zarr(group[f"coarse_{g}"])) for g, s in group.attrs["strides"].items()
        }
        out = cls(full, coarse, groups)
        h, w = full.shape[1:]
        expected = {
            g: (b - a, grid_cells(h, s), grid_cells(w, s)) for g, (s, _) in coarse.items() for a, b in [groups[g]]
        }
        if any(coded.shape != expected[g] for g, (_, coded) in coarse.items()) or (
            len(full.groups) != len(groups) - len(coarse)
        ):
            raise ValueError("malformed multiscale features")
        return out


CodedFeatures = CompactFeatures | MultiscaleFeatures
CODED = (CompactFeatures, MultiscaleFeatures)
"""The feature maps held as int8 codes (for ``isinstance``)."""
