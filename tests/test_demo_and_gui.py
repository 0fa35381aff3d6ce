"""The README's run command: ``napari-mdm gui`` (napari with the plugin and the histology
sample) and, without a screen, the headless demo it falls back to."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mdm import cli
from napari_mdm.demo import demo_scribbles, sample_image, stain_reference
from napari_mdm.io import read_array, read_labels


def test_demo_reference_and_scribbles_leave_the_right_half_for_evaluation():
    reference = stain_reference(sample_image())
    assert set(np.unique(reference)) == {1, 2, 3}
    scribbles = demo_scribbles(reference)
    assert set(np.unique(scribbles)) == {0, 1, 2, 3}
    assert not scribbles[:, 256:].any() and (scribbles > 0).mean() < 0.02
    labelled = scribbles > 0
    assert np.array_equal(scribbles[labelled], reference[labelled])  # strokes stay inside their class


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--out", str(out), "--backbone", "random-tiny", "--device", "cpu"]) == 0
    return out


def test_demo_trains_segments_and_writes_everything(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    names = {p.name for p in demo_run.iterdir()}
    assert {
        "ihc.tif",
        "ihc_scribbles.tif",
        "ihc_reference.tif",
        "ihc_prediction.tif",
        "ihc_uncertainty.tif",
        "head.safetensors",
        "summary.json",
    } <= names
    prediction, reference = read_labels(demo_run / "ihc_prediction.tif"), read_labels(demo_run / "ihc_reference.tif")
    assert prediction.shape == reference.shape == (512, 512)
    # scribbles on the left half only; the right half is recovered well beyond chance
    dice = summary["dice_right_half_percent"]
    assert dice["DAB+ epithelium"] > 85 and dice["stroma/lumen"] > 75 and dice["nuclei"] > 50, dice
    assert summary["backbone"] == "random-tiny" and summary["scribbled_percent"] < 2
    # no frame of high uncertainty along the image border (mirrored context around tiles)
    uncertainty = read_array(demo_run / "ihc_uncertainty.tif")
    frame = np.concatenate(
        [uncertainty[:3].ravel(), uncertainty[-3:].ravel(), uncertainty[:, :3].ravel(), uncertainty[:, -3:].ravel()]
    )
    assert frame.mean() < 3 * uncertainty.mean()


def test_gui_without_a_screen_runs_the_demo(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    ran = []
    monkeypatch.setattr(cli, "cmd_demo", lambda args: ran.append(args.out) or 0)
    assert cli.main(["gui", "--out", str(tmp_path / "d")]) == 0
    assert ran == [str(tmp_path / "d")] and "no screen" in capsys.readouterr().err


def test_gui_opens_the_sample_every_widget_and_the_default_backbone(make_napari_viewer, wait_job):
    from napari_mdm._widgets import WIDGETS, populate_viewer
    from napari_mdm._widgets.session import session_for
    from napari_mdm.checkpoint import default_backbone_name

    viewer = make_napari_viewer()
    widgets = populate_viewer(viewer)
    assert [layer.name for layer in viewer.layers] == ["ihc", "ihc labels"]
    assert list(widgets) == list(WIDGETS)
    wait_job(widgets["Backbone"].jobs)
    assert session_for(viewer).backbone.name == default_backbone_name()


def test_gui_opens_demo_outputs_as_image_and_label_layers(make_napari_viewer, demo_run):
    from napari_mdm._widgets import populate_viewer

    viewer = make_napari_viewer()
    populate_viewer(viewer, [str(demo_run / f) for f in ("ihc.tif", "ihc_prediction.tif", "ihc_uncertainty.tif")])
    kinds = {layer.name: type(layer).__name__ for layer in viewer.layers}
    assert kinds == {"ihc": "Image", "ihc_prediction": "Labels", "ihc_uncertainty": "Image"}
    assert viewer.layers["ihc"].rgb
