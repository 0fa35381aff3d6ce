"""Dock widget 'Few-shot segmentation': paint a few strokes, train the head, see the prediction
and its uncertainty; in live mode it retrains shortly after each stroke."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from ..feature_sets import DEFAULT_FEATURE_SET, FEATURE_SETS
from ..jobs import UserError, staged
from ..parsing import parse_ints
from .layers import (
    follow_layer_list,
    image_planes,
    label_planes,
    layer_select,
    pair_labels,
    plane_shape,
    show_result,
    stack_planes,
)
from .session import BackboneLabel, session_for, unwrap
from .workers import JobPanel, chosen_path, notify_error, notify_info

if TYPE_CHECKING:
    import napari

LIVE_DELAY_MS = 800
LIVE_ENSEMBLE, LIVE_STEPS = 3, 50
"""Live mode trades a little accuracy for about a second per retrain on a 512 x 512 image
(with a half-resolution preview of the prediction; 'Train & predict' gives the full one)."""


def preview(head, features: np.ndarray):
    """Live mode's prediction: every second pixel, repeated; a quarter of the work, the same picture."""
    from ..head import Prediction

    h, w = features.shape[1:]
    coarse = head.predict(np.ascontiguousarray(features[:, ::2, ::2]))

    def full(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, 2, axis=-2), 2, axis=-1)[..., :h, :w]

    return Prediction(full(coarse.labels), full(coarse.probabilities), full(coarse.uncertainty), coarse.class_values)


class SegmentationWidget(Container):
    """Train the few-shot head on painted labels and show what it predicts."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from ..features import FeatureConfig
        from ..head import HeadConfig

        features, head = FeatureConfig(), HeadConfig()
        self.viewer = viewer = unwrap(viewer)
        self.session = session_for(viewer)
        self.backbone_info = BackboneLabel(self.session)
        self.image_layers = layer_select(viewer, Image, "images")
        self.label_layers = layer_select(viewer, Labels, "labels (one per image)")
        self.new_labels = PushButton(text="New labels for the selected images")
        self.timesteps = LineEdit(value=", ".join(map(str, features.timesteps)), label="feature timesteps")
        self.features = ComboBox(choices=list(FEATURE_SETS), value=DEFAULT_FEATURE_SET, label="features",
                                 tooltip="diffusion: the backbone's decoder; filters: the classic filter bank "
                                         "(no network runs)")
        self.ensemble = SpinBox(value=head.ensemble, min=1, max=50, label="ensemble size")
        self.steps = SpinBox(value=head.steps, min=10, max=10_000, step=10, label="head steps")
        self.live = CheckBox(value=False, text=f"live: retrain {LIVE_DELAY_MS / 1000:g} s after each stroke "
                                               f"(quick preview: ensemble {LIVE_ENSEMBLE}, {LIVE_STEPS} steps)")
        self.train = PushButton(text="Train && predict")
        self.jobs = JobPanel()
        # one field per direction: a save dialog asks "replace?" of the file a user wants to load
        self.save_head_file = FileEdit(mode="w", filter="*.safetensors", label="save head to")
        self.save_head = PushButton(text="Save head")
        self.load_head_file = FileEdit(mode="r", filter="*.safetensors", label="load head from")
        self.load_head = PushButton(text="Load head")
        super().__init__(widgets=[self.backbone_info, self.image_layers, self.label_layers, self.new_labels,
                                  self.timesteps, self.features, self.ensemble, self.steps, self.live, self.train, self.jobs,
                                  self.save_head_file, self.save_head, self.load_head_file, self.load_head])
        self._watched: list[Labels] = []
        self._rerun = False
        self.debounce = QTimer()
        self.debounce.setSingleShot(True)
        self.debounce.setInterval(LIVE_DELAY_MS)
        self.debounce.timeout.connect(self._live_retrain)
        self.new_labels.changed.connect(self.add_labels_layers)
        self.train.changed.connect(lambda: self.start_training(live=False))
        self.live.changed.connect(self._live_toggled)
        self.label_layers.changed.connect(self._watch_labels)
        self.image_layers.changed.connect(self._pick_labels)
        self.save_head.changed.connect(self._save_head)
        self.load_head.changed.connect(self._load_head)
        follow_layer_list(viewer, self)
        self.reset_choices()

    # -- choosing layers -------------------------------------------------------------------
    def reset_choices(self, *_) -> None:
        """Refresh the choosers; keep the selection, or pick the first image and its labels."""
        super().reset_choices()
        if not self.image_layers.value and self.image_layers.choices:
            self.image_layers.value = [self.image_layers.choices[0]]
        self._pick_labels()

    def _pick_labels(self, *_) -> None:
        """Unless one labels layer per image is chosen, pick them (see :func:`pair_labels`)."""
        if len(self.label_layers.value) != len(self.image_layers.value):
            pairs = pair_labels(self.image_layers.value, list(self.label_layers.choices))
            self.label_layers.value = [lab for _, lab in pairs if lab is not None]

    def add_labels_layers(self) -> None:
        """An empty labels layer for each selected image, of the image's shape (a stack: one plane each)."""
        if not self.image_layers.value:
            notify_error("select an image layer first")
            return
        made = [self.viewer.add_labels(np.zeros(plane_shape(image), dtype=np.uint8), name=f"{image.name} labels")
                for image in self.image_layers.value]
        self.label_layers.value = made
        self.viewer.layers.selection.active = made[0]
        made[0].mode = "paint"
        notify_info("paint at least two classes (e.g. 1 = background, 2 = object); label 0 means unlabelled")

    def pairs(self) -> list[tuple[Image, Labels]]:
        """(image, labels) pairs to train on: each image with the selected labels layer that fits it."""
        images, labels = list(self.image_layers.value), list(self.label_layers.value)
        if not images:
            raise UserError("select at least one image layer")
        if not labels:
            raise UserError("no labels layer: press 'New labels for the selected images' and paint two classes")
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} labels layers are selected: "
                            "select one labels layer per image")
        if len(images) == 1:
            return [(images[0], labels[0])]  # a wrong shape is reported with both shapes
        pairs = pair_labels(images, labels)
        missing = [image.name for image, lab in pairs if lab is None]
        if missing:
            raise UserError(f"no selected labels layer has the shape of {missing[0]!r}: press 'New labels' for it")
        return pairs

    # -- training ----------------------------------------------------------------------------
    def start_training(self, live: bool = False):
        """Features (cached), head and predictions of the selected images, in the background."""
        from ..head import check_labels

        backbone = self.session.backbone_or_default()
        if backbone is None:
            return None
        try:
            pairs = self.pairs()
            planes = [(plane, image.name) for image, _ in pairs for plane in image_planes(image)]
            labels = [plane for image, lab in pairs for plane in label_planes(lab, image)]
            check_labels(labels, [lab.shape for lab in labels], ignore=0)
            timesteps = parse_ints(self.timesteps.value, "timesteps")
        except UserError as err:
            if live:  # strokes in progress: say it quietly, retry on the next stroke
                self.jobs.status.value = f"live: {err}"
            else:
                notify_error(str(err))
            return None
        compute = self._training_job(backbone, planes, labels, self.feature_config(timesteps), live)
        title = "Live training" if live else "Training"
        return self.jobs.start(title, compute, lambda result: self._show(pairs, result), on_finished=self._after_job)

    def feature_config(self, timesteps: tuple[int, ...]):
        from ..features import FeatureConfig, resolve_config

        return resolve_config(self.session.backbone,
                              FeatureConfig(timesteps=timesteps, **FEATURE_SETS[self.features.value]))

    def _training_job(self, backbone, planes, labels, config, live: bool):
        from ..head import HeadConfig
        from ..io import normalize_image
        from ..pipeline import train_head

        head_config = HeadConfig(ensemble=LIVE_ENSEMBLE, steps=LIVE_STEPS, batch_size=512) if live else \
            HeadConfig(ensemble=self.ensemble.value, steps=self.steps.value)
        cache = self.session.features

        def compute(progress, should_stop):
            images = [normalize_image(plane, name) for plane, name in planes]
            head = train_head(backbone, images, labels, config, head_config, cache=cache, progress=progress,
                              should_stop=should_stop)
            predictions = []
            for i, image in enumerate(images):
                feats = cache.get(image, backbone, config)  # computed for training, so a cache hit
                predictions.append(preview(head, feats) if live else head.predict(feats))
                progress(i + 1, len(images), "predicting")
            return head, predictions

        return compute

    def _show(self, pairs, result) -> None:
        """The head becomes the viewer's head; predictions and uncertainty appear per image."""
        head, predictions = result
        self.session.set_head(head)
        start = 0
        for image, _ in pairs:
            shape = plane_shape(image)
            count = 1 if len(shape) == 2 else shape[0]
            mine = predictions[start : start + count]
            start += count
            show_result(self.viewer, f"{image.name} prediction", stack_planes([p.labels for p in mine], shape),
                        "labels", opacity=0.5)
            show_result(self.viewer, f"{image.name} uncertainty", stack_planes([p.uncertainty for p in mine], shape),
                        "image", colormap="inferno", blending="additive", opacity=0.6)

    # -- live mode ---------------------------------------------------------------------------
    def _live_toggled(self, on: bool) -> None:
        self._watch_labels()
        if on:
            self.prepare_features()

    def _watch_labels(self, *_) -> None:
        for layer in self._watched:
            layer.events.paint.disconnect(self._labels_edited)
            layer.events.data.disconnect(self._labels_edited)
        self._watched = list(self.label_layers.value) if self.live.value else []
        for layer in self._watched:
            layer.events.paint.connect(self._labels_edited)
            layer.events.data.connect(self._labels_edited)

    def _labels_edited(self, *_) -> None:
        self.debounce.start()  # restarts: retrain once the user pauses

    def _live_retrain(self) -> None:
        if self.jobs.busy:
            self._rerun = True
        else:
            self.start_training(live=True)

    def _after_job(self) -> None:
        if self._rerun and self.live.value:
            self._rerun = False
            self.debounce.start()

    def prepare_features(self):
        """Compute the selected images' features in the background so the first retrain is quick."""
        from ..io import normalize_image

        if self.jobs.busy or not self.image_layers.value:
            return None
        backbone = self.session.backbone_or_default()
        if backbone is None:
            return None
        try:
            config = self.feature_config(parse_ints(self.timesteps.value, "timesteps"))
            planes = [(plane, image.name) for image in self.image_layers.value for plane in image_planes(image)]
        except UserError as err:
            notify_error(str(err))
            return None
        cache = self.session.features

        def compute(progress, should_stop):
            for i, (plane, name) in enumerate(planes):
                cache.get(normalize_image(plane, name), backbone, config, staged(progress, f"image {i + 1}"),
                          should_stop)

        return self.jobs.start("Features", compute, lambda _: None, on_finished=self._after_job)

    # -- head files --------------------------------------------------------------------------
    def _save_head(self) -> None:
        path = chosen_path(self.save_head_file)
        if self.session.head is None:
            notify_error("no trained head yet: paint labels and press 'Train & predict'")
        elif path is None:
            notify_error("choose a head file (.safetensors) to save to")
        else:
            path = path.with_suffix(".safetensors")
            head = self.session.head
            self.jobs.start("Saving head", lambda progress, stop: head.save(path),
                            lambda _: notify_info(f"head saved to {path}"))

    def _load_head(self) -> None:
        from ..head import Head

        path = chosen_path(self.load_head_file)
        if path is None:
            notify_error("choose a head file (.safetensors) to load")
            return
        self.jobs.start("Loading head", lambda progress, stop: Head.load(path), self._head_loaded)

    def _head_loaded(self, head) -> None:
        self.session.set_head(head)
        notify_info(f"head loaded (classes {head.class_values}); apply it with 'Segment & export'")
