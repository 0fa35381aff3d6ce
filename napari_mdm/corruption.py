"""How images are corrupted for pretraining and for reading features.

One config picks the mode:

- ``mdm``: 8x8 patches masked with probability t/T, masked pixels set to 0 (the default);
- ``ddpm``: Gaussian diffusion noise (linear or cosine schedule), the ddpm-segmentation baseline;
- ``umd``: a batch mixes clean samples masked at a high ratio with noisy samples masked lightly;
- ``maskdm``: noise first, then a mask of patches, blocks of patches, or one visible crop.

Training draws come from a seeded ``torch.Generator``. Feature draws are hashed from
(seed, pixel coordinates), so a tile of a large image sees exactly the mask or noise the whole
image would: tiles agree on their overlaps, and memory never depends on the image size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

MODES = ("mdm", "ddpm", "umd", "maskdm")
MASK_SHAPES = ("patch", "block", "crop")
SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class CorruptionConfig:
    mode: str = "mdm"
    num_timesteps: int = 1000
    patch_size: int = 8
    mask_shape: str = "patch"
    """MaskDM shapes: ``patch``, ``block`` (squares of ``block_patches`` patches) or ``crop``."""
    block_patches: int = 4
    schedule: str = "linear"
    """Noise schedule for ddpm and maskdm; umd always uses cosine, as in its paper."""
    maskdm_mask_ratio: float = 0.5
    umd_clean_fraction: float = 0.5
    umd_clean_mask_ratio: float = 0.75
    umd_noisy_mask_ratio: float = 0.375

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown corruption mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.mask_shape not in MASK_SHAPES:
            raise ValueError(f"unknown mask shape {self.mask_shape!r}: choose one of {', '.join(MASK_SHAPES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")

    @property
    def noise_schedule(self) -> str:
        return "cosine" if self.mode == "umd" else self.schedule

    @property
    def predicts(self) -> str:
        """What the network's output means: ``x0``, ``eps``, or ``mixed`` (eps visible, x0 masked)."""
        return {"mdm": "x0", "ddpm": "eps", "maskdm": "eps", "umd": "mixed"}[self.mode]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CorruptionConfig:
        from .settings import from_settings

        return from_settings(
            cls,
            data,
            {
                "num_timesteps": (1, 100_000),
                "patch_size": (1, 4096),
                "block_patches": (1, 4096),
                "maskdm_mask_ratio": (0, 1),
                "umd_clean_fraction": (0, 1),
                "umd_clean_mask_ratio": (0, 1),
                "umd_noisy_mask_ratio": (0, 1),
            },
        )


class Corrupted(NamedTuple):
    """A corrupted batch and what produced it (all tensors on the batch's device)."""

    x_t: torch.Tensor
    t: torch.Tensor  # (B,) integer timesteps
    mask: torch.Tensor  # (B, 1, H, W) float, 1 = masked
    noise: torch.Tensor | None  # (B, C, H, W) or None when no noise was added


@lru_cache(maxsize=8)
def _alpha_bar_table(schedule: str, num_timesteps: int) -> np.ndarray:
    """alpha_bar[t] for t = 0..T, with alpha_bar[0] = 1 (clean)."""
    if schedule == "linear":
        scale = 1000 / num_timesteps
        betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
        return np.concatenate([[1.0], np.cumprod(1 - betas)])
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.clip(f / f[0], 1e-5, 1.0)


def alpha_bar(t: torch.Tensor | int, config: CorruptionConfig) -> torch.Tensor:
    """Fraction of signal kept at timestep t under the config's noise schedule."""
    table = torch.from_numpy(_alpha_bar_table(config.noise_schedule, config.num_timesteps)).float()
    return table[torch.as_tensor(t).long().cpu()]


def mask_ratio(t: torch.Tensor | int, config: CorruptionConfig) -> torch.Tensor:
    """MDM's mask ratio t/T."""
    return torch.as_tensor(t).float() / config.num_timesteps


# ---------------------------------------------------------------- training draws (torch RNG)


def _grid_mask(b: int, gh: int, gw: int, ratio: torch.Tensor, gen: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(b, 1, gh, gw, generator=gen, device=device) < ratio.to(device).view(-1, 1, 1, 1)).float()


def _crop_mask(b: int, h: int, w: int, ratio: torch.Tensor, gen: torch.Generator, device) -> torch.Tensor:
    """Everything masked but one random crop of area (1 - ratio), corners on a 4 px grid."""
    mask = torch.ones(b, 1, h, w, device=device)
    for i in range(b):
        keep = float(1 - ratio[i])
        ch = max(4, int(round(h * math.sqrt(keep) / 4)) * 4) if keep > 0 else 0
        cw = max(4, int(round(w * math.sqrt(keep) / 4)) * 4) if keep > 0 else 0
        if ch == 0:
            continue
        ch, cw = min(ch, h), min(cw, w)
        y = int(torch.randint(0, (h - ch) // 4 + 1, (1,), generator=gen, device=device)) * 4
        x = int(torch.randint(0, (w - cw) // 4 + 1, (1,), generator=gen, device=device)) * 4
        mask[i, :, y : y + ch, x : x + cw] = 0
    return mask


def random_mask(
    shape: tuple[int, int, int], ratio: torch.Tensor, config: CorruptionConfig, gen: torch.Generator, device
) -> torch.Tensor:
    """A (B, 1, H, W) mask (1 = masked) with per-sample ``ratio``, of the config's mask shape."""
    b, h, w = shape
    if config.mask_shape == "crop":
        return _crop_mask(b, h, w, ratio, gen, device)
    cell = config.patch_size * (config.block_patches if config.mask_shape == "block" else 1)
    grid = _grid_mask(b, -(-h // cell), -(-w // cell), ratio, gen, device)
    return grid.repeat_interleave(cell, 2).repeat_interleave(cell, 3)[:, :, :h, :w]


def corrupt_batch(x0: torch.Tensor, config: CorruptionConfig, gen: torch.Generator) -> Corrupted:
    """Draw timesteps and corrupt a batch of clean images in [-1, 1] for a pretraining step."""
    b, _, h, w = x0.shape
    device = x0.device
    t = torch.randint(1, config.num_timesteps + 1, (b,), generator=gen, device=device)
    noise = None
    if config.mode == "mdm":
        mask = random_mask((b, h, w), mask_ratio(t, config), config, gen, device)
        return Corrupted(x0 * (1 - mask), t, mask, None)
    if config.mode == "umd":
        clean = torch.rand(b, generator=gen, device=device) < config.umd_clean_fraction
        t = torch.where(clean, torch.zeros_like(t), t)
        ratio = torch.where(
            clean.cpu(), torch.tensor(config.umd_clean_mask_ratio), torch.tensor(config.umd_noisy_mask_ratio)
        )
    else:
        ratio = torch.full((b,), config.maskdm_mask_ratio if config.mode == "maskdm" else 0.0)
    noise = torch.randn(x0.shape, generator=gen, device=device)
    ab = alpha_bar(t, config).to(device).view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    mask = (
        random_mask((b, h, w), ratio, config, gen, device)
        if config.mode != "ddpm"
        else torch.zeros(b, 1, h, w, device=device)
    )
    return Corrupted(x_t * (1 - mask), t, mask, noise)


def estimate_x0(pred: torch.Tensor, c: Corrupted, config: CorruptionConfig) -> torch.Tensor:
    """The clean image the network's output implies (for reconstructions)."""
    if config.predicts == "x0":
        return pred
    ab = alpha_bar(c.t, config).to(pred.device).view(-1, 1, 1, 1)
    from_eps = (c.x_t - (1 - ab).sqrt() * pred) / ab.sqrt()
    if config.predicts == "eps":
        return from_eps
    return c.mask * pred + (1 - c.mask) * torch.where(c.t.view(-1, 1, 1, 1) == 0, c.x_t, from_eps)


# ---------------------------------------------------------------- feature draws (hashed, tile-independent)

_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _hash_uniform(seed: int, *coords: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on (seed, coords): a splitmix64 of the key."""
    z = np.full(np.broadcast_shapes(*(c.shape for c in coords)), np.uint64(seed & 0xFFFFFFFF), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in coords:
            z = (z ^ c.astype(np.uint64)) * _M1
            z = (z ^ (z >> np.uint64(30))) * _M2
            z = (z ^ (z >> np.uint64(27))) * _M3
            z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def hashed_patch_mask(y0: int, x0: int, h: int, w: int, ratio: float, patch_size: int, seed: int) -> np.ndarray:
    """(h, w) float32 mask (1 = masked) of the region at (y0, x0) of an image-wide patch grid."""
    rows = np.arange(y0 // patch_size, (y0 + h - 1) // patch_size + 1)
    cols = np.arange(x0 // patch_size, (x0 + w - 1) // patch_size + 1)
    grid = (_hash_uniform(seed, rows[:, None], cols[None, :]) < ratio).astype(np.float32)
    full = grid.repeat(patch_size, 0).repeat(patch_size, 1)
    oy, ox = y0 - rows[0] * patch_size, x0 - cols[0] * patch_size
    return full[oy : oy + h, ox : ox + w]


def hashed_normal(y0: int, x0: int, h: int, w: int, channels: int, seed: int) -> np.ndarray:
    """(channels, h, w) standard normal noise fixed by the image-wide pixel coordinates."""
    c = np.arange(channels)[:, None, None]
    y = np.arange(y0, y0 + h)[None, :, None]
    x = np.arange(x0, x0 + w)[None, None, :]
    u1 = _hash_uniform(seed, c, y, x)
    u2 = _hash_uniform(seed + 0x5BD1E995, c, y, x)
    return (np.sqrt(-2 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)


def corrupt_region(x: np.ndarray, y0: int, x0: int, t: int, config: CorruptionConfig, seed: int) -> np.ndarray:
    """Corrupt a (C, h, w) region in [-1, 1] of a larger image at timestep t, reproducibly.

    ``mdm`` masks patches at ratio t/T; ``ddpm`` and ``maskdm`` add noise at t (MaskDM is
    fine-tuned as a plain DDPM); ``umd`` adds cosine-schedule noise at t (t=0: the clean pass
    its paper reads features from).
    """
    c, h, w = x.shape
    if config.mode == "mdm":
        return x * (1 - hashed_patch_mask(y0, x0, h, w, t / config.num_timesteps, config.patch_size, seed))
    if t == 0:
        return x
    ab = float(alpha_bar(t, config))
    return np.float32(math.sqrt(ab)) * x + np.float32(math.sqrt(1 - ab)) * hashed_normal(y0, x0, h, w, c, seed)
