"""Segmenting images with a backbone and a trained head: one image, a stack, or files on disk.

Work goes tile by tile (features of one tile -> head -> blended probability maps), so memory is
bounded by the tile plus the output maps; images whose maps would not fit in memory are
segmented into a temporary zarr store and written to zarr chunk by chunk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from .backbone import Backbone
from .features import (
    FeatureConfig,
    Frame,
    extract_features,
    features_nbytes,
    tile_alignment,
    tile_features,
)
from .files import atomic_output, plan_outputs
from .head import Head, Prediction, maps_to_prediction
from .io import MARKER_KEY, ImageSource, label_dtype, read_array, split_stack, write_array, write_labels
from .jobs import ProgressFn, Remedy, StopFn, UserError, check_stop, report
from .memory import zeros
from .naming import segmentation_outputs, stem
from .tiling import run_tiled

IN_MEMORY_MAPS_BYTES = 1 << 30
WHOLE_IMAGE_FEATURES_BYTES = 3 << 29
"""Images whose features, as held (``features_nbytes``), fit in 1.5 GiB are featurised whole and
the head runs once per pixel; larger ones tile by tile (bounded memory, overlaps computed twice).
1.5 GiB holds the default 656 channels of 2.4 megapixels as int8 codes (1.2 in float16)."""
ZARR_CHUNK = 1024
"""Side of the square chunks in which large images' maps and outputs are written."""


def head_feature_config(head: Head, backbone: Backbone, draws: int | None = None) -> FeatureConfig:
    """The feature settings the head was trained with; refuses a head that read another backbone
    (a filter-bank-only head works with any)."""
    config, trained_on = head.context.features, head.context.backbone_digest
    if config is None:
        raise UserError(
            "this head does not record the feature settings it was trained with "
            "(train it with napari_mdm.pipeline.train_head): apply it to features with Head.predict"
        )
    # an unsaved backbone cannot be identified; with projected channels their count cannot tell it either
    unknown = backbone.digest == "unsaved" and not (config.project and trained_on != "unsaved")
    if config.diffusion and trained_on and not unknown and trained_on != backbone.digest:
        projected = " (its feature channels are projected onto that backbone's principal components)"
        raise UserError(
            f"this head was trained with backbone {head.context.backbone_name or trained_on!r}, "
            f"not {backbone.name!r}: retrain the head or load its backbone" + (projected if config.project else "")
        )
    return replace(config, draws=draws) if draws is not None else config


def _as_source(image) -> ImageSource:
    return image if isinstance(image, ImageSource) else ImageSource.from_array(image)


def fits_whole(backbone: Backbone, config: FeatureConfig, h: int, w: int) -> bool:
    """Whether an (h, w) image's features are held whole (``WHOLE_IMAGE_FEATURES_BYTES``)."""
    return features_nbytes(backbone, config, h, w) <= WHOLE_IMAGE_FEATURES_BYTES


def segment_maps(
    backbone: Backbone,
    head: Head,
    image,
    out,
    draws: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    frame: Frame | None = None,
) -> None:
    """Fill ``out`` (2K + 1, H, W) with the head's blended maps (see :meth:`Head.predict_maps`);
    ``frame``: where the image lies in the whole it was cut from (see :class:`Frame`).

    When the image's features fit in ``WHOLE_IMAGE_FEATURES_BYTES`` they are blended first and the
    head runs once per pixel; otherwise features and head run tile by tile."""
    config = head_feature_config(head, backbone, draws)
    source = _as_source(image)
    h, w = source.shape
    frame = frame or Frame(0, 0, h, w)
    if fits_whole(backbone, config, h, w):
        feats = extract_features(backbone, source, config, progress, should_stop, frame)
        out[...] = head.predict_maps(feats, progress=progress, should_stop=should_stop)
        return

    def compute(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        region = source.region(y0, y1, x0, x1)
        return head.predict_maps(tile_features(backbone, region, y0, x0, config, frame=frame))

    align = tile_alignment(backbone, config)
    run_tiled(source.shape, compute, out, config.tile, config.overlap, progress, should_stop, align)


def segment(
    backbone: Backbone,
    head: Head,
    image,
    draws: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    frame: Frame | None = None,
) -> Prediction:
    """Labels, probabilities and uncertainty for one 2-D image (array or :class:`ImageSource`),
    which lies at ``frame`` in a larger one (a slide chunk; default: the image itself)."""
    source = _as_source(image)
    maps = zeros((2 * len(head.class_values) + 1, *source.shape), np.float32)
    segment_maps(backbone, head, source, maps, draws, progress, should_stop, frame)
    return maps_to_prediction(maps, head.class_values)


def segment_stack(
    backbone: Backbone,
    head: Head,
    stack,
    draws: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> list[Prediction]:
    """Each 2-D plane of a stack (N, H, W[, C]) segmented on its own."""
    planes = split_stack(stack)
    results = []
    for i, plane in enumerate(planes):
        check_stop(should_stop)
        results.append(segment(backbone, head, plane, draws, should_stop=should_stop))
        report(progress, i + 1, len(planes), f"image {i + 1}/{len(planes)}")
    return results


def _segment_large_to_zarr(
    backbone: Backbone,
    head: Head,
    source: ImageSource,
    labels_path: Path,
    unc_path: Path | None,
    overwrite: bool,
    draws: int | None,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> None:
    """Maps in a temporary zarr store, then labels (and uncertainty) written chunk by chunk."""
    import zarr

    k = len(head.class_values)
    h, w = source.shape
    chunk = ZARR_CHUNK
    with tempfile.TemporaryDirectory() as scratch:
        maps = zarr.create_array(
            store=os.path.join(scratch, "maps.zarr"),
            shape=(2 * k + 1, h, w),
            chunks=(2 * k + 1, chunk, chunk),
            dtype="float32",
            fill_value=0.0,
        )
        segment_maps(backbone, head, source, maps, draws, progress, should_stop)
        targets = [(labels_path, "labels")] + ([(unc_path, "uncertainty")] if unc_path else [])
        for path, what in targets:
            with atomic_output(path, overwrite=overwrite) as tmp:
                dtype = "float32" if what == "uncertainty" else label_dtype(max(head.class_values))
                arr = zarr.create_array(store=str(tmp), shape=(h, w), chunks=(chunk, chunk), dtype=dtype)
                arr.attrs[MARKER_KEY] = what
                for y in range(0, h, chunk):
                    for x in range(0, w, chunk):
                        check_stop(should_stop)
                        pred = maps_to_prediction(np.asarray(maps[:, y : y + chunk, x : x + chunk]), head.class_values)
                        arr[y : y + chunk, x : x + chunk] = pred.uncertainty if what == "uncertainty" else pred.labels


def _maps_too_large(source: ImageSource, head: Head) -> bool:
    return (2 * len(head.class_values) + 1) * source.shape[0] * source.shape[1] * 4 > IN_MEMORY_MAPS_BYTES


def _plane_name(path: str | os.PathLike, index: int, count: int) -> str:
    return str(path) if count == 1 else f"{path} (plane {index + 1})"


def open_planes(path: str | os.PathLike) -> list[ImageSource]:
    """The 2-D images of a file, read lazily: the image itself, or each plane of a stack (N, H, W[, C])."""
    planes = split_stack(read_array(path, lazy=True))
    return [ImageSource.from_array(plane, name=_plane_name(path, i, len(planes))) for i, plane in enumerate(planes)]


def open_plane(path: str | os.PathLike, index: int) -> ImageSource:
    """Plane ``index`` of :func:`open_planes` alone: the other planes of a stack are not looked at."""
    planes = split_stack(read_array(path, lazy=True))
    return ImageSource.from_array(planes[index], name=_plane_name(path, index, len(planes)))


def plan_segmentation(
    head: Head,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    fmt: str,
    uncertainty: bool,
    overwrite: bool,
    also_read: Sequence[str | os.PathLike] = (),
    mask_suffix: str = "",
) -> list[tuple[Path, Path, Path | None]]:
    """(image, mask, uncertainty map) for each image, every output checked before any work
    (:func:`napari_mdm.files.plan_outputs`) against each other, existing files and the inputs
    (the images and ``also_read``: head, backbone); masks never go into the images' own folder."""
    if fmt not in ("tif", "zarr", "png"):
        raise UserError(f"unknown format {fmt!r}: use tif, zarr or png")
    if fmt == "png" and max(head.class_values) > 65535:
        raise UserError(f"this head's label ids go up to {max(head.class_values)}: png holds 16 bits; use tif or zarr")
    out_dir = Path(out_dir)
    planned = [(Path(p), *segmentation_outputs(stem(p), out_dir, fmt, uncertainty, mask_suffix)) for p in paths]
    for path, *_ in planned:
        if os.path.realpath(path.parent) == os.path.realpath(out_dir):
            raise UserError(f"the output folder {out_dir} is the folder of the images: write the masks elsewhere")
    inputs = [*(p for p, *_ in planned), *map(Path, also_read)]
    plan_outputs([q for _, *outs in planned for q in outs if q is not None], inputs, overwrite)
    return planned


def _check_inputs(head: Head, planned) -> None:
    """Open every input before any output is written: unusable ones fail here."""
    for path, labels_path, _ in planned:
        planes = open_planes(path)
        if labels_path.suffix == ".png" and len(planes) > 1:
            raise UserError(f"{path} is a stack of {len(planes)} images: png holds one 2-D image; use tif or zarr")
        if any(_maps_too_large(p, head) for p in planes) and (labels_path.suffix != ".zarr" or len(planes) > 1):
            split = " and split the stack into single images" if len(planes) > 1 else ""
            raise UserError(
                f"{path} is too large to segment in memory",
                Remedy(f"write it as zarr (--format zarr){split}", f"choose format 'zarr'{split}"),
            )


def _segment_in_memory(
    backbone: Backbone,
    head: Head,
    planes: list[ImageSource],
    labels_path: Path,
    unc_path: Path | None,
    overwrite: bool,
    draws: int | None,
    should_stop: StopFn | None,
    progress: ProgressFn | None = None,
) -> None:
    """Each plane segmented, the masks (and maps) written as one image or one stack."""
    labels, uncertainty = [], []
    for plane in planes:  # keep only what is written, not each plane's probabilities
        pred = segment(backbone, head, plane, draws, progress=progress, should_stop=should_stop)
        labels.append(pred.labels)
        uncertainty.append(pred.uncertainty)
    squeeze = (lambda arrays: arrays[0]) if len(planes) == 1 else np.stack
    write_labels(labels_path, squeeze(labels), overwrite=overwrite)
    if unc_path is not None:
        write_array(unc_path, squeeze(uncertainty), overwrite=overwrite, kind="uncertainty")


def segment_files(
    backbone: Backbone,
    head: Head,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    fmt: str = "tif",
    uncertainty: bool = False,
    overwrite: bool = False,
    draws: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    tile_progress: ProgressFn | None = None,
    mask_suffix: str = "",
) -> list[Path]:
    """Segment image files (a stack: plane by plane, into one stacked mask) into ``out_dir`` as
    NAME{mask_suffix}.fmt (+ NAME_uncertainty). Every output is planned and every input opened
    before the first is written, and each is written atomically, so a cancel leaves the finished
    images complete. ``progress`` counts images, ``tile_progress`` the work within the current one."""
    planned = plan_segmentation(head, paths, out_dir, fmt, uncertainty, overwrite, mask_suffix=mask_suffix)
    head_feature_config(head, backbone, draws)
    _check_inputs(head, planned)
    written = []
    for i, (path, labels_path, unc_path) in enumerate(planned):
        check_stop(should_stop)
        planes = open_planes(path)
        if _maps_too_large(planes[0], head):
            _segment_large_to_zarr(
                backbone, head, planes[0], labels_path, unc_path, overwrite, draws, tile_progress, should_stop
            )
        else:
            _segment_in_memory(
                backbone, head, planes, labels_path, unc_path, overwrite, draws, should_stop, tile_progress
            )
        written.append(labels_path)
        report(progress, i + 1, len(planned), f"{path.name} -> {labels_path.name}")
    return written
