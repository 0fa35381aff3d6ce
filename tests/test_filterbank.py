"""The ilastik-like filter bank: shapes, known responses on synthetic images, errors, cancel."""

import numpy as np
import pytest

from napari_mdm.filterbank import FILTERS, filter_features, filter_names, num_filter_channels
from napari_mdm.jobs import Cancelled, UserError


def channel(features: np.ndarray, name: str, scales) -> np.ndarray:
    return features[filter_names(scales).index(name)].astype(np.float32)


def test_shape_dtype_and_names():
    image = np.random.default_rng(0).random((40, 50, 3), dtype=np.float32)
    feats = filter_features(image, scales=(1.0, 2.0))
    assert feats.shape == (num_filter_channels((1.0, 2.0)), 40, 50) == (2 * 3 * len(FILTERS), 40, 50)
    assert feats.dtype == np.float16 and np.isfinite(feats).all()
    assert len(filter_names((1.0, 2.0))) == len(feats) and len(set(filter_names((1.0, 2.0)))) == len(feats)
    assert filter_features(image).shape[0] == 144  # default scales 0.7 .. 10


def test_constant_image_has_only_smoothing():
    feats = filter_features(np.full((32, 32, 3), 0.25, np.float32), scales=(1.0, 3.5))
    names = filter_names((1.0, 3.5))
    for name, values in zip(names, feats.astype(np.float32), strict=False):
        expected = 0.25 if name.split("/")[1] == "gaussian" else 0.0
        np.testing.assert_allclose(values, expected, atol=2e-3, err_msg=name)


def test_ramp_gradient_is_scale_normalised_and_flat():
    x = np.linspace(0, 1, 64, dtype=np.float32)
    image = np.repeat(np.repeat(x[None, :, None], 64, 0), 3, 2)  # slope 1/63 per pixel along x
    feats = filter_features(image, scales=(2.0,))
    inner = (slice(16, 48), slice(16, 48))
    grad = channel(feats, "g/gradient_magnitude/2", (2.0,))[inner]
    np.testing.assert_allclose(grad, 2.0 / 63, rtol=0.02)
    assert np.abs(channel(feats, "g/laplacian/2", (2.0,))[inner]).max() < 1e-3
    # a straight ramp has one gradient direction: structure tensor rank one
    assert np.abs(channel(feats, "g/structure_eig_min/2", (2.0,))[inner]).max() < 1e-3
    np.testing.assert_allclose(channel(feats, "g/structure_eig_max/2", (2.0,))[inner], 2.0 / 63, rtol=0.03)


def test_bright_blob_is_a_laplacian_minimum():
    yy, xx = np.mgrid[:41, :41]
    blob = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 3.0**2)).astype(np.float32)
    feats = filter_features(np.repeat(blob[..., None], 3, 2), scales=(3.5,))
    log = channel(feats, "r/laplacian/3.5", (3.5,))
    assert np.unravel_index(np.argmin(log), log.shape) == (20, 20) and log[20, 20] < 0
    # both Hessian eigenvalues negative at the top of a bright blob, equal by symmetry
    hi, lo = (
        channel(feats, "r/hessian_eig_max/3.5", (3.5,))[20, 20],
        channel(feats, "r/hessian_eig_min/3.5", (3.5,))[20, 20],
    )
    assert lo <= hi < 0 and hi == pytest.approx(lo, rel=0.02)
    assert channel(feats, "r/dog/3.5", (3.5,))[20, 20] < 0  # wider smoothing lowers a peak


def test_colour_channels_are_separate():
    image = np.zeros((24, 24, 3), np.float32)
    image[..., 2] = 1.0
    feats = filter_features(image, scales=(1.0,))
    assert channel(feats, "b/gaussian/1", (1.0,)).min() == pytest.approx(1.0, abs=1e-3)
    assert channel(feats, "r/gaussian/1", (1.0,)).max() == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize(
    "image, scales",
    [
        (np.zeros((8, 8)), (1.0,)),
        (np.zeros((8, 8, 4)), (1.0,)),
        (np.zeros((8, 8, 3)), ()),
        (np.zeros((8, 8, 3)), (1.0, -2.0)),
    ],
)
def test_bad_input_is_a_user_error(image, scales):
    with pytest.raises(UserError):
        filter_features(image, scales)


def test_progress_and_cancel():
    image = np.zeros((16, 16, 3), np.float32)
    calls = []
    filter_features(image, (1.0, 2.0, 3.0), progress=lambda d, t, info: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(Cancelled):
        filter_features(image, (1.0, 2.0), should_stop=lambda: True)


@pytest.mark.parametrize("shape", [(37, 53), (5, 9), (1, 30)])
def test_responses_match_scipy_gaussian_filters_including_images_smaller_than_the_kernel(shape):
    """The shifted-sum filters equal scipy.ndimage's (mirrored borders, 4-sigma radius), also where
    the kernel is longer than the image and the border is mirrored more than once."""
    from scipy import ndimage as ndi

    image = np.random.default_rng(1).random((*shape, 3), dtype=np.float32)
    scales = (0.7, 3.5, 10.0)
    feats = filter_features(image, scales=scales)
    for sigma in scales:
        for c, colour in enumerate("rgb"):
            x = image[..., c].astype(np.float64)
            smooth = ndi.gaussian_filter(x, sigma, mode="reflect")
            dy = sigma * ndi.gaussian_filter(x, sigma, order=(1, 0), mode="reflect")
            dx = sigma * ndi.gaussian_filter(x, sigma, order=(0, 1), mode="reflect")
            lap = sigma**2 * (
                ndi.gaussian_filter(x, sigma, order=(2, 0), mode="reflect")
                + ndi.gaussian_filter(x, sigma, order=(0, 2), mode="reflect")
            )
            for name, expected in (("gaussian", smooth), ("gradient_magnitude", np.hypot(dx, dy)), ("laplacian", lap)):
                got = channel(feats, f"{colour}/{name}/{sigma:g}", scales)
                np.testing.assert_allclose(got, expected, atol=2e-3, rtol=2e-3, err_msg=f"{colour}/{name}/{sigma}")
