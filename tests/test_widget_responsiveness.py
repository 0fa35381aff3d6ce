"""The Qt event loop keeps serving events while a torch job runs in a widget's worker."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer

from napari_mdm._widgets.session import session_for


def test_event_loop_is_not_starved_during_feature_extraction(make_napari_viewer, tiny_backbone, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((384, 384, 3)).astype(np.float32), name="big", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Few-shot segmentation")
    session_for(viewer).set_backbone(tiny_backbone)
    ticks, progress = [], []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(1))
    widget.jobs._signal.progressed.connect(lambda *args: progress.append(args))
    timer.start()
    worker = widget.prepare_features()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=120_000)
    timer.stop()
    assert len(session_for(viewer).features) == 1 and len(progress) >= 4  # the job ran, tile by tile
    # A starved loop would tick about once per tile; a served one ticks many times per tile.
    assert len(ticks) >= 5 * len(progress)
