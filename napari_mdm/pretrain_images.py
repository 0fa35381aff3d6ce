"""The images pretraining cuts its crops from: an index of their sizes made up front, their pixels
read only where a crop falls, from a small LRU of open images. A folder of any size (or a zarr
stack) costs the few images open at once, not all of them.

A crop is the same whether its image was read whole or streamed (the same normalisation, the same
mirror padding of images smaller than the crop), so the batches of a seed, and resumes, are too.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from .jobs import UserError

KEEP_OPEN = 8
"""Images a folder's index keeps open (a batch of 8 crops touches up to 8 of them)."""


class _InMemory:
    """An (H, W, 3) array in [0, 1] with the region reader of :class:`~napari_mdm.io.ImageSource`."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.pixels[y0:y1, x0:x1]


def _rescaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """The size skimage's ``rescale`` gives ``shape`` (rounded, at least 1)."""
    return tuple(max(1, round(side * scale)) for side in shape)


def _open_plane(path: str | os.PathLike, plane: int, scale: float):
    """Plane ``plane`` of ``path``, read lazily; rescaled (so read whole) when ``scale`` is not 1."""
    from .inference import open_plane

    source = open_plane(path, plane)
    if scale == 1:
        return source
    from skimage.transform import rescale

    return _InMemory(rescale(source.read(), scale, channel_axis=-1, anti_aliasing=True).astype(np.float32))


class PretrainImages:
    """Images by index: ``shapes`` (height, width) known up front, pixels opened on demand through
    ``opener(index)`` (anything with ``region(y0, y1, x0, x1)`` giving (h, w, 3) in [0, 1]), at
    most ``keep`` open at once."""

    def __init__(self, shapes: Sequence[tuple[int, int]], opener: Callable[[int], object], keep: int = KEEP_OPEN):
        if not shapes:
            raise UserError("no images to pretrain on")
        self.shapes = [tuple(int(s) for s in shape) for shape in shapes]
        self._opener, self._keep, self._open = opener, max(1, keep), OrderedDict()
        self.opened = 0
        """How many times an image was opened (read again after it left the LRU included)."""

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray]) -> PretrainImages:
        """(H, W, 3) images in [0, 1] already in memory (the plugin's layers): all kept open."""
        return cls([im.shape[:2] for im in images], lambda i: _InMemory(images[i]), keep=len(images))

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike], scale: float = 1.0, keep: int = KEEP_OPEN):
        """Every 2-D image of ``paths`` (each plane of a stack), rescaled by ``scale``. Each file
        is opened once here for its planes' sizes, then again only while crops fall in it."""
        from .inference import open_planes

        planes, shapes = [], []
        for path in paths:
            for i, plane in enumerate(open_planes(path)):
                planes.append((path, i))
                shapes.append(_rescaled_shape(plane.shape, scale))
        return cls(shapes, lambda i: _open_plane(*planes[i], scale), keep)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def held(self) -> int:
        """Images open now."""
        return len(self._open)

    def padded_shape(self, index: int, crop: int) -> tuple[int, int]:
        """The size of image ``index`` once mirrored up to the crop size where it is smaller."""
        h, w = self.shapes[index]
        return max(h, crop), max(w, crop)

    def _image(self, index: int):
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        image = self._open[index] = self._opener(index)
        self.opened += 1
        if len(self._open) > self._keep:
            self._open.popitem(last=False)
        return image

    def crop(self, index: int, y: int, x: int, size: int) -> np.ndarray:
        """(3, size, size) float32 in [-1, 1] at (y, x) of image ``index`` as
        :meth:`padded_shape` pads it (mirrored past the bottom and right edges)."""
        h, w = self.shapes[index]
        pixels = self._image(index).region(y, min(y + size, h), x, min(x + size, w))
        arr = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) * 2 - 1
        pad_h, pad_w = size - arr.shape[1], size - arr.shape[2]
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
        return arr
