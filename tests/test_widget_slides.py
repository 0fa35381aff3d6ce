"""Whole slides in napari (issue 17): a pyramidal TIFF opens as a lazy multiscale image; the
export tab segments the visible region (placed over the slide) or the whole slide (progress per
tile, cancel, resume, the label pyramid opened over the slide)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr
from napari.layers import Image, Labels
from test_slides import CHUNK, H, W, slide  # noqa: F401 (the module's slide fixture)

from napari_mdm import slide_segmentation
from napari_mdm._widgets import slide_controls
from napari_mdm._widgets.session import session_for
from napari_mdm.checkpoint import random_backbone
from napari_mdm.head import Head
from napari_mdm.slides import region_at_level, slide_levels

DARK = (96, 192, 224, 320)
"""Rows and columns (full-resolution pixels) of the synthetic slide's dark region (class 2)."""


@pytest.fixture
def opened(make_napari_viewer, slide):  # noqa: F811
    """A viewer with the slide opened by our reader, a backbone and head, and the export tab on 'slide'."""
    viewer = make_napari_viewer()
    [layer] = viewer.open(slide / "slide.ome.tif", plugin="napari-mdm")
    session_for(viewer).set_backbone(random_backbone("tiny"))
    session_for(viewer).set_head(Head.load(slide / "head.safetensors"))
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Segment and export")
    widget.source.value = "slide"
    return viewer, layer, widget


def world_centres(layer, axis: int) -> np.ndarray:
    """World coordinates of the pixel centres of a 2-D layer along ``axis`` (0 rows, 1 columns)."""
    return layer.translate[axis] + layer.scale[axis] * np.arange(layer.data.shape[axis])


def near_dark(rows: np.ndarray, cols: np.ndarray, margin: float) -> np.ndarray:
    """Which pixels lie in the dark region grown by ``margin`` (shrunk when negative)."""
    top, bottom, left, right = DARK
    return np.outer((rows > top - margin) & (rows < bottom + margin), (cols > left - margin) & (cols < right + margin))


def test_a_pyramidal_tiff_opens_as_a_lazy_multiscale_image(opened):
    _, layer, widget = opened
    assert isinstance(layer, Image) and layer.multiscale and layer.rgb
    assert [tuple(s[:2]) for s in layer.level_shapes] == [(H, W), (H // 2, W // 2)]
    assert not isinstance(layer.data[0], np.ndarray)  # zarr views of the file, read by napari as shown
    assert tuple(layer.contrast_limits) == (0, 255)
    assert widget.slides.slide.value is layer and layer not in widget.image_layers.value  # not a picture to load
    assert list(widget.slides.level.choices) == [None, 0, 1]


@pytest.mark.parametrize("level", [None, 1])
def test_the_visible_region_is_segmented_and_laid_over_the_slide(opened, level, wait_job):
    viewer, slide_layer, widget = opened
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (0, 144, 272)
    camera.zoom = max(viewer.canvas.size) / 128  # about 128 x 128 slide pixels in view
    widget.slides.level.value = level
    widget.start()
    wait_job(widget.jobs)
    result = viewer.layers["slide visible_mask"]
    assert isinstance(result, Labels)
    expected = region_at_level(
        slide_levels(slide_layer.source.path)[level or 0], slide_controls.visible_box(viewer, slide_layer)
    )
    assert result.data.shape == expected.shape and tuple(result.scale) == expected.scale
    assert tuple(result.translate) == expected.translate
    rows, cols = world_centres(result, 0), world_centres(result, 1)
    assert 64 <= rows[0] and rows[-1] <= 224 and 192 <= cols[0] and cols[-1] <= 352
    if level is None:  # at the level the head was trained at (its mpp 0.5 = level 0): right classes too
        assert (result.data[near_dark(rows, cols, -8)] == 2).mean() > 0.9
        assert (result.data[~near_dark(rows, cols, 8)] == 1).mean() > 0.9


def test_a_too_large_view_is_refused_before_anything_starts(opened, notes, monkeypatch):
    viewer, _, widget = opened
    monkeypatch.setattr("napari_mdm.slides.MAX_REGION_PIXELS", 100)
    monkeypatch.setattr(slide_controls, "visible_box", lambda *_: (0.0, 0.0, 200.0, 200.0))
    widget.start()
    assert not widget.jobs.busy and "zoom in, or segment the whole slide" in notes()[-1]


def test_the_whole_slide_job_reports_tiles_cancels_resumes_and_opens_its_output(
    opened, tmp_path, qtbot, wait_job, notes, monkeypatch
):
    viewer, slide_layer, widget = opened
    monkeypatch.setattr(slide_controls, "TILE", CHUNK)
    widget.slides.extent.value = "whole slide"
    widget.out_dir.value, widget.uncertainty.value = tmp_path, True
    steps = []
    widget.jobs.progressed.connect(lambda done, total, info: steps.append((done, total)))
    pressed = threading.Event()
    real_chunk, calls = slide_segmentation.segment_chunk, []

    def held_chunk(*args):  # tiles after the first wait until Cancel is pressed
        calls.append(args)
        if len(calls) > 1:
            pressed.wait(30)
        return real_chunk(*args)

    monkeypatch.setattr(slide_segmentation, "segment_chunk", held_chunk)
    widget.start()
    qtbot.waitUntil(lambda: bool(steps), timeout=60_000)
    widget.jobs.cancel()
    pressed.set()
    wait_job(widget.jobs)
    out = tmp_path / "slide_mask.ome.zarr"
    assert widget.jobs.status.value.endswith("cancelled") and "slide_mask" not in viewer.layers
    assert 1 <= len(list((out / ".napari-mdm-done").iterdir())) < 4
    monkeypatch.undo()
    monkeypatch.setattr(slide_controls, "TILE", CHUNK)
    steps.clear()
    widget.start()
    wait_job(widget.jobs)
    assert steps[-1][0] == steps[-1][1] and 4 - steps[-1][1] >= 1  # only the tiles still to do
    assert "kept from an earlier run" in notes()[-1]
    labels, unc = viewer.layers["slide_mask"], viewer.layers["slide_mask_uncertainty"]
    assert isinstance(labels, Labels) and labels.multiscale and tuple(labels.scale) == (1, 1)
    np.testing.assert_array_equal(np.asarray(labels.data[0]), zarr.open_array(str(out / "0"))[:])
    assert (np.asarray(labels.data[0])[DARK[0] + 8 : DARK[1] - 8, DARK[2] + 8 : DARK[3] - 8] == 2).mean() > 0.9
    assert isinstance(unc, Image) and not unc.visible and unc.multiscale
    assert slide_layer in viewer.layers and widget.slides.slide.value is slide_layer  # outputs are not slides


def test_an_output_that_is_not_this_job_says_what_to_do_in_the_plugin(opened, tmp_path, wait_job, notes):
    _, _, widget = opened
    widget.slides.extent.value = "whole slide"
    widget.out_dir.value = tmp_path
    zarr.open_group(str(tmp_path / "slide_mask.ome.zarr"), mode="w", zarr_format=2)  # someone else's store
    widget.start()
    wait_job(widget.jobs)
    assert (
        "is not the output of a napari-mdm slide job; tick 'overwrite files' to replace it, or choose another "
        "folder under 'save to'" in notes()[-1]
    )
    assert "--" not in notes()[-1]
    (tmp_path / "slide_mask.ome.zarr" / ".zgroup").rename(tmp_path / "slide_mask.ome.zarr" / "notes.txt")
    widget.overwrite.value = True  # a folder of other files: never replaced
    widget.start()
    wait_job(widget.jobs)
    assert (tmp_path / "slide_mask.ome.zarr" / "notes.txt").exists()
    assert notes()[-1].endswith("never replaces one; choose another folder under 'save to'")
