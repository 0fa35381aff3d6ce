"""Reconstructions widget: masked input and reconstruction per timestep, timestep as the slider."""

from __future__ import annotations

import numpy as np

from napari_mdm._widgets.session import session_for


def test_reconstructions_stack_timesteps(make_napari_viewer, tiny_backbone, wait_job, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((48, 40)), name="grey")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Reconstructions")
    widget.start()  # no backbone chosen: the default loads and is announced
    wait_job(widget.jobs)
    assert "using the default backbone" in notes()[0] and session_for(viewer).backbone is not None
    session_for(viewer).set_backbone(tiny_backbone)
    widget.timesteps.value = "100, 500, 900"
    widget.start()
    wait_job(widget.jobs)
    masked = viewer.layers["grey masked input"]
    rebuilt = viewer.layers["grey reconstruction"]
    assert masked.rgb and masked.data.shape == rebuilt.data.shape == (3, 48, 40, 3)
    assert masked.metadata["timesteps"] == [100, 500, 900]
    assert viewer.dims.axis_labels[0] == "t=100"  # the slider says which timestep it shows
    viewer.dims.set_current_step(0, 2)
    assert viewer.dims.axis_labels[0] == "t=900"
    assert 0 <= rebuilt.data.min() and rebuilt.data.max() <= 1
    # more of the image is masked at later timesteps (mdm masks patches to zero-ish grey)
    changed = [np.mean(np.abs(masked.data[i] - masked.data[0]) > 1e-6) for i in range(3)]
    assert changed[0] == 0 and changed[1] < changed[2]
    widget.timesteps.value = "5000"
    assert widget.start() is None and not widget.jobs.busy  # refused before a job starts
    assert "timesteps must be in 0..1000" in notes()[-1]
