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

import numpy as np
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


def _eigenvalues(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Larger and smaller eigenvalues of the symmetric 2x2 matrices [[a, b], [b, c]]."""
    mean = (a + c) / 2
    radius = np.sqrt(((a - c) / 2) ** 2 + b**2)
    return mean + radius, mean - radius


def _channel_filters(x: np.ndarray, sigma: float) -> list[np.ndarray]:
    """The 8 filter responses of one (H, W) float32 channel at one scale."""

    def g(order: tuple[int, int], s: float = sigma, src: np.ndarray = x) -> np.ndarray:
        return ndi.gaussian_filter(src, s, order=order, mode="reflect")

    smooth = g((0, 0))
    dy, dx = sigma * g((1, 0)), sigma * g((0, 1))
    dyy, dxx, dxy = (sigma**2 * g(order) for order in ((2, 0), (0, 2), (1, 1)))
    outer = sigma / 2
    syy, sxx, sxy = g((0, 0), outer, dy * dy), g((0, 0), outer, dx * dx), g((0, 0), outer, dx * dy)
    structure = [np.sqrt(np.maximum(e, 0)) for e in _eigenvalues(sxx, sxy, syy)]
    hessian = _eigenvalues(dxx, dxy, dyy)
    return [smooth, np.hypot(dx, dy), dxx + dyy, smooth - g((0, 0), 0.66 * sigma), *structure, *hessian]


def filter_features(
    image: np.ndarray,
    scales: Sequence[float] = DEFAULT_SCALES,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(C, H, W) float16 filter responses of an (H, W, 3) image in [0, 1]; see the module docstring.
    ``out``: a (C, H, W) float16 array to write them into (a feature map's last channels), so the
    image's responses are never held twice."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise UserError(f"filter features need an (H, W, 3) RGB image, got shape {image.shape}")
    if not scales or any(s <= 0 for s in scales):
        raise UserError(f"filter scales must be positive, got {tuple(scales)}")
    h, w = image.shape[:2]
    if out is None:
        out = np.empty((num_filter_channels(scales), h, w), dtype=np.float16)
    elif out.shape != (num_filter_channels(scales), h, w) or out.dtype != np.float16:
        raise ValueError(f"filter responses need a {(num_filter_channels(scales), h, w)} float16 array")
    channels = [np.ascontiguousarray(image[..., c], dtype=np.float32) for c in range(3)]
    k = 0
    for i, sigma in enumerate(scales):
        check_stop(should_stop)
        for x in channels:
            for response in _channel_filters(x, float(sigma)):
                out[k] = response
                k += 1
        report(progress, i + 1, len(scales), f"sigma={sigma:g}")
    return out
