"""Backbone widget: shipped checkpoint or a clear fallback, pretraining with live loss, cancel,
saving and loading checkpoints, refusing broken files."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mdm._widgets.session import session_for
from napari_mdm.checkpoint import file_digest, shipped_backbones


@pytest.fixture
def opened(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64, 3)).astype(np.float32), name="tissue")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Backbone")
    widget.preset.value, widget.batch.value, widget.crop.value = "tiny", 2, 32
    return viewer, widget


def test_shows_devices_and_explains_a_missing_shipped_backbone(opened):
    from napari_mdm.devices import available_devices

    _, widget = opened
    assert widget.device.choices == ("auto", *available_devices())
    assert available_devices()[0] in widget.device_note.value
    assert "random-tiny" in widget.shipped.choices and widget.load_shipped.enabled
    if "histology" in shipped_backbones():
        assert widget.shipped.value == "histology"
    else:
        assert widget.shipped.value == "random-tiny" and "no pretrained histology backbone" in widget.current.value


def test_loads_the_preselected_built_in_backbone(opened, wait_job):
    viewer, widget = opened
    widget.load_shipped.clicked.emit()
    wait_job(widget.jobs)
    assert session_for(viewer).backbone.name == widget.shipped.value


def test_pretrain_plots_loss_saves_and_loads(opened, tmp_path, wait_job, notes):
    viewer, widget = opened
    widget.steps.value = 3
    widget.start_training()
    wait_job(widget.jobs)
    assert len(widget.loss_plot.losses) == 3 and all(np.isfinite(widget.loss_plot.losses))
    trained = session_for(viewer).backbone
    assert trained is not None and trained.digest.startswith("unsaved-")
    assert "params" in widget.current.value
    widget.save_path.value = tmp_path / "mine"
    widget.save.clicked.emit()
    wait_job(widget.jobs)
    assert (tmp_path / "mine.safetensors").is_file() and (tmp_path / "mine.json").is_file()
    assert session_for(viewer).backbone.digest == file_digest(tmp_path / "mine.safetensors")
    widget.checkpoint.value = tmp_path / "mine.safetensors"
    widget.load_file.clicked.emit()
    wait_job(widget.jobs)
    loaded = session_for(viewer).backbone
    assert loaded is not trained and loaded.name.endswith("mine.safetensors")
    assert "mine.safetensors" in widget.current.value

    widget.fine_tune.value = True
    assert not widget.preset.enabled and not widget.mode.enabled  # fine-tuning keeps the backbone's own
    widget.steps.value = 2
    widget.start_training()
    wait_job(widget.jobs)
    assert session_for(viewer).backbone.provenance["init"].endswith("mine.safetensors")
    assert widget.jobs.status.value == "Fine-tuning: done" and notes()[-1].startswith("fine-tuning finished after 2")


def test_cancel_keeps_what_was_trained(opened, qtbot, notes):
    viewer, widget = opened
    widget.steps.value = 100_000
    widget.start_training()
    qtbot.waitUntil(lambda: len(widget.loss_plot.losses) >= 2, timeout=60_000)
    widget.jobs.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=30_000)
    assert session_for(viewer).backbone is not None
    assert "cancelled after" in notes()[-1] and widget.jobs.status.value == "Pretraining: cancelled"


def test_broken_checkpoints_and_missing_inputs_are_notifications(opened, tmp_path, wait_job, notes):
    viewer, widget = opened
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 5)
    widget.checkpoint.value = tmp_path / "broken.safetensors"
    widget.load_file.clicked.emit()
    wait_job(widget.jobs)
    assert "not a valid safetensors file" in notes()[-1]
    widget.save.clicked.emit()
    assert "no backbone to save" in notes()[-1]
    widget.fine_tune.value = True
    widget.start_training()
    assert "no backbone to fine-tune" in notes()[-1]
    widget.fine_tune.value = False
    viewer.layers.clear()
    widget.start_training()
    assert "open at least one image" in notes()[-1]
    assert session_for(viewer).backbone is None


def test_pretrain_on_a_folder(opened, tmp_path, wait_job):
    from napari_mdm.io import write_array

    viewer, widget = opened
    for i in range(2):
        write_array(tmp_path / f"tile{i}.png", np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    widget.data.value, widget.folder.value, widget.steps.value = "folder", tmp_path, 2
    widget.start_training()
    wait_job(widget.jobs)
    backbone = session_for(viewer).backbone
    assert backbone.provenance["images"] == 2 and len(widget.loss_plot.losses) == 2
