"""Pretrain the benchmark's backbone variants for an equal budget, round-robin, resumably.

    python -m benchmarks.pretrain_variants --steps 3000 --chunk 250

Variants (same U-Net preset, crops, batch, seed and steps; only the objective differs):
``mdm`` (patch masking + SSIM, the method), ``mdm_l2`` (patch masking + L2, the paper's
ablation), ``ddpm`` (Gaussian noise + noise-prediction MSE, the ddpm-segmentation baseline).
They advance ``--chunk`` steps each in turn, so whenever the run is stopped their budgets differ
by at most one chunk; rerunning continues from the saved state (core ``pretrain(resume=True)``).
Checkpoints go to the git-ignored ``benchmarks/checkpoints/NAME.safetensors``; pass them to
``benchmarks.run`` as ``--backbone NAME=PATH``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from napari_mdm.checkpoint import read_tensors
from napari_mdm.corruption import CorruptionConfig
from napari_mdm.io import read_image
from napari_mdm.pretrain import PretrainConfig, pretrain, state_path

from .data import pretraining_images

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
VARIANTS: dict[str, tuple[CorruptionConfig, str]] = {
    "mdm": (CorruptionConfig(mode="mdm"), "ssim"),
    "mdm_l2": (CorruptionConfig(mode="mdm"), "l2"),
    "ddpm": (CorruptionConfig(mode="ddpm"), "l2"),
}


def steps_done(out: Path) -> int:
    """Steps already trained into ``out``'s resumable state (0 when there is none)."""
    return int(read_tensors(state_path(out))[1]["step"]) if state_path(out).exists() else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="total steps per variant")
    parser.add_argument("--chunk", type=int, default=250, help="steps per variant per turn")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=CHECKPOINTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    images = [read_image(p) for p in pretraining_images()]
    print(f"{len(images)} training images (GlaS train + MoNuSeg minus held-out test)", flush=True)
    target = 0
    while target < args.steps:
        target = min(args.steps, target + args.chunk)
        for name in args.variants:
            out = args.out / f"{name}.safetensors"
            if steps_done(out) >= target:
                continue
            corruption, loss = VARIANTS[name]
            config = PretrainConfig(
                steps=target, batch_size=args.batch_size, crop=args.crop, loss=loss, checkpoint_every=args.chunk
            )
            start = time.perf_counter()
            result = pretrain(
                images,
                out=out,
                unet=args.preset,
                corruption=corruption,
                config=config,
                device="cpu",
                resume=True,
                provenance={"variant": name, "benchmark": "pretrain_variants"},
            )
            print(
                f"{name}: step {result.step}/{args.steps} loss={sum(result.losses[-50:]) / max(1, len(result.losses[-50:])):.4f} "
                f"chunk {time.perf_counter() - start:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
