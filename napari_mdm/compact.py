"""Feature maps held in one byte a value (int8 codes) instead of float16's two.

Two codings, each where it fits:

- The network's channels, one group per timestep and decoder block, are normalised (each block per
  cell of its grid), so a pixel's group shares one scale (block floating point): code = round(x /
  s), s = the group's largest magnitude at that pixel / 127, kept as float16 per pixel and group. Overlapping tiles blend by decoding, adding and coding again. (Groups
  below full resolution are held on their own grid instead, coded the same way per cell:
  ``multiscale``.)
- The filter bank and position channels, computed over the whole image at once, get one step and
  offset per channel, from the channel's range on a sample of the image's pixels (values beyond it,
  at most a few in 65,536, are clipped).

Prediction never decodes a whole map: the head's first layer is a matrix product, so each group's
product with its codes is scaled per pixel afterwards, and the channel steps and offsets fold into
the weights and the bias (:meth:`CompactFeatures.product`). Int8 codes turn into bfloat16 for that
product 8x faster than float16 values do on a CPU. The coding error is about 1 % of a channel's
spread (``benchmarks.loop``: labels as with float16 on 99.9 % of the pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .memory import zeros
from .tiling import ROW_PASS_BYTES

CODE_MAX = 127
RANGE_SAMPLE = 65536
"""Pixels whose range sets a whole-image channel's step and offset."""
PIXEL_BLOCK = 8192
"""Pixels decoded at a time by :meth:`CompactFeatures.pixels`."""


@dataclass(eq=False)
class CompactFeatures:
    """(C, H, W) features as int8 ``codes``: channel c of pixel p is ``codes[c, p] *
    channel_steps[c] * pixel_scales[g, p] + offsets[c]`` where c lies in ``groups[g]``, and
    ``codes[c, p] * channel_steps[c] + offsets[c]`` for the channels after the groups."""

    codes: np.ndarray
    pixel_scales: np.ndarray
    """(G, H, W) float16: per pixel, one scale per group of ``groups``."""
    groups: tuple[tuple[int, int], ...]
    """Channel ranges [start, stop) coded per pixel, in order, from channel 0."""
    channel_steps: np.ndarray
    offsets: np.ndarray

    @classmethod
    def empty(cls, channels: int, height: int, width: int, widths: Sequence[int]) -> CompactFeatures:
        """All-zero features whose first channels form groups of ``widths`` channels."""
        ends = np.cumsum([0, *widths])
        if ends[-1] > channels:
            raise ValueError(f"groups of {list(widths)} channels do not fit in {channels}")
        return cls(
            zeros((channels, height, width), np.int8),
            zeros((len(widths), height, width), np.float16),
            tuple((int(a), int(b)) for a, b in zip(ends[:-1], ends[1:], strict=True)),
            np.ones(channels, np.float32),
            np.zeros(channels, np.float32),
        )

    @staticmethod
    def pixel_bytes(channels: int, groups: int) -> int:
        """Bytes a pixel of such features takes: one code a channel and a float16 scale a group
        (the per-channel steps and offsets are per image)."""
        return channels + groups * np.dtype(np.float16).itemsize

    @classmethod
    def from_array(cls, features: np.ndarray, widths: Sequence[int]) -> CompactFeatures:
        """``features`` (C, H, W) coded at once: the first channels in groups of ``widths``, the rest
        per channel."""
        c, h, w = features.shape
        out = cls.empty(c, h, w, widths)
        values = torch.from_numpy(np.ascontiguousarray(features))
        for g, (start, stop) in enumerate(out.groups):
            out.add_group(g, (0, h, 0, w), values[start:stop], None)
        for channel in range(out.grouped, c):
            out.set_channel(channel, values[channel])
        return out

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.codes.shape

    @property
    def grouped(self) -> int:
        """Channels coded per pixel (the groups'); the rest are coded per channel."""
        return self.groups[-1][1] if self.groups else 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.codes, self.pixel_scales, self.channel_steps, self.offsets))

    def add_group(
        self, group: int, box: tuple[int, int, int, int], values: torch.Tensor, weight: np.ndarray | None
    ) -> None:
        """Blend (c, h, w) ``values`` of group ``group`` into the region ``box`` (y0, y1, x0, x1):
        the region's decoded values plus ``values * weight`` coded again (without a weight,
        ``values`` replace them), a few rows at a time. Only the columns an earlier tile wrote
        (a nonzero scale) are decoded: elsewhere the decoded values are zeros."""
        start, stop = self.groups[group]
        y0, y1, x0, x1 = box
        codes = torch.from_numpy(self.codes)[start:stop, y0:y1, x0:x1]
        scales = torch.from_numpy(self.pixel_scales)[group, y0:y1, x0:x1]
        w = None if weight is None else torch.from_numpy(weight)
        rows = max(1, ROW_PASS_BYTES // (4 * (stop - start) * (x1 - x0)))
        for r in range(0, y1 - y0, rows):
            part = values[:, r : r + rows].float()
            if w is not None:
                part = _blend(part, w[r : r + rows], codes[:, r : r + rows], scales[r : r + rows])
            codes[:, r : r + rows], scales[r : r + rows] = code_per_pixel(part)

    def set_channel(self, channel: int, values: np.ndarray | torch.Tensor) -> None:
        """Code one whole (H, W) channel with its own step and offset, from its range on a fixed
        sample of the pixels (the range of all of them when the sample's is flat)."""
        v = torch.as_tensor(values).float()
        flat = v.reshape(-1)
        if flat.numel() > RANGE_SAMPLE:
            lo, hi = flat[_range_picks(flat.numel())].aminmax()
            if not hi > lo:
                lo, hi = flat.aminmax()
        else:
            lo, hi = flat.aminmax()
        mid, step = float(lo + hi) / 2, float(hi - lo) / (2 * CODE_MAX)
        self.offsets[channel], self.channel_steps[channel] = mid, step
        coded = (v - mid).div_(max(step, 1e-30)).round_().clamp_(-CODE_MAX, CODE_MAX)
        self.codes[channel] = coded.to(torch.int8).numpy()

    def split_pixels(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pixels at flat indices ``index`` in three parts: the groups' (grouped, n) int8 codes,
        their (G, n) float32 scales, and the other channels decoded, (C - grouped, n) float32."""
        c, h, w = self.shape
        grouped = self.grouped
        codes = self.codes.reshape(c, h * w)[:, index]
        scales = self.pixel_scales.reshape(len(self.groups), h * w)[:, index].astype(np.float32)
        rest = codes[grouped:].astype(np.float32)
        rest *= self.channel_steps[grouped:, None]
        rest += self.offsets[grouped:, None]
        return codes[:grouped], scales, rest

    def pixels(self, index: np.ndarray, dtype: type = np.float32, out: np.ndarray | None = None) -> np.ndarray:
        """(C, n) decoded features of the pixels at flat indices ``index``, in ``dtype`` or written
        into ``out`` (C, n), which may be a view; decoded PIXEL_BLOCK pixels at a time (hundreds of
        thousands of labelled pixels are no float32 copy)."""
        out = np.empty((self.shape[0], len(index)), dtype) if out is None else out
        for a in range(0, len(index), PIXEL_BLOCK):
            codes, scales, rest = self.split_pixels(index[a : a + PIXEL_BLOCK])
            for g, (start, stop) in enumerate(self.groups):
                out[start:stop, a : a + PIXEL_BLOCK] = codes[start:stop] * scales[g]
            out[self.grouped :, a : a + PIXEL_BLOCK] = rest
        return out

    def to_float16(self) -> np.ndarray:
        """The decoded (C, H, W) float16 features."""
        return decoded_rows(self)

    def write_zarr(self, store: str):
        """Write the codes and their scales as a zarr group at ``store``; returns the group."""
        import zarr

        return self.write_into(zarr.open_group(store, mode="w"))

    def write_into(self, group):
        """Write the codes and their scales into the (empty) zarr group ``group``; returns it."""
        for name in ("codes", "pixel_scales", "channel_steps", "offsets"):
            values = getattr(self, name)
            chunks = (values.shape[0], 256, 256) if values.ndim == 3 else values.shape
            group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks)[...] = values
        group.attrs["groups"] = [list(g) for g in self.groups]
        return group

    @classmethod
    def read_zarr(cls, group) -> CompactFeatures:
        """Features written by :meth:`write_zarr`, checked for consistent shapes."""
        arrays = [np.asarray(group[name]) for name in ("codes", "pixel_scales", "channel_steps", "offsets")]
        groups = tuple((int(a), int(b)) for a, b in group.attrs["groups"])
        out = cls(*arrays[:2], groups, *arrays[2:])
        c, h, w = out.shape
        if (
            out.codes.dtype != np.int8
            or out.pixel_scales.shape != (len(groups), h, w)
            or out.channel_steps.shape != (c,)
            or out.offsets.shape != (c,)
            or any(not 0 <= a < b <= c for a, b in groups)
        ):
            raise ValueError("malformed compact features")
        return out

    def channels(self, first: int, count: int) -> ChannelWriter:
        """Channels first:first + count as a target that channel-by-channel writers fill (the
        filter bank, position)."""
        return ChannelWriter(self, first, count)

    def product(self, weight: torch.Tensor, dtype: torch.dtype) -> Callable[[slice | torch.Tensor], torch.Tensor]:
        """``fn(pixels)`` -> ``weight @ x`` (float32, (r, n)) for the decoded pixels ``pixels`` of the
        flattened map (a slice, or an int64 tensor of indices) and an (r, C) float32 ``weight``, the
        products in ``dtype`` (bfloat16 where native) on the codes themselves."""
        c = self.shape[0]
        steps, offsets = torch.from_numpy(self.channel_steps), torch.from_numpy(self.offsets)
        scaled = (weight * steps).to(dtype)
        bias = (weight @ offsets).unsqueeze(1)
        pixels = self.shape[1] * self.shape[2]
        codes = torch.from_numpy(self.codes).reshape(c, pixels)
        scales = torch.from_numpy(self.pixel_scales).view(len(self.groups), pixels)
        tail = self.grouped

        def apply(pixels: slice | torch.Tensor) -> torch.Tensor:
            x = (codes[:, pixels] if isinstance(pixels, slice) else _take(self.codes, pixels)).to(dtype)
            out = bias.expand(-1, x.shape[1]).clone()
            for g, (a, b) in enumerate(self.groups):
                out.addcmul_(scaled[:, a:b] @ x[a:b], scales[g, pixels].float())
            if tail < c:
                out.add_(scaled[:, tail:] @ x[tail:])
            return out

        return apply


def code_per_pixel(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block floating point for a group's (c, ...) float32 ``values`` (overwritten): per pixel, the
    float16 scale (its largest magnitude / CODE_MAX) and the values in steps of it, rounded (float32
    in -CODE_MAX..CODE_MAX)."""
    scale = (values.abs().amax(0) / CODE_MAX).half()
    return values.div_(scale.float().clamp_min(1e-30)).round_().clamp_(-CODE_MAX, CODE_MAX), scale


def decoded_rows(features) -> np.ndarray:
    """(C, H, W) float16 of coded features (anything with ``shape`` and ``pixels(index, dtype)``),
    decoded a row at a time."""
    c, h, w = features.shape
    out = np.empty((c, h, w), np.float16)
    for row in range(h):
        out[:, row] = features.pixels(np.arange(row * w, (row + 1) * w), np.float16)
    return out


def _take(codes: np.ndarray, pixels: torch.Tensor) -> torch.Tensor:
    """Columns ``pixels`` of the (C, H, W) codes as a (C, n) tensor: numpy's take gathers int8
    2-3x faster than torch's indexing."""
    c, h, w = codes.shape
    return torch.from_numpy(np.take(codes.reshape(c, h * w), pixels.numpy(), axis=1))


def _blend(values: torch.Tensor, weight: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``decoded + values * weight`` for (c, rows, w) float32 ``values`` (overwritten) and the coded
    rows they blend into, decoding only the span of columns with a nonzero scale (written before)."""
    written = torch.nonzero(scales.ne(0).any(0)).squeeze(1)
    blended = None
    if len(written):
        a, b = int(written[0]), int(written[-1]) + 1
        blended = codes[:, :, a:b].float().mul_(scales[:, a:b].float()).addcmul_(values[:, :, a:b], weight[:, a:b])
    out = values.mul_(weight)
    if blended is not None:
        out[:, :, a:b] = blended
    return out


@lru_cache(maxsize=4)
def _range_picks(pixels: int) -> torch.Tensor:
    """RANGE_SAMPLE fixed pixel indices (seed 0) whose range sets a channel's step and offset;
    the same for every channel of an image, so drawn once."""
    return torch.randint(pixels, (RANGE_SAMPLE,), generator=torch.Generator().manual_seed(0))


@dataclass(eq=False)
class ChannelWriter:
    """Channels first:first + count of compact features, as ``target[k] = (H, W) values`` fills
    them: each coded per channel as it arrives."""

    features: CompactFeatures
    first: int
    count: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.count, *self.features.shape[1:])

    def __setitem__(self, k: int, values: np.ndarray | torch.Tensor) -> None:
        if not 0 <= k < self.count or self.first + k < self.features.grouped:
            raise IndexError(f"channel {self.first + k} is not one coded per channel")
        self.features.set_channel(self.first + k, values)
