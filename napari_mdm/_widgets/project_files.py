"""Save and reopen a project from the Few-shot tab: images, labels, class names and colours, the
head, the backbone reference and the feature settings (see :mod:`napari_mdm.project`)."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import FileEdit, PushButton
from napari.layers import Image, Labels

from ..jobs import UserError
from .layers import pair_labels
from .workers import existing_path, notify_info, notify_warning, user_action

FILTER = "*.mdmproject"


class ProjectFiles:
    """'project' / 'open' fields and their buttons for a :class:`SegmentationWidget`, which shows
    ``widgets`` in its own column (a nested container would widen the dock)."""

    def __init__(self, segmentation) -> None:
        self.seg = segmentation
        self.save_file = FileEdit(
            mode="w",
            filter=FILTER,
            label="project",
            tooltip="One file with your images, strokes, class names, the trained "
            "classifier and its settings, to continue another day",
        )
        self.save = PushButton(text="Save project", tooltip="Save everything in the Few-shot tab to the file above")
        self.open_file = FileEdit(
            mode="r", filter=FILTER, label="open", tooltip="A project saved earlier (.mdmproject)"
        )
        self.open = PushButton(
            text="Open project", tooltip="Bring back a saved project's images, strokes, classes and classifier"
        )
        self.widgets = [self.save_file, self.save, self.open_file, self.open]
        self.save.changed.connect(self.save_project)
        self.open.changed.connect(self.open_project)

    @user_action
    def save_project(self):
        from ..project import Project, save_project
        from .workers import chosen_path

        seg, session = self.seg, self.seg.session
        path = chosen_path(self.save_file)
        if path is None or path.is_dir():
            raise UserError("choose a file name (.mdmproject) to save the project to")
        images = list(seg.image_layers.value)
        if not images:
            raise UserError("select the images of the project in the Few-shot tab")
        pairs = pair_labels(images, list(seg.label_layers.value))
        backbone = session.backbone
        project = Project(
            images={image.name: np.asarray(image.data) for image in images},
            labels={image.name: np.asarray(lab.data) for image, lab in pairs if lab is not None},
            classes=session.classes,
            head=session.head,
            backbone={"name": backbone.name, "digest": backbone.digest} if backbone else {},
            features={
                "timesteps": seg.timesteps.value,
                "feature_set": seg.features.value,
                "position": seg.position.value,
            },
        )
        return seg.jobs.start(
            "Saving project",
            lambda progress, stop: save_project(path, project),
            lambda saved: notify_info(f"project saved to {saved}"),
        )

    @user_action
    def open_project(self):
        from ..project import load_project

        path = existing_path(self.open_file, "a project file (.mdmproject) to open")
        return self.seg.jobs.start("Opening project", lambda progress, stop: load_project(path), self.show_project)

    def show_project(self, project) -> None:
        """Layers (reusing same-named ones of the same shape), classes, settings and head."""
        seg, viewer, session = self.seg, self.seg.viewer, self.seg.session
        images, labels = [], []
        for name, data in project.images.items():
            images.append(_layer(viewer, name, data, Image, rgb=data.ndim == 3 and data.shape[-1] in (3, 4)))
            if name in project.labels:
                labels.append(_layer(viewer, f"{name} labels", project.labels[name], Labels))
        if project.head is not None:
            session.set_head(project.head)
        session.set_classes(project.classes or session.classes)  # the project's, edited after training too
        seg.timesteps.value = project.features.get("timesteps", seg.timesteps.value)
        seg.features.value = project.features.get("feature_set", seg.features.value)
        seg.position.value = bool(project.features.get("position", False))  # projects saved before it: off
        seg.image_layers.value, seg.label_layers.value = images, labels
        wanted = project.backbone.get("digest")
        if wanted and (session.backbone is None or session.backbone.digest != wanted):
            notify_warning(
                f"this project's classifier was trained with backbone {project.backbone.get('name')!r}: "
                "load it in the Backbone tab before training or segmenting"
            )
        notify_info(f"project opened: {len(images)} images, {len(labels)} labels layers")


def _layer(viewer, name: str, data: np.ndarray, kind: type, **kwargs):
    """The layer called ``name`` with ``data``: the existing one if it fits, else a new one."""
    existing = viewer.layers[name] if name in viewer.layers else None
    if isinstance(existing, kind) and existing.data.shape == data.shape:
        existing.data = data
        return existing
    add = viewer.add_labels if kind is Labels else viewer.add_image
    return add(data, name=name, **kwargs)
