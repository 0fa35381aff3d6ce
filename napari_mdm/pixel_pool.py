"""The labelled pixels a head is fitted on: drawn per class, gathered, standardised.

With full masks the pool is hundreds of thousands of pixels by hundreds of channels, the largest
thing the fit holds. From compact features the network's channel groups stay int8 codes with
their per-pixel scales (:class:`CodedPixels`): one byte a value instead of bfloat16's two, and the
fit's first layer runs on the codes, as prediction does (:meth:`CompactFeatures.product`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .compact import PIXEL_BLOCK
from .multiscale import CODED, CodedFeatures

CODED_POOL_BYTES = 256 << 20
"""Pools that would take more than this in bfloat16 keep the network's groups coded
(:class:`CodedPixels`): half the bytes, a fit 1.35x slower (the first layer a product per group).
Full masks on a 1024² image (300,000 pixels x 656 channels: 394 MB) are; strokes never are."""

Picks = list[tuple[int, np.ndarray]]
"""(image, flat pixel indices) in the pool's order."""


def draw_pixels(
    labels: Sequence[np.ndarray], class_values: list[int], per_class: int, rng: np.random.Generator
) -> tuple[Picks, np.ndarray]:
    """Up to ``per_class`` labelled pixels of each class, drawn across all images: where they lie,
    and their class indices."""
    picks, classes = [], []
    for k, value in enumerate(class_values):
        where = [np.flatnonzero(lab.ravel() == value) for lab in labels]
        total = sum(len(w) for w in where)
        keep = rng.permutation(total)[: min(per_class, total)]
        offsets = np.cumsum([0] + [len(w) for w in where])
        for i, idx in enumerate(where):
            mine = keep[(keep >= offsets[i]) & (keep < offsets[i + 1])] - offsets[i]
            if len(mine):
                picks.append((i, idx[np.sort(mine)]))
                classes.append(np.full(len(mine), k, np.int64))
    return picks, np.concatenate(classes)


def _pool_size(picks: Picks) -> int:
    """Pixels in the pool."""
    return sum(len(index) for _, index in picks)


def _runs(picks: Picks) -> Iterator[tuple[int, np.ndarray, slice]]:
    """(image, indices, rows of the pool) per pick."""
    start = 0
    for i, index in picks:
        yield i, index, slice(start, start + len(index))
        start += len(index)


def gather(features: Sequence[np.ndarray | CodedFeatures], picks: Picks) -> np.ndarray:
    """The picked pixels as one (n, C) array in the features' own precision (float16 for compact
    ones), filled PIXEL_BLOCK pixels at a time (no copy of a class's pixels beside it)."""
    dtype = np.result_type(*(np.float16 if isinstance(f, CODED) else f.dtype for f in features))
    out = np.empty((_pool_size(picks), features[0].shape[0]), dtype)
    for i, index, rows in _runs(picks):
        if isinstance(features[i], CODED):
            features[i].pixels(index, dtype, out[rows].T)
            continue
        flat = features[i].reshape(features[i].shape[0], -1)
        for a in range(0, len(index), PIXEL_BLOCK):
            out[rows][a : a + PIXEL_BLOCK] = flat[:, index[a : a + PIXEL_BLOCK]].T
    return out


def _moments(blocks: Iterator[torch.Tensor], n: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 mean and std (at least 1e-3) per channel of (m, channels) float32 blocks of n rows in
    all, summed in float64."""
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for part in blocks:
        total += part.sum(0, dtype=torch.float64)
        squares += part.square().sum(0, dtype=torch.float64)  # not in place: a float32 block is x itself
    mean = total / n
    var = (squares - n * mean**2).clamp_min(0) / max(n - 1, 1)
    return mean.float(), var.sqrt().float().clamp_min(1e-3)


def standardised(
    x: torch.Tensor, dtype: torch.dtype, rows: int = 1024
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, C) pixels standardised per channel into ``dtype`` (bfloat16 for a bf16 fit), with the
    float32 mean and std (at least 1e-3). Done a block of rows at a time, so that with full masks
    no float32 copy of them all is made (8192-row blocks left holes the heap grew past). Where
    ``dtype`` is as wide as ``x``'s (float16 -> bfloat16), the result overwrites ``x``."""
    n = len(x)
    mean, std = _moments((x[r : r + rows].float() for r in range(0, n, rows)), n, x.shape[1])
    same_width = x.is_contiguous() and x.element_size() == dtype.itemsize
    out = x.view(dtype) if same_width and x.dtype != dtype else torch.empty(x.shape, dtype=dtype)
    for r in range(0, n, rows):  # each block read before it is overwritten
        out[r : r + rows] = x[r : r + rows].float().sub_(mean).div_(std)
    return out, mean, std


@dataclass(eq=False)
class CodedPixels:
    """A pool of labelled pixels whose first ``grouped`` channels (the network's groups, coded with
    one scale per pixel and group in every compact feature map) are kept as their int8 ``codes``
    and ``scales``, and the rest (filter bank, position: coded per image) decoded and standardised
    in ``rest``. ``mean`` and ``std`` are all channels' statistics of the decoded values."""

    codes: torch.Tensor
    """(n, grouped) int8."""
    scales: torch.Tensor
    """(n, groups) float32."""
    groups: tuple[tuple[int, int], ...]
    rest: torch.Tensor
    """(n, C - grouped), standardised, in the fit's precision."""
    mean: torch.Tensor
    std: torch.Tensor

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def channels(self) -> int:
        return self.codes.shape[1] + self.rest.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        """The fit's precision (``rest``'s): bfloat16 for a bf16 fit."""
        return self.rest.dtype

    def to(self, device: str | torch.device) -> CodedPixels:
        moved = {name: getattr(self, name).to(device) for name in ("codes", "scales", "rest", "mean", "std")}
        return replace(self, **moved)

    def first_layer(self, index: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(E, B, h) outputs of an ensemble's first layer, (E, C, h) ``weight`` and (E, 1, h)
        ``bias``, on the standardised pixels at (E, B) ``index``, computed on the codes: each
        group's product scaled per pixel, the standardisation folded into the weights."""
        grouped = self.codes.shape[1]
        w = weight[:, :grouped] / self.std[:grouped, None]
        out = bias - torch.einsum("c,ech->eh", self.mean[:grouped], w).unsqueeze(1)
        codes, scales = self.codes[index].to(self.dtype), self.scales[index]
        for g, (a, b) in enumerate(self.groups):
            out = out + scales[..., g : g + 1] * torch.bmm(codes[..., a:b], w[:, a:b])
        return out + torch.bmm(self.rest[index], weight[:, grouped:])


def coded_pool(features: Sequence[CodedFeatures], picks: Picks, dtype: torch.dtype) -> CodedPixels:
    """The picked pixels of compact feature maps that share their groups as :class:`CodedPixels`."""
    groups, grouped = features[0].groups, features[0].grouped
    n, c = _pool_size(picks), features[0].shape[0]
    codes, scales = np.empty((n, grouped), np.int8), np.empty((n, len(groups)), np.float32)
    rest = np.empty((n, c - grouped), np.float16)
    for i, index, rows in _runs(picks):
        for a in range(0, len(index), PIXEL_BLOCK):
            part = slice(rows.start + a, min(rows.stop, rows.start + a + PIXEL_BLOCK))
            block_codes, block_scales, block_rest = features[i].split_pixels(index[a : a + PIXEL_BLOCK])
            codes[part], scales[part], rest[part] = block_codes.T, block_scales.T, block_rest.T
    scales_t = torch.from_numpy(scales)

    def decoded_groups(rows: int = 1024) -> Iterator[torch.Tensor]:
        for r in range(0, n, rows):
            block = torch.from_numpy(codes[r : r + rows]).float()
            for g, (a, b) in enumerate(groups):
                block[:, a:b] *= scales_t[r : r + rows, g : g + 1]
            yield block

    mean_g, std_g = _moments(decoded_groups(), n, grouped)
    rest_t, mean_r, std_r = standardised(torch.from_numpy(rest), dtype)
    return CodedPixels(
        torch.from_numpy(codes), scales_t, groups, rest_t, torch.cat([mean_g, mean_r]), torch.cat([std_g, std_r])
    )


def keeps_codes(features: Sequence[np.ndarray | CodedFeatures], picks: Picks) -> bool:
    """Whether the pool of these pixels keeps the groups coded: it is over CODED_POOL_BYTES and
    its features are all compact, with the same groups."""
    large = 2 * features[0].shape[0] * _pool_size(picks) > CODED_POOL_BYTES
    return large and all(isinstance(f, CODED) and f.groups and f.groups == features[0].groups for f in features)
