"""Fuzzing (issue 5): random shapes, pixel types and value ranges through
normalize -> features -> head -> predict end in a valid mask or one clean UserError, never a crash.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_mdm.features import extract_features
from napari_mdm.io import normalize_image
from napari_mdm.jobs import UserError

DTYPES = ["uint8", "uint16", "int16", "int32", "float16", "float32", "float64", "bool"]
LAYOUTS = ["grey", "grey1", "grey+alpha", "rgb", "rgba", "stack", "5-d"]


@st.composite
def images(draw):
    """An array of a random layout, pixel type and value range, some pixels NaN or inf."""
    h, w = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = {"grey": (h, w), "grey1": (h, w, 1), "grey+alpha": (h, w, 2), "rgb": (h, w, 3), "rgba": (h, w, 4),
             "stack": (draw(st.integers(5, 7)), h, w), "5-d": (1, 1, h, w, 3)}[layout]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == bool:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo = draw(st.integers(int(info.min), int(info.max)))
        hi = draw(st.integers(lo, int(info.max)))
        return rng.integers(lo, hi, shape, dtype=dtype, endpoint=True)
    scale = draw(st.sampled_from([1.0, 1e-6, 255.0, 1e4, 1e30]))
    offset = draw(st.sampled_from([0.0, -0.5, 1000.0]))
    arr = (rng.random(shape) * scale + offset).astype(dtype)
    broken = draw(st.sampled_from([0.0, 0.0, 0.05, 1.0]))  # fraction of NaN/inf pixels
    if broken:
        hits = rng.random(shape) < broken
        arr[hits] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=dtype), size=int(hits.sum()))
    return arr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=images())
def test_any_array_gives_a_valid_mask_or_a_clean_user_error(kit, arr):
    try:
        image = normalize_image(arr)
        feats = extract_features(kit.backbone, image, kit.features)
        pred = kit.head.predict(feats)
    except UserError as err:
        assert str(err) and "\n" not in str(err)
        assert arr.ndim not in (2, 3) or arr.ndim == 3 and arr.shape[-1] > 4 or not np.isfinite(arr).any(), str(err)
        return
    assert arr.ndim in (2, 3)
    assert pred.labels.shape == arr.shape[:2]
    assert set(np.unique(pred.labels)) <= set(kit.head.class_values)
    assert np.isfinite(pred.probabilities).all() and np.isfinite(pred.uncertainty).all()
    np.testing.assert_allclose(pred.probabilities.sum(0), 1, atol=1e-4)
