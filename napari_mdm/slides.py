"""Whole-slide images read lazily, level by level: pyramidal TIFF / SVS / OME-TIFF (through
tifffile's zarr store, no openslide binary), OME-Zarr and plain zarr.

A slide is a list of :class:`SlideLevel` (full resolution first); :func:`open_slide` returns one
level as an :class:`~napari_mdm.io.ImageSource`, chosen by index or by the microns per pixel
(mpp) a head was trained at. Nothing reads more than the regions asked for.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .io import ImageSource
from .jobs import Remedy, UserError

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".btf")
MICRONS = ("micrometer", "micron")


@dataclass(frozen=True)
class SlideLevel:
    index: int
    shape: tuple[int, int]
    downsample: tuple[float, float]
    """Full-resolution pixels per pixel of this level along y and x (1, 1 for level 0): level 0's
    size over this one's, as napari scales a multiscale layer's levels. The two differ where a
    pyramid rounded odd sizes or shrank its axes unequally."""
    mpp: tuple[float, float] | None
    """Microns per pixel along y and x at this level, when the file records them."""


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def _ome_size(metadata: str, axis: str) -> float | None:
    """OME PhysicalSize{axis} in microns, None when absent or in another unit."""
    match = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', metadata)
    unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', metadata)
    return float(match.group(1)) if match and (unit is None or unit.group(1) in ("µm", "um", "micron")) else None


def _tag_size(page, tag: str) -> float | None:
    """Microns per pixel from a TIFF resolution tag (pixels per inch or centimetre)."""
    resolution, unit = page.tags.get(tag), page.tags.get("ResolutionUnit")
    if resolution and unit and unit.value in (2, 3):  # inch, centimetre
        numerator, denominator = resolution.value
        if numerator > 0 and denominator > 0 and numerator / denominator > 1:
            return (25400.0 if unit.value == 2 else 10000.0) / (numerator / denominator)
    return None


def _tiff_mpp(tif) -> tuple[float, float] | None:
    """Level-0 microns per pixel along y and x: OME PhysicalSizeY/X, an SVS 'MPP = x' description
    (square pixels), or the TIFF resolution tags; an axis without its own size takes the other's."""
    page = tif.pages.first
    match = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
    if tif.is_ome and _ome_size(tif.ome_metadata or "", "X") is not None:
        y, x = _ome_size(tif.ome_metadata, "Y"), _ome_size(tif.ome_metadata, "X")
    elif match:
        y = x = float(match.group(1))
    else:
        y, x = _tag_size(page, "YResolution"), _tag_size(page, "XResolution")
    if x is None:
        return None
    return (x if y is None else y), x


def _tiff_levels(path: Path):
    """(zarr arrays per level, level-0 mpp) of a TIFF; the file stays open while the arrays are used."""
    import tifffile
    import zarr

    tif = tifffile.TiffFile(str(path))
    series = tif.series[0]
    arrays = [zarr.open(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
    return arrays, _tiff_mpp(tif)


def _ome_zarr_levels(path: Path):
    """(arrays per level, level-0 mpp) of an OME-Zarr image (NGFF 0.4 or 0.5) or a plain zarr array."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return [node], None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise UserError(f"{path} is a zarr group without OME-Zarr 'multiscales' metadata: open one of its arrays")
    datasets = multiscales[0]["datasets"]
    arrays = [node[d["path"]] for d in datasets]
    scale = next((t["scale"] for t in datasets[0].get("coordinateTransformations", []) if t["type"] == "scale"), None)
    axes = [a if isinstance(a, dict) else {"name": a} for a in multiscales[0].get("axes", [])]
    microns = {a.get("name"): float(s) for a, s in zip(axes, scale or [], strict=False) if a.get("unit") in MICRONS}
    return arrays, (microns["y"], microns["x"]) if {"y", "x"} <= microns.keys() else None


def _yx(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    """The (height, width) of a level: 2-D grey, (H, W, C) or (C, H, W)."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return (shape[0], shape[1]) if shape[-1] <= 4 else (shape[1], shape[2])
    raise UserError(f"{path} has {len(shape)}-D levels {shape}: only 2-D grey or colour slides are supported")


def _levels_and_arrays(path: str | os.PathLike):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    try:
        arrays, mpp = _tiff_levels(path) if _is_tiff(path) else _ome_zarr_levels(path)
    except UserError:
        raise
    except Exception as err:  # corrupt or foreign files surface as many exception types
        raise UserError(f"cannot open {path} as a slide: {type(err).__name__}: {err}") from None
    full = _yx(tuple(arrays[0].shape), path)
    levels = []
    for i, arr in enumerate(arrays):
        shape = _yx(tuple(arr.shape), path)
        down = (full[0] / shape[0], full[1] / shape[1])
        level_mpp = None if mpp is None else (mpp[0] * down[0], mpp[1] * down[1])
        levels.append(SlideLevel(i, shape, down, level_mpp))
    return levels, arrays


def slide_levels(path: str | os.PathLike) -> list[SlideLevel]:
    """The levels of a slide, full resolution first."""
    return _levels_and_arrays(path)[0]


def slide_pyramid(path: str | os.PathLike) -> tuple[list[SlideLevel], list]:
    """The levels of a slide and their lazily read arrays (as napari shows a multiscale image)."""
    return _levels_and_arrays(path)


def display_range(arrays: list) -> tuple[float, float]:
    """Contrast limits for a slide, from a strided sample of its smallest level only."""
    source = ImageSource.from_array(arrays[-1])
    return source.lo, source.hi


def is_slide(path: str | os.PathLike) -> bool:
    """A pyramidal TIFF (several levels) or an OME-Zarr image (``multiscales``, not a label image):
    files to show as multiscale images. False for anything unreadable."""
    path = Path(path)
    try:
        if _is_tiff(path):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                return len(tif.series[0].levels) > 1
        if path.suffix.lower() != ".zarr" or not path.is_dir():
            return False
        import zarr

        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 (not a slide: leave the file to other readers)
        return False
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    return bool(multiscales) and "image-label" not in attrs and "image-label" not in attrs.get("ome", {})


def pick_level(levels: list[SlideLevel], level: int | None = None, mpp: float | None = None) -> SlideLevel:
    """Level ``level``, or the one whose mpp is nearest ``mpp`` (by ratio, summed over y and x:
    a level whose axes shrank unequally is as far as its axes are), or level 0."""
    if level is not None:
        if not 0 <= level < len(levels):
            raise UserError(f"the slide has levels 0..{len(levels) - 1}, not {level}")
        return levels[level]
    if mpp is None:
        return levels[0]
    if not mpp > 0:
        raise UserError(f"microns per pixel must be above 0, got {mpp}")
    if levels[0].mpp is None:
        raise UserError(
            "the slide does not record its microns per pixel",
            Remedy("choose a level with --level", "choose its level under 'level'"),
        )
    return min(levels, key=lambda lv: sum(abs(math.log(axis / mpp)) for axis in lv.mpp))


MAX_REGION_PIXELS = 4096 * 4096
"""The largest region segmented in the viewer at once (more: segment the whole slide)."""


@dataclass(frozen=True)
class SlideRegion:
    """A rectangle of one slide level, and where it lies over the slide in level-0 pixels (the
    world coordinates of a slide shown as a multiscale layer)."""

    level: SlideLevel
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def scale(self) -> tuple[float, float]:
        return self.level.downsample

    @property
    def translate(self) -> tuple[float, float]:
        dy, dx = self.level.downsample
        return self.y0 * dy, self.x0 * dx


def region_at_level(
    level: SlideLevel, box: tuple[float, float, float, float], max_pixels: int | None = None
) -> SlideRegion:
    """The pixels of ``level`` under ``box`` (top, left, bottom, right in level-0 pixels), clipped
    to the level; a UserError when the box misses the slide or holds over ``max_pixels``
    (default :data:`MAX_REGION_PIXELS`)."""
    max_pixels = MAX_REGION_PIXELS if max_pixels is None else max_pixels
    (dy, dx), (h, w) = level.downsample, level.shape
    top, left, bottom, right = box
    y0, x0 = max(0, math.floor(top / dy)), max(0, math.floor(left / dx))
    y1, x1 = min(h, math.ceil(bottom / dy)), min(w, math.ceil(right / dx))
    if y1 <= y0 or x1 <= x0:
        raise UserError("the view shows none of the slide: pan or zoom to the part to segment")
    if (y1 - y0) * (x1 - x0) > max_pixels:
        raise UserError(
            f"the view covers {y1 - y0} x {x1 - x0} pixels of level {level.index}, more than "
            f"{max_pixels:,} at once: zoom in, or segment the whole slide"
        )
    return SlideRegion(level, y0, y1, x0, x1)


def open_slide(
    path: str | os.PathLike, level: int | None = None, mpp: float | None = None
) -> tuple[ImageSource, SlideLevel]:
    """One level of a slide as a lazily read image (see :func:`pick_level`)."""
    levels, arrays = _levels_and_arrays(path)
    chosen = pick_level(levels, level, mpp)
    return ImageSource.from_array(arrays[chosen.index], name=f"{path} level {chosen.index}"), chosen
