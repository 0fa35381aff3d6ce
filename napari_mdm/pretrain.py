"""Pretraining (or fine-tuning) a backbone: random crops and flips, corruption, AdamW, EMA,
bf16 autocast on CUDA, gradient clipping, periodic checkpoints with exact resume.

Each step's crops and corruption are drawn from generators seeded by (seed, step), so a resumed
run sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .backbone import UNet, UNetConfig, build_backbone
from .checkpoint import Backbone, CheckpointError, file_digest, load_state, read_tensors, save_backbone, write_tensors
from .corruption import CorruptionConfig, corrupt_batch
from .devices import resolve_device
from .jobs import Cancelled, ProgressFn, StopFn, UserError, check_stop, report
from .objectives import pretraining_loss


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 1000
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    loss: str = "ssim"
    seed: int = 0
    checkpoint_every: int = 200
    amp: bool = True
    """bf16 autocast on CUDA devices that support it; CPU always runs float32."""
    compile: bool = False
    """``torch.compile`` the training forward pass (worth it for long GPU runs; compiling takes a minute)."""


RUN_SETTINGS = ("steps", "compile")
"""Settings a resumed run may change: they do not alter what one training step computes."""


@dataclass
class PretrainResult:
    backbone: Backbone
    step: int
    losses: list[float] = field(default_factory=list)
    cancelled: bool = False


def state_path(out: str | os.PathLike) -> Path:
    """Where the resumable training state of checkpoint ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".state.safetensors")


class EMA:
    """Exponential moving average of weights, with the usual warm-up so short runs are not stuck at init."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                self.shadow[k].lerp_(v.float(), 1 - decay)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)


def _crop_batch(images: Sequence[np.ndarray], crop: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((batch, 3, crop, crop), dtype=np.float32)
    for i in range(batch):
        img = images[rng.integers(len(images))]
        y = rng.integers(img.shape[1] - crop + 1)
        x = rng.integers(img.shape[2] - crop + 1)
        patch = img[:, y : y + crop, x : x + crop]
        if rng.random() < 0.5:
            patch = patch[:, :, ::-1]
        if rng.random() < 0.5:
            patch = patch[:, ::-1, :]
        out[i] = patch
    return out


def prepare_images(images: Sequence[np.ndarray], crop: int) -> list[np.ndarray]:
    """(H, W, 3) [0, 1] arrays -> (3, H, W) [-1, 1] float32, reflect-padded up to the crop size."""
    prepared = []
    for img in images:
        arr = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) * 2 - 1
        pad_h, pad_w = max(0, crop - arr.shape[1]), max(0, crop - arr.shape[2])
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
        prepared.append(arr)
    if not prepared:
        raise UserError("no images to pretrain on")
    return prepared


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    flat = {}
    for index, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            flat[f"optim.{index}.{key}"] = torch.as_tensor(value)
    return flat


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)


def _save_state(path: Path, model: UNet, ema: EMA, opt: torch.optim.Optimizer, step: int, meta: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    tensors.update(_optimizer_tensors(opt))
    write_tensors(path, tensors, {**meta, "step": step})


def _load_state(path: Path, model: UNet, ema: EMA, opt: torch.optim.Optimizer, meta: dict) -> dict:
    """Restore weights, EMA and optimizer; returns the saved metadata (step, wall time)."""
    tensors, saved = read_tensors(path)
    for key in ("unet", "corruption", "train"):
        theirs, ours = saved.get(key), meta[key]
        if key == "train":
            theirs = {k: v for k, v in (theirs or {}).items() if k not in RUN_SETTINGS}
            ours = {k: v for k, v in ours.items() if k not in RUN_SETTINGS}
        if theirs != ours:
            raise CheckpointError(f"cannot resume from {path}: its {key} settings differ ({theirs} != {ours})")
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    ema.shadow = {k[4:]: v.float().to(ema.shadow[k[4:]].device) for k, v in tensors.items() if k.startswith("ema.")}
    _restore_optimizer(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")})
    return saved


def pretrain(
    images: Sequence[np.ndarray],
    out: str | os.PathLike | None = None,
    unet: UNetConfig | str = "tiny",
    corruption: CorruptionConfig | None = None,
    config: PretrainConfig | None = None,
    device: str = "auto",
    resume: bool = False,
    init: Backbone | None = None,
    provenance: dict | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PretrainResult:
    """Pretrain a backbone on (H, W, 3) images in [0, 1]; fine-tune ``init`` when given.

    With ``out``, EMA weights go to ``out`` (float16 safetensors + JSON) and the resumable state
    to :func:`state_path` every ``checkpoint_every`` steps, at the end, and on cancel;
    ``resume=True`` continues from that state. Cancelling returns the weights trained so far.
    """
    config = config or PretrainConfig()
    corruption = corruption or (init.corruption if init else CorruptionConfig())
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    if init is not None:
        model = UNet(init.model.config)
        model.load_state_dict(init.model.state_dict())
    else:
        model = build_backbone(unet if isinstance(unet, UNetConfig) else unet)
    model.to(dev).train()
    crop = config.crop
    if crop < model.config.divisor or crop % model.config.divisor:
        raise UserError(f"crop {crop} must be a positive multiple of {model.config.divisor} for this backbone")
    if config.batch_size < 1 or config.checkpoint_every < 1 or not config.lr > 0:
        raise UserError(f"batch size ({config.batch_size}) and checkpoint interval ({config.checkpoint_every}) "
                        f"must be at least 1 and the learning rate ({config.lr}) above 0")
    data = prepare_images(images, crop)

    ema = EMA(model, config.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    meta = json.loads(json.dumps({"unet": model.config.to_dict(), "corruption": corruption.to_dict(),
                                  "train": asdict(config)}))  # tuples as JSON lists, as saved
    step, wall_before = 0, 0.0
    if resume and out is not None and state_path(out).exists():
        saved = _load_state(state_path(out), model, ema, opt, meta)
        step, wall_before = int(saved["step"]), float(saved.get("wall_seconds", 0.0))
    use_bf16 = config.amp and dev.type == "cuda" and torch.cuda.is_bf16_supported()
    forward = torch.compile(model) if config.compile else model

    losses: list[float] = []
    start, start_step = time.perf_counter(), step
    record = {
        **(provenance or {}),
        "images": len(data),
        "batch_size": config.batch_size,
        "crop": crop,
        "loss": config.loss,
        "device": str(dev),
        "precision": "bf16" if use_bf16 else "fp32",
        "compiled": config.compile,
        "torch": torch.__version__,
        "host": platform.node(),
        "init": init.name if init else None,
        # fine-tuning runs chain (one GPU session after another): keep the whole history
        "init_provenance": init.provenance if init else None,
    }
    steps_before = int((init.provenance.get("total_steps") or init.provenance.get("steps") or 0) if init else 0)

    def save() -> Backbone:
        eval_model = UNet(model.config)
        ema.copy_to(eval_model)
        eval_model.eval().requires_grad_(False)
        wall = round(wall_before + time.perf_counter() - start, 1)
        record.update(steps=step, total_steps=steps_before + step, wall_seconds=wall, final_loss=float(np.mean(losses[-50:])) if losses else None)
        if out is None:
            return Backbone(eval_model, corruption, dict(record))
        _save_state(state_path(out), model, ema, opt, step, {**meta, "wall_seconds": wall})
        save_backbone(out, eval_model, corruption, record)
        # the file holds float16 weights: use exactly those, so a head trained now matches the file
        load_state(eval_model, read_tensors(out)[0], Path(out))
        return Backbone(eval_model, corruption, dict(record), digest=file_digest(out), name=str(out))

    cancelled = False
    try:
        while step < config.steps:
            check_stop(should_stop)
            rng = np.random.default_rng([config.seed, step])
            gen = torch.Generator(dev).manual_seed(config.seed * 1_000_003 + step)
            x0 = torch.from_numpy(_crop_batch(data, crop, config.batch_size, rng)).to(dev)
            c = corrupt_batch(x0, corruption, gen)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                pred = forward(c.x_t, c.t)
            loss = pretraining_loss(pred.float(), x0, c, corruption, config.loss)
            if not torch.isfinite(loss):
                raise UserError(f"loss became {loss.item()} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            step += 1
            ema.update(model, step)
            losses.append(loss.item())
            elapsed = time.perf_counter() - start
            rate = (step - start_step) / max(elapsed, 1e-9)
            eta = (config.steps - step) / max(rate, 1e-9)
            report(progress, step, config.steps,
                   f"loss={losses[-1]:.4f} img/s={rate * config.batch_size:.1f} eta={eta:.0f}s")
            if out is not None and step % config.checkpoint_every == 0 and step < config.steps:
                save()
    except Cancelled:
        cancelled = True
    backbone = save()
    return PretrainResult(backbone, step, losses, cancelled)
