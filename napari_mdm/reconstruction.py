"""What the backbone sees and rebuilds: corrupted inputs and reconstructions per timestep."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .backbone import Backbone
from .block_progress import per_block
from .corruption import Corrupted, corrupt_region, estimate_x0, hashed_patch_mask
from .io import ImageSource
from .jobs import ProgressFn, StopFn, UserError, check_stop
from .memory import zeros
from .tiling import pad_to, run_tiled


def reconstruct(
    backbone: Backbone,
    image,
    timesteps: Sequence[int],
    seed: int = 0,
    tile: int = 512,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted, reconstructed), each (T, H, W, 3) float32 in [0, 1], for each timestep."""
    timesteps = [int(t) for t in timesteps]
    total = backbone.corruption.num_timesteps
    if not timesteps or any(not 0 <= t <= total for t in timesteps):
        raise UserError(f"timesteps must be in 0..{total}, got {timesteps}")
    source = image if isinstance(image, ImageSource) else ImageSource.from_array(image)
    cfg = backbone.corruption
    divisor = backbone.model.config.divisor
    tile = max(divisor, tile // divisor * divisor)

    def compute(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        x = source.region(y0, y1, x0, x1).transpose(2, 0, 1) * 2 - 1
        h, w = x.shape[1:]
        corrupted = np.stack([corrupt_region(x, y0, x0, t, cfg, seed) for t in timesteps])
        if cfg.mode == "mdm":
            masks = np.stack([hashed_patch_mask(y0, x0, h, w, t / total, cfg.patch_size, seed) for t in timesteps])
        else:
            masks = np.zeros((len(timesteps), h, w), np.float32)
        batch = torch.from_numpy(np.stack([pad_to(c, divisor) for c in corrupted])).to(backbone.device)
        t = torch.tensor(timesteps, device=backbone.device)
        with torch.inference_mode(), per_block(backbone.model, lambda: check_stop(should_stop)):  # prompt cancel
            pred = backbone.model(batch, t).float()
            mask = torch.from_numpy(np.stack([pad_to(m[None], divisor) for m in masks])).to(pred.device)
            x0_hat = estimate_x0(pred, Corrupted(batch, t, mask, None), cfg)[:, :, :h, :w].cpu().numpy()
        return np.concatenate([corrupted, x0_hat], axis=1).reshape(-1, h, w)

    h, w = source.shape
    out = zeros((len(timesteps) * 6, h, w), np.float32)
    run_tiled((h, w), compute, out, tile, 0.25, progress, should_stop, backbone.model.config.divisor)
    out = np.clip((out.reshape(len(timesteps), 2, 3, h, w) + 1) / 2, 0, 1).transpose(1, 0, 3, 4, 2)
    return np.ascontiguousarray(out[0]), np.ascontiguousarray(out[1])
