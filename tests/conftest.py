"""Shared fixtures. Qt runs headless (offscreen); napari's canvas needs OpenGL, which the
offscreen platform gets from an X display: pytest-xvfb starts a virtual one when Xvfb is
installed; without any display the viewer tests are skipped with a reason."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Projection bases computed by the tests go to a temporary cache, not the user's."""
    os.environ["NAPARI_MDM_CACHE"] = str(tmp_path_factory.mktemp("napari_mdm_cache"))


def pytest_collection_modifyitems(config, items) -> None:
    if os.environ.get("DISPLAY"):
        return
    skip = pytest.mark.skip(reason="napari's canvas needs OpenGL: set DISPLAY or install Xvfb")
    for item in items:
        if "make_napari_viewer" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    """A saved tiny backbone, a second one with other weights, and a head trained on the first
    (``test_reliability_support.Kit``), built once per session."""
    from test_reliability_support import build_kit

    return build_kit(tmp_path_factory.mktemp("reliability_kit"))


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
