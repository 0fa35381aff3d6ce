"""Dock widget 'Reconstructions': what the backbone sees (masked input) and rebuilds, per timestep."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container, LineEdit, PushButton
from napari.layers import Image

from ..jobs import UserError
from ..parsing import parse_ints
from .layers import follow_layer_list, image_planes, layer_combo, show_result
from .session import session_for, unwrap
from .workers import JobPanel, notify_error

if TYPE_CHECKING:
    import napari


class ReconstructionWidget(Container):
    """Adds 'IMAGE masked input' and 'IMAGE reconstruction' layers, the timestep as their slider."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer = unwrap(viewer)
        self.session = session_for(viewer)
        self.image = layer_combo(viewer, Image, "image")
        self.timesteps = LineEdit(value="100, 300, 500, 700, 900", label="timesteps")
        self.run = PushButton(text="Reconstruct")
        self.jobs = JobPanel()
        super().__init__(widgets=[self.image, self.timesteps, self.run, self.jobs])
        self.run.changed.connect(self.start)
        follow_layer_list(viewer, self)

    def _current_plane(self, layer: Image):
        """The image itself, or the plane of a stack the viewer shows now."""
        planes = image_planes(layer)
        if len(planes) == 1:
            return planes[0]
        return planes[min(self.viewer.dims.current_step[0], len(planes) - 1)]

    def start(self):
        from ..io import normalize_image
        from ..reconstruction import reconstruct

        backbone, layer = self.session.backbone_or_default(), self.image.value
        if backbone is None:
            return None
        if layer is None:
            notify_error("choose an image layer to reconstruct")
            return None
        try:
            timesteps = parse_ints(self.timesteps.value, "timesteps")
            plane = self._current_plane(layer)
        except UserError as err:
            notify_error(str(err))
            return None

        def compute(progress, should_stop):
            return reconstruct(backbone, normalize_image(plane, layer.name), timesteps, progress=progress,
                               should_stop=should_stop)

        return self.jobs.start("Reconstructing", compute, lambda result: self._show(layer.name, timesteps, result))

    def _show(self, name: str, timesteps: tuple[int, ...], result) -> None:
        corrupted, rebuilt = result
        meta = {"timesteps": list(timesteps)}
        label = ",".join(map(str, timesteps))
        for what, data in (("masked input", corrupted), ("reconstruction", rebuilt)):
            show_result(self.viewer, f"{name} {what} (t={label})", data, "image", "reconstruction", rgb=True,
                        metadata=meta, axis_labels=("timestep", "y", "x"))
