"""Pretraining throughput (images/s) of the backbone presets, fp32 vs bf16, with and without
``torch.compile`` (issue 7), measured through the core's own training loop.

    python -m benchmarks.throughput --presets small paper --batch-size 64 --crop 256   # on a GPU
    python -m benchmarks.throughput --presets tiny --batch-size 4 --crop 64 --steps 3  # CPU smoke

Each configuration runs ``--warmup`` steps (compilation, cuDNN autotuning) and then ``--steps``
timed steps of :func:`napari_mdm.pretrain.pretrain` on random images; the loss is read every step,
so the GPU is synchronised and the clock is honest. bf16 rows are skipped on a CPU (the core
trains in fp32 there). Results: ``benchmarks/results/NAME.json`` and ``NAME.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from napari_mdm.backbone import PRESETS, build_backbone, count_parameters
from napari_mdm.devices import resolve_device
from napari_mdm.pretrain import PretrainConfig, pretrain

RESULTS = Path(__file__).resolve().parent / "results"


class _StepClock:
    """Progress callback that notes when the warm-up ended and how many steps came after it."""

    def __init__(self, warmup: int):
        self.warmup, self.started, self.timed = warmup, None, 0

    def __call__(self, done: int, total: int, info: str) -> None:
        if done == self.warmup:
            self.started = time.perf_counter()
        elif done > self.warmup:
            self.timed = done - self.warmup

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def _millions(model: torch.nn.Module) -> float:
    return round(count_parameters(model) / 1e6, 2)


def measure(
    preset: str, bf16: bool, compiled: bool, batch: int, crop: int, warmup: int, steps: int, device: str
) -> dict:
    """Images/s (and peak GPU memory) of ``steps`` training steps after ``warmup`` steps."""
    dev = resolve_device(device)
    row = {
        "preset": preset,
        "params_M": None,
        "precision": "bf16" if bf16 else "fp32",
        "compile": compiled,
        "batch": batch,
        "crop": crop,
    }
    images = [np.random.default_rng(i).random((crop + 32, crop + 32, 3), dtype=np.float32) for i in range(4)]
    config = PretrainConfig(
        steps=warmup + steps, batch_size=batch, crop=crop, amp=bf16, compile=compiled, checkpoint_every=10**9
    )
    clock = _StepClock(warmup)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        result = pretrain(images, None, preset, config=config, device=str(dev), progress=clock)
    except torch.cuda.OutOfMemoryError:
        return {**row, "params_M": _millions(build_backbone(preset)), "images_per_s": None, "note": "out of GPU memory"}
    seconds = clock.seconds()
    row.update(
        params_M=_millions(result.backbone.model),
        images_per_s=round(clock.timed * batch / seconds, 1),
        timed_steps=clock.timed,
        seconds=round(seconds, 2),
    )
    if dev.type == "cuda":
        row["peak_gpu_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def to_markdown(result: dict) -> str:
    lines = [
        f"# Pretraining throughput `{result['name']}`",
        "",
        f"Command: `{result['command']}`  ",
        f"Device: {result['device']}; measured {result['started']}.",
        "",
        "| preset | params (M) | precision | compile | batch x crop | images/s | peak GPU GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        speed = r["images_per_s"] if r["images_per_s"] is not None else r.get("note", "")
        lines.append(
            f"| {r['preset']} | {r['params_M']} | {r['precision']} | {'yes' if r['compile'] else 'no'} | "
            f"{r['batch']} x {r['crop']}² | {speed} | {r.get('peak_gpu_GiB', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "paper"], choices=sorted(PRESETS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--name", default=None, help="results file name (default: throughput_<device>)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    dev = resolve_device(args.device)
    precisions = [False, True] if dev.type == "cuda" else [False]
    compiles = [False] if args.no_compile else [False, True]
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or "cpu")
    result = {
        "name": args.name or f"throughput_{dev.type}",
        "device": device_name,
        "torch": torch.__version__,
        "command": "python -m benchmarks.throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rows": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for preset, bf16, compiled in itertools.product(args.presets, precisions, compiles):
        row = measure(preset, bf16, compiled, args.batch_size, args.crop, args.warmup, args.steps, args.device)
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        # written after every row: a run stopped by a time limit keeps what it measured
        (args.out / f"{result['name']}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"{result['name']}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
