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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backbone import Backbone, UNet, UNetConfig, build_backbone
from .checkpoint import (
    CheckpointError,
    check_state,
    file_digest,
    load_state,
    read_tensors,
    save_backbone,
    write_tensors,
)
from .corruption import CorruptionConfig, corrupt_batch
from .devices import available_memory_bytes, resolve_device
from .jobs import Cancelled, ProgressFn, Remedy, StopFn, UserError, check_stop, first_line, report
from .objectives import pretraining_loss
from .pretrain_images import PretrainImages
from .ranks import Ranks, any_rank, data_parallel, join, process_device, ranks_from_env


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
    log_every: int = 10
    """On a GPU the loss is read back (a device sync) every this many steps; a CPU reads it every step."""


RUN_SETTINGS = ("steps", "compile", "log_every")
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
    """Exponential moving average of weights, with the usual warm-up so short runs are not stuck at init.

    Past the warm-up it is ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``
    (tests/test_core_pretrain.py checks that); the warm-up needs the step, which this class takes
    from Python instead of a device counter, so no step waits for the GPU."""

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


def _crop_batch(images: PretrainImages, crop: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """``batch`` random crops, each flipped at random; only the regions cropped are read."""
    out = np.empty((batch, 3, crop, crop), dtype=np.float32)
    for i in range(batch):
        index = int(rng.integers(len(images)))
        h, w = images.padded_shape(index, crop)
        y = int(rng.integers(h - crop + 1))
        x = int(rng.integers(w - crop + 1))
        patch = images.crop(index, y, x, crop)
        if rng.random() < 0.5:
            patch = patch[:, :, ::-1]
        if rng.random() < 0.5:
            patch = patch[:, ::-1, :]
        out[i] = patch
    return out


ACTIVATION_VALUES = 8
"""Values kept for the backward pass per activation channel, pixel and residual block: a lower
bound (the tiny preset on CPU peaks at about 13 float32 values, from peak RSS at crops 128 and 256;
the shipped backbone trained with batch 128, crop 256 in bf16 within an 80 GiB GPU)."""


def training_memory_bytes(config: UNetConfig, crop: int, batch: int, value_bytes: int = 4) -> int:
    """A lower bound of the memory one training step needs: residual activations at every level,
    plus the attention matrices where attention runs, for ``batch`` crops of ``crop`` x ``crop``
    with activations of ``value_bytes`` (2 under bf16 autocast)."""
    total, blocks = 0, 2 * config.num_res_blocks + 1  # encoder and decoder blocks of a level
    for level, mult in enumerate(config.channel_mult):
        pixels = (crop >> level) ** 2
        channels = config.base_channels * mult
        total += ACTIVATION_VALUES * value_bytes * channels * pixels * blocks
        if 2**level in config.attention_at:
            heads = max(1, channels // config.head_channels)
            total += 2 * value_bytes * heads * pixels**2 * blocks
    return total * batch


def _check_memory(config: UNetConfig, crop: int, batch: int, device: torch.device) -> None:
    """Refuse, before allocating, a step that cannot fit (``--crop 4096`` would need terabytes)."""
    need = training_memory_bytes(config, crop, batch, 2 if device.type == "cuda" else 4)
    have = available_memory_bytes(device)
    if need > have:
        raise UserError(
            f"crop {crop} with batch size {batch} needs at least {need / 2**30:,.1f} GiB for one "
            f"training step, but {have / 2**30:,.1f} GiB is available on {device}",
            Remedy("use a smaller --crop or --batch-size", "lower 'crop' or 'batch size'"),
        )


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
            theirs = {k: v for k, v in (theirs if isinstance(theirs, dict) else {}).items() if k not in RUN_SETTINGS}
            ours = {k: v for k, v in ours.items() if k not in RUN_SETTINGS}
        if theirs != ours:
            raise CheckpointError(f"cannot resume from {path}: its {key} settings differ ({theirs} != {ours})")
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    try:  # a damaged or crafted state: EMA, optimizer or step that do not fit this model
        ema_state = {k[4:]: v.float() for k, v in tensors.items() if k.startswith("ema.")}
        check_state(ema.shadow, ema_state, path)
        ema.shadow = {k: v.to(ema.shadow[k].device) for k, v in ema_state.items()}
        _restore_optimizer(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")})
        if type(saved["step"]) is not int or saved["step"] < 0 or not 0 <= float(saved.get("wall_seconds", 0.0)):
            raise ValueError(f"step {saved['step']!r}")
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(
            f"cannot resume from {path}: its saved state is damaged ({type(err).__name__}: {first_line(err)})"
        ) from None
    return saved


def _build_model(unet: UNetConfig | str, init: Backbone | None, dev: torch.device) -> UNet:
    """A fresh preset, or a trainable copy of ``init`` to fine-tune, on ``dev`` in train mode."""
    if init is not None:
        model = UNet(init.model.config)
        model.load_state_dict(init.model.state_dict())
    else:
        model = build_backbone(unet)
    return model.to(dev).train()


def _check_config(config: PretrainConfig, model: UNet) -> None:
    divisor = model.config.divisor
    if config.crop < divisor or config.crop % divisor:
        raise UserError(f"crop {config.crop} must be a positive multiple of {divisor} for this backbone")
    if config.batch_size < 1 or config.checkpoint_every < 1 or config.log_every < 1 or not config.lr > 0:
        raise UserError(
            f"batch size ({config.batch_size}), checkpoint interval ({config.checkpoint_every}) and "
            f"log interval ({config.log_every}) must be at least 1 and the learning rate ({config.lr}) above 0"
        )
    if config.seed < 0:
        raise UserError(f"seed must be 0 or more, got {config.seed}")


class _Trainer:
    """One optimisation step at a time: crops, corruption, forward (bf16 on CUDA), loss, clipped
    AdamW step, EMA. Each step's randomness comes from (seed, step, and the rank of a torchrun
    job's process), so resumes are exact; under torchrun gradients are averaged over processes."""

    def __init__(
        self,
        model: UNet,
        data: PretrainImages,
        corruption: CorruptionConfig,
        config: PretrainConfig,
        dev: torch.device,
        ranks: Ranks,
    ):
        self.model, self.data, self.corruption, self.config, self.dev = model, data, corruption, config, dev
        self.ranks = ranks
        self.ema = EMA(model, config.ema_decay)
        self.opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.bf16 = config.amp and dev.type == "cuda" and torch.cuda.is_bf16_supported()
        parallel = data_parallel(model, ranks, dev)
        self.forward = torch.compile(parallel) if config.compile else parallel

    def step(self, step: int) -> torch.Tensor:
        """Train on the batch of ``step``; returns the loss as a device tensor (no sync)."""
        config, ranks = self.config, self.ranks
        rng = np.random.default_rng([config.seed, step] + ([ranks.rank] if ranks.world > 1 else []))
        gen = torch.Generator(self.dev).manual_seed(config.seed * 1_000_003 + step + 7_919 * ranks.rank)
        x0 = torch.from_numpy(_crop_batch(self.data, config.crop, config.batch_size, rng)).to(self.dev)
        c = corrupt_batch(x0, self.corruption, gen)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            pred = self.forward(c.x_t, c.t)
        loss = pretraining_loss(pred.float(), x0, c, self.corruption, config.loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.opt.step()
        self.ema.update(self.model, step + 1)
        return loss.detach()


class _LossLog:
    """Losses kept on the device and read back in groups, so GPU steps do not wait on ``.item()``."""

    def __init__(self, every: int):
        self.every, self.pending, self.values = every, [], []

    def add(self, loss: torch.Tensor, step: int, last: bool) -> bool:
        """Record a loss; True when the values were read back (and the loss is worth reporting)."""
        self.pending.append(loss)
        if loss.device.type != "cpu" and step % self.every and not last:
            return False
        values = torch.stack(self.pending).tolist()
        self.pending.clear()
        if not all(np.isfinite(values)):
            raise UserError(f"loss became {values[-1]} near step {step}; lower the learning rate")
        self.values.extend(values)
        return True


class _Checkpointer:
    """Writes the EMA weights (float16 safetensors + JSON) and the resumable state; without ``out``
    it only hands back the EMA backbone."""

    def __init__(self, out, trainer: _Trainer, meta: dict, record: dict, steps_before: int, wall_before: float):
        self.out, self.trainer, self.meta, self.record = out, trainer, meta, record
        self.steps_before, self.wall_before, self.start = steps_before, wall_before, time.perf_counter()

    def save(self, step: int, losses: list[float]) -> Backbone:
        trainer = self.trainer
        eval_model = UNet(trainer.model.config)
        trainer.ema.copy_to(eval_model)
        eval_model.eval().requires_grad_(False)
        wall = round(self.wall_before + time.perf_counter() - self.start, 1)
        self.record.update(
            steps=step,
            total_steps=self.steps_before + step,
            wall_seconds=wall,
            final_loss=float(np.mean(losses[-50:])) if losses else None,
        )
        if self.out is None or not trainer.ranks.main:  # one process of a torchrun job writes
            return Backbone(eval_model, trainer.corruption, dict(self.record))
        _save_state(
            state_path(self.out), trainer.model, trainer.ema, trainer.opt, step, {**self.meta, "wall_seconds": wall}
        )
        save_backbone(self.out, eval_model, trainer.corruption, self.record)
        # the file holds float16 weights: use exactly those, so a head trained now matches the file
        load_state(eval_model, read_tensors(self.out)[0], Path(self.out))
        return Backbone(
            eval_model, trainer.corruption, dict(self.record), digest=file_digest(self.out), name=str(self.out)
        )


def _provenance(provenance: dict | None, trainer: _Trainer, init: Backbone | None) -> dict:
    config = trainer.config
    return {
        **(provenance or {}),
        "images": len(trainer.data),
        "batch_size": config.batch_size,
        "crop": config.crop,
        "loss": config.loss,
        "device": str(trainer.dev),
        "precision": "bf16" if trainer.bf16 else "fp32",
        "compiled": config.compile,
        "torch": torch.__version__,
        "host": platform.node(),
        "init": init.name if init else None,
        # fine-tuning runs chain (one GPU session after another): keep the whole history
        "init_provenance": init.provenance if init else None,
        "processes": trainer.ranks.world,
    }


def _train_loop(
    trainer: _Trainer, checkpointer: _Checkpointer, step: int, progress: ProgressFn | None, should_stop: StopFn | None
) -> tuple[int, list[float], bool]:
    """Steps until the configured count or a cancel; returns (step reached, losses, cancelled)."""
    config, log = trainer.config, _LossLog(trainer.config.log_every)
    start, start_step = time.perf_counter(), step
    ranks, dev = trainer.ranks, trainer.dev
    try:
        while step < config.steps:
            if ranks.world == 1 or step % config.log_every == 0:  # processes agree on stopping: no deadlock
                check_stop(lambda: any_rank(should_stop is not None and should_stop(), ranks, dev))
            loss = trainer.step(step)
            step += 1
            if log.add(loss, step, last=step == config.steps):
                rate = (step - start_step) / max(time.perf_counter() - start, 1e-9)
                eta = (config.steps - step) / max(rate, 1e-9)
                report(
                    progress if ranks.main else None,
                    step,
                    config.steps,
                    f"loss={log.values[-1]:.4f} img/s={rate * config.batch_size * ranks.world:.1f} eta={eta:.0f}s",
                )
            if checkpointer.out is not None and step % config.checkpoint_every == 0 and step < config.steps:
                checkpointer.save(step, log.values)
    except Cancelled:
        return step, log.values, True
    return step, log.values, False


def pretrain(
    images: Sequence[np.ndarray] | PretrainImages,
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
    """Pretrain a backbone on (H, W, 3) images in [0, 1], or on a :class:`PretrainImages` that
    streams them from files; fine-tune ``init`` when given.

    With ``out``, EMA weights go to ``out`` (float16 safetensors + JSON) and the resumable state
    to :func:`state_path` every ``checkpoint_every`` steps, at the end, and on cancel;
    ``resume=True`` continues from that state. Cancelling returns the weights trained so far.
    Under ``torchrun`` each process trains on its own ``batch_size`` crops (the batch grows with
    the processes) and rank 0 writes the checkpoints.
    """
    config = config or PretrainConfig()
    corruption = corruption or (init.corruption if init else CorruptionConfig())
    ranks = ranks_from_env()
    dev = process_device(ranks, resolve_device(device))
    join(ranks, dev)
    torch.manual_seed(config.seed)
    model = _build_model(unet, init, dev)
    _check_config(config, model)
    _check_memory(model.config, config.crop, config.batch_size, dev)
    data = images if isinstance(images, PretrainImages) else PretrainImages.from_arrays(images)
    trainer = _Trainer(model, data, corruption, config, dev, ranks)
    meta = json.loads(
        json.dumps({"unet": model.config.to_dict(), "corruption": corruption.to_dict(), "train": asdict(config)})
    )  # tuples as JSON lists, as saved
    step, wall_before = 0, 0.0
    if resume and out is not None and state_path(out).exists():
        saved = _load_state(state_path(out), model, trainer.ema, trainer.opt, meta)
        step, wall_before = int(saved["step"]), float(saved.get("wall_seconds", 0.0))
    steps_before = int((init.provenance.get("total_steps") or init.provenance.get("steps") or 0) if init else 0)
    checkpointer = _Checkpointer(out, trainer, meta, _provenance(provenance, trainer, init), steps_before, wall_before)
    step, losses, cancelled = _train_loop(trainer, checkpointer, step, progress, should_stop)
    return PretrainResult(checkpointer.save(step, losses), step, losses, cancelled)
