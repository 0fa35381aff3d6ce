"""Dock widget 'Segment and export': apply the trained head to image layers, a folder on disk or a
whole slide, write masks as tif, zarr or png (uncertainty optional), and show the results as layers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton
from napari.layers import Image

from .._reader import MASK_SUFFIX, UNCERTAINTY_SUFFIX
from ..jobs import UserError, staged
from .classes import apply_classes
from .layers import follow_layer_list, image_planes, is_picture, layer_select, plane_shape, show_result, stack_planes
from .segmentation_widget import show_uncertainty
from .session import BackboneLabel, session_for, unwrap
from .slide_controls import SlideControls
from .workers import JobPanel, chosen_path, existing_path, notify_info, user_action

if TYPE_CHECKING:
    import napari

LAYERS, FOLDER, SLIDE = "image layers", "folder", "slide"
FORMATS = ("tif", "zarr", "png")
SHOW_LIMIT_PIXELS = 64_000_000
"""Folder results are shown as layers only while their total size stays below this."""


class ExportWidget(Container):
    """Segment the remaining images with the viewer's backbone and head; write and show masks."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer = unwrap(viewer)
        self.session = session_for(viewer)
        self.backbone_info = BackboneLabel(self.session)
        self.source = ComboBox(
            choices=[LAYERS, FOLDER, SLIDE],
            value=LAYERS,
            label="segment",
            tooltip="Segment images open in napari, every image file in a folder, or a whole-slide image",
        )
        self.image_layers = layer_select(viewer, Image, "images")
        self.image_layers.tooltip = (
            "The open images to segment (new images start selected; masks and uncertainty maps do not)"
        )
        self.folder = FileEdit(mode="d", label="input folder", tooltip="A folder of images to segment")
        self.slides = SlideControls(viewer, self.session)
        self.out_dir = FileEdit(
            mode="d",
            label="save to",
            tooltip="Folder for the masks (NAME_mask.tif, ...); leave empty to only show them",
        )
        self._make_output_controls()
        self.run = PushButton(
            text="Segment",
            tooltip="Segment with the trained classifier (train one in 'Few-shot segmentation' or load it there)",
        )
        self.jobs = JobPanel()
        self._seen: set[int] = set()
        super().__init__(
            widgets=[
                self.backbone_info,
                self.source,
                self.image_layers,
                self.folder,
                self.slides,
                self.out_dir,
                self.format,
                self.uncertainty,
                self.probabilities,
                self.instances,
                self.overwrite,
                self.as_layers,
                self.run,
                self.jobs,
            ]
        )
        self.run.changed.connect(self.start)
        self.source.changed.connect(self._source_changed)
        self.session.classes_changed.connect(self.instances.reset_choices)
        follow_layer_list(viewer, self)
        self._source_changed(self.source.value)

    def _make_output_controls(self) -> None:
        """What is written besides the masks, and how."""
        self.format = ComboBox(
            choices=list(FORMATS),
            value="tif",
            label="format",
            tooltip="tif: any size; zarr: very large images; png: small 2-D masks that open anywhere",
        )
        self.uncertainty = CheckBox(
            value=False,
            text="also uncertainty",
            tooltip="Also write and show where the classifiers disagree (NAME_uncertainty)",
        )
        self.probabilities = CheckBox(
            value=False,
            text="also class probabilities",
            tooltip="Also write each class's probability map, one plane per class "
            "(NAME_probabilities.tif; image layers only)",
        )
        self.instances = ComboBox(
            choices=self._class_choices,
            label="instances",
            tooltip="Also number each connected region of this class (e.g. each nucleus) "
            "as its own label: NAME_instances (image layers only)",
        )
        self.overwrite = CheckBox(value=False, text="overwrite files", tooltip="Replace masks already in the folder")
        self.as_layers = CheckBox(value=True, text="show as layers", tooltip="Add each mask to the viewer")

    def reset_choices(self, *_) -> None:
        """Refresh the layer list; pictures the widget has not seen yet start selected (not our
        outputs, not masks opened as images, not slides: those are segmented with 'slide')."""
        super().reset_choices()
        choices = self.image_layers.choices
        new = [layer for layer in choices if id(layer) not in self._seen and is_picture(layer) and not layer.multiscale]
        self._seen = {id(layer) for layer in choices}
        if new:
            self.image_layers.value = [*self.image_layers.value, *new]

    def _class_choices(self, *_) -> list:
        return [("none", None), *((name, i) for i, (name, _) in sorted(self.session.classes.items()))]

    def _source_changed(self, source: str) -> None:
        self.image_layers.visible = self.probabilities.visible = self.instances.visible = source == LAYERS
        self.folder.visible = source == FOLDER
        self.slides.visible = source == SLIDE
        self.format.visible = self.as_layers.visible = source != SLIDE  # slides: OME-Zarr, always shown

    @user_action
    def start(self):
        backbone, head = self.session.backbone_or_default(), self.session.head
        if backbone is None:
            return None
        if head is None:
            raise UserError("no trained head: train one in 'Few-shot segmentation' or load a head file there")
        out_dir = chosen_path(self.out_dir)
        if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out_dir} is a file: choose a folder to save the masks in")
        if self.source.value == FOLDER:
            return self._start_folder(backbone, head, out_dir)
        if self.source.value == SLIDE:
            return self.slides.start(self.jobs, backbone, head, out_dir, self.uncertainty.value, self.overwrite.value)
        return self._start_layers(backbone, head, out_dir)

    def _start_folder(self, backbone, head, out_dir: Path | None):
        from ..inference import segment_files
        from ..io import collect_images

        folder = existing_path(self.folder, "the folder of images to segment", folder=True)
        if out_dir is None:
            raise UserError("choose an output folder for the masks")
        paths = collect_images([folder])
        fmt, unc, overwrite = self.format.value, self.uncertainty.value, self.overwrite.value

        def compute(progress, should_stop):
            image = ["image 1"]

            def per_image(done: int, total: int, info: str) -> None:
                image[0] = f"image {min(done + 1, total)}/{total}"
                progress(done, total, info)

            return segment_files(
                backbone,
                head,
                paths,
                out_dir,
                fmt=fmt,
                uncertainty=unc,
                overwrite=overwrite,
                progress=per_image,
                should_stop=should_stop,
                mask_suffix=MASK_SUFFIX,
                tile_progress=lambda d, t, info: progress(d, t, f"{image[0]} {info}"),
            )

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
            apply_classes(show_result(self.viewer, path.stem, labels, "labels", "export"), self.session.classes)

    def _start_layers(self, backbone, head, out_dir: Path | None):
        from ..files import plan_outputs

        layers = list(self.image_layers.value)
        if not layers:
            raise UserError("select the image layers to segment")
        jobs = [(layer.name, plane_shape(layer), image_planes(layer)) for layer in layers]
        fmt, unc, overwrite = self.format.value, self.uncertainty.value, self.overwrite.value
        if fmt == "png" and any(len(shape) != 2 for _, shape, _ in jobs):
            raise UserError("png holds one 2-D mask: write stacks as tif or zarr")
        targets = {name: self._targets(name, out_dir, fmt, unc) for name, *_ in jobs} if out_dir else {}
        plan_outputs([p for outs in targets.values() for p in outs.values()], overwrite=overwrite)
        compute = self._layers_job(backbone, head, jobs, targets)
        return self.jobs.start("Segmenting layers", compute, self._show_layers)

    def _layers_job(self, backbone, head, jobs, targets):
        """Each plane segmented (with the features the viewer has cached when they fit in memory),
        the masks written atomically, progress per image and per tile."""
        from ..inference import fits_whole, head_feature_config, segment
        from ..io import normalize_image, write_array, write_labels

        config, cache = head_feature_config(head, backbone), self.session.features
        total = sum(len(planes) for *_, planes in jobs)

        def predict(plane, name, progress, should_stop):
            image = normalize_image(plane, name)
            if not fits_whole(backbone, config, *image.shape[:2]):
                return segment(backbone, head, image, progress=progress, should_stop=should_stop)
            feats = cache.get(image, backbone, config, staged(progress, "features"), should_stop)
            return head.predict(feats, staged(progress, "predicting"), should_stop)

        def compute(progress, should_stop):
            results, done = [], 0
            for name, shape, planes in jobs:
                predictions = []
                for plane in planes:
                    done += 1
                    predictions.append(
                        predict(plane, name, staged(progress, f"image {done}/{total} {name}"), should_stop)
                    )
                outputs = self._outputs(predictions, shape)
                for what, path in targets.get(name, {}).items():
                    write = write_labels if what in ("mask", "instances") else write_array
                    write(path, outputs[what], overwrite=True, **({} if write is write_labels else {"kind": what}))
                results.append((name, outputs))
            return results

        return compute

    def _targets(self, name: str, out_dir: Path, fmt: str, unc: bool) -> dict[str, Path]:
        """Output files of one image layer by kind: mask, uncertainty, probabilities, instances."""
        from ..naming import segmentation_outputs

        mask, uncertainty = segmentation_outputs(name, out_dir, fmt, unc, MASK_SUFFIX)
        extra = "zarr" if fmt == "zarr" else "tif"  # float maps and large ids do not fit png
        targets = {
            "mask": mask,
            "uncertainty": uncertainty,
            "probabilities": out_dir / f"{name}_probabilities.{extra}" if self.probabilities.value else None,
            "instances": out_dir / f"{name}_instances.{extra}" if self.instances.value is not None else None,
        }
        return {what: path for what, path in targets.items() if path is not None}

    def _outputs(self, predictions, shape) -> dict:
        from ..instances import connected_instances

        mask = stack_planes([p.labels for p in predictions], shape)
        outputs = {
            "mask": mask,
            "uncertainty": stack_planes([p.uncertainty for p in predictions], shape),
            "probabilities": stack_planes([p.probabilities for p in predictions], shape),
        }
        if self.instances.value is not None:
            outputs["instances"] = connected_instances(mask, self.instances.value)
        return outputs

    def _show_layers(self, results) -> None:
        written = f" and written to {self.out_dir.value}" if chosen_path(self.out_dir) else ""
        notify_info(f"{len(results)} image{'s' if len(results) != 1 else ''} segmented{written}")
        if not self.as_layers.value:
            return
        for name, outputs in results:
            layer = show_result(self.viewer, f"{name}{MASK_SUFFIX}", outputs["mask"], "labels", "export", opacity=0.5)
            apply_classes(layer, self.session.classes)
            if self.uncertainty.value:
                show_uncertainty(self.viewer, f"{name}{UNCERTAINTY_SUFFIX}", outputs["uncertainty"])
            if "instances" in outputs:
                show_result(self.viewer, f"{name}_instances", outputs["instances"], "labels", "instances")
