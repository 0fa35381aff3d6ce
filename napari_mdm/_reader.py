"""Reads the masks napari-mdm writes: integer masks open as labels, the float uncertainty maps
as images; and whole slides (pyramidal TIFF, OME-Zarr) with the label images ``segment-slide``
writes, as lazily read multiscale layers. A file is ours when its tif/zarr metadata carries our marker (``io.written_kind``)
or its name ends in ``_mask`` / ``_uncertainty`` (how the plugin names what it exports; png
holds no marker). Any other file, a plain 16-bit micrograph included, is left to napari."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .jobs import UserError
from .naming import is_uncertainty, stem

MASK_SUFFIX = "_mask"
UNCERTAINTY_SUFFIX = "_uncertainty"
MARKED_SUFFIXES = (".tif", ".tiff", ".zarr")
SLIDE_ONLY_SUFFIXES = (".svs", ".ndpi", ".scn", ".btf")
PREFERRED_PATTERNS = tuple(
    f"*{name}{ext}" for name in (MASK_SUFFIX, UNCERTAINTY_SUFFIX) for ext in (*MARKED_SUFFIXES, ".png")
) + tuple(f"*{name}.zarr{os.sep}" for name in (MASK_SUFFIX, UNCERTAINTY_SUFFIX))
"""File names napari should open with this reader without asking (napari's preference)."""


def _peek(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype without reading the pixels, or None when the file cannot be read."""
    try:
        suffix = path.suffix.lower()
        if suffix == ".zarr":
            import zarr

            node = zarr.open(str(path), mode="r")
            return (tuple(node.shape), np.dtype(node.dtype)) if hasattr(node, "shape") else None
        if suffix == ".png":
            import imageio.v3 as iio

            props = iio.improps(path)
            return tuple(props.shape), np.dtype(props.dtype)
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            return tuple(series.shape), np.dtype(series.dtype)
    except Exception:  # noqa: BLE001 (any failure means: not ours, let another reader try)
        return None


def _kind(path: Path) -> str | None:
    """'labels' for our integer mask, 'image' for our uncertainty map, None for anything else."""
    from .io import written_kind

    peeked = _peek(path)
    if peeked is None:
        return None
    shape, dtype = peeked
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] in (3, 4)):
        return None
    marker = written_kind(path) if path.suffix.lower() in MARKED_SUFFIXES else None
    if dtype.kind in "ui" and (marker == "labels" or stem(path).endswith(MASK_SUFFIX)):
        return "labels"
    if dtype.kind == "f" and (marker == "uncertainty" or is_uncertainty(path)):
        return "image"
    return None


def get_reader(path):
    """npe2 reader contribution: a reader for one of our masks, else None."""
    suffixes = (*MARKED_SUFFIXES, ".png", *SLIDE_ONLY_SUFFIXES)
    if isinstance(path, list) or not str(path).lower().rstrip("/\\").endswith(suffixes):
        return None
    if is_label_image(Path(path)):
        return read_label_image
    kind = _kind(Path(path))
    if kind:
        return lambda p: read_mask(p, kind)
    from .slides import is_slide

    return read_slide if is_slide(path) else None


def read_mask(path, kind: str = "labels") -> list[tuple]:
    from .io import MARKER_KEY, read_array

    path = Path(path)
    try:
        data = np.asarray(read_array(path))
    except UserError:
        return []
    name = stem(path)
    if kind == "image":  # marked as our output, so choosers do not offer it as an image to segment
        return [(data, {"name": name, "colormap": "inferno", "metadata": {MARKER_KEY: "uncertainty"}}, "image")]
    return [(data, {"name": name}, "labels")]


def is_label_image(path: Path) -> bool:
    """An OME-Zarr label image (``image-label`` + ``multiscales``), as ``segment-slide`` writes."""
    if path.suffix.lower() != ".zarr" or not path.is_dir():
        return False
    try:
        import zarr

        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 (not a zarr group: not ours)
        return False
    return "image-label" in attrs and "multiscales" in attrs


def _pyramid(group) -> tuple[list, tuple[float, ...] | None]:
    """The level arrays of an NGFF multiscales group and the scale of its level 0 (its place over
    the slide, in the slide's full-resolution pixels)."""
    datasets = group.attrs["multiscales"][0]["datasets"]
    transforms = datasets[0].get("coordinateTransformations", [])
    scale = next((tuple(t["scale"]) for t in transforms if t.get("type") == "scale"), None)
    return [group[d["path"]] for d in datasets], scale


def read_label_image(path) -> list[tuple]:
    """The label pyramid as one lazily read multiscale Labels layer (napari reads only what it
    shows), placed over its slide; the uncertainty, when written, as a hidden multiscale image."""
    import zarr

    from .io import MARKER_KEY

    group = zarr.open_group(str(path), mode="r")
    levels, scale = _pyramid(group)
    name = Path(path).name.removesuffix(".zarr").removesuffix(".ome")
    place = {"scale": scale} if scale else {}
    layers = [(levels, {"name": name, "multiscale": len(levels) > 1, **place}, "labels")]
    if "uncertainty" in group and "multiscales" in group["uncertainty"].attrs:
        maps, scale = _pyramid(group["uncertainty"])
        meta = {"name": f"{name}{UNCERTAINTY_SUFFIX}", "multiscale": len(maps) > 1, "colormap": "inferno"}
        meta.update(visible=False, contrast_limits=[0.0, 1.0], metadata={MARKER_KEY: "uncertainty"})
        layers.append((maps, {**meta, **({"scale": scale} if scale else {})}, "image"))
    return layers


def read_slide(path) -> list[tuple]:
    """A slide as one multiscale image, read lazily level by level; the contrast limits come from
    its smallest level, so opening it reads no more than that."""
    from .slides import display_range, slide_pyramid

    _, arrays = slide_pyramid(path)
    rgb = len(arrays[0].shape) == 3 and arrays[0].shape[-1] in (3, 4)
    meta = {"name": stem(Path(path)).removesuffix(".ome"), "multiscale": len(arrays) > 1, "rgb": rgb}
    return [(arrays, {**meta, "contrast_limits": list(display_range(arrays))}, "image")]


def prefer_this_reader() -> None:
    """Have napari open the files the plugin exports (``*_mask.tif``, ``*_uncertainty.zarr``, ...)
    with this reader instead of asking which plugin to use; patterns the user assigned stay."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    missing = {pattern: "napari-mdm" for pattern in PREFERRED_PATTERNS if pattern not in plugins.extension2reader}
    if missing:
        plugins.extension2reader = {**plugins.extension2reader, **missing}
