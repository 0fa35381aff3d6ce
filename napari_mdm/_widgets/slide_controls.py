"""The whole-slide part of 'Segment and export': segment what the canvas shows of a slide, at the
level the classifier was trained at, or the whole slide into an OME-Zarr label image; either
result is laid over the slide (a slide layer's world coordinates are its full-resolution pixels)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container
from napari.layers import Image

from .._reader import MASK_SUFFIX, UNCERTAINTY_SUFFIX, read_label_image
from ..jobs import UserError
from ..naming import stem
from ..slide_segmentation import SLIDE_CHUNK
from ..slides import TIFF_SUFFIXES
from .classes import apply_classes
from .layers import OUTPUT_KEY, is_output, show_result
from .segmentation_widget import show_uncertainty
from .workers import notify_info

VISIBLE, WHOLE = "visible region", "whole slide"
SLIDE_SUFFIXES = (*TIFF_SUFFIXES, ".zarr")
TILE = SLIDE_CHUNK
"""Output tile side of a whole-slide job (one dask task, one progress step and one resume unit each)."""


def slide_file(layer) -> Path | None:
    """The slide file an image layer was opened from (a TIFF or zarr napari read), else None."""
    path = getattr(layer.source, "path", None)
    if not isinstance(layer, Image) or is_output(layer) or path is None:
        return None
    return Path(path) if str(path).lower().rstrip("/\\").endswith(SLIDE_SUFFIXES) else None


def visible_box(viewer, layer) -> tuple[float, float, float, float]:
    """(top, left, bottom, right) of what the canvas shows, in ``layer``'s data coordinates (its
    full-resolution pixels for a multiscale slide)."""
    camera = getattr(viewer, "scene", viewer).camera
    canvas = getattr(getattr(viewer, "canvas", None), "size", None)
    size = np.asarray(canvas if canvas is not None else viewer._canvas_size, dtype=float) / camera.zoom
    center = np.asarray(camera.center[-2:], dtype=float)
    corners = [layer.world_to_data(corner)[-2:] for corner in (center - size / 2, center + size / 2)]
    (top, left), (bottom, right) = np.min(corners, axis=0), np.max(corners, axis=0)
    return float(top), float(left), float(bottom), float(right)


def place_over(result, slide_layer, scale, translate=(0.0, 0.0)) -> None:
    """Lay a result over its slide: ``scale``/``translate`` in the slide's pixels, composed with the
    slide layer's own placement."""
    own_scale, own_translate = np.asarray(slide_layer.scale[-2:]), np.asarray(slide_layer.translate[-2:])
    result.scale = own_scale * np.asarray(scale)
    result.translate = own_translate + own_scale * np.asarray(translate)


class SlideControls(Container):
    """Which slide, what of it and at which level; jobs run on the export widget's job panel."""

    def __init__(self, viewer, session) -> None:
        self.viewer, self.session = viewer, session
        self.slide = ComboBox(
            choices=self._slides,
            label="slide",
            tooltip="A slide opened in napari (pyramidal TIFF, SVS, OME-TIFF, OME-Zarr or zarr)",
        )
        self.extent = ComboBox(
            choices=[VISIBLE, WHOLE],
            value=VISIBLE,
            label="part",
            tooltip="visible region: what the canvas shows now, added as a layer; "
            "whole slide: every tile with tissue, saved as NAME_mask.ome.zarr in 'save to' (resumes if stopped)",
        )
        self.level = ComboBox(
            choices=self._levels,
            label="level",
            tooltip="The slide's resolution to segment at: by default the one nearest the microns per "
            "pixel the classifier was trained at (full resolution when it was not recorded)",
        )
        super().__init__(widgets=[self.slide, self.extent, self.level])
        self.slide.changed.connect(self.level.reset_choices)

    def _slides(self, *_) -> list:
        return [(layer.name, layer) for layer in self.viewer.layers if slide_file(layer) is not None]

    def _levels(self, *_) -> list:
        layer = self.slide.value
        shapes = [] if layer is None else [tuple(s[:2]) for s in layer.level_shapes]
        return [("as trained", None), *((f"{i}: {h} x {w}", i) for i, (h, w) in enumerate(shapes))]

    def start(self, jobs, backbone, head, out_dir: Path | None, uncertainty: bool, overwrite: bool):
        """Start the chosen job on ``jobs`` (inputs are checked first: nothing starts on bad ones)."""
        layer = self.slide.value
        if layer is None:
            raise UserError("open a slide (pyramidal TIFF, SVS, OME-TIFF or OME-Zarr) and choose it under 'slide'")
        if self.extent.value == VISIBLE:
            return self._start_visible(jobs, backbone, head, layer, uncertainty)
        if out_dir is None:
            raise UserError("choose a folder under 'save to' for the whole slide's label image")
        return self._start_whole(jobs, backbone, head, layer, out_dir, uncertainty, overwrite)

    def _start_visible(self, jobs, backbone, head, layer, uncertainty: bool):
        from ..slide_segmentation import segment_slide_region, visible_region

        path = slide_file(layer)
        region = visible_region(path, head, visible_box(self.viewer, layer), self.level.value)

        def compute(progress, should_stop):
            return segment_slide_region(backbone, head, path, region, progress=progress, should_stop=should_stop)

        def show(result) -> None:
            labels, unc = result
            shown = show_result(
                self.viewer, f"{layer.name} visible{MASK_SUFFIX}", labels, "labels", "slide", opacity=0.5
            )
            apply_classes(shown, self.session.classes)
            place_over(shown, layer, region.scale, region.translate)
            if uncertainty:
                maps = show_uncertainty(self.viewer, f"{layer.name} visible{UNCERTAINTY_SUFFIX}", unc)
                place_over(maps, layer, region.scale, region.translate)

        return jobs.start(f"Segmenting {layer.name} (level {region.level.index})", compute, show)

    def _start_whole(self, jobs, backbone, head, layer, out_dir: Path, uncertainty: bool, overwrite: bool):
        from ..checkpoint import backbone_reference
        from ..slide_segmentation import segment_slide

        path, reference, level = slide_file(layer), backbone_reference(backbone), self.level.value
        out = out_dir / f"{stem(path).removesuffix('.ome')}{MASK_SUFFIX}.ome.zarr"
        device = str(backbone.device)

        def compute(progress, should_stop):
            with tempfile.TemporaryDirectory() as tmp:  # workers load the head by file, as in the CLI
                head.save(Path(tmp) / "head.safetensors")
                return segment_slide(
                    reference,
                    Path(tmp) / "head.safetensors",
                    path,
                    out,
                    level=level,
                    chunk=TILE,
                    uncertainty=uncertainty,
                    device=device,
                    overwrite=overwrite,
                    progress=progress,
                    should_stop=should_stop,
                )

        return jobs.start(f"Segmenting the whole of {layer.name}", compute, lambda result: self._show(result, layer))

    def _show(self, result, slide_layer) -> None:
        notify_info(
            f"{result.out.name}: {result.computed} tiles segmented, {result.resumed} kept from an earlier run, "
            f"{result.no_tissue} without tissue skipped"
        )
        for data, meta, kind in read_label_image(result.out):
            scale = meta.pop("scale", (1.0, 1.0))
            meta["metadata"] = {**meta.get("metadata", {}), OUTPUT_KEY: "slide"}
            shown = getattr(self.viewer, f"add_{kind}")(data, **meta)
            place_over(shown, slide_layer, scale)
            if kind == "labels":
                apply_classes(shown, self.session.classes)
