"""The one device rule: ``auto`` is CUDA if available, else MPS, else CPU."""

from __future__ import annotations

import torch

from .jobs import UserError


def available_devices() -> list[str]:
    """Devices that exist on this machine, best first (for choosers in the GUI)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:1``/``mps`` into a device that exists."""
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    if kind != "cpu" and kind not in available_devices():
        raise UserError(f"device {name!r} is not available here; available: {', '.join(available_devices())}")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"device {name!r} is not available here: this machine has {torch.cuda.device_count()} "
            "CUDA device(s), numbered from 0"
        )
    return device


def available_memory_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``: free GPU memory, or the system's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def fast_bfloat16(device: torch.device | str) -> bool:
    """Whether bfloat16 matrix products are native on ``device`` (CUDA GPUs from Ampere on, CPUs with
    AVX512-BF16 or AMX units): there they run 2-4x faster than float32; elsewhere they are emulated
    and slower, so callers fall back to float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False
