"""The face workflow (issue 16, point 4): the face sample opens with the face classes named and
asks for the face backbone (or says it is not built in), and ``napari-mdm demo --faces``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mdm import checkpoint, cli
from napari_mdm._widgets.session import session_for
from napari_mdm.faces import FACE_CLASSES, NO_SCORE, STROKES, face_strokes
from napari_mdm.io import read_labels

FACE_NAMES = ["skin", "hair", "eyes", "nose", "mouth", "background"]


@pytest.fixture
def faces_built_in(monkeypatch, tmp_path):
    """An installation that ships a 'faces' backbone beside 'histology' (empty stand-in files)."""
    for name in ("histology", "faces"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    monkeypatch.setattr(checkpoint, "shipped_dir", lambda: tmp_path)


def test_the_face_backbone_is_chosen_when_built_in_else_the_default_with_a_note(faces_built_in, monkeypatch):
    name, note = checkpoint.backbone_for("faces")
    assert name == "faces" and "pretrained on faces" in note
    monkeypatch.setattr(checkpoint, "shipped_backbones", lambda: {"histology": None})
    name, note = checkpoint.backbone_for("faces")
    assert name == "histology" and "no 'faces' backbone" in note and "'histology' is preselected" in note


@pytest.mark.parametrize("sample_first", [True, False])
def test_the_face_sample_opens_with_the_face_classes_ready_to_paint(make_napari_viewer, sample_first):
    viewer = make_napari_viewer()
    if sample_first:
        viewer.open_sample("napari-mdm", "face")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Few-shot segmentation")
    if not sample_first:
        viewer.open_sample("napari-mdm", "face")
    labels = viewer.layers["astronaut labels"]
    assert widget.label_layers.value == [labels] and not labels.data.any()
    assert [name for name, _ in session_for(viewer).classes.values()] == FACE_NAMES
    table = widget.class_table.table
    assert [table.item(r, 1).text() for r in range(table.rowCount())] == FACE_NAMES
    assert list(labels.features["class"]) == ["unlabelled", *FACE_NAMES]  # napari's status bar names them
    # training before any backbone is loaded uses the one the face images ask for
    assert session_for(viewer).preferred_backbone == checkpoint.backbone_for("faces")[0]
    line = widget.backbone_info.value  # and the tab says which, and why, opened before or after the sample
    assert f"'{checkpoint.backbone_for('faces')[0]}'" in line and "loads when first needed" in line
    # the sample's classes are taken once: a renamed class stays renamed when the layer is chosen again
    table.item(0, 1).setText("face")
    widget.label_layers.value = []
    widget.label_layers.value = [labels]
    assert session_for(viewer).classes[1][0] == "face"


def test_the_panel_shows_all_six_face_classes_without_scrolling_the_table(make_napari_viewer, qtbot):
    from napari_mdm._widgets import PANEL

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-mdm", "face")
    _, panel = viewer.window.add_plugin_dock_widget("napari-mdm", PANEL)
    panel.show_tool("Few-shot segmentation")
    table = panel.tools["Few-shot segmentation"].class_table.table
    qtbot.waitUntil(lambda: table.isVisible() and table.verticalHeader().length() > 0)
    assert table.rowCount() == 6 and table.verticalScrollBar().maximum() == 0
    area = panel.tabs.currentWidget()  # and the taller table does not widen the tab past the panel
    assert area.widget().minimumSizeHint().width() <= area.viewport().width()


def test_the_face_sample_preselects_the_face_backbone_when_built_in(make_napari_viewer, faces_built_in):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Backbone")
    assert widget.shipped.value == "histology"
    viewer.open_sample("napari-mdm", "face")
    assert widget.shipped.value == "faces" and session_for(viewer).preferred_backbone == "faces"
    assert "pretrained on faces" in widget.shipped.tooltip


def test_without_a_face_backbone_the_plugin_keeps_histology_and_says_so(make_napari_viewer):
    if "histology" not in checkpoint.shipped_backbones() or "faces" in checkpoint.shipped_backbones():
        pytest.skip("needs an installation with the histology backbone and no faces backbone")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-mdm", "face")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Backbone")
    assert widget.shipped.value == "histology" and session_for(viewer).preferred_backbone == "histology"
    assert "no 'faces' backbone" in widget.shipped.tooltip.lower() and "no 'faces' backbone" in widget.current.value
    # the Few-shot tab says so too, until a backbone is loaded
    _, seg = viewer.window.add_plugin_dock_widget("napari-mdm", "Few-shot segmentation")
    assert "no 'faces' backbone" in seg.backbone_info.value.lower() and "'histology'" in seg.backbone_info.value
    # a backbone the user picks is not overridden by the next layer
    widget.shipped.value = "random-tiny"
    viewer.open_sample("napari-mdm", "face")
    assert widget.shipped.value == "random-tiny"


def test_the_scripted_face_strokes_paint_every_class():
    strokes = face_strokes()
    assert strokes.shape == (512, 512) and set(np.unique(strokes)) == {0, *FACE_CLASSES} == {0, *STROKES}
    assert (strokes > 0).mean() < 0.02


def test_demo_faces_trains_segments_and_says_why_it_has_no_score(tmp_path, capsys):
    out = tmp_path / "faces"
    assert cli.main(["demo", "--faces", "--out", str(out), "--backbone", "random-tiny", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert NO_SCORE in err and "predicted share of the image" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backbone"] == "random-tiny" and summary["score"] == NO_SCORE
    assert set(summary["predicted_percent_of_image"]) == set(FACE_NAMES)
    prediction, strokes = read_labels(out / "astronaut_prediction.tif"), read_labels(out / "astronaut_scribbles.tif")
    assert prediction.shape == (512, 512) and set(np.unique(prediction)) <= set(FACE_CLASSES)
    painted = strokes > 0
    assert (prediction[painted] == strokes[painted]).mean() > 0.8  # the head fits the strokes it learnt from
