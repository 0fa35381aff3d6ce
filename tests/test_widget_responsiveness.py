"""The Qt event loop keeps serving events while a torch job runs in a widget's worker."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer

from napari_mdm._widgets.session import session_for


def test_event_loop_is_not_starved_during_training(make_napari_viewer, tiny_backbone, paint, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((128, 128, 3)).astype(np.float32), name="img", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Few-shot segmentation")
    session_for(viewer).set_backbone(tiny_backbone)
    widget.add_labels_layers()
    paint(viewer.layers["img labels"], 1, slice(0, 20), slice(0, 128))
    paint(viewer.layers["img labels"], 2, slice(100, 128), slice(0, 128))
    widget.ensemble.value, widget.steps.value = 10, 150
    ticks, progress = [], []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(1))
    widget.jobs.progressed.connect(lambda *report: progress.append(report))
    timer.start()
    assert widget.start_training() is not None
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=120_000)
    timer.stop()
    head_reports = [r for r in progress if r[2].startswith("head")]
    assert len(head_reports) == 15 and "img prediction" in viewer.layers  # the job ran to the end
    # A starved loop ticks about once per progress report it has to deliver; a served one ticks
    # many times between two reports (10 training steps of a 10-member ensemble).
    assert len(ticks) >= 5 * len(progress)
