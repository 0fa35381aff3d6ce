"""Plugin round 2 (issue 15): inputs checked before any job, docks and viewers that close
cleanly, the tabbed panel, masks that come back as labels, export that reuses the viewer's
work, progress that moves, class names and colours."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_mdm._widgets.session import session_for
from napari_mdm.head import HeadContext

SIZE = 64


@pytest.fixture
def panel(make_napari_viewer, tiny_backbone, paint):
    """The tabbed panel on a 64 x 64 crop of the histology sample with two classes painted."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-mdm", "histology")
    viewer.layers["ihc"].data = viewer.layers["ihc"].data[:SIZE, :SIZE]
    labels = viewer.layers["ihc labels"]
    labels.data = np.zeros((SIZE, SIZE), dtype=np.uint8)
    dock, panel = viewer.window.add_plugin_dock_widget("napari-mdm", "napari-mdm")
    session_for(viewer).set_backbone(tiny_backbone)
    seg = panel.tools["Few-shot segmentation"]
    seg.ensemble.value, seg.steps.value = 2, 20
    paint(labels, 1, slice(2, 8), slice(2, 30))
    paint(labels, 2, slice(50, 56), slice(20, 60))
    return viewer, dock, panel


def test_every_input_is_checked_before_a_job_starts(panel, tmp_path, notes):
    """One bad value of each kind (number out of range, text, missing file, folder for a file,
    file for a folder, wrong format for the data) gives one clear notification and no job."""
    viewer, _, panel = panel
    tools = panel.tools
    seg, backbone, rec, export = (
        tools[n] for n in ("Few-shot segmentation", "Backbone", "Reconstructions", "Segment and export")
    )
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    seg.timesteps.value = "2000"
    cases = [
        (seg.start_training, seg.jobs, "timesteps must be in 0..1000"),
        (lambda: setattr(seg.timesteps, "value", "fifty") or seg.start_training(), seg.jobs, "whole numbers"),
        (lambda: setattr(rec.timesteps, "value", "2000") or rec.start(), rec.jobs, "timesteps must be in 0..1000"),
        (
            lambda: setattr(seg.load_head_file, "value", tmp_path / "none.safetensors") or seg._load_head(),
            seg.jobs,
            "does not exist",
        ),
        (lambda: setattr(seg.load_head_file, "value", tmp_path) or seg._load_head(), seg.jobs, "is a folder"),
        (seg._save_head, seg.jobs, "no trained head"),
        (
            lambda: setattr(backbone.checkpoint, "value", tmp_path / "none.safetensors") or backbone._load_file(),
            backbone.jobs,
            "does not exist",
        ),
        (
            lambda: (
                setattr(backbone.data, "value", "folder"),
                setattr(backbone.folder, "value", a_file),
                backbone.start_training(),
            ),
            backbone.jobs,
            "is a file",
        ),
        (export.start, export.jobs, "no trained head"),
    ]
    for action, jobs, message in cases:
        action()
        assert not jobs.busy and message in notes()[-1], message
    seg.timesteps.value = "50"
    seg.start_training()
    assert seg.jobs.busy
    seg.jobs.cancel()
    viewer.add_image(np.zeros((2, SIZE, SIZE), np.float32), name="stack")
    export.image_layers.value = [viewer.layers["stack"]]
    export.out_dir.value, export.format.value = tmp_path / "out", "png"
    session_for(viewer).set_head(SimpleNamespace(context=HeadContext()))  # never used: the format is refused first
    export.start()
    assert not export.jobs.busy and "png holds one 2-D mask" in notes()[-1]
    export.out_dir.value = a_file
    export.start()
    assert "is a file" in notes()[-1]


def test_panel_is_tabbed_narrow_and_explained(panel):
    _, dock, panel = panel
    titles = [panel.tabs.tabText(i) for i in range(panel.tabs.count())]
    assert titles == ["Backbone", "Few-shot", "Reconstruct", "Export"]
    assert all("&" not in panel.tabs.tabText(i) for i in range(panel.tabs.count()))
    assert panel.tabs.tabToolTip(3) == "Segment and export"
    assert panel.sizeHint().width() <= 380 and panel.minimumSizeHint().width() <= 380
    assert dock.minimumSizeHint().width() <= 400
    for name, tool in panel.tools.items():  # no tab is cut off at the panel's width
        assert tool.native.minimumSizeHint().width() <= 350, name
    from magicgui.widgets import Container, Label
    from magicgui.widgets.bases import ButtonWidget, ValueWidget

    def controls(container):
        for w in container:
            if isinstance(w, Container):
                yield from controls(w)
            elif isinstance(w, (ValueWidget, ButtonWidget)) and not isinstance(w, Label):
                yield w

    for name, tool in panel.tools.items():
        controls_ = list(controls(tool))
        assert len(controls_) >= 3
        if name == "Few-shot segmentation":
            assert tool.project.save in controls_  # the project fields are checked too
        missing = [w.label or w.text for w in controls_ if not w.tooltip]
        assert not missing, f"{name}: no tooltip on {missing}"


def test_closing_the_dock_cancels_the_job_and_shows_nothing(panel, qtbot):
    viewer, dock, panel = panel
    seg = panel.tools["Few-shot segmentation"]
    seg.steps.value = 10_000
    seg.start_training()
    qtbot.waitUntil(lambda: "head" in seg.jobs.status.value, timeout=60_000)
    viewer.window.remove_dock_widget(dock)
    assert seg.jobs._idle.is_set()  # closing waited for the worker's thread
    qtbot.wait(300)
    assert "ihc prediction" not in viewer.layers and session_for(viewer).head is None


def test_closing_the_viewer_stops_a_running_job(make_napari_viewer, tiny_backbone, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((48, 48)), name="grey")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Reconstructions")
    session_for(viewer).set_backbone(tiny_backbone)
    widget.timesteps.value = ", ".join(["500"] * 200)  # long enough to be running at close
    widget.start()
    jobs = widget.jobs
    viewer.close()
    qtbot.waitUntil(jobs._idle.is_set, timeout=30_000)
    assert jobs._closed and jobs._stop.is_set()


def test_torch_threads_are_limited_only_while_a_job_runs(qtbot):
    import os

    import torch

    from napari_mdm._widgets.workers import JobPanel

    jobs = JobPanel()
    qtbot.addWidget(jobs.native)
    before, inside = torch.get_num_threads(), []
    jobs.start("Job", lambda progress, stop: inside.append(torch.get_num_threads()), print)
    qtbot.waitUntil(lambda: not jobs.busy)
    assert inside == [max(1, (os.cpu_count() or 2) - 1)] and torch.get_num_threads() == before
    assert jobs.bar.value == jobs.bar.max  # a job without steps ends full


def test_cancelled_status_is_not_overwritten_by_late_progress(qtbot):
    import threading

    from napari_mdm._widgets.workers import JobPanel
    from napari_mdm.jobs import check_stop

    jobs = JobPanel()
    qtbot.addWidget(jobs.native)
    cancelled = threading.Event()

    def compute(progress, should_stop):
        progress(1, 4, "features 1/1")
        cancelled.wait(10)
        progress(2, 4, "features 1/1")  # a report already on its way when Cancel was pressed
        check_stop(should_stop)

    jobs.start("Training", compute, print)
    qtbot.waitUntil(lambda: "features" in jobs.status.value)
    jobs.cancel()
    assert jobs.status.value == "Training: cancelling"
    cancelled.set()
    qtbot.waitUntil(lambda: not jobs.busy)
    assert jobs.status.value == "Training: cancelled" and jobs.bar.value == 1  # the late (2, 4) was dropped


def test_progress_moves_within_one_tile_and_during_prediction(tiny_backbone):
    from napari_mdm.features import FeatureConfig, extract_features
    from napari_mdm.head import Head, HeadConfig, fit_head

    image = np.random.default_rng(0).random((40, 40, 3)).astype(np.float32)
    seen = []
    feats = extract_features(tiny_backbone, image, FeatureConfig(), progress=lambda *r: seen.append(r))
    assert len(seen) > 5 and seen[-1][0] == seen[-1][1] and seen[0][2] == "tile 1/1"  # one tile, many steps
    labels = np.zeros((40, 40), np.int64)
    labels[:, :4], labels[:, -4:] = 1, 2
    head = fit_head([feats], [labels], HeadConfig(ensemble=2, steps=10))
    chunks = []
    head.predict_maps(feats, chunk=400, progress=lambda *r: chunks.append(r[:2]))
    done = [d for d, _ in chunks]  # pixels, coarse to fine
    assert len(chunks) > 2 and done == sorted(done) and chunks[0][0] > 0 and chunks[-1] == (1600, 1600)
    exact, steps = replace(head.config, coarse_stride=1), []
    Head(head.net, head.class_values, head.mean, head.std, exact).predict_maps(
        feats, chunk=400, progress=lambda *r: steps.append(r[:2])
    )
    assert steps == [(400 * i, 1600) for i in range(1, 5)]


def test_masks_come_back_as_labels_and_micrographs_as_images(make_napari_viewer, tmp_path):
    import tifffile

    from napari_mdm._reader import get_reader
    from napari_mdm.io import write_array, write_labels

    micrograph = tmp_path / "cells.tif"
    tifffile.imwrite(micrograph, (np.random.default_rng(0).random((32, 32)) * 60000).astype(np.uint16))
    assert get_reader(str(micrograph)) is None  # a plain 16-bit image is napari's to open
    marked = write_labels(tmp_path / "any name.tif", np.eye(8, dtype=np.uint8), overwrite=True)
    assert get_reader(str(marked)) is not None  # our marker, whatever the name
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-mdm", "Few-shot segmentation")  # sets napari's preference
    for name in ("cells_mask.tif", "cells_mask.zarr", "cells_mask.png"):
        path = write_labels(tmp_path / name, np.eye(8, dtype=np.uint8) * 2, overwrite=True)
        # plugin=None is File > Open: napari consults its reader preferences (a bare viewer.open
        # uses napari's builtins in napari >= 0.6)
        [layer] = viewer.open(path, plugin=None)
        assert isinstance(layer, Labels) and layer.data.max() == 2, name
    unc = write_array(tmp_path / "cells_uncertainty.tif", np.ones((8, 8), np.float32), kind="uncertainty")
    [layer] = viewer.open(unc, plugin=None)
    assert isinstance(layer, Image) and layer.metadata["napari_mdm"] == "uncertainty"


def test_export_reuses_features_keeps_the_prediction_and_picks_pictures(panel, tmp_path, wait_job, monkeypatch):
    viewer, _, panel = panel
    seg, export = panel.tools["Few-shot segmentation"], panel.tools["Segment and export"]
    seg.start_training()
    wait_job(seg.jobs)
    prediction = viewer.layers["ihc prediction"]
    uncertainty = viewer.layers["ihc uncertainty"]
    assert not uncertainty.visible and uncertainty.blending != "additive"
    viewer.add_image(np.eye(SIZE, dtype=np.uint8) * 2, name="mask opened as image")
    export.reset_choices()
    assert export.image_layers.value == [viewer.layers["ihc"]]  # not the uncertainty, not the mask

    def recomputed(*args, **kwargs):
        raise AssertionError("export recomputed features the viewer has cached")

    monkeypatch.setattr("napari_mdm.features.extract_features", recomputed)
    export.out_dir.value, export.format.value = tmp_path, "png"
    reports = []
    export.jobs.progressed.connect(lambda *report: reports.append(report))
    export.start()
    wait_job(export.jobs)
    assert (tmp_path / "ihc_mask.png").is_file()
    assert any(info.startswith("image 1/1 ihc predicting") for *_, info in reports)  # progress within the image
    assert viewer.layers["ihc prediction"] is prediction  # untouched; the export is its own layer
    np.testing.assert_array_equal(viewer.layers["ihc_mask"].data, prediction.data)


def test_class_names_and_colours_reach_layers_and_the_saved_head(panel, tmp_path, wait_job):
    viewer, _, panel = panel
    seg = panel.tools["Few-shot segmentation"]
    table = seg.class_table
    table.table.item(0, 1).setText("stroma")
    table.set_color(1, "#ff0000")
    labels = viewer.layers["ihc labels"]
    assert session_for(viewer).classes[1][0] == "stroma"
    np.testing.assert_allclose(labels.colormap.color_dict[2], [1, 0, 0, 1])
    assert list(labels.features["class"]) == ["unlabelled", "stroma", "class 2"]
    seg.start_training()
    wait_job(seg.jobs)
    np.testing.assert_allclose(viewer.layers["ihc prediction"].colormap.color_dict[2], [1, 0, 0, 1])
    seg.save_head_file.value = tmp_path / "head"
    seg._save_head()
    wait_job(seg.jobs)
    session_for(viewer).set_classes({1: ("x", "#000000"), 2: ("y", "#000000")})
    seg.load_head_file.value = tmp_path / "head.safetensors"
    seg._load_head()
    wait_job(seg.jobs)
    assert session_for(viewer).classes[1] == ("stroma", "#4e79a7")
    assert table.table.item(1, 1).text() == "class 2" and table.classes()[2][1] == "#ff0000"


def test_labels_follow_a_newly_selected_image(panel):
    viewer, _, panel = panel
    seg = panel.tools["Few-shot segmentation"]
    other = viewer.add_image(np.zeros((30, 40), np.float32), name="other")
    other_labels = viewer.add_labels(np.zeros((30, 40), np.uint8), name="other labels")
    seg.image_layers.value = [other]
    assert seg.label_layers.value == [other_labels]
    seg.image_layers.value = [viewer.layers["ihc"]]
    assert seg.label_layers.value == [viewer.layers["ihc labels"]]


def test_suggested_regions_cover_the_most_uncertain_places_and_do_not_overlap():
    from napari_mdm.suggest import mean_in, suggest_regions

    uncertainty = np.zeros((100, 120), np.float32)
    uncertainty[10:20, 90:100] = 1.0
    uncertainty[70:80, 5:15] = 0.5
    boxes = suggest_regions(uncertainty, count=5, size=16)
    assert len(boxes) == 2  # no window is suggested where the head is sure
    (y0, x0, y1, x1), second = boxes
    assert y0 <= 10 and y1 >= 20 and x0 <= 90 and x1 >= 100 and mean_in(boxes[:1], uncertainty) > 0.3
    noisy = suggest_regions(np.random.default_rng(0).random((64, 64)), count=10, size=16)
    for i, a in enumerate(noisy):
        assert a[2] - a[0] == a[3] - a[1] == 16 and 0 <= a[0] and a[2] <= 64 and 0 <= a[1] and a[3] <= 64
        for b in noisy[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_where_to_label_next_adds_boxes_and_reports_the_gain(panel, paint, wait_job, notes):
    viewer, _, panel = panel
    seg = panel.tools["Few-shot segmentation"]
    seg.suggest_regions()
    assert "Train & predict' first" in notes()[-1]
    seg.start_training()
    wait_job(seg.jobs)
    seg.suggest_regions()
    boxes = viewer.layers["ihc: label here"]
    assert boxes.shape_type[0] == "rectangle" and 1 <= len(boxes.data) <= 5
    assert viewer.layers.selection.active is not boxes  # the user keeps painting
    y0, x0, _, _ = boxes.metadata["boxes"][0]
    paint(viewer.layers["ihc labels"], 2, slice(y0, y0 + 4), slice(x0, x0 + 4))
    seg.start_training()
    wait_job(seg.jobs)
    assert any(n.startswith("uncertainty where suggested on 'ihc'") for n in notes())


def test_export_writes_probabilities_and_instances(panel, tmp_path, wait_job):
    from napari_mdm.io import read_array, written_kind

    viewer, _, panel = panel
    seg, export = panel.tools["Few-shot segmentation"], panel.tools["Segment and export"]
    seg.start_training()
    wait_job(seg.jobs)
    export.out_dir.value = tmp_path
    export.probabilities.value = True
    export.instances.value = 2
    export.start()
    wait_job(export.jobs)
    mask = read_array(tmp_path / "ihc_mask.tif")
    probabilities = read_array(tmp_path / "ihc_probabilities.tif")
    instances = read_array(tmp_path / "ihc_instances.tif")
    assert probabilities.shape == (2, SIZE, SIZE) and np.allclose(probabilities.sum(0), 1, atol=1e-4)
    assert written_kind(tmp_path / "ihc_probabilities.tif") == "probabilities"
    assert ((instances > 0) == (mask == 2)).all() and instances.max() >= 1
    assert isinstance(viewer.layers["ihc_instances"], Labels)


def test_connected_instances_number_each_region_across_planes():
    from napari_mdm.instances import connected_instances

    labels = np.zeros((2, 10, 10), np.uint8)
    labels[0, 1:3, 1:3] = labels[0, 6:8, 6:8] = 2
    labels[1, 0:4, 0:4] = 2
    labels[1, 5:9, 5:9] = 1
    out = connected_instances(labels, 2)
    assert sorted(np.unique(out[0])) == [0, 1, 2] and sorted(np.unique(out[1])) == [0, 3]
    assert connected_instances(labels[0], 2).max() == 2


def test_project_saves_and_reopens_everything(panel, make_napari_viewer, tmp_path, wait_job, notes):
    viewer, _, panel = panel
    seg = panel.tools["Few-shot segmentation"]
    seg.start_training()
    wait_job(seg.jobs)
    seg.class_table.table.item(1, 1).setText("gland")
    seg.timesteps.value, seg.features.value, seg.position.value = "50, 100", "filters", True
    painted = np.array(viewer.layers["ihc labels"].data)
    seg.project.save_file.value = tmp_path / "study"
    seg.project.save_project()
    wait_job(seg.jobs)
    assert (tmp_path / "study.mdmproject").is_file()

    fresh = make_napari_viewer()
    _, other = fresh.window.add_plugin_dock_widget("napari-mdm", "Few-shot segmentation")
    other.project.open_file.value = tmp_path / "study.mdmproject"
    other.project.open_project()
    wait_job(other.jobs)
    np.testing.assert_array_equal(fresh.layers["ihc labels"].data, painted)
    assert fresh.layers["ihc"].rgb and fresh.layers["ihc"].data.shape == (SIZE, SIZE, 3)
    assert session_for(fresh).classes[2][0] == "gland" and session_for(fresh).head.class_values == [1, 2]
    assert other.timesteps.value == "50, 100" and other.features.value == "filters" and other.position.value
    assert other.label_layers.value == [fresh.layers["ihc labels"]]
    assert "load it in the Backbone tab" in " ".join(notes())  # the fresh viewer has no backbone yet
    (tmp_path / "bad.mdmproject").write_bytes(b"not a zip")
    other.project.open_file.value = tmp_path / "bad.mdmproject"
    other.project.open_project()
    wait_job(other.jobs)
    assert "cannot open project" in notes()[-1]


def test_a_script_that_closes_the_viewer_during_a_job_exits_cleanly(tmp_path):
    """Closing while the network runs used to crash the interpreter on exit (issue 15)."""
    import subprocess
    import sys

    script = tmp_path / "close_during_job.py"
    script.write_text(
        "import time\n"
        "import numpy as np, napari\n"
        "from qtpy.QtWidgets import QApplication\n"
        "from napari_mdm._widgets.session import session_for\n"
        "from napari_mdm.checkpoint import random_backbone\n"
        "viewer = napari.Viewer(show=False)\n"
        "viewer.add_image(np.random.default_rng(0).random((64, 64)), name='grey')\n"
        "_, widget = viewer.window.add_plugin_dock_widget('napari-mdm', 'Reconstructions')\n"
        "session_for(viewer).set_backbone(random_backbone('tiny'))\n"
        "widget.timesteps.value = ', '.join(['500'] * 300)\n"
        "widget.start()\n"
        "time.sleep(1)\n"
        "jobs = widget.jobs\n"
        "viewer.close()\n"
        "QApplication.processEvents()\n"
        "print('cancelled' if jobs._stop.is_set() else 'not cancelled')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("cancelled") and "not" not in done.stdout
