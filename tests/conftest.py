"""Shared fixtures. Qt runs headless (offscreen); napari's canvas needs OpenGL, which the
offscreen platform gets from an X display: when viewer tests are collected, none is set and Xvfb
is installed, one is started for the session; without any display those tests are skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

_XVFB: subprocess.Popen | None = None


def _start_xvfb() -> bool:
    """Start a private Xvfb display for this test session; True when one is running."""
    global _XVFB
    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        return bool(os.environ.get("DISPLAY"))
    display = f":{100 + os.getpid() % 400}"
    _XVFB = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        if os.path.exists(f"/tmp/.X11-unix/X{display[1:]}"):
            os.environ["DISPLAY"] = display
            return True
        time.sleep(0.1)
    return False


def pytest_unconfigure(config) -> None:
    if _XVFB is not None:
        _XVFB.terminate()
        _XVFB.wait(timeout=10)


def pytest_collection_modifyitems(config, items) -> None:
    viewer_tests = [item for item in items if "make_napari_viewer" in getattr(item, "fixturenames", ())]
    if not viewer_tests or _start_xvfb():
        return
    skip = pytest.mark.skip(reason="napari's canvas needs OpenGL: set DISPLAY or install Xvfb")
    for item in viewer_tests:
        item.add_marker(skip)


@pytest.fixture
def tiny_backbone():
    """An untrained 'tiny' backbone (1.6M parameters), the same on every run."""
    import torch

    from napari_mdm.backbone import build_backbone
    from napari_mdm.checkpoint import Backbone
    from napari_mdm.corruption import CorruptionConfig

    torch.manual_seed(0)
    return Backbone(build_backbone("tiny").eval(), CorruptionConfig(), digest="tiny-test", name="tiny-test")
