"""Bad-input matrix (issue 5): every supported kind of image works, everything else is one clear
:class:`UserError` (CLI: one line on stderr, exit 2, no traceback) and changes nothing on disk.

tests/INPUTS.md lists the same matrix with the messages.
"""

from __future__ import annotations

import pickle
import tracemalloc

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import zarr
from test_reliability_support import (
    CLASS_VALUES,
    assert_clean_failure,
    leftovers,
    run_cli,
    snapshot,
    two_region_image,
)

from napari_mdm import inference
from napari_mdm.backbone import Backbone, build_backbone
from napari_mdm.checkpoint import CheckpointError, load_backbone, read_tensors, save_backbone, write_tensors
from napari_mdm.corruption import CorruptionConfig
from napari_mdm.features import tile_alignment
from napari_mdm.head import Head, HeadConfig, fit_head
from napari_mdm.inference import segment, segment_files, segment_stack
from napari_mdm.io import collect_images, normalize_image, open_image, read_image, read_labels, split_stack, write_array
from napari_mdm.jobs import UserError
from napari_mdm.pretrain import PretrainConfig, pretrain
from napari_mdm.tiling import SLACK

RNG = np.random.default_rng(0)
H, W = 20, 30

SUPPORTED = {
    "grey uint8": RNG.integers(0, 256, (H, W), dtype=np.uint8),
    "grey (H, W, 1)": RNG.integers(0, 256, (H, W, 1), dtype=np.uint8),
    "grey + alpha": RNG.integers(0, 256, (H, W, 2), dtype=np.uint8),
    "RGB uint8": RNG.integers(0, 256, (H, W, 3), dtype=np.uint8),
    "RGBA uint8": RNG.integers(0, 256, (H, W, 4), dtype=np.uint8),
    "channel-first RGB": RNG.integers(0, 256, (3, H, W), dtype=np.uint8),
    "16-bit": RNG.integers(0, 65536, (H, W), dtype=np.uint16),
    "12-bit in uint16": RNG.integers(0, 4096, (H, W), dtype=np.uint16),
    "signed int": RNG.integers(-500, 500, (H, W), dtype=np.int16),
    "bool": RNG.random((H, W)) < 0.5,
    "float32 in [0, 1]": RNG.random((H, W, 3), dtype=np.float32),
    "float16": RNG.random((H, W)).astype(np.float16),
    "float64 any range": RNG.normal(1000, 300, (H, W)),
    "NaN pixels": np.where(RNG.random((H, W)) < 0.1, np.nan, RNG.random((H, W))),
    "inf pixels": np.where(RNG.random((H, W)) < 0.1, np.inf, RNG.random((H, W))) * RNG.choice([-1, 1], (H, W)),
    "constant 16-bit": np.full((H, W), 7, dtype=np.uint16),
    "constant huge float": np.full((H, W), 1e30, dtype=np.float32),
    "one pixel": np.array([[128]], dtype=np.uint8),
}

UNSUPPORTED = {
    "stack (N, H, W)": (RNG.random((5, H, W)), "stack of 5 images"),
    "4-D": (RNG.random((2, 5, H, W)), "4 dimensions"),
    "1-D": (np.zeros(30), "1 dimensions"),
    "empty": (np.zeros((0, W)), "empty"),
    "all NaN": (np.full((H, W), np.nan), "no finite pixel values"),
    "complex": (np.zeros((H, W), complex), "unsupported pixel type"),
    "strings": (np.array([["a", "b"]]), "unsupported pixel type"),
}


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_images_normalise_to_rgb_in_unit_range(name):
    arr = SUPPORTED[name]
    with np.errstate(all="raise"):  # no silent NaN/overflow arithmetic on the way either
        out = normalize_image(arr)
    plane = arr.shape[1:] if name == "channel-first RGB" else arr.shape[:2]
    assert out.shape == (*plane, 3)
    assert out.dtype == np.float32 and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_normalisation_rules_hold_value_by_value():
    grey = SUPPORTED["grey uint8"]
    assert np.array_equal(normalize_image(grey), np.repeat(grey[..., None] / np.float32(255), 3, -1).astype(np.float32))
    rgba = SUPPORTED["RGBA uint8"]
    assert np.array_equal(normalize_image(rgba), normalize_image(rgba[..., :3]))  # alpha dropped, not blended
    sixteen = SUPPORTED["16-bit"]
    out = normalize_image(sixteen)[..., 0]
    assert out.max() == 1 and out.min() == 0  # stretched between percentiles, not divided by 65535
    assert np.corrcoef(out.ravel(), sixteen.ravel())[0, 1] > 0.99
    nan = SUPPORTED["NaN pixels"]
    assert (normalize_image(nan)[np.isnan(nan)] == 0).all()
    floats = SUPPORTED["float32 in [0, 1]"]
    assert np.array_equal(normalize_image(floats), floats)  # already in [0, 1]: kept as is


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_images_are_one_clear_user_error(name):
    arr, fragment = UNSUPPORTED[name]
    with pytest.raises(UserError, match=fragment) as err:
        normalize_image(arr)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["grey uint8", "RGBA uint8", "16-bit", "float64 any range", "NaN pixels", "one pixel"])
def test_supported_images_segment_to_a_mask_of_their_shape(kit, name):
    arr = SUPPORTED[name]
    pred = segment(kit.backbone, kit.head, arr)
    assert pred.labels.shape == arr.shape[:2]
    assert set(np.unique(pred.labels)) <= set(CLASS_VALUES)


def test_a_stack_is_segmented_plane_by_plane(kit):
    stack = np.stack([two_region_image(24, 40, seed=s) for s in range(5)])  # (5, 24, 40, 3)
    assert len(split_stack(stack)) == 5 and len(split_stack(stack[..., 0])) == 5
    preds = segment_stack(kit.backbone, kit.head, stack[..., 0])
    assert [p.labels.shape for p in preds] == [(24, 40)] * 5


def test_three_or_four_grey_planes_read_as_channel_first_colour():
    """The documented ambiguity: (3, H, W) and (4, H, W) are RGB(A) channel-first, not stacks."""
    planes = RNG.random((3, H, W))
    assert len(split_stack(planes)) == 1
    assert np.array_equal(normalize_image(planes), normalize_image(np.moveaxis(planes, 0, -1)))


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (7, 130), (65, 9)])
def test_images_smaller_than_a_tile_or_thinner_than_the_network_divisor_segment(kit, shape):
    pred = segment(kit.backbone, kit.head, two_region_image(*shape))
    assert pred.labels.shape == shape and pred.probabilities.shape == (2, *shape)
    assert np.isfinite(pred.probabilities).all() and np.isfinite(pred.uncertainty).all()


def test_images_smaller_than_the_pretraining_crop_are_padded_not_refused():
    torch.manual_seed(0)
    result = pretrain(
        [two_region_image(10, 20)], None, "tiny", config=PretrainConfig(steps=1, batch_size=2, crop=32), device="cpu"
    )
    assert result.step == 1 and np.isfinite(result.losses).all()


@pytest.mark.parametrize(
    "bad", [{"batch_size": 0}, {"crop": 0}, {"crop": -8}, {"crop": 12}, {"lr": -1.0}, {"checkpoint_every": 0}], ids=str
)
def test_unusable_pretraining_settings_are_a_clear_error(bad):
    config = PretrainConfig(**{"steps": 1, "batch_size": 2, "crop": 32, **bad})
    with pytest.raises(UserError):
        pretrain([two_region_image(32, 32)], None, "tiny", config=config, device="cpu")


@pytest.mark.parametrize("bad", [{"ensemble": 0}, {"batch_size": -1}, {"lr": 0.0}], ids=str)
def test_unusable_head_settings_are_a_clear_error(kit, bad):
    feats = np.zeros((8, 48, 48), np.float16)
    with pytest.raises(UserError):
        fit_head([feats], [kit.labels], HeadConfig(**bad))


@pytest.mark.parametrize("draws", [0, -1])
def test_unusable_draw_counts_are_a_clear_error(kit, draws):
    with pytest.raises(UserError, match="draws must be at least 1"):
        segment(kit.backbone, kit.head, kit.image, draws=draws)


def test_arrays_png_cannot_hold_are_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="use .tif or .zarr"):
        write_array(tmp_path / "stack.png", np.zeros((2, 4, 4, 3), np.uint8))
    assert snapshot(tmp_path) == {}


def test_skipping_label_ids_are_kept_in_the_output(kit):
    assert kit.head.class_values == CLASS_VALUES
    labels = segment(kit.backbone, kit.head, kit.image).labels
    assert set(np.unique(labels)) == set(CLASS_VALUES)  # 1 and 5, not 0/1 or 1/2
    trained = kit.labels > 0
    assert (labels[trained] == kit.labels[trained]).mean() > 0.9


@pytest.mark.parametrize(
    "labels, fragment",
    [
        (np.zeros((48, 48), np.int64), "no labels painted"),
        (np.where(np.arange(48)[None, :] < 10, 3, 0).repeat(48, 0), "only one class"),
        (np.ones((40, 48), np.int64), "labels 1 have shape (40, 48) but their image is (48, 48)"),
    ],
    ids=["no labels", "single class", "wrong shape"],
)
def test_unusable_labels_are_a_clear_error(kit, labels, fragment):
    feats = np.zeros((8, 48, 48), np.float16)
    with pytest.raises(UserError) as err:
        fit_head([feats], [labels])
    assert fragment in str(err.value)


def test_dense_masks_with_a_single_class_are_refused():
    with pytest.raises(UserError, match="only one class"):
        fit_head([np.zeros((4, 6, 6), np.float16)], [np.zeros((6, 6), np.int64)], ignore=None)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (np.full((8, 8), 1.5), "labels must be integers"),
        (np.full((8, 8), -1, np.int16), "labels must be >= 0"),
        (np.stack([np.zeros((8, 8)), np.ones((8, 8)), np.zeros((8, 8))], -1).astype(np.uint8), "labels must be a 2-D"),
        (np.zeros((2, 8, 8), np.uint8), "labels must be a 2-D"),
    ],
    ids=["fractional", "negative", "colour", "stack"],
)
def test_unusable_label_files_are_a_clear_error(tmp_path, data, fragment):
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, data)
    with pytest.raises(UserError, match=fragment):
        read_labels(path)


def _make_bad_files(folder):
    """A folder mixing one good image with non-images and corrupt images."""
    folder.mkdir()
    iio.imwrite(folder / "good.png", (two_region_image(16, 16) * 255).astype(np.uint8))
    (folder / "notes.txt").write_text("not an image")
    (folder / "results.csv").write_text("a,b\n1,2\n")
    corrupt = {
        "garbage.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
        "empty.tif": b"",
        "text.jpg": b"this is not a jpeg",
        "truncated.tif": None,
    }
    tifffile.imwrite(folder / "whole.tif", np.zeros((32, 32), np.uint16))
    corrupt["truncated.tif"] = (folder / "whole.tif").read_bytes()[:-100]
    (folder / "whole.tif").unlink()
    for name, data in corrupt.items():
        (folder / name).write_bytes(data)
    (folder / "nothing.zarr").mkdir()
    return folder, [*corrupt, "nothing.zarr"]


def test_a_folder_with_non_image_files_skips_them(tmp_path):
    folder, _ = _make_bad_files(tmp_path / "mixed")
    found = {p.name for p in collect_images([folder])}
    assert "notes.txt" not in found and "results.csv" not in found and "good.png" in found
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="no images found"):
        collect_images([tmp_path / "only_text"])
    with pytest.raises(UserError, match="does not exist"):
        collect_images([tmp_path / "missing"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # imageio probing its legacy plugins
def test_corrupt_image_files_are_one_line_user_errors(tmp_path):
    folder, bad = _make_bad_files(tmp_path / "mixed")
    for name in bad:
        for reader in (read_image, open_image, read_labels):
            with pytest.raises(UserError) as err:
                reader(folder / name)
            assert name in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
    with pytest.raises(UserError, match="not a supported image"):
        read_image(folder / "notes.txt")


def test_segment_files_refuses_a_corrupt_file_before_writing_anything(kit, tmp_path):
    folder, _ = _make_bad_files(tmp_path / "mixed")
    out = tmp_path / "out"
    out.mkdir()
    paths = [folder / "good.png", folder / "garbage.png"]
    with pytest.raises(UserError, match="garbage.png"):
        segment_files(kit.backbone, kit.head, paths, out)
    assert snapshot(out) == {}


def test_a_corrupt_chunk_of_a_lazily_read_zarr_is_a_clear_error_and_writes_nothing(kit, tmp_path):
    src = tmp_path / "broken.zarr"
    zarr.create_array(store=str(src), shape=(64, 64, 3), chunks=(32, 32, 3), dtype="uint8")[...] = 100
    chunk = next(p for p in sorted(src.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read .*broken.zarr at rows"):
        segment_files(kit.backbone, kit.head, [src], tmp_path / "out")
    assert not (tmp_path / "out" / "broken.tif").exists() and leftovers(tmp_path) == []


# --- large images: tile by tile, memory bounded by tiles ------------------------------------------


class _RecordingArray:
    """Wraps the on-disk image and records the size of every region read from it."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype, self.ndim = arr, arr.shape, arr.dtype, arr.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        region = np.asarray(self.arr[key])
        self.reads.append(region.size)
        return region


def _zarr_image(path, h, w):
    image = (two_region_image(h, w) * 255).astype(np.uint8)
    zarr.create_array(store=str(path), shape=image.shape, chunks=(64, 64, 3), dtype="uint8")[...] = image
    return path


def test_a_large_zarr_image_segments_tile_by_tile_with_bounded_memory(kit, tmp_path, monkeypatch):
    """The large path (maps in a scratch zarr, output written chunk by chunk) gives the same mask
    as the in-memory tiled path, reads the input one tile at a time, and its peak memory does not
    grow with the image: a 12x larger image peaks at about the same traced memory."""
    small, large = _zarr_image(tmp_path / "small.zarr", 128, 128), _zarr_image(tmp_path / "large.zarr", 384, 512)
    monkeypatch.setattr(inference, "WHOLE_IMAGE_FEATURES_BYTES", 0)
    expected = segment(kit.backbone, kit.head, open_image(small))  # the same tiles, blended in memory

    reads, open_planes = [], inference.open_planes

    def recording_open_planes(path):
        [source] = open_planes(path)
        source.data = _RecordingArray(source.data)
        reads.append(source.data.reads)
        return [source]

    monkeypatch.setattr(inference, "IN_MEMORY_MAPS_BYTES", 0)
    monkeypatch.setattr(inference, "ZARR_CHUNK", 64)
    monkeypatch.setattr(inference, "open_planes", recording_open_planes)
    peaks = []
    for src in (small, large):
        tracemalloc.start()
        try:
            segment_files(kit.backbone, kit.head, [src], tmp_path / "out", fmt="zarr", uncertainty=True)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()

    labels = np.asarray(zarr.open_array(str(tmp_path / "out" / "small.zarr"), mode="r"))
    assert np.array_equal(labels, expected.labels)
    uncertainty = np.asarray(zarr.open_array(str(tmp_path / "out" / "small_uncertainty.zarr"), mode="r"))
    np.testing.assert_allclose(uncertainty, expected.uncertainty, atol=1e-6)
    large_labels = np.asarray(zarr.open_array(str(tmp_path / "out" / "large.zarr"), mode="r"))
    assert large_labels.shape == (384, 512) and set(np.unique(large_labels)) == set(CLASS_VALUES)

    tile = kit.features.tile + kit.features.tile // SLACK + tile_alignment(kit.backbone, kit.features)  # the longest
    assert max(n for r in reads for n in r) <= tile * tile * 3  # the input is never read more than a tile at a time
    whole_maps_of_large = (2 * len(CLASS_VALUES) + 1) * 384 * 512 * 4
    assert peaks[1] < whole_maps_of_large, peaks
    # 12x the pixels, about the same peak (zarr's own buffers vary a little with the run): bounded by tiles
    assert peaks[1] < 1.5 * peaks[0], peaks
    assert leftovers(tmp_path) == []


def test_a_large_image_asked_for_as_tif_is_a_clear_error_before_any_work(kit, tmp_path, monkeypatch):
    src = tmp_path / "large.tif"
    tifffile.imwrite(src, (two_region_image(40, 40) * 255).astype(np.uint8))
    monkeypatch.setattr(inference, "IN_MEMORY_MAPS_BYTES", 0)
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="--format zarr"):
        segment_files(kit.backbone, kit.head, [src], tmp_path / "out", fmt="tif")
    assert snapshot(tmp_path / "out") == {}


# --- checkpoints ----------------------------------------------------------------------------------


class _LeavesMarker:
    """Unpickling this writes a file: if the marker exists, a checkpoint ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_checkpoints(folder, marker):
    payload = {"state_dict": _LeavesMarker(marker)}
    raw = pickle.dumps(payload)
    paths = {"evil.pt": raw, "evil.safetensors": raw, "evil_v0.safetensors": pickle.dumps(payload, protocol=0)}
    for name, data in paths.items():
        (folder / name).write_bytes(data)
    torch.save(payload, folder / "evil_zip.pt")  # torch's zip format
    return [folder / name for name in [*paths, "evil_zip.pt"]]


def test_the_marker_payload_really_runs_code_when_unpickled(tmp_path):
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(_LeavesMarker(marker)))
    assert marker.exists()


def test_pickle_checkpoints_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "MARKER"
    for path in _pickle_checkpoints(tmp_path, marker):
        for loader in (load_backbone, Head.load):
            with pytest.raises(CheckpointError) as err:
                loader(path)
            assert path.name in str(err.value)
    assert not marker.exists()


def test_pickle_checkpoints_are_refused_by_the_cli_without_running_code(kit, tmp_path):
    marker = tmp_path / "MARKER"
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir(), out.mkdir()
    iio.imwrite(images / "a.png", (two_region_image(16, 16) * 255).astype(np.uint8))
    evil = _pickle_checkpoints(tmp_path, marker)
    before = snapshot(tmp_path)
    for path in evil[:2]:
        result = run_cli(
            "segment", "--backbone", path, "--head", kit.head_path, "--images", images, "--out", out, "--device", "cpu"
        )
        assert_clean_failure(result, "pickle")
    result = run_cli("segment", "--backbone", kit.backbone_path, "--head", evil[1], "--images", images, "--out", out)
    assert_clean_failure(result, "pickle")
    assert not marker.exists() and snapshot(tmp_path) == before


def test_truncated_and_foreign_checkpoints_are_clear_errors(kit, tmp_path):
    good = kit.backbone_path.read_bytes()
    cases = {
        "truncated.safetensors": good[: len(good) // 2],
        "header_only.safetensors": good[:20],
        "empty.safetensors": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match="truncated|could not be read"):
            load_backbone(tmp_path / name)
    write_tensors(tmp_path / "plain.safetensors", {"w": torch.zeros(3)}, {})
    with pytest.raises(CheckpointError, match="not a napari-mdm backbone"):
        load_backbone(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not a napari-mdm backbone"):
        load_backbone(kit.head_path)
    with pytest.raises(CheckpointError, match="not a napari-mdm head"):
        Head.load(kit.backbone_path)
    with pytest.raises(CheckpointError, match="no checkpoint 'no-such-backbone'"):
        load_backbone("no-such-backbone")


def test_incomplete_or_newer_head_files_are_clear_errors(kit, tmp_path):
    tensors, meta = read_tensors(kit.head_path)
    cases = {
        "no tensors": ({"w": torch.zeros(1)}, meta),
        "no class values": (tensors, {k: v for k, v in meta.items() if k != "class_values"}),
        "a setting from a newer version": (tensors, {**meta, "config": {**meta["config"], "future": 1}}),
        "another class count": (tensors, {**meta, "class_values": [1, 2, 3]}),
        "settings not an object": (tensors, [1, 2]),
    }
    for data, settings in cases.values():
        write_tensors(tmp_path / "head.safetensors", data, settings)
        with pytest.raises(CheckpointError, match="incomplete or newer|does not match|not a napari-mdm"):
            Head.load(tmp_path / "head.safetensors")
    tensors, meta = read_tensors(kit.head_path)
    context = {**meta["context"], "features": {**meta["context"]["features"], "future": 2}}
    write_tensors(tmp_path / "newer.safetensors", tensors, {**meta, "context": context})
    with pytest.raises(CheckpointError, match="incomplete or newer"):
        Head.load(tmp_path / "newer.safetensors")


def test_a_checkpoint_of_another_architecture_is_a_clear_error(kit, tmp_path):
    """Settings of the tiny preset over the weights of the small one (e.g. a file edited by hand)."""
    tiny_file = tmp_path / "tiny.safetensors"
    save_backbone(tiny_file, build_backbone("tiny"), CorruptionConfig())
    _, tiny_meta = read_tensors(tiny_file)
    write_tensors(tmp_path / "mixed.safetensors", build_backbone("small").state_dict(), tiny_meta)
    with pytest.raises(CheckpointError, match="does not match its architecture"):
        load_backbone(tmp_path / "mixed.safetensors")


def test_a_head_applied_with_another_backbone_is_a_clear_error(kit):
    other = load_backbone(kit.other_backbone_path)  # same architecture, other weights
    with pytest.raises(UserError, match="trained with backbone"):
        segment(other, kit.head, kit.image)
    small = Backbone(build_backbone("small").eval(), CorruptionConfig())  # other channel count, unsaved
    with pytest.raises(UserError, match="feature channels"):
        segment(small, kit.head, kit.image)


def test_a_head_without_recorded_feature_settings_is_a_clear_error(kit):
    bare = Head(kit.head.net, kit.head.class_values, kit.head.mean, kit.head.std, kit.head.config)
    with pytest.raises(UserError, match="feature settings"):
        segment(kit.backbone, bare, kit.image)


# --- the CLI: one line on stderr, exit 2, nothing changed on disk ----------------------------------


def _cli_workspace(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir(), out.mkdir()
    iio.imwrite(images / "a.png", (two_region_image(24, 24) * 255).astype(np.uint8))
    iio.imwrite(images / "a_mask.png", np.ones((20, 24), np.uint8))  # wrong shape
    return images, out


def test_cli_bad_inputs_fail_cleanly_and_change_nothing(kit, tmp_path):
    images, out = _cli_workspace(tmp_path)
    (out / "a.tif").write_bytes(b"an earlier result")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(kit.backbone_path.read_bytes()[:1000])
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    seg = ["segment", "--head", kit.head_path, "--out", out, "--device", "cpu"]
    cases = [
        ([*seg, "--backbone", truncated, "--images", images, "--overwrite"], "truncated"),
        ([*seg, "--backbone", kit.other_backbone_path, "--images", images, "--overwrite"], "trained with backbone"),
        ([*seg, "--backbone", kit.backbone_path, "--images", images], "already exists"),
        ([*seg, "--backbone", kit.backbone_path, "--images", images, tmp_path / "corrupt", "--overwrite"], "z.png"),
        ([*seg, "--backbone", kit.backbone_path, "--images", tmp_path / "nowhere"], "does not exist"),
        (
            [
                "train-head",
                "--backbone",
                kit.backbone_path,
                "--images",
                images,
                "--labels",
                images,
                "--steps",
                "2",
                "--ensemble",
                "1",
                "--tile",
                "64",
                "--out",
                out / "head.safetensors",
            ],
            "shape",
        ),
        (
            [
                "train-head",
                "--backbone",
                kit.backbone_path,
                "--images",
                images,
                "--labels",
                images,
                "--steps",
                "2",
                "--out",
                kit.head_path,
            ],
            "already exists",
        ),
        (
            ["reconstruct", "--backbone", kit.backbone_path, "--image", images / "a.png", "--out", kit.head_path],
            "use .tif or .zarr",
        ),
    ]
    before, head_before = snapshot(tmp_path), kit.head_path.read_bytes()
    for args, fragment in cases:
        assert_clean_failure(run_cli(*args), fragment)
    assert snapshot(tmp_path) == before and kit.head_path.read_bytes() == head_before


def test_cli_running_out_of_memory_is_one_line_not_a_traceback(monkeypatch, capsys, tmp_path):
    from napari_mdm import cli

    def exhausted(args):
        raise MemoryError

    monkeypatch.setattr(cli, "cmd_evaluate", exhausted)
    assert cli.main(["evaluate", "--pred", str(tmp_path), "--truth", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory" in err and "--format zarr" in err
