"""Segmenting images with a backbone and a trained head: one image, a stack, or files on disk.

Work goes tile by tile (features of one tile -> head -> blended probability maps), so memory is
bounded by the tile plus the output maps; images whose maps would not fit in memory are
segmented into a temporary zarr store and written to zarr chunk by chunk.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .backbone import Backbone
from .features import FeatureConfig, extract_features, num_channels, tile_features
from .files import atomic_output
from .head import Head, Prediction, maps_to_prediction
from .io import MARKER_KEY, ImageSource, open_image, split_stack, write_array, write_labels
from .jobs import ProgressFn, StopFn, UserError, check_stop, report
from .tiling import run_tiled

IN_MEMORY_MAPS_BYTES = 1 << 30
WHOLE_IMAGE_FEATURES_BYTES = 1 << 30
ZARR_CHUNK = 1024
"""Side of the square chunks in which large images' maps and outputs are written."""


def head_feature_config(head: Head, backbone: Backbone, draws: int | None = None) -> FeatureConfig:
    """The feature settings the head was trained with; refuses a head that read another backbone
    (a filter-bank-only head works with any)."""
    config, trained_on = head.context.features, head.context.backbone_digest
    if config is None:
        raise UserError("this head does not record the feature settings it was trained with "
                        "(train it with napari_mdm.pipeline.train_head): apply it to features with Head.predict")
    if config.diffusion and trained_on and backbone.digest != "unsaved" and trained_on != backbone.digest:
        raise UserError(f"this head was trained with backbone {head.context.backbone_name or trained_on!r}, "
                        f"not {backbone.name!r}: retrain the head or load its backbone")
    return replace(config, draws=draws) if draws is not None else config


def _as_source(image) -> ImageSource:
    return image if isinstance(image, ImageSource) else ImageSource.from_array(image)


def segment_maps(backbone: Backbone, head: Head, image, out, draws: int | None = None,
                 progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> None:
    """Fill ``out`` (2K + 1, H, W) with the head's blended maps (see :meth:`Head.predict_maps`).

    When the image's features fit in ``WHOLE_IMAGE_FEATURES_BYTES`` they are blended first and the
    head runs once per pixel; otherwise features and head run tile by tile."""
    config = head_feature_config(head, backbone, draws)
    source = _as_source(image)
    h, w = source.shape
    if num_channels(backbone, config) * h * w * 2 <= WHOLE_IMAGE_FEATURES_BYTES:
        feats = extract_features(backbone, source, config, progress, should_stop)
        out[...] = head.predict_maps(feats, progress=progress, should_stop=should_stop)
        return

    def compute(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return head.predict_maps(tile_features(backbone, source.region(y0, y1, x0, x1), y0, x0, config))

    run_tiled(source.shape, compute, out, config.tile, config.overlap, progress, should_stop)


def segment(backbone: Backbone, head: Head, image, draws: int | None = None,
            progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> Prediction:
    """Labels, probabilities and uncertainty for one 2-D image (array or :class:`ImageSource`)."""
    source = _as_source(image)
    maps = np.zeros((2 * len(head.class_values) + 1, *source.shape), dtype=np.float32)
    segment_maps(backbone, head, source, maps, draws, progress, should_stop)
    return maps_to_prediction(maps, head.class_values)


def segment_stack(backbone: Backbone, head: Head, stack, draws: int | None = None,
                  progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> list[Prediction]:
    """Each 2-D plane of a stack (N, H, W[, C]) segmented on its own."""
    planes = split_stack(stack)
    results = []
    for i, plane in enumerate(planes):
        check_stop(should_stop)
        results.append(segment(backbone, head, plane, draws, should_stop=should_stop))
        report(progress, i + 1, len(planes), f"image {i + 1}/{len(planes)}")
    return results


def output_paths(image_path: Path, out_dir: Path, fmt: str, uncertainty: bool,
                 mask_suffix: str = "") -> tuple[Path, Path | None]:
    stem = image_path.name.split(".")[0]
    unc = out_dir / f"{stem}_uncertainty.{'zarr' if fmt == 'zarr' else 'tif'}" if uncertainty else None
    return out_dir / f"{stem}{mask_suffix}.{fmt}", unc


def _segment_large_to_zarr(backbone: Backbone, head: Head, source: ImageSource, labels_path: Path,
                           unc_path: Path | None, overwrite: bool, draws: int | None,
                           progress: ProgressFn | None, should_stop: StopFn | None) -> None:
    """Maps in a temporary zarr store, then labels (and uncertainty) written chunk by chunk."""
    import zarr

    k = len(head.class_values)
    h, w = source.shape
    chunk = ZARR_CHUNK
    with tempfile.TemporaryDirectory() as scratch:
        maps = zarr.create_array(store=os.path.join(scratch, "maps.zarr"), shape=(2 * k + 1, h, w),
                                 chunks=(2 * k + 1, chunk, chunk), dtype="float32", fill_value=0.0)
        segment_maps(backbone, head, source, maps, draws, progress, should_stop)
        targets = [(labels_path, "labels")] + ([(unc_path, "uncertainty")] if unc_path else [])
        for path, what in targets:
            with atomic_output(path, overwrite=overwrite) as tmp:
                dtype = "float32" if what == "uncertainty" else "uint8" if max(head.class_values) < 256 else "int32"
                arr = zarr.create_array(store=str(tmp), shape=(h, w), chunks=(chunk, chunk), dtype=dtype)
                arr.attrs[MARKER_KEY] = what
                for y in range(0, h, chunk):
                    for x in range(0, w, chunk):
                        check_stop(should_stop)
                        pred = maps_to_prediction(np.asarray(maps[:, y : y + chunk, x : x + chunk]), head.class_values)
                        arr[y : y + chunk, x : x + chunk] = pred.uncertainty if what == "uncertainty" else pred.labels


def _maps_too_large(source: ImageSource, head: Head) -> bool:
    return (2 * len(head.class_values) + 1) * source.shape[0] * source.shape[1] * 4 > IN_MEMORY_MAPS_BYTES


def segment_files(backbone: Backbone, head: Head, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  fmt: str = "tif", uncertainty: bool = False, overwrite: bool = False, draws: int | None = None,
                  progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                  tile_progress: ProgressFn | None = None, mask_suffix: str = "") -> list[Path]:
    """Segment image files into ``out_dir`` as NAME{mask_suffix}.fmt (+ NAME_uncertainty). Each
    output is written atomically, so a cancel leaves the finished images complete and no partial
    file. ``progress`` counts images, ``tile_progress`` the work within the current one."""
    if fmt not in ("tif", "zarr", "png"):
        raise UserError(f"unknown format {fmt!r}: use tif, zarr or png")
    out_dir = Path(out_dir)
    planned = [(Path(p), *output_paths(Path(p), out_dir, fmt, uncertainty, mask_suffix)) for p in paths]
    names = [labels_path.name for _, labels_path, _ in planned]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        raise UserError(f"several images would be written to the same output {twins[0]} "
                        "(same name, other extension): rename or segment them separately")
    if not overwrite:
        clashes = [str(q) for _, *outs in planned for q in outs if q is not None and q.exists()]
        if clashes:
            raise UserError(f"{clashes[0]} already exists ({len(clashes)} outputs would be overwritten); "
                            "pass --overwrite to replace them")
    head_feature_config(head, backbone, draws)
    for path, labels_path, _ in planned:  # unusable inputs fail here, before any output is written
        if _maps_too_large(open_image(path), head) and labels_path.suffix != ".zarr":
            raise UserError(f"{path} is too large to segment in memory; write it as zarr (--format zarr)")
    written = []
    for i, (path, labels_path, unc_path) in enumerate(planned):
        check_stop(should_stop)
        source = open_image(path)
        if _maps_too_large(source, head):
            _segment_large_to_zarr(backbone, head, source, labels_path, unc_path, overwrite, draws, tile_progress,
                                   should_stop)
        else:
            pred = segment(backbone, head, source, draws, progress=tile_progress, should_stop=should_stop)
            write_labels(labels_path, pred.labels, overwrite=overwrite)
            if unc_path is not None:
                write_array(unc_path, pred.uncertainty, overwrite=overwrite, kind="uncertainty")
        written.append(labels_path)
        report(progress, i + 1, len(planned), f"{path.name} -> {labels_path.name}")
    return written
