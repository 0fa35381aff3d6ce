"""Dock widget 'Reconstructions': what the backbone sees (masked input) and rebuilds, per timestep."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container, LineEdit, PushButton
from napari.layers import Image

from ..jobs import UserError
from ..parsing import parse_ints
from .layers import follow_layer_list, image_planes, is_picture, layer_combo, show_result
from .session import session_for, unwrap
from .workers import JobPanel, user_action

if TYPE_CHECKING:
    import napari

AXIS = "timestep"


class ReconstructionWidget(Container):
    """Adds 'IMAGE masked input' and 'IMAGE reconstruction' layers; the slider walks through the
    timesteps and its label says which t is shown."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer = unwrap(viewer)
        self.session = session_for(viewer)
        self.image = layer_combo(viewer, Image, "image")
        self.image.tooltip = "The image to show the backbone's view of (a stack: the plane on screen)"
        self.timesteps = LineEdit(
            value="100, 300, 500, 700, 900",
            label="timesteps",
            tooltip="How much of the image is hidden from the network, 0-1000: at 900 "
            "most of it is masked and the network has to guess",
        )
        self.run = PushButton(
            text="Reconstruct", tooltip="Show what the network sees and what it rebuilds at each timestep"
        )
        self.jobs = JobPanel()
        super().__init__(widgets=[self.image, self.timesteps, self.run, self.jobs])
        self.run.changed.connect(self.start)
        viewer.dims.events.current_step.connect(self._label_slider)
        follow_layer_list(viewer, self)

    def reset_choices(self, *_) -> None:
        super().reset_choices()
        if self.image.value is not None and not is_picture(self.image.value):
            pictures = [layer for layer in self.image.choices if is_picture(layer)]
            if pictures:
                self.image.value = pictures[0]

    def _current_plane(self, layer: Image):
        """The image itself, or the plane of a stack the viewer shows now."""
        planes = image_planes(layer)
        if len(planes) == 1:
            return planes[0]
        return planes[min(self.viewer.dims.current_step[0], len(planes) - 1)]

    @user_action
    def start(self):
        from ..io import normalize_image
        from ..reconstruction import reconstruct

        backbone, layer = self.session.backbone_or_default(), self.image.value
        if backbone is None:
            return None
        if layer is None:
            raise UserError("choose an image layer to reconstruct")
        timesteps = parse_ints(self.timesteps.value, "timesteps")
        total = backbone.corruption.num_timesteps
        if any(not 0 <= t <= total for t in timesteps):
            raise UserError(f"timesteps must be in 0..{total}, got {', '.join(map(str, timesteps))}")
        plane = self._current_plane(layer)

        def compute(progress, should_stop):
            return reconstruct(
                backbone, normalize_image(plane, layer.name), timesteps, progress=progress, should_stop=should_stop
            )

        return self.jobs.start("Reconstructing", compute, lambda result: self._show(layer.name, timesteps, result))

    def _show(self, name: str, timesteps: tuple[int, ...], result) -> None:
        corrupted, rebuilt = result
        meta = {"timesteps": list(timesteps)}
        for what, data in (("masked input", corrupted), ("reconstruction", rebuilt)):
            show_result(
                self.viewer,
                f"{name} {what}",
                data,
                "image",
                "reconstruction",
                rgb=True,
                metadata=meta,
                axis_labels=(AXIS, "y", "x"),
            )
        self._label_slider()

    def _label_slider(self, *_) -> None:
        """napari's slider counts positions; its axis label shows the timestep instead: 't=500'."""
        dims = self.viewer.dims
        shown = [layer for layer in self.viewer.layers if layer.visible and "timesteps" in layer.metadata]
        if not shown or dims.ndim < 3:
            return
        timesteps = shown[-1].metadata["timesteps"]
        step = min(dims.current_step[0], len(timesteps) - 1)
        labels = list(dims.axis_labels)
        labels[0] = f"t={timesteps[step]}"
        if labels != list(dims.axis_labels):
            dims.axis_labels = labels
