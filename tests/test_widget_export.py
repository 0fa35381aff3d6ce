"""Segment and export widget: layers and folders, tif and zarr, cancel without half-written files."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from napari_mdm._reader import get_reader
from napari_mdm._widgets.session import session_for
from napari_mdm.features import FeatureConfig, extract_features
from napari_mdm.head import HeadConfig, HeadContext, fit_head
from napari_mdm.io import write_array


def halves(seed: int, size: int = 64) -> np.ndarray:
    """A dark left half and a bright right half, with noise: an easy two-class image."""
    rng = np.random.default_rng(seed)
    img = rng.random((size, size, 3)) * 0.2
    img[:, size // 2 :] += 0.7
    return (img * 255).astype(np.uint8)


@pytest.fixture
def ready(make_napari_viewer, tiny_backbone):
    """A viewer with the export widget, a backbone and a head trained (by the core) on halves."""
    image = halves(0).astype(np.float32) / 255
    labels = np.zeros(image.shape[:2], dtype=np.int64)
    labels[:, :6], labels[:, -6:] = 1, 2
    config = FeatureConfig()
    feats = extract_features(tiny_backbone, image, config)
    head = fit_head(
        [feats], [labels], HeadConfig(ensemble=2, steps=30), context=HeadContext.for_backbone(tiny_backbone, config)
    )
    viewer = make_napari_viewer()
    session_for(viewer).set_backbone(tiny_backbone)
    session_for(viewer).set_head(head)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Segment and export")
    return viewer, widget


def read_back(path):
    [(data, _, kind)] = get_reader(str(path))(str(path))
    return data, kind


def test_layers_are_segmented_written_and_shown(ready, tmp_path, wait_job, notes):
    viewer, widget = ready
    viewer.add_image(halves(1), name="second", rgb=True)
    viewer.add_image(np.stack([halves(2)[..., 0], halves(3)[..., 0]]), name="grey stack")
    widget.reset_choices()
    assert [layer.name for layer in widget.image_layers.value] == ["second", "grey stack"]
    widget.out_dir.value = tmp_path
    widget.format.value = "zarr"
    widget.uncertainty.value = True
    widget.start()
    wait_job(widget.jobs)
    mask, kind = read_back(tmp_path / "second_mask.zarr")
    assert kind == "labels" and (mask[:, 40:] == 2).mean() > 0.9 and (mask[:, :24] == 1).mean() > 0.9
    np.testing.assert_array_equal(viewer.layers["second_mask"].data, mask)
    [opened] = viewer.open(tmp_path / "second_mask.zarr", plugin="napari-mdm")
    assert isinstance(opened, Labels) and opened.name.startswith("second")
    np.testing.assert_array_equal(opened.data, mask)
    stack, _ = read_back(tmp_path / "grey stack_mask.zarr")
    assert stack.shape == (2, 64, 64)
    uncertainty, kind = read_back(tmp_path / "second_uncertainty.zarr")
    assert kind == "image" and uncertainty.shape == (64, 64)
    widget.start()
    assert "already exists; tick 'overwrite files' to replace it" in notes()[-1]  # the plugin's words
    assert "--overwrite" not in notes()[-1]


def test_folder_is_segmented_to_tif_and_cancel_leaves_no_partial_file(ready, tmp_path, qtbot, wait_job):
    viewer, widget = ready
    folder, out = tmp_path / "in", tmp_path / "out"
    for i in range(6):
        write_array(folder / f"img{i}.png", halves(i))
    widget.source.value = "folder"
    widget.folder.value, widget.out_dir.value = folder, out
    widget.start()
    qtbot.waitUntil(lambda: out.exists() and any(out.glob("*.tif")), timeout=60_000)
    widget.jobs.cancel()
    wait_job(widget.jobs)
    written = sorted(p.name for p in out.iterdir())
    assert 1 <= len(written) < 6 and all(name.endswith(".tif") for name in written)  # no .part left
    widget.overwrite.value = True
    widget.start()
    wait_job(widget.jobs)
    assert sorted(p.name for p in out.iterdir()) == [f"img{i}_mask.tif" for i in range(6)]
    mask, kind = read_back(out / "img3_mask.tif")
    assert kind == "labels" and (mask[:, 40:] == 2).mean() > 0.9
    np.testing.assert_array_equal(viewer.layers["img3_mask"].data, mask)


def test_missing_head_or_output_is_a_notification(make_napari_viewer, tiny_backbone, notes):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Segment and export")
    widget.start()
    assert "using the default backbone" in notes()[0] and "no trained head" in notes()[-1]
    session_for(viewer).set_backbone(tiny_backbone)
    widget.start()
    assert "no trained head" in notes()[-1]
