"""Reading images into one convention and writing masks atomically.

Images cross module boundaries as (H, W, 3) float32 in [0, 1]. The rules, explicitly:

- grey (H, W) or (H, W, 1) is repeated to RGB; grey+alpha and RGBA drop the alpha channel;
  channel-first (3, H, W) is transposed;
- uint8 is divided by 255; other integer types (16-bit microscopy) and floats outside [0, 1]
  are stretched between their 0.1 and 99.9 percentiles; floats already in [0, 1] are kept;
- NaN and inf pixels become 0;
- a stack (N, H, W[, C]) is several images: :func:`split_stack` returns them.

Labels are integer ids 0..2^32-1 kept exactly (palette pngs give their indices, not their
colours), and every mask is written in the type :func:`label_dtype` chooses.

Large images (zarr, memory-mappable tif) are opened lazily as :class:`ImageSource`, whose
regions are normalised on read with the same rules, so nothing holds the whole image.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_output
from .jobs import UserError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".zarr")
LABEL_SUFFIXES = (".tif", ".tiff", ".zarr", ".png")
_SAMPLE_PIXELS = 1_000_000


def _channels_last(arr, name: str):
    """A view of ``arr`` as (H, W, C) with C in 1..4, or a clear error."""
    if arr.ndim == 2:
        return arr[:, :, None] if isinstance(arr, np.ndarray) else _LazyView(arr, (*arr.shape, 1), _grey_region)
    if arr.ndim == 3:
        if arr.shape[-1] in (1, 2, 3, 4):
            return arr
        if arr.shape[0] in (1, 3, 4):
            if isinstance(arr, np.ndarray):
                return np.moveaxis(arr, 0, -1)
            return _LazyView(arr, (*arr.shape[1:], arr.shape[0]), _channel_first_region)
        raise UserError(
            f"{name} has shape {arr.shape}: a stack of {arr.shape[0]} images? Open it as a stack "
            "(each plane is segmented as its own 2-D image)"
        )
    raise UserError(
        f"{name} has {arr.ndim} dimensions {arr.shape}; napari-mdm segments 2-D grey or RGB images "
        "(a stack is split into 2-D images)"
    )


def _grey_region(arr, ys: slice, xs: slice) -> np.ndarray:
    return np.asarray(arr[ys, xs])[:, :, None]


def _channel_first_region(arr, ys: slice, xs: slice) -> np.ndarray:
    return np.moveaxis(np.asarray(arr[:, ys, xs]), 0, -1)


class _LazyView:
    """(H, W, C) view of an array-like that is not numpy (zarr, a memory-mapped tif), read on indexing."""

    def __init__(self, arr, shape: tuple[int, int, int], read):
        self.arr, self.dtype, self.shape, self.ndim, self._read = arr, arr.dtype, shape, 3, read

    def __getitem__(self, key):
        return self._read(self.arr, key[0], key[1])


def _intensity_range(arr) -> tuple[float, float]:
    """(lo, hi) that map the array's values onto [0, 1], from a strided sample of the image."""
    dtype = np.dtype(arr.dtype)
    if dtype == np.uint8:
        return 0.0, 255.0
    if dtype.kind == "b":
        return 0.0, 1.0
    step = max(1, int(np.sqrt(arr.shape[0] * arr.shape[1] / _SAMPLE_PIXELS)))
    sample = np.asarray(arr[::step, ::step]).astype(np.float64)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        raise UserError("the image has no finite pixel values")
    if dtype.kind == "f" and finite.min() >= 0 and finite.max() <= 1:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.1, 99.9])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if not np.float32(hi) - np.float32(lo) > 0:  # a constant image (at float32 precision) maps to 0
        hi = lo + max(1.0, abs(lo))
    return float(lo), float(hi)


def _to_rgb01(region: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = (np.asarray(region, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(out, 0, 1, out=out)
    c = out.shape[-1]
    if c in (1, 2):
        out = np.repeat(out[..., :1], 3, axis=-1)
    elif c == 4:
        out = out[..., :3]
    return np.ascontiguousarray(out)


@dataclass
class ImageSource:
    """An image of any size, read region by region as (h, w, 3) float32 in [0, 1]."""

    data: object  # numpy, zarr or any array-like of (H, W, C)
    lo: float
    hi: float
    name: str = "image"

    @classmethod
    def from_array(cls, arr, name: str = "image") -> ImageSource:
        arr = arr if hasattr(arr, "shape") and hasattr(arr, "dtype") else np.asarray(arr)
        view = _channels_last(arr, name)
        if np.dtype(view.dtype).kind not in "biuf":
            raise UserError(f"{name} has unsupported pixel type {view.dtype}")
        if view.shape[0] < 1 or view.shape[1] < 1:
            raise UserError(f"{name} is empty (shape {arr.shape})")
        lo, hi = _intensity_range(view)
        return cls(view, lo, hi, name)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[0]), int(self.data.shape[1])

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        try:
            pixels = np.asarray(self.data[y0:y1, x0:x1])
        except Exception as err:  # a corrupt chunk of a lazily read file shows up only here
            raise UserError(
                f"cannot read {self.name} at rows {y0}-{y1}, columns {x0}-{x1}: {type(err).__name__}: {first_line(err)}"
            ) from None
        return _to_rgb01(pixels, self.lo, self.hi)

    def read(self) -> np.ndarray:
        return self.region(0, self.shape[0], 0, self.shape[1])


def normalize_image(arr, name: str = "image") -> np.ndarray:
    """Any supported 2-D image array -> (H, W, 3) float32 in [0, 1] (rules in the module doc)."""
    return ImageSource.from_array(arr, name).read()


def split_stack(arr) -> list:
    """A single 2-D image, or a stack (N, H, W) / (N, H, W, C), as a list of 2-D images."""
    arr = arr if hasattr(arr, "ndim") else np.asarray(arr)
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4) and arr.shape[0] not in (1, 3, 4)):
        if isinstance(arr, np.ndarray):
            return [arr[i] for i in range(arr.shape[0])]
        return [_Plane(arr, i) for i in range(arr.shape[0])]  # zarr, memory-mapped tif: read region by region
    return [arr]


class _Plane:
    """Plane ``index`` of a stack that is not numpy, read only where indexed."""

    def __init__(self, arr, index: int):
        self.arr, self.index, self.dtype, self.shape, self.ndim = arr, index, arr.dtype, arr.shape[1:], arr.ndim - 1

    def __getitem__(self, key):
        return np.asarray(self.arr[(self.index, *key)])

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.arr[self.index], dtype=dtype)


def _open_zarr(path: Path):
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return node
    arrays = sorted(node.array_keys())
    if not arrays:
        raise UserError(f"{path} is a zarr group without arrays")
    return node[arrays[0]]


def _check_readable(path: Path) -> None:
    """Refuse what is not a regular file (a FIFO or device would block or stream forever)."""
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.suffix.lower() == ".zarr" and path.is_dir():
        return
    if not path.is_file():
        raise UserError(f"{path} is not a regular file (a folder, pipe or device): name an image file")


def _read_png_indices(path: Path) -> np.ndarray:
    """A png's stored values: palette (mode P) images give their indices, not their colours."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def read_array(path: str | os.PathLike, lazy: bool = False, indices: bool = False):
    """The raw pixel array of an image file (zarr and, when ``lazy``, tif stay on disk); with
    ``indices``, a palette png gives its indices (label ids) instead of its colours."""
    path = Path(path)
    _check_readable(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".zarr":
            arr = _open_zarr(path)
            return arr if lazy else np.asarray(arr)
        if suffix in (".tif", ".tiff"):
            import tifffile

            if lazy:
                try:
                    return tifffile.memmap(str(path), mode="r")
                except ValueError:
                    pass
            return tifffile.imread(str(path))
        if suffix == ".png" and indices:
            return _read_png_indices(path)
        if suffix in IMAGE_SUFFIXES:
            import imageio.v3 as iio

            return iio.imread(path)
    except UserError:
        raise
    except Exception as err:  # corrupt files surface as many exception types
        raise UserError(f"cannot read {path}: {type(err).__name__}: {first_line(err)}") from None
    raise UserError(f"{path} is not a supported image ({', '.join(IMAGE_SUFFIXES)})")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as (H, W, 3) float32 in [0, 1]."""
    return normalize_image(read_array(path), name=str(path))


def open_image(path: str | os.PathLike) -> ImageSource:
    """An image file as a lazily read :class:`ImageSource` (zarr and plain tif stay on disk)."""
    return ImageSource.from_array(read_array(path, lazy=True), name=str(path))


MAX_LABEL = 2**32 - 1
"""The largest label id: masks are stored as unsigned integers of up to 32 bits."""


def label_dtype(top: int) -> np.dtype:
    """The smallest unsigned type that holds label ids 0..``top`` (the one rule for every mask)."""
    if not 0 <= top <= MAX_LABEL:
        raise UserError(f"label id {top} is out of range: ids must be 0..{MAX_LABEL}")
    return np.dtype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)


LOSSY_TIFF_COMPRESSIONS = {"JPEG", "OJPEG", "JPEG_2000", "JPEGXR", "JPEGXL", "WEBP", "JPEG_LOSSY", "JPEGXL_DNG"}


def _check_lossless(path: Path) -> None:
    """Refuse label files stored lossily: JPEG noise would turn ids 1 and 5 into 0..7."""
    lossy = path.suffix.lower() in (".jpg", ".jpeg")
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        import tifffile

        try:
            with tifffile.TiffFile(str(path)) as tif:
                lossy = tif.pages[0].compression.name in LOSSY_TIFF_COMPRESSIONS
        except Exception:  # noqa: BLE001 (unreadable files are refused by read_array with its message)
            return
    if lossy:
        raise UserError(
            f"{path}: labels stored with lossy (JPEG-like) compression have changed ids; "
            "save them losslessly (png, tif without JPEG compression, zarr)"
        )


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """A label image as (H, W) int64 holding the ids exactly (palette pngs: their indices); RGB
    label images, lossy files, fractional values and ids outside 0..2^32-1 are refused."""
    _check_lossless(Path(path))
    arr = np.asarray(read_array(path, indices=True))
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and np.array_equal(arr[..., 0], arr[..., 1]):
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise UserError(f"{path}: labels must be a 2-D image of integer ids, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise UserError(f"{path}: labels must be integers")
    elif arr.dtype.kind not in "biu":
        raise UserError(f"{path}: labels must be integers, got {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise UserError(f"{path}: labels must be >= 0 (0 = unlabelled)")
    if arr.size and arr.max() > MAX_LABEL:
        raise UserError(f"{path}: label id {arr.max():.0f} is too large: ids must be 0..{MAX_LABEL}")
    return arr.astype(np.int64)


def collect_images(paths: Iterable[str | os.PathLike], exclude: Sequence[str] = ()) -> list[Path]:
    """Files named directly, plus image files inside folders (sorted); ``exclude`` holds glob patterns."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and p.suffix.lower() != ".zarr":
            found.extend(
                sorted(
                    c
                    for c in p.iterdir()
                    if c.suffix.lower() in IMAGE_SUFFIXES
                    and not c.name.startswith(".")
                    and (c.is_file() or c.is_dir() and c.suffix.lower() == ".zarr")
                )
            )
        elif p.exists():
            found.append(p)
        else:
            raise UserError(f"{p} does not exist")
    kept = [p for p in found if not any(p.match(pattern) for pattern in exclude)]
    if not kept:
        raise UserError(f"no images found in {', '.join(map(str, paths))}")
    return kept


MARKER_KEY = "napari_mdm"
"""Key of the tif/zarr metadata that marks what napari-mdm wrote ('labels' or 'uncertainty'),
so its reader opens a mask as labels even when another integer tif is a micrograph."""


def written_kind(path: str | os.PathLike) -> str | None:
    """The marker :func:`write_array` left in a tif or zarr ('labels', 'uncertainty'), else None."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".zarr":
            import zarr

            return zarr.open(str(path), mode="r").attrs.get(MARKER_KEY)
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            return next((meta.get(MARKER_KEY) for meta in tif.shaped_metadata or () if MARKER_KEY in meta), None)
    except Exception:  # noqa: BLE001 (unreadable or foreign: not ours)
        return None


def write_array(path: str | os.PathLike, data: np.ndarray, overwrite: bool = False, kind: str | None = None) -> Path:
    """Write an array atomically as tif, zarr or png (chosen by the suffix); ``kind`` is recorded
    in tif and zarr metadata (see :func:`written_kind`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise UserError(f"cannot write {path}: use one of {', '.join(LABEL_SUFFIXES)}")
    if suffix == ".png" and data.dtype.kind == "f":
        raise UserError(f"cannot write float data to {path}: use .tif or .zarr")
    if suffix == ".png" and not (data.ndim == 2 or data.ndim == 3 and data.shape[-1] in (3, 4)):
        raise UserError(
            f"cannot write an array of shape {data.shape} to {path}: png holds one 2-D image; use .tif or .zarr"
        )
    with atomic_output(path, overwrite=overwrite) as tmp:
        if suffix == ".zarr":
            import zarr

            chunks = tuple(min(512, s) for s in data.shape)
            arr = zarr.create_array(store=str(tmp), shape=data.shape, chunks=chunks, dtype=data.dtype)
            arr[...] = data
            if kind:
                arr.attrs[MARKER_KEY] = kind
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(str(tmp), data, compression="zlib", metadata={MARKER_KEY: kind} if kind else {})
        else:
            import imageio.v3 as iio

            iio.imwrite(tmp, data, extension=".png")
    return path


def write_labels(path: str | os.PathLike, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Write a label mask (or a stack of them) atomically in the smallest unsigned type that holds it."""
    labels = np.asarray(labels)
    dtype = label_dtype(int(labels.max()) if labels.size else 0)
    if Path(path).suffix.lower() == ".png" and dtype.itemsize > 2:
        raise UserError(f"cannot write label ids above 65535 to {path}: png holds 16 bits; use .tif or .zarr")
    return write_array(path, labels.astype(dtype), overwrite=overwrite, kind="labels")
