"""Dock widget 'Segment & export': apply the trained head to image layers or a folder on disk,
write masks as tif or zarr (uncertainty optional), and show the results as layers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton
from napari.layers import Image

from ..jobs import UserError
from .layers import follow_layer_list, image_planes, layer_select, plane_shape, show_result, stack_planes
from .session import BackboneLabel, session_for, unwrap
from .workers import JobPanel, chosen_path, notify_error, notify_info

if TYPE_CHECKING:
    import napari

LAYERS, FOLDER = "image layers", "folder"
SHOW_LIMIT_PIXELS = 64_000_000
"""Folder results are shown as layers only while their total size stays below this."""


class ExportWidget(Container):
    """Segment the remaining images with the viewer's backbone and head; write and show masks."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer = unwrap(viewer)
        self.session = session_for(viewer)
        self.backbone_info = BackboneLabel(self.session)
        self.source = ComboBox(choices=[LAYERS, FOLDER], value=LAYERS, label="segment")
        self.image_layers = layer_select(viewer, Image, "image layers")
        self.folder = FileEdit(mode="d", label="input folder")
        self.out_dir = FileEdit(mode="d", label="output folder")
        self.format = ComboBox(choices=["tif", "zarr"], value="tif", label="format")
        self.uncertainty = CheckBox(value=False, text="also write uncertainty")
        self.overwrite = CheckBox(value=False, text="overwrite existing files")
        self.as_layers = CheckBox(value=True, text="show results as layers")
        self.run = PushButton(text="Segment")
        self.jobs = JobPanel()
        self._seen: set[int] = set()
        super().__init__(widgets=[self.backbone_info, self.source, self.image_layers, self.folder, self.out_dir,
                                  self.format, self.uncertainty, self.overwrite, self.as_layers, self.run, self.jobs])
        self.run.changed.connect(self.start)
        self.source.changed.connect(self._source_changed)
        follow_layer_list(viewer, self)
        self._source_changed(self.source.value)

    def reset_choices(self, *_) -> None:
        """Refresh the layer list; image layers the widget has not seen yet start selected."""
        super().reset_choices()
        choices = self.image_layers.choices
        new = [layer for layer in choices if id(layer) not in self._seen]
        self._seen = {id(layer) for layer in choices}
        if new:
            self.image_layers.value = [*self.image_layers.value, *new]

    def _source_changed(self, source: str) -> None:
        self.image_layers.visible = source == LAYERS
        self.folder.visible = source == FOLDER

    def start(self):
        backbone, head = self.session.backbone_or_default(), self.session.head
        if backbone is None:
            return None
        if head is None:
            notify_error("no trained head: train one in 'Few-shot segmentation' or load a head file there")
            return None
        out_dir = chosen_path(self.out_dir)
        try:
            if self.source.value == FOLDER:
                return self._start_folder(backbone, head, out_dir)
            return self._start_layers(backbone, head, out_dir)
        except UserError as err:
            notify_error(str(err))
            return None

    def _start_folder(self, backbone, head, out_dir: Path | None):
        from ..inference import segment_files
        from ..io import collect_images

        folder = chosen_path(self.folder)
        if folder is None:
            raise UserError("choose the folder of images to segment")
        if out_dir is None:
            raise UserError("choose an output folder for the masks")
        paths = collect_images([folder])
        fmt, unc, overwrite = self.format.value, self.uncertainty.value, self.overwrite.value

        def compute(progress, should_stop):
            return segment_files(backbone, head, paths, out_dir, fmt=fmt, uncertainty=unc, overwrite=overwrite,
                                 progress=progress, should_stop=should_stop)

        return self.jobs.start("Segmenting folder", compute, self._show_files)

    def _show_files(self, written: list[Path]) -> None:
        from ..io import read_labels

        notify_info(f"{len(written)} masks written to {written[0].parent if written else 'nowhere'}")
        if not self.as_layers.value:
            return
        budget = SHOW_LIMIT_PIXELS
        for path in written:
            labels = read_labels(path)
            budget -= labels.size
            if budget < 0:
                notify_info("the remaining masks are too large to show as layers; open them from disk")
                return
            show_result(self.viewer, f"{path.stem} mask", labels, "labels")

    def _start_layers(self, backbone, head, out_dir: Path | None):
        from ..inference import output_paths, segment
        from ..io import normalize_image, write_array, write_labels

        layers = list(self.image_layers.value)
        if not layers:
            raise UserError("select the image layers to segment")
        jobs = [(layer.name, plane_shape(layer), image_planes(layer)) for layer in layers]
        fmt, unc, overwrite = self.format.value, self.uncertainty.value, self.overwrite.value
        targets = {name: output_paths(Path(name), out_dir, fmt, unc) for name, *_ in jobs} if out_dir else {}
        clashes = [str(p) for outs in targets.values() for p in outs if p is not None and p.exists()]
        if clashes and not overwrite:
            raise UserError(f"{clashes[0]} already exists: tick 'overwrite existing files' or choose another folder")
        total = sum(len(planes) for *_, planes in jobs)

        def compute(progress, should_stop):
            results, done = [], 0
            for name, shape, planes in jobs:
                predictions = []
                for plane in planes:
                    predictions.append(segment(backbone, head, normalize_image(plane, name), should_stop=should_stop))
                    done += 1
                    progress(done, total, name)
                labels = stack_planes([p.labels for p in predictions], shape)
                uncertainty = stack_planes([p.uncertainty for p in predictions], shape)
                if name in targets:
                    labels_path, unc_path = targets[name]
                    write_labels(labels_path, labels, overwrite=True)
                    if unc_path is not None:
                        write_array(unc_path, uncertainty, overwrite=True)
                results.append((name, labels, uncertainty))
            return results

        return self.jobs.start("Segmenting layers", compute, self._show_layers)

    def _show_layers(self, results) -> None:
        written = f" and written to {self.out_dir.value}" if chosen_path(self.out_dir) else ""
        notify_info(f"{len(results)} image{'s' if len(results) != 1 else ''} segmented{written}")
        if not self.as_layers.value:
            return
        for name, labels, uncertainty in results:
            show_result(self.viewer, f"{name} prediction", labels, "labels", opacity=0.5)
            if self.uncertainty.value:
                show_result(self.viewer, f"{name} uncertainty", uncertainty, "image", colormap="inferno",
                            blending="additive", opacity=0.6)
