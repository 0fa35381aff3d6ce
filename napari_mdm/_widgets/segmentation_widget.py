"""Dock widget 'Few-shot segmentation': paint a few strokes, train the head, see the prediction
and its uncertainty; in live mode it retrains shortly after each stroke."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from ..feature_sets import DEFAULT_FEATURE_SET, FEATURE_SETS
from ..jobs import UserError, staged
from ..parsing import parse_ints
from .classes import ClassTable, apply_classes, class_context, take_offered_classes
from .layers import (
    follow_layer_list,
    image_planes,
    is_output,
    is_picture,
    label_planes,
    layer_select,
    pair_labels,
    plane_shape,
    show_result,
    stack_planes,
)
from .project_files import ProjectFiles
from .session import BackboneLabel, prefer_backbone_for, session_for, unwrap
from .suggestions import report_gain, show_suggestions
from .workers import JobPanel, existing_path, notify_error, notify_info, safetensors_target, user_action

if TYPE_CHECKING:
    import napari

LIVE_DELAY_MS = 800
"""Live mode retrains and predicts with the widget's settings (the core's fast defaults) once
the user pauses; with features cached only the head runs (benchmarks/results/loop.md)."""


def show_uncertainty(viewer, name: str, data: np.ndarray):
    """The uncertainty map, added hidden and opaque-blended so it never tints the prediction."""
    return show_result(
        viewer,
        name,
        data,
        "image",
        "uncertainty",
        colormap="inferno",
        blending="translucent",
        opacity=0.7,
        visible=False,
    )


class SegmentationWidget(Container):
    """Train the few-shot head on painted labels and show what it predicts."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer = unwrap(viewer)
        self.session = session_for(viewer)
        self.backbone_info = BackboneLabel(self.session)
        self.image_layers = layer_select(viewer, Image, "images")
        self.image_layers.tooltip = "The images to learn from (ctrl-click for several)"
        self.label_layers = layer_select(viewer, Labels, "labels")
        self.label_layers.tooltip = "Your strokes: one labels layer per image, of the image's size"
        self.new_labels = PushButton(
            text="New labels for the selected images",
            tooltip="Make an empty labels layer for each selected image and start painting",
        )
        self.class_table = ClassTable(self.session)
        self._make_setting_controls()
        self._make_head_controls()
        self.train = PushButton(
            text="Train && predict", tooltip="Learn from your strokes and colour the whole image by class"
        )
        self.jobs = JobPanel()
        self.suggest = PushButton(
            text="Where should I label next?",
            tooltip="Yellow boxes on the places where the classifiers disagree most: a few "
            "strokes there help most. After the next training a message says how "
            "much surer they became there",
        )
        # one field per direction: a save dialog asks "replace?" of the file a user wants to load
        self._make_head_file_controls()
        super().__init__(
            widgets=[
                self.backbone_info,
                self.image_layers,
                self.label_layers,
                self.new_labels,
                self.class_table,
                self.timesteps,
                self.features,
                self.channels,
                self.position,
                self.ensemble,
                self.steps,
                self.exact,
                self.live,
                self.train,
                self.jobs,
                self.suggest,
                self.save_head_file,
                self.save_head,
                self.load_head_file,
                self.load_head,
            ]
        )
        self.project = ProjectFiles(self)
        self.extend(self.project.widgets)
        self._watched: list[Labels] = []
        self._rerun = False
        self.debounce = QTimer()
        self.debounce.setSingleShot(True)
        self.debounce.setInterval(LIVE_DELAY_MS)
        self.debounce.timeout.connect(self._live_retrain)
        self._connect(viewer)

    def _make_head_file_controls(self) -> None:
        """Save and load fields for the trained head, one per direction."""
        self.save_head_file = FileEdit(
            mode="w",
            filter="*.safetensors",
            label="save to",
            tooltip="File to keep the trained classifier in (.safetensors)",
        )
        self.save_head = PushButton(
            text="Save head",
            tooltip="Save the trained classifier with its class names, so you can apply it to other images later",
        )
        self.load_head_file = FileEdit(
            mode="r", filter="*.safetensors", label="load from", tooltip="A classifier saved earlier (.safetensors)"
        )
        self.load_head = PushButton(text="Load head", tooltip="Use a classifier saved earlier")

    def _make_setting_controls(self) -> None:
        """Feature settings, their defaults read from FeatureConfig."""
        from ..features import FeatureConfig

        features = FeatureConfig()

        self.timesteps = LineEdit(
            value=", ".join(map(str, features.timesteps)),
            label="timesteps",
            tooltip="How strongly the network's input is masked when it looks at your "
            "image (0-1000; a list such as 50, 150 combines several). Low values "
            "keep fine detail",
        )
        self.features = ComboBox(
            choices=list(FEATURE_SETS),
            value=DEFAULT_FEATURE_SET,
            label="features",
            tooltip="What the classifier sees. diffusion: the backbone network; filters: "
            "classic smoothing/edge/texture filters (fast, no network)",
        )
        self.channels = SpinBox(
            value=features.project,
            min=0,
            max=4096,
            label="feature channels",
            tooltip="How many channels of the network the classifier sees, projected onto "
            "their main directions: fewer train and predict faster; 0 keeps all",
        )
        self.position = CheckBox(
            value=features.position,
            text="position in image",
            tooltip="Also tell the classifier where each pixel lies in the image (top or bottom, left "
            "or right). Turn it on for images that are all framed alike, such as passport-style faces, "
            "to tell a left eye from a right one; leave it off when things can be anywhere (tissue)",
        )

    def _make_head_controls(self) -> None:
        """Head settings, their defaults read from HeadConfig, and the live-preview switch."""
        from ..head import HeadConfig

        head = HeadConfig()
        self.ensemble = SpinBox(
            value=head.ensemble,
            min=1,
            max=50,
            label="ensemble",
            tooltip="How many small classifiers vote; more give a smoother uncertainty map but train longer",
        )
        self.steps = SpinBox(
            value=head.steps,
            min=0,
            max=10_000,
            step=10,
            label="head steps",
            tooltip="Training steps of each classifier; more fit your strokes more closely. "
            "0: automatic (50 for strokes, 200 for full masks)",
        )
        self.exact = CheckBox(
            value=not head.rank_tolerance,
            text="exact prediction",
            tooltip="Let the network's attention see every pixel, hold features in float16 and apply "
            "each classifier's whole first layer to every pixel. Off (faster, half the memory): "
            "attention to 2 x 2 averages of its coarse maps, features as int8 codes, the first layer applied "
            "through its main directions on each image, and the classifiers run on every 4th pixel first, "
            "then only where classes meet or they disagree; labels differ on about 1 pixel in 70-300",
        )
        self.live = CheckBox(
            value=False,
            text="live preview",
            tooltip=f"Retrain and predict {LIVE_DELAY_MS / 1000:g} s after each stroke, with the "
            "settings above, at full resolution",
        )

    def _connect(self, viewer) -> None:
        self.new_labels.changed.connect(self.add_labels_layers)
        self.train.changed.connect(lambda: self.start_training(live=False))
        self.live.changed.connect(self._live_toggled)
        self.label_layers.changed.connect(self._watch_labels)
        self.label_layers.changed.connect(self.take_layer_classes)
        self.label_layers.changed.connect(self.apply_classes)
        self.image_layers.changed.connect(self._follow_images)
        self.save_head.changed.connect(self._save_head)
        self.load_head.changed.connect(self._load_head)
        self.suggest.changed.connect(self.suggest_regions)
        self.session.classes_changed.connect(self.apply_classes)
        follow_layer_list(viewer, self)
        self.reset_choices()

    # -- choosing layers -------------------------------------------------------------------
    def reset_choices(self, *_) -> None:
        """Refresh the choosers; keep the selection, or pick the first picture and its labels.
        Note the backbone the open images ask for (used when none is loaded yet)."""
        super().reset_choices()
        prefer_backbone_for(self.session, self.viewer.layers)
        if not self.image_layers.value:
            pictures = [layer for layer in self.image_layers.choices if is_picture(layer)]
            self.image_layers.value = pictures[:1]
        if len(self.label_layers.value) != len(self.image_layers.value):
            self._follow_images()

    def _follow_images(self, *_) -> None:
        """Pair each selected image with a labels layer (see :func:`pair_labels`), keeping the
        chosen labels layers that still fit, so a newly selected image brings its labels."""
        chosen = list(self.label_layers.value)
        others = [lab for lab in self.label_layers.choices if lab not in chosen]
        pairs = pair_labels(list(self.image_layers.value), chosen + others)
        picked = [lab for _, lab in pairs if lab is not None]
        if picked != chosen:
            self.label_layers.value = picked

    def take_layer_classes(self, *_) -> None:
        """Classes a chosen labels layer comes with (the face sample's) become the viewer's."""
        for layer in self.label_layers.value:
            offered = take_offered_classes(layer)
            if offered:
                self.session.set_classes(offered)

    def apply_classes(self, *_) -> None:
        """The class colours and names on the chosen labels layers and on our predictions."""
        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and (layer in self.label_layers.value or is_output(layer)):
                apply_classes(layer, self.session.classes)

    def add_labels_layers(self) -> None:
        """An empty labels layer for each selected image, of the image's shape (a stack: one plane each)."""
        if not self.image_layers.value:
            notify_error("select an image layer first")
            return
        made = [
            self.viewer.add_labels(np.zeros(plane_shape(image), dtype=np.uint8), name=f"{image.name} labels")
            for image in self.image_layers.value
        ]
        self.label_layers.value = made
        self.apply_classes()
        self.viewer.layers.selection.active = made[0]
        made[0].mode = "paint"
        notify_info("paint at least two classes (label 1, label 2, ...: see the class table); 0 means unlabelled")

    def pairs(self) -> list[tuple[Image, Labels]]:
        """(image, labels) pairs to train on: each image with the selected labels layer that fits it."""
        images, labels = list(self.image_layers.value), list(self.label_layers.value)
        if not images:
            raise UserError("select at least one image layer")
        if not labels:
            raise UserError("no labels layer: press 'New labels for the selected images' and paint two classes")
        if len(images) != len(labels):
            raise UserError(
                f"{len(images)} images but {len(labels)} labels layers are selected: select one labels layer per image"
            )
        if len(images) == 1:
            return [(images[0], labels[0])]  # a wrong shape is reported with both shapes
        pairs = pair_labels(images, labels)
        missing = [image.name for image, lab in pairs if lab is None]
        if missing:
            raise UserError(f"no selected labels layer has the shape of {missing[0]!r}: press 'New labels' for it")
        return pairs

    # -- training ----------------------------------------------------------------------------
    @user_action
    def start_training(self, live: bool = False):
        """Features (cached), head and predictions of the selected images, in the background."""
        backbone = self.session.backbone_or_default()
        if backbone is None:
            return None
        try:
            pairs, planes, labels, config = self._training_inputs()
        except UserError as err:
            if not live:
                raise
            self.jobs.status.value = f"live: {err.in_plugin}"  # strokes in progress: say it quietly, retry on the next
            return None
        compute = self._training_job(backbone, planes, labels, config)
        title = "Live training" if live else "Training"
        return self.jobs.start(title, compute, lambda result: self._show(pairs, result), on_finished=self._after_job)

    def _training_inputs(self):
        """Everything a training job needs, checked: a UserError says what is wrong."""
        from ..head import check_labels

        pairs = self.pairs()
        planes = [(plane, image.name) for image, _ in pairs for plane in image_planes(image)]
        labels = [plane for image, lab in pairs for plane in label_planes(lab, image)]
        check_labels(labels, [lab.shape for lab in labels], ignore=0)
        return pairs, planes, labels, self.feature_config(parse_ints(self.timesteps.value, "timesteps"))

    def feature_config(self, timesteps: tuple[int, ...]):
        from ..features import FeatureConfig, resolve_config

        return resolve_config(
            self.session.backbone,
            FeatureConfig(
                timesteps=timesteps,
                project=self.channels.value,
                position=self.position.value,
                compact=not self.exact.value,
                attention_pool=1 if self.exact.value else FeatureConfig.attention_pool,
                **FEATURE_SETS[self.features.value],
            ),
        )

    def _training_job(self, backbone, planes, labels, config):
        from ..head import HeadConfig
        from ..io import normalize_image
        from ..pipeline import train_head

        head_config = HeadConfig(ensemble=self.ensemble.value, steps=self.steps.value)
        if self.exact.value:
            head_config = replace(head_config, rank_tolerance=0, coarse_stride=1)
        cache, classes = self.session.features, dict(self.session.classes)

        def compute(progress, should_stop):
            images = [normalize_image(plane, name) for plane, name in planes]
            head = train_head(
                backbone, images, labels, config, head_config, cache=cache, progress=progress, should_stop=should_stop
            )
            head.context = class_context(head.context, classes)
            predictions = []
            for i, image in enumerate(images):
                feats = cache.get(image, backbone, config)  # computed for training, so a cache hit
                stage = staged(progress, f"predicting {i + 1}/{len(images)}")
                predictions.append(head.predict(feats, stage, should_stop))
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
            layer = show_result(
                self.viewer,
                f"{image.name} prediction",
                stack_planes([p.labels for p in mine], shape),
                "labels",
                opacity=0.5,
            )
            apply_classes(layer, self.session.classes)
            show_uncertainty(
                self.viewer, f"{image.name} uncertainty", stack_planes([p.uncertainty for p in mine], shape)
            )
            report_gain(self.viewer, image.name)

    @user_action
    def suggest_regions(self) -> None:
        """Propose where to paint next on each selected image (see :mod:`.suggestions`)."""
        if not self.image_layers.value:
            raise UserError("select an image layer first")
        for image in self.image_layers.value:
            show_suggestions(self.viewer, image)

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

    @user_action
    def prepare_features(self):
        """Compute the selected images' features in the background so the first retrain is quick."""
        from ..io import normalize_image

        if self.jobs.busy or not self.image_layers.value:
            return None
        backbone = self.session.backbone_or_default()
        if backbone is None:
            return None
        config = self.feature_config(parse_ints(self.timesteps.value, "timesteps"))
        planes = [(plane, image.name) for image in self.image_layers.value for plane in image_planes(image)]
        cache = self.session.features

        def compute(progress, should_stop):
            for i, (plane, name) in enumerate(planes):
                cache.get(
                    normalize_image(plane, name), backbone, config, staged(progress, f"image {i + 1}"), should_stop
                )

        return self.jobs.start("Features", compute, lambda _: None, on_finished=self._after_job)

    # -- head files --------------------------------------------------------------------------
    @user_action
    def _save_head(self) -> None:
        if self.session.head is None:
            raise UserError("no trained head yet: paint labels and press 'Train & predict'")
        path = safetensors_target(self.save_head_file, "head")
        head = self.session.head
        head.context = class_context(head.context, self.session.classes)  # names edited after training
        self.jobs.start(
            "Saving head", lambda progress, stop: head.save(path), lambda _: notify_info(f"head saved to {path}")
        )

    @user_action
    def _load_head(self) -> None:
        from ..head import Head

        path = existing_path(self.load_head_file, "a head file (.safetensors) to load")
        self.jobs.start("Loading head", lambda progress, stop: Head.load(path), self._head_loaded)

    def _head_loaded(self, head) -> None:
        self.session.set_head(head)
        notify_info(f"head loaded (classes {head.class_values}); apply it with 'Segment and export'")
