"""Few-shot segmentation widget: paint, train, see the prediction; live mode; bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mdm._widgets.session import session_for
from napari_mdm.features import FeatureConfig

SIZE = 128


@pytest.fixture
def annotated(make_napari_viewer, tiny_backbone, paint):
    """The histology sample cropped to 128 x 128, two classes painted, the widget open."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-mdm", "histology")
    viewer.layers["ihc"].data = viewer.layers["ihc"].data[:SIZE, :SIZE]
    labels = viewer.layers["ihc labels"]
    labels.data = np.zeros((SIZE, SIZE), dtype=np.uint8)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Few-shot segmentation")
    session_for(viewer).set_backbone(tiny_backbone)
    widget.ensemble.value, widget.steps.value = 3, 40
    paint(labels, 1, slice(5, 15), slice(5, 60))
    paint(labels, 2, slice(100, 110), slice(40, 120))
    return viewer, widget, labels


def test_training_shows_prediction_and_uncertainty_and_leaves_labels_alone(annotated, wait_job):
    viewer, widget, labels = annotated
    painted = np.array(labels.data)
    assert widget.image_layers.value == [viewer.layers["ihc"]] and widget.label_layers.value == [labels]
    widget.start_training()
    wait_job(widget.jobs)
    prediction = viewer.layers["ihc prediction"].data
    uncertainty = viewer.layers["ihc uncertainty"].data
    assert prediction.shape == uncertainty.shape == (SIZE, SIZE)
    assert set(np.unique(prediction)) <= {1, 2}
    agree = prediction[painted > 0] == painted[painted > 0]
    assert agree.mean() > 0.9  # the head fits the strokes it was trained on
    assert 0 <= uncertainty.min() and uncertainty.max() <= np.log(2) + 1e-6
    np.testing.assert_array_equal(labels.data, painted)
    assert viewer.layers.selection.active is labels  # the user keeps painting where they were
    assert session_for(viewer).head.class_values == [1, 2]


def test_filter_bank_alone_is_a_feature_choice(annotated, wait_job):
    viewer, widget, labels = annotated
    painted = np.array(labels.data)
    widget.features.value = "filters"
    widget.start_training()
    wait_job(widget.jobs)
    head = session_for(viewer).head
    assert head.context.features.diffusion is False and head.context.features.filters is True
    prediction = viewer.layers["ihc prediction"].data
    assert (prediction[painted > 0] == painted[painted > 0]).mean() > 0.9


def test_position_in_the_image_is_a_feature_choice_the_head_records(annotated, wait_job):
    from napari_mdm.filterbank import num_filter_channels

    viewer, widget, _ = annotated
    assert widget.position.value is False and "left eye" in widget.position.tooltip
    widget.features.value, widget.position.value = "filters", True
    widget.start_training()
    wait_job(widget.jobs)
    head = session_for(viewer).head
    assert head.context.features.position is True and head.in_channels == num_filter_channels() + 2


def test_exact_prediction_is_a_head_choice_the_head_records(annotated, wait_job):
    viewer, widget, _ = annotated
    assert widget.exact.value is False  # by default the first layer runs through its main directions
    widget.features.value, widget.exact.value = "filters", True
    widget.start_training()
    wait_job(widget.jobs)
    head = session_for(viewer).head
    features = head.context.features
    assert head.config.rank_tolerance == 0 and head.config.coarse_stride == 1  # every pixel, whole first layer
    assert features.compact is False  # float16 features
    assert features.attention_pool == 1  # the network's attention sees every pixel


def test_live_mode_retrains_after_a_stroke(annotated, paint, qtbot):
    viewer, widget, labels = annotated
    widget.live.value = True  # prepares features in the background
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=60_000)
    paint(labels, 2, slice(60, 70), slice(60, 70))
    assert widget.debounce.isActive()
    qtbot.waitUntil(lambda: "ihc prediction" in viewer.layers and not widget.jobs.busy, timeout=60_000)
    first = session_for(viewer).head
    # live mode is the full loop with the widget's settings: the fast path's projected channels
    assert first.config.ensemble == widget.ensemble.value and first.config.steps == widget.steps.value
    assert first.context.features.project == widget.channels.value
    assert first.context.features.attention_pool == FeatureConfig.attention_pool
    assert viewer.layers["ihc prediction"].data.shape == labels.data.shape
    paint(labels, 1, slice(30, 40), slice(5, 30))
    qtbot.waitUntil(lambda: session_for(viewer).head is not first and not widget.jobs.busy, timeout=60_000)
    assert len(session_for(viewer).features) == 1  # features computed once, reused by every retrain
    widget.live.value = False
    paint(labels, 1, slice(40, 45), slice(5, 30))
    assert not widget.debounce.isActive()


def test_stack_planes_are_separate_images(make_napari_viewer, tiny_backbone, paint, wait_job):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    stack = (rng.random((3, 64, 64)) * 4000).astype(np.uint16)  # grey 16-bit
    stack[:, :, 32:] += 20000
    viewer.add_image(stack, name="stack")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Few-shot segmentation")
    session_for(viewer).set_backbone(tiny_backbone)
    widget.ensemble.value, widget.steps.value = 2, 20
    widget.add_labels_layers()
    labels = viewer.layers["stack labels"]
    assert labels.data.shape == (3, 64, 64)
    paint(labels, 1, slice(0, 64), slice(0, 8), plane=0)
    paint(labels, 2, slice(0, 64), slice(56, 64), plane=2)
    widget.start_training()
    wait_job(widget.jobs)
    prediction = viewer.layers["stack prediction"].data
    assert prediction.shape == (3, 64, 64)
    assert (prediction[:, :, 56:] == 2).mean() > 0.9 and (prediction[:, :, :8] == 1).mean() > 0.9


def test_bad_inputs_become_notifications(annotated, make_napari_viewer, notes, wait_job):
    viewer, widget, labels = annotated
    widget.label_layers.value = []
    widget.start_training()
    labels.data = np.zeros((SIZE, SIZE), dtype=np.uint8)
    widget.label_layers.value = [labels]
    widget.start_training()
    labels.data[:5, :5] = 1
    widget.start_training()
    wrong = viewer.add_labels(np.zeros((10, 10), dtype=np.uint8), name="wrong")
    widget.label_layers.value = [wrong]
    widget.start_training()
    widget.timesteps.value = "fifty"
    labels.data[-5:, -5:] = 2
    widget.label_layers.value = [labels]
    widget.start_training()
    messages = notes()
    assert any("New labels" in m for m in messages)
    assert any("no labels painted" in m for m in messages)
    assert any("only one class" in m for m in messages)
    assert any("shape (10, 10)" in m for m in messages)
    assert any("timesteps must be whole numbers" in m for m in messages)
    assert not widget.jobs.busy and "ihc prediction" not in viewer.layers

    bare = make_napari_viewer()
    bare.add_image(np.zeros((32, 32)))
    _, other = bare.window.add_plugin_dock_widget("napari-mdm", "Few-shot segmentation")
    other.start_training()  # no backbone chosen: the default loads, then the missing labels are reported
    from napari_mdm.checkpoint import default_backbone_name

    assert session_for(bare).backbone.name == default_backbone_name()
    assert any("using the default backbone" in m for m in notes()) and "no labels" in notes()[-1]


def test_cancel_keeps_previous_state(annotated, notes, qtbot):
    viewer, widget, labels = annotated
    widget.steps.value = 10_000
    painted = np.array(labels.data)
    widget.start_training()
    qtbot.waitUntil(lambda: "head" in widget.jobs.status.value, timeout=60_000)
    widget.jobs.cancel()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=30_000)
    assert "ihc prediction" not in viewer.layers and session_for(viewer).head is None
    np.testing.assert_array_equal(labels.data, painted)
    assert notes()[-1] == "Training: cancelled"


def test_choosers_follow_layer_changes(annotated, wait_job):
    viewer, widget, labels = annotated
    image = viewer.layers["ihc"]
    image.name = "tissue"
    labels.name = "tissue strokes"
    assert [name for name, _ in [(c.name, c) for c in widget.image_layers.choices]] == ["tissue"]
    assert widget.image_layers.value == [image] and widget.label_layers.value == [labels]
    extra = viewer.add_labels(np.zeros((SIZE, SIZE), dtype=np.uint8), name="scratch")
    assert extra in widget.label_layers.choices
    viewer.layers.remove(extra)
    assert extra not in widget.label_layers.choices and widget.label_layers.value == [labels]
    widget.start_training()
    wait_job(widget.jobs)
    assert "tissue prediction" in viewer.layers


def test_head_saves_and_loads(annotated, tmp_path, wait_job, notes):
    viewer, widget, _ = annotated
    widget.start_training()
    wait_job(widget.jobs)
    trained = session_for(viewer).head
    widget.save_head_file.value = tmp_path / "head"
    widget.save_head.clicked.emit()
    wait_job(widget.jobs)
    assert (tmp_path / "head.safetensors").is_file()
    session_for(viewer).set_head(None)
    # loading browses existing files (a save dialog would ask to replace the file)
    assert widget.load_head_file.mode.value == "r" and widget.save_head_file.mode.value == "w"
    widget.load_head_file.value = tmp_path / "head.safetensors"
    widget.load_head.clicked.emit()
    wait_job(widget.jobs)
    assert session_for(viewer).head.class_values == trained.class_values
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    widget.load_head_file.value = tmp_path / "broken.safetensors"
    widget.load_head.clicked.emit()
    wait_job(widget.jobs)
    assert "not a valid safetensors file" in notes()[-1]


def test_features_can_be_cached_on_disk(monkeypatch, tmp_path, tiny_backbone):
    from napari_mdm._widgets.session import FEATURE_CACHE_ENV, Session

    monkeypatch.setenv(FEATURE_CACHE_ENV, str(tmp_path))
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    first = Session().features.get(image, tiny_backbone)
    assert len(list(tmp_path.glob("*.zarr"))) == 1

    def not_again(*args, **kwargs):
        raise AssertionError("features were recomputed instead of read from disk")

    monkeypatch.setattr("napari_mdm.features.extract_features", not_again)
    again = Session().features.get(image, tiny_backbone)
    np.testing.assert_array_equal(again.to_float16(), first.to_float16())


def test_several_image_layers_each_with_its_labels(make_napari_viewer, tiny_backbone, paint, wait_job):
    """An RGBA and a grey image of other shapes, each with its own labels, trained together."""
    viewer = make_napari_viewer()
    rgba = np.full((48, 64, 4), 255, dtype=np.uint8)
    rgba[:, :32, :3] = 30
    grey = np.zeros((40, 40), dtype=np.float32)
    grey[:, 20:] = 1.0
    viewer.add_image(rgba, name="rgba", rgb=True)
    viewer.add_image(grey, name="grey")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mdm", "Few-shot segmentation")
    session_for(viewer).set_backbone(tiny_backbone)
    widget.ensemble.value, widget.steps.value = 2, 20
    widget.image_layers.value = [viewer.layers["grey"], viewer.layers["rgba"]]
    widget.add_labels_layers()
    assert sorted(lab.name for lab in widget.label_layers.value) == ["grey labels", "rgba labels"]
    paint(viewer.layers["rgba labels"], 1, slice(0, 48), slice(0, 4))
    paint(viewer.layers["grey labels"], 2, slice(0, 40), slice(36, 40))
    widget.start_training()
    wait_job(widget.jobs)
    assert viewer.layers["rgba prediction"].data.shape == (48, 64)
    assert viewer.layers["grey prediction"].data.shape == (40, 40)
    assert session_for(viewer).head.class_values == [1, 2]
