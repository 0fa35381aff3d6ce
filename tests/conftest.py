"""Shared fixtures. Qt runs headless (offscreen); napari's canvas needs OpenGL, which the
offscreen platform gets from an X display: when viewer tests are collected, none is set and Xvfb
is installed, one is started for the session; without any display those tests are skipped."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

def _die_with_parent() -> None:
    """Have the kernel stop Xvfb when pytest exits, after Qt has closed its connection."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_xvfb() -> bool:
    """Start a private Xvfb display for this test session; True when a display is available."""
    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        return bool(os.environ.get("DISPLAY"))
    display = f":{100 + os.getpid() % 400}"
    command = ["Xvfb", display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"]
    # preexec_fn is safe here: collection runs before any thread is started
    subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     preexec_fn=_die_with_parent)  # noqa: PLW1509
    for _ in range(50):
        if os.path.exists(f"/tmp/.X11-unix/X{display[1:]}"):
            os.environ["DISPLAY"] = display
            return True
        time.sleep(0.1)
    return False


def pytest_collection_modifyitems(config, items) -> None:
    viewer_tests = [item for item in items if "make_napari_viewer" in getattr(item, "fixturenames", ())]
    if not viewer_tests or _start_xvfb():
        return
    skip = pytest.mark.skip(reason="napari's canvas needs OpenGL: set DISPLAY or install Xvfb")
    for item in viewer_tests:
        item.add_marker(skip)


@pytest.fixture
def tiny_backbone():
    """The untrained 'tiny' backbone (1.6M parameters, ``random-tiny``), the same on every run."""
    from napari_mdm.checkpoint import random_backbone

    return random_backbone("tiny")


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during the test, in order."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    return lambda: [str(n.message) for n in notification_manager.records[start:]]


@pytest.fixture
def paint():
    """Paint a rectangle of a labels layer the way a brush does (undoable, emits the paint event)."""
    import numpy as np

    def paint_rect(layer, value: int, rows: slice, cols: slice, plane: int | None = None) -> None:
        yy, xx = np.mgrid[rows, cols]
        index = (yy.ravel(), xx.ravel()) if plane is None else (np.full(yy.size, plane), yy.ravel(), xx.ravel())
        layer.data_setitem(index, value)

    return paint_rect


@pytest.fixture
def wait_job(qtbot):
    """Wait (serving Qt events) until a widget's job panel is idle again."""

    def wait(panel, timeout_ms: int = 60_000) -> None:
        qtbot.waitUntil(lambda: not panel.busy, timeout=timeout_ms)

    return wait
