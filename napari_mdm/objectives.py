"""Pretraining losses: SSIM on the predicted clean image for MDM (its paper's choice), L1/L2
as ablations, and noise-prediction MSE where the corruption mode predicts noise."""

from __future__ import annotations

import torch
from pytorch_msssim import ssim

from .corruption import Corrupted, CorruptionConfig

LOSSES = ("ssim", "l1", "l2")


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1 - SSIM) / 2 on images in [-1, 1], Gaussian window 5 and sigma 1.5 as in the MDM code."""
    value = ssim((pred.float() + 1) / 2, (target.float() + 1) / 2, data_range=1.0, win_size=5, win_sigma=1.5)
    return (1 - value) / 2


def _distance(pred: torch.Tensor, target: torch.Tensor, kind: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    if kind == "ssim":
        if weight is not None:
            raise ValueError("ssim does not take a pixel weight")
        return ssim_loss(pred, target)
    err = (pred.float() - target.float()).abs()
    err = err if kind == "l1" else err**2
    if weight is None:
        return err.mean()
    weight = weight.expand_as(err)
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def pretraining_loss(
    pred: torch.Tensor, x0: torch.Tensor, c: Corrupted, config: CorruptionConfig, loss: str = "ssim"
) -> torch.Tensor:
    """The loss of one batch for the config's mode.

    mdm: ``loss`` between the predicted and the clean image. ddpm: error on the noise.
    maskdm: error on the noise, over visible pixels only. umd: error on the noise over
    visible pixels of noisy samples plus error on the clean image over masked pixels.
    The noise terms use L2 unless ``loss`` is ``l1``.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
    if config.mode == "mdm":
        return _distance(pred, x0, loss)
    noise_kind = "l1" if loss == "l1" else "l2"
    if config.mode == "ddpm":
        return _distance(pred, c.noise, noise_kind)
    visible = 1 - c.mask
    if config.mode == "maskdm":
        return _distance(pred, c.noise, noise_kind, visible)
    noisy = (c.t > 0).float().view(-1, 1, 1, 1)
    return _distance(pred, c.noise, noise_kind, visible * noisy) + _distance(pred, x0, noise_kind, c.mask)
