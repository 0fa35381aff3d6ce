"""An ilastik-like multiscale filter bank: the classic pixel-classifier features.

At each scale sigma and on each colour channel (R, G, B: ilastik's choice for RGB images;
a grey channel would add little, since the linear filters of grey are sums of the channels'):

- Gaussian smoothing G(sigma);
- gradient magnitude of Gaussian derivatives;
- Laplacian of Gaussian;
- difference of Gaussians G(sigma) - G(0.66 sigma);
- the two eigenvalues of the structure tensor (inner scale sigma, outer scale sigma / 2),
  as square roots (gradient units);
- the two eigenvalues of the Hessian of Gaussian.

Derivatives are scale-normalised (multiplied by sigma per order, Lindeberg's gamma = 1) and the
structure tensor's eigenvalues are square-rooted, so every response is of order 0.001..1 and
survives float16; ilastik stores raw float32 values instead, which only rescales the features
(a random forest is unaffected; the MLP head standardises its inputs).

That is 8 features per channel and scale: 3 x 8 x 6 = 144 channels with the default scales.
Borders are reflected. Used as a baseline (with a random forest) and as extra head inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage as ndi

from .jobs import ProgressFn, StopFn, UserError, check_stop, report

DEFAULT_SCALES = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
FILTERS = (
    "gaussian",
    "gradient_magnitude",
    "laplacian",
    "dog",
    "structure_eig_max",
    "structure_eig_min",
    "hessian_eig_max",
    "hessian_eig_min",
)
CHANNELS = ("r", "g", "b")


def num_filter_channels(scales: Sequence[float] = DEFAULT_SCALES) -> int:
    return len(CHANNELS) * len(FILTERS) * len(scales)


def filter_names(scales: Sequence[float] = DEFAULT_SCALES) -> list[str]:
    """Name of each output channel, in order: ``channel/filter/sigma``."""
    return [f"{c}/{f}/{s:g}" for s in scales for c in CHANNELS for f in FILTERS]


def _eigenvalues(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Larger and smaller eigenvalues of the symmetric 2x2 matrices [[a, b], [b, c]]."""
    mean = (a + c) / 2
    radius = torch.sqrt(((a - c) / 2) ** 2 + b**2)
    return mean + radius, mean - radius


@lru_cache(maxsize=64)
def _kernel(sigma: float, order: int) -> tuple[float, ...]:
    """scipy's Gaussian (derivative) weights for ``correlate1d``, radius 4 sigma: the response of
    ``gaussian_filter1d`` to a unit impulse, reversed."""
    radius = int(4.0 * sigma + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1
    return tuple(float(v) for v in ndi.gaussian_filter1d(impulse, sigma, order=order, mode="constant")[::-1])


BANDED_TAPS, BAND_BLOCK = 81, 32
"""Kernels of BANDED_TAPS taps or more (sigma 10) correlate as a product with a banded matrix,
BAND_BLOCK outputs at a time: a matrix product runs at the processor's arithmetic speed, where each
of 81 shifted sums is a pass over memory. The whole bank: 6-9 % faster on one thread (0.36 -> 0.34 s
at 512², 1.38 -> 1.25 s at 1024²), the same on two; from 41 taps on, one thread gains 11-15 % but two
lose up to 15 % at 512²."""


@lru_cache(maxsize=64)
def _band_matrix(weights: tuple[float, ...]) -> torch.Tensor:
    """(BAND_BLOCK + 2r, BAND_BLOCK): column i holds ``weights`` from row i, so a window of
    BAND_BLOCK + 2r inputs times it gives BAND_BLOCK correlated outputs."""
    column = torch.tensor(weights)
    band = torch.zeros(BAND_BLOCK + len(column) - 1, BAND_BLOCK)
    for i in range(BAND_BLOCK):
        band[i : i + len(column), i] = column
    return band


def _correlate(x: torch.Tensor, weights: tuple[float, ...], axis: int) -> torch.Tensor:
    """(B, H, W) float32 correlated along ``axis`` with ``weights``, borders mirrored as scipy's
    'reflect' mode does: a sum of shifted copies (3-10x faster than ``scipy.ndimage`` on one core),
    or for long kernels a banded matrix product."""
    r, n = len(weights) // 2, x.shape[axis]
    banded = len(weights) >= BANDED_TAPS
    pad = [(0, 0)] * 3
    pad[axis] = (r, r + (-n % BAND_BLOCK if banded else 0))  # whole blocks; the surplus is cut off
    padded = torch.from_numpy(np.pad(x.numpy(), pad, mode="symmetric"))
    if banded:
        return _banded_correlate(padded, _band_matrix(weights), axis, n)
    out = padded.narrow(axis, 0, n) * weights[0]
    for i in range(1, len(weights)):
        out.add_(padded.narrow(axis, i, n), alpha=weights[i])
    return out


def _banded_correlate(padded: torch.Tensor, band: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """The first ``n`` outputs along ``axis`` (1 or 2) of the padded input's overlapping windows
    (strided views, no copy) times the band matrix."""
    b, h, w = padded.shape
    sb, sh, sw = padded.stride()
    window, blocks = band.shape[0], (padded.shape[axis] - band.shape[0]) // BAND_BLOCK + 1
    if axis == 2:
        windows = padded.as_strided((b, h, blocks, window), (sb, sh, BAND_BLOCK * sw, sw))
        return torch.matmul(windows, band).reshape(b, h, blocks * BAND_BLOCK)[:, :, :n]
    windows = padded.as_strided((b, blocks, window, w), (sb, BAND_BLOCK * sh, sh, sw))
    return torch.matmul(band.T, windows).reshape(b, blocks * BAND_BLOCK, w)[:, :n]


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return _correlate(_correlate(x, _kernel(sigma, 0), 1), _kernel(sigma, 0), 2)


def _scale_filters(x: torch.Tensor, sigma: float) -> list[torch.Tensor]:
    """The 8 filter responses, each (3, H, W), of the (3, H, W) float32 channels at one scale.
    The y-passes of the derivatives are shared: 17 one-dimensional passes instead of 20."""
    along_y = [_correlate(x, _kernel(sigma, order), 1) for order in (0, 1, 2)]
    smooth, dy, dx, dyy, dxx, dxy = (
        _correlate(along_y[oy], _kernel(sigma, ox), 2) * sigma ** (oy + ox)
        for oy, ox in ((0, 0), (1, 0), (0, 1), (2, 0), (0, 2), (1, 1))
    )
    del along_y
    outer = sigma / 2
    syy, sxx, sxy = _gaussian(dy * dy, outer), _gaussian(dx * dx, outer), _gaussian(dx * dy, outer)
    structure = [torch.sqrt(e.clamp_min_(0)) for e in _eigenvalues(sxx, sxy, syy)]
    hessian = _eigenvalues(dxx, dxy, dyy)
    return [smooth, torch.hypot(dx, dy), dxx + dyy, smooth - _gaussian(x, 0.66 * sigma), *structure, *hessian]


def filter_features(
    image: np.ndarray,
    scales: Sequence[float] = DEFAULT_SCALES,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    out=None,
) -> np.ndarray:
    """(C, H, W) float16 filter responses of an (H, W, 3) image in [0, 1]; see the module docstring.
    ``out``: a (C, H, W) float16 array to write them into (a feature map's last channels), so the
    image's responses are never held twice, or any (C, H, W) target that ``out[k] = (H, W) values``
    fills channel by channel (compact features' ``channels``); returned filled."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise UserError(f"filter features need an (H, W, 3) RGB image, got shape {image.shape}")
    if not scales or any(s <= 0 for s in scales):
        raise UserError(f"filter scales must be positive, got {tuple(scales)}")
    h, w = image.shape[:2]
    if out is None:
        out = np.empty((num_filter_channels(scales), h, w), dtype=np.float16)
    elif tuple(out.shape) != (num_filter_channels(scales), h, w) or getattr(out, "dtype", np.float16) != np.float16:
        raise ValueError(f"filter responses need a {(num_filter_channels(scales), h, w)} float16 target")
    channels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    per_scale = len(CHANNELS) * len(FILTERS)
    for i, sigma in enumerate(scales):
        check_stop(should_stop)
        for c in range(len(CHANNELS)):  # one colour at a time: a third of the temporaries
            for f, response in enumerate(_scale_filters(channels[c : c + 1], float(sigma))):
                out[i * per_scale + c * len(FILTERS) + f] = response[0].numpy()  # r/gaussian, r/gradient, ...
        report(progress, i + 1, len(scales), f"sigma={sigma:g}")
    return out
