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
    return torch.device(name)
