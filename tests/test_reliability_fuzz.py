"""Fuzzing (issue 5): random shapes, pixel types and value ranges through
normalize -> features -> head -> predict end in a valid mask or one clean UserError, never a crash.
Issue 13: random checkpoint bytes and settings give a CheckpointError (never another exception,
never a large allocation); random sets of image names, output folders, formats and flags either
fail before anything is written or write every output without touching an input.
"""

from __future__ import annotations

import json
import resource
import struct
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reliability_support import leftovers, snapshot

from napari_mdm import inference
from napari_mdm.checkpoint import load_backbone, read_tensors
from napari_mdm.features import extract_features
from napari_mdm.head import Head, Prediction
from napari_mdm.inference import segment_files
from napari_mdm.io import normalize_image
from napari_mdm.jobs import UserError
from napari_mdm.naming import segmentation_outputs, stem

DTYPES = ["uint8", "uint16", "int16", "int32", "float16", "float32", "float64", "bool"]
LAYOUTS = ["grey", "grey1", "grey+alpha", "rgb", "rgba", "stack", "5-d"]


@st.composite
def images(draw):
    """An array of a random layout, pixel type and value range, some pixels NaN or inf."""
    h, w = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = {
        "grey": (h, w),
        "grey1": (h, w, 1),
        "grey+alpha": (h, w, 2),
        "rgb": (h, w, 3),
        "rgba": (h, w, 4),
        "stack": (draw(st.integers(5, 7)), h, w),
        "5-d": (1, 1, h, w, 3),
    }[layout]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype.kind == "b":
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


# --- crafted checkpoints (issue 13) -----------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
DTYPE_NAMES = ["F16", "F32", "F64", "I64", "U8", "BOOL", "BF16", "X9"]


def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@st.composite
def checkpoint_files(draw, kit):
    """Bytes of a checkpoint: random bytes, a random header length, a random tensor table, or one of
    the kit's real backbone/head files with one setting replaced by any JSON value."""
    kind = draw(st.sampled_from(["bytes", "length", "table", "backbone setting", "head setting"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "length":
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + draw(st.binary(max_size=32))
    if kind == "table":
        entry = st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(DTYPE_NAMES),
                "shape": st.lists(st.integers(0, 2**40), max_size=4),
                "data_offsets": st.lists(st.integers(0, 2**40), min_size=2, max_size=2),
            }
        )
        table = draw(st.dictionaries(st.text(min_size=1, max_size=6), entry, max_size=3))
        return _safetensors(table, draw(st.binary(max_size=64)))
    path = kit.backbone_path if kind == "backbone setting" else kit.head_path
    tensors, meta = read_tensors(path)
    section = draw(st.sampled_from(["unet", "corruption"] if kind == "backbone setting" else ["config", "context"]))
    settings_ = dict(meta.get(section) or {})
    key = draw(st.sampled_from(sorted(settings_) + ["new"]))
    settings_[key] = draw(JSON_VALUES | st.integers(0, 4096) | st.lists(st.integers(0, 64), max_size=6))
    meta = {
        **meta,
        section: settings_,
        **draw(st.dictionaries(st.sampled_from(["class_values", "format"]), JSON_VALUES, max_size=1)),
    }
    flat = {k: v.contiguous() for k, v in tensors.items()}
    from safetensors.torch import save

    return save(flat, metadata={"meta": json.dumps(meta)})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_checkpoint_bytes_load_or_give_a_checkpoint_error_without_allocating(kit, tmp_path, data):
    raw = data.draw(checkpoint_files(kit))
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(raw)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for load in (load_backbone, Head.load):
        try:
            load(path)
        except UserError as err:  # CheckpointError is a UserError
            assert str(err) and "\n" not in str(err)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 512, grown_mib


# --- output-path sets (issue 13) ----------------------------------------------------------------------

NAMES = ["a", "a.b", "x", "x_uncertainty", "scan.01", "scan", "img.tif"]


def _fake_segment(backbone, head, image, draws=None, progress=None, should_stop=None):
    """The planning is under test here, not the network: a constant prediction of the right shape."""
    h, w = image.shape
    k = len(head.class_values)
    return Prediction(
        np.full((h, w), head.class_values[0], np.uint8),
        np.full((k, h, w), 1 / k, np.float32),
        np.zeros((h, w), np.float32),
        list(head.class_values),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(
        st.tuples(st.sampled_from(NAMES), st.sampled_from([".png", ".tif"])), min_size=1, max_size=4, unique=True
    ),
    where=st.sampled_from(["beside"] * 4 + ["images folder", "inside images", "under a file"]),
    fmt=st.sampled_from(["tif", "zarr", "png"]),
    uncertainty=st.booleans(),
    overwrite=st.booleans(),
    existing=st.booleans(),
)
def test_any_output_plan_writes_everything_or_nothing_and_never_touches_an_input(
    kit, names, where, fmt, uncertainty, overwrite, existing
):
    with tempfile.TemporaryDirectory() as scratch, pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference, "segment", _fake_segment)
        root = Path(scratch)
        images = root / "images"
        images.mkdir()
        paths = [images / f"{name}{ext}" for name, ext in names]
        for i, p in enumerate(paths):
            iio.imwrite(p, np.full((6, 5, 3), 40 * i, np.uint8))
        (root / "blocker").write_text("a file")
        out = {
            "beside": root / "out",
            "images folder": images,
            "inside images": images / "out",
            "under a file": root / "blocker" / "out",
        }[where]
        first = segmentation_outputs(stem(paths[0]), out, fmt, uncertainty)[0]
        if existing and where not in ("under a file",) and first not in paths:
            first.parent.mkdir(parents=True, exist_ok=True)
            first.write_bytes(b"earlier") if fmt != "zarr" else first.mkdir()
        inputs, before = {p: p.read_bytes() for p in paths}, snapshot(root)
        try:
            written = segment_files(kit.backbone, kit.head, paths, out, fmt, uncertainty, overwrite)
        except UserError as err:
            assert str(err) and "\n" not in str(err)
            assert snapshot(root) == before  # refused before anything was written
            return
        assert {p: p.read_bytes() for p in paths} == inputs
        assert len(written) == len(paths)
        for p in paths:
            mask, unc = segmentation_outputs(stem(p), out, fmt, uncertainty)
            assert mask.exists() and (unc is None or unc.exists())
        assert leftovers(root) == []
