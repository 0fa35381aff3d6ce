"""Reads the masks napari-mdm writes (tif or zarr): integer masks open as labels, the float
``NAME_uncertainty`` maps as images. Other tifs are left to napari's own readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .jobs import UserError

MASK_SUFFIXES = (".tif", ".tiff", ".zarr")


def _peek(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype without reading the pixels, or None when the file cannot be read."""
    try:
        if path.suffix.lower() == ".zarr":
            import zarr

            node = zarr.open(str(path), mode="r")
            return (tuple(node.shape), np.dtype(node.dtype)) if hasattr(node, "shape") else None
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            return tuple(series.shape), np.dtype(series.dtype)
    except Exception:  # noqa: BLE001 (any failure means: not ours, let another reader try)
        return None


def _kind(path: Path) -> str | None:
    """'labels' for an integer mask, 'image' for our uncertainty map, None for anything else."""
    peeked = _peek(path)
    if peeked is None:
        return None
    shape, dtype = peeked
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] in (3, 4)):
        return None
    if dtype.kind in "ui":
        return "labels"
    if dtype.kind == "f" and path.name.split(".")[0].endswith("_uncertainty"):
        return "image"
    return None


def get_reader(path):
    """npe2 reader contribution: a reader for one of our masks, else None."""
    if isinstance(path, list) or not str(path).lower().endswith(MASK_SUFFIXES):
        return None
    if is_label_image(Path(path)):
        return read_label_image
    kind = _kind(Path(path))
    return (lambda p: read_mask(p, kind)) if kind else None


def read_mask(path, kind: str = "labels") -> list[tuple]:
    from .io import read_array

    path = Path(path)
    try:
        data = np.asarray(read_array(path))
    except UserError:
        return []
    name = path.name.split(".")[0]
    if kind == "image":
        return [(data, {"name": name, "colormap": "inferno"}, "image")]
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


def read_label_image(path) -> list[tuple]:
    """The label pyramid as one lazily read multiscale Labels layer (napari reads only what it shows)."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    levels = [group[d["path"]] for d in group.attrs["multiscales"][0]["datasets"]]
    name = Path(path).name.removesuffix(".zarr").removesuffix(".ome")
    return [(levels, {"name": name, "multiscale": len(levels) > 1}, "labels")]
