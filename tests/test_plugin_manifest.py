"""The npe2 contributions: manifest, lazy imports, widgets opening from the manifest, samples,
reader and writer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_mdm
from napari_mdm._reader import get_reader
from napari_mdm._writer import write_labels

WIDGETS = {
    "napari-mdm": "MdmPanel",
    "Backbone": "BackboneWidget",
    "Few-shot segmentation": "SegmentationWidget",
    "Reconstructions": "ReconstructionWidget",
    "Segment and export": "ExportWidget",
}


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(Path(napari_mdm.__file__).parent / "napari.yaml")
    manifest.validate_imports()
    assert {w.display_name for w in manifest.contributions.widgets} == set(WIDGETS)


def test_widget_modules_do_not_import_torch():
    """napari starts fast: torch and the heavy core load only when a widget does work."""
    code = (
        "import sys, napari_mdm._widgets.backbone_widget, napari_mdm._widgets.segmentation_widget, "
        "napari_mdm._widgets.reconstruction_widget, napari_mdm._widgets.export_widget, "
        "napari_mdm._reader, napari_mdm._writer, napari_mdm._sample_data; "
        "print(sorted(m for m in ('torch', 'napari_mdm.features', 'napari_mdm.head') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", WIDGETS)
def test_widget_opens_from_manifest(make_napari_viewer, name):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", name)
    assert type(widget).__name__ == WIDGETS[name]


@pytest.mark.parametrize("key, image_name", [("histology", "ihc"), ("face", "astronaut")])
def test_samples_open_ready_to_annotate(make_napari_viewer, key, image_name):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-mdm", key)
    image, labels = viewer.layers[image_name], viewer.layers[f"{image_name} labels"]
    assert image.rgb and image.data.shape == (512, 512, 3)
    assert labels.data.shape == (512, 512) and not labels.data.any()


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_writer_and_reader_round_trip_masks(tmp_path, suffix):
    mask = np.zeros((20, 30), dtype=np.int64)
    mask[5:10, 3:20] = 2
    mask[12:, :4] = 1
    written = write_labels(str(tmp_path / f"cells{suffix}"), mask, {})
    reader = get_reader(written[0])
    assert reader is not None
    [(data, meta, kind)] = reader(written[0])
    assert kind == "labels" and meta["name"] == "cells"
    np.testing.assert_array_equal(data, mask)


def test_reader_opens_uncertainty_as_image_and_leaves_other_tifs(tmp_path):
    from napari_mdm.io import write_array

    unc = write_array(tmp_path / "cells_uncertainty.tif", np.random.default_rng(0).random((8, 8), dtype=np.float32))
    [(data, _, kind)] = get_reader(str(unc))(str(unc))
    assert kind == "image" and data.dtype == np.float32
    photo = write_array(tmp_path / "photo.tif", np.zeros((8, 8, 3), dtype=np.uint8))
    assert get_reader(str(photo)) is None
    assert get_reader(str(tmp_path / "notes.txt")) is None
