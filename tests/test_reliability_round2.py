"""Reliability, round 2 (issue 13): the classes an adversarial user found after round 1.

No output replaces a folder or an input; every output of a command is planned before any work;
file formats are recognised by their real signatures; label ids survive exactly or are refused;
names use their last suffix only; crafted checkpoints fail cleanly without allocating; failed
writes, bad options, signals and memory exhaustion are one line. tests/INPUTS.md lists the cases.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
from dataclasses import replace

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import zarr
from PIL import Image
from test_reliability_support import (
    CLASS_VALUES,
    leftovers,
    snapshot,
    sparse_labels,
    train_head,
    two_region_image,
)

from napari_mdm import cli
from napari_mdm.backbone import PRESETS, build_backbone
from napari_mdm.checkpoint import (
    CheckpointError,
    load_backbone,
    random_backbone,
    read_tensors,
    save_backbone,
    write_tensors,
)
from napari_mdm.corruption import CorruptionConfig
from napari_mdm.features import FeatureConfig, num_channels, resolve_config
from napari_mdm.files import atomic_output, check_writable, plan_outputs
from napari_mdm.head import Head, maps_to_prediction
from napari_mdm.inference import segment, segment_files
from napari_mdm.io import collect_images, open_image, read_image, read_labels, write_labels
from napari_mdm.jobs import UserError
from napari_mdm.naming import companion, segmentation_outputs, stem
from napari_mdm.pretrain import PretrainConfig, pretrain, training_memory_bytes


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine's cores are shared: one torch thread (16 s instead of 0.3 s per tiny pretraining here)."""
    torch.set_num_threads(1)


def _png(path, h=24, w=24, seed=0):
    iio.imwrite(path, (two_region_image(h, w, seed) * 255).astype(np.uint8))
    return path


def _cli(capsys, *args) -> tuple[int, str]:
    """Run the CLI in this process (no start-up cost): exit status and stderr."""
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    return status, capsys.readouterr().err


def _one_line(err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- data loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["mask", "head", "backbone", "tensors"])
def test_a_folder_is_never_replaced_by_a_file_even_with_overwrite(kit, tmp_path, writer):
    folder = tmp_path / "results.tif"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep")
    save = {
        "mask": lambda: write_labels(folder, np.ones((4, 4), np.uint8), overwrite=True),
        "head": lambda: kit.head.save(folder, overwrite=True),
        "backbone": lambda: save_backbone(folder, build_backbone("tiny"), CorruptionConfig(), overwrite=True),
        "tensors": lambda: write_tensors(folder, {"x": torch.ones(2)}, {}, overwrite=True),
    }[writer]
    with pytest.raises(UserError, match="cannot write .*it is a folder"):
        save()
    assert (folder / "precious.txt").read_text() == "keep" and leftovers(tmp_path) == []


@pytest.mark.parametrize("out", ["folder", "."])
def test_cli_train_head_never_replaces_a_folder(kit, tmp_path, capsys, monkeypatch, out):
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "a.png")
    iio.imwrite(images / "a_mask.png", sparse_labels(24, 24).astype(np.uint8))
    target = tmp_path / "results"
    target.mkdir()
    (target / "precious.txt").write_text("keep")
    monkeypatch.chdir(target)
    monkeypatch.setattr(cli, "_backbone", lambda args: pytest.fail("the output must be checked before any work"))
    status, err = _cli(
        capsys,
        "train-head",
        "--backbone",
        kit.backbone_path,
        "--images",
        images / "a.png",
        "--labels",
        images / "a_mask.png",
        "--out",
        target if out == "folder" else ".",
        "--overwrite",
    )
    assert status == 2
    _one_line(err, "cannot write", "it is a folder")
    assert (target / "precious.txt").read_text() == "keep"


def test_segment_never_writes_over_its_inputs(kit, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "a.png")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="is the folder of the images"):
        segment_files(kit.backbone, kit.head, [images / "a.png"], images, fmt="png", overwrite=True)
    (tmp_path / "link").symlink_to(images)
    with pytest.raises(UserError, match="is the folder of the images"):
        segment_files(kit.backbone, kit.head, [images / "a.png"], tmp_path / "link", fmt="png", overwrite=True)
    status, err = _cli(
        capsys,
        "segment",
        "--backbone",
        kit.backbone_path,
        "--head",
        kit.head_path,
        "--images",
        images,
        "--out",
        images,
        "--format",
        "png",
        "--overwrite",
        "--device",
        "cpu",
    )
    assert status == 2 and "is the folder of the images" in _one_line(err)
    (tmp_path / "link").unlink()
    assert snapshot(tmp_path) == before


def test_no_output_may_be_an_input(tmp_path):
    source = tmp_path / "a.tif"
    source.write_bytes(b"input")
    with pytest.raises(UserError, match="is an input of this run"):
        plan_outputs([tmp_path / "sub" / ".." / "a.tif"], [source], overwrite=True)
    (tmp_path / "hard.tif").hardlink_to(source)
    with pytest.raises(UserError, match="is an input of this run"):
        plan_outputs([tmp_path / "hard.tif"], [source], overwrite=True)
    assert source.read_bytes() == b"input"


def test_a_backbone_and_its_settings_file_obey_overwrite_together(tmp_path):
    weights, side = tmp_path / "m.safetensors", tmp_path / "m.json"
    side.write_text("my notes")
    with pytest.raises(UserError, match="m.json already exists"):
        save_backbone(weights, build_backbone("tiny"), CorruptionConfig(), overwrite=False)
    assert side.read_text() == "my notes" and not weights.exists()
    bb = tmp_path / "bb.json"
    with pytest.raises(UserError, match="same output bb.json"):
        save_backbone(bb, build_backbone("tiny"), CorruptionConfig())
    assert not bb.exists()
    with pytest.raises(UserError, match="it is a folder"):
        save_backbone(tmp_path / ".", build_backbone("tiny"), CorruptionConfig())


@pytest.mark.parametrize("case", ["side file exists", "out is the side file", "out is an image", "out is ."])
def test_cli_pretrain_plans_weights_side_file_and_state_before_work(tmp_path, capsys, monkeypatch, case):
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "a.png", 32, 32)
    (tmp_path / "m.json").write_text("my notes")
    out = {
        "side file exists": tmp_path / "m.safetensors",
        "out is the side file": tmp_path / "bb.json",
        "out is an image": images / "a.png",
        "out is .": ".",
    }[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("napari_mdm.pretrain.pretrain", lambda *a, **k: pytest.fail("planned before any work"))
    before = snapshot(tmp_path)
    status, err = _cli(
        capsys,
        "pretrain",
        "--images",
        images,
        "--out",
        out,
        "--steps",
        1,
        "--crop",
        32,
        *(["--overwrite"] if case != "side file exists" else []),
    )
    assert status == 2
    _one_line(
        err,
        {
            "side file exists": "m.json already exists",
            "out is the side file": "same output bb.json",
            "out is an image": "is an input of this run",
            "out is .": "cannot write .: it is a folder",
        }[case],
    )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_image_and_its_uncertainty_twin_are_refused_before_any_write(kit, tmp_path, overwrite):
    images = tmp_path / "images"
    images.mkdir()
    paths = [_png(images / "x.png"), _png(images / "x_uncertainty.png", seed=1)]
    with pytest.raises(UserError, match="same output x_uncertainty.tif"):
        segment_files(kit.backbone, kit.head, paths, tmp_path / "out", uncertainty=True, overwrite=overwrite)
    assert not (tmp_path / "out").exists()


# --- failed writes ------------------------------------------------------------------------------


def _read_only_file_system(*args, **kwargs):
    raise OSError(30, "Read-only file system")


@pytest.mark.parametrize("where", ["name of 260 characters", "/proc", "under a file", "read-only"])
def test_unwritable_outputs_say_cannot_write_path_why_before_any_work(tmp_path, monkeypatch, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = {
        "name of 260 characters": tmp_path / ("n" * 256 + ".tif"),
        "/proc": "/proc/napari-mdm-test.tif",
        "under a file": blocker / "out" / "m.tif",
        "read-only": tmp_path / "m.tif",
    }[where]
    if where == "read-only":  # tests may run as root, which ignores permission bits: fail the probe itself
        monkeypatch.setattr("pathlib.Path.touch", _read_only_file_system)
    with pytest.raises(UserError, match=f"cannot write {target}: "):
        check_writable(target)
    with pytest.raises(UserError, match="cannot write"):
        plan_outputs([target], overwrite=True)


def test_a_long_name_within_the_limit_is_written(tmp_path):
    target = tmp_path / ("n" * 250 + ".tif")  # 254 bytes: its temporary name must stay within 255
    write_labels(target, np.ones((3, 3), np.uint8))
    assert read_labels(target).sum() == 9 and leftovers(tmp_path) == []


def test_disk_full_during_a_write_is_one_line_and_keeps_nothing_partial(tmp_path):
    with pytest.raises(UserError, match=r"cannot write .*m\.tif: No space left on device"):
        with atomic_output(tmp_path / "m.tif") as tmp:
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_segment_checks_the_output_location_before_loading_or_computing(kit, tmp_path, capsys, monkeypatch):
    _png(tmp_path / "a.png")
    (tmp_path / "blocker").write_text("x")
    monkeypatch.setattr(cli, "_backbone", lambda args: pytest.fail("the output must be checked first"))
    status, err = _cli(
        capsys,
        "segment",
        "--head",
        kit.head_path,
        "--images",
        tmp_path / "a.png",
        "--out",
        tmp_path / "blocker" / "out",
    )
    assert status == 2 and "cannot write" in _one_line(err)


# --- files recognised by their real signatures ----------------------------------------------------


def _safetensors_with_header_length(path, low_byte: int):
    """A real napari-mdm head file whose header length ends in ``low_byte`` (padding its settings)."""
    for pad in range(300):
        write_tensors(path, {"x": torch.ones(3)}, {"format": "test", "pad": "p" * pad})
        if path.read_bytes()[0] == low_byte:
            return path
    raise AssertionError("no padding gave that header length")


def test_a_safetensors_header_length_ending_in_0x80_is_read(tmp_path):
    path = _safetensors_with_header_length(tmp_path / "x.safetensors", 0x80)
    tensors, meta = read_tensors(path)
    assert meta["format"] == "test" and torch.equal(tensors["x"], torch.ones(3))


def test_a_head_written_with_a_long_backbone_path_loads_back(kit, tmp_path):
    """The issue's reproduction: 1 in 32 heads failed, e.g. one recording a 203-character backbone path."""
    for n in range(150, 150 + 256):  # the header length's low byte takes every value once
        head = Head(
            kit.head.net,
            kit.head.class_values,
            kit.head.mean,
            kit.head.std,
            kit.head.config,
            replace(kit.head.context, backbone_name="b" * n),
        )
        head.save(tmp_path / "h.safetensors")
        if (tmp_path / "h.safetensors").read_bytes()[0] == 0x80:
            break
    assert (tmp_path / "h.safetensors").read_bytes()[0] == 0x80
    assert Head.load(tmp_path / "h.safetensors").class_values == CLASS_VALUES


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickles_of_every_binary_protocol_are_named_as_pickles(tmp_path, protocol):
    path = tmp_path / "p.safetensors"
    path.write_bytes(pickle.dumps({"weights": list(range(50))}, protocol=protocol))
    with pytest.raises(CheckpointError, match="is a pickle/torch file"):
        read_tensors(path)


def test_torch_zip_checkpoints_are_named_as_pickles(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="is a pickle/torch file"):
        load_backbone(tmp_path / "m.pt")


# --- label ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, dtype",
    [
        ([0, 3_000_000_000], np.uint32),
        ([7, 4_294_967_295], np.uint64),
        ([1.0, 3e9], np.float64),
        ([2, 70_000], np.int64),
    ],
)
def test_large_label_ids_survive_a_round_trip_exactly(tmp_path, ids, dtype):
    labels = np.array([ids * 2], dtype=dtype).reshape(2, 2)
    tifffile.imwrite(tmp_path / "l.tif", labels)
    read = read_labels(tmp_path / "l.tif")
    assert read.tolist() == labels.astype(np.int64).tolist()
    write_labels(tmp_path / "out.tif", read)
    assert read_labels(tmp_path / "out.tif").tolist() == read.tolist()


@pytest.mark.parametrize(
    "value, dtype", [(2**32, np.uint64), (2**63 + 5, np.uint64), (1e20, np.float64), (2**40, np.int64)]
)
def test_label_ids_beyond_32_bits_are_refused_not_wrapped(tmp_path, value, dtype):
    tifffile.imwrite(tmp_path / "l.tif", np.array([[0, value]], dtype=dtype))
    with pytest.raises(UserError, match="label id .* is too large: ids must be 0..4294967295"):
        read_labels(tmp_path / "l.tif")
    with pytest.raises(UserError, match="out of range"):
        write_labels(tmp_path / "o.tif", np.array([[0, value]], dtype=dtype))


def test_predicted_large_ids_are_kept_and_png_refuses_them(tmp_path):
    maps = np.zeros((5, 2, 2), np.float32)
    maps[2, 0] = maps[3, 1] = 1  # votes: row 0 -> class 0, row 1 -> class 1
    pred = maps_to_prediction(maps, [3, 3_000_000_000])
    assert pred.labels.tolist() == [[3, 3], [3_000_000_000, 3_000_000_000]]
    with pytest.raises(UserError, match="png holds 16 bits"):
        write_labels(tmp_path / "m.png", pred.labels)


def test_palette_png_labels_are_read_as_indices_not_colours(tmp_path):
    im = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    im.putpalette([0, 0, 0, 100, 100, 100, 200, 200, 200])
    im.save(tmp_path / "l.png")
    assert read_labels(tmp_path / "l.png").tolist() == [[0, 1], [2, 1]]
    assert read_image(tmp_path / "l.png").max() > 0.7  # as an image it keeps its colours


# --- names with dots ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("scan.01.png", "scan.01"),
        ("a.b.c.tif", "a.b.c"),
        ("x.zarr", "x"),
        ("plain", "plain"),
        (".hidden.png", ".hidden"),
    ],
)
def test_the_stem_is_the_name_up_to_its_last_suffix(name, expected):
    assert stem(name) == expected


def test_dotted_names_pair_with_their_own_labels_and_outputs(kit, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 2):
        _png(images / f"scan.0{i}.png", seed=i)
        iio.imwrite(images / f"scan.0{i}_mask.png", sparse_labels(24, 24).astype(np.uint8) * i)
    iio.imwrite(images / "scan_mask.png", np.zeros((24, 24), np.uint8))  # the wrong pair of round 1
    from napari_mdm.naming import LABEL_TAGS

    pairs = [companion(p, images, LABEL_TAGS, (".png",)).name for p in collect_images([images], ["*_mask.*"])]
    assert pairs == ["scan.01_mask.png", "scan.02_mask.png"]
    assert segmentation_outputs("scan.01", "o", "tif", True)[1].name == "scan.01_uncertainty.tif"
    written = segment_files(kit.backbone, kit.head, collect_images([images], ["*_mask.*"]), tmp_path / "out")
    assert [p.name for p in written] == ["scan.01.tif", "scan.02.tif"]


# --- crashes that are now clear errors or work ------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32", "float64", "bool"])
def test_a_grey_2d_zarr_of_any_dtype_segments(kit, tmp_path, dtype):
    grey = two_region_image(32, 40)[..., 0]
    data = grey > 0.5 if dtype == "bool" else (grey * 200).astype(dtype)
    zarr.create_array(store=str(tmp_path / "g.zarr"), shape=data.shape, chunks=(16, 16), dtype=dtype)[...] = data
    source = open_image(tmp_path / "g.zarr")
    assert source.read().shape == (32, 40, 3)
    assert segment(kit.backbone, kit.head, source).labels.shape == (32, 40)


def test_a_filter_bank_head_works_with_any_backbone(kit):
    config = resolve_config(kit.backbone, FeatureConfig(diffusion=False, filters=True, tile=64))
    head = train_head(kit.backbone, config, kit.image, kit.labels)
    other = random_backbone("small")  # another architecture: fewer decoder blocks, other divisor
    assert num_channels(other, config) == head.in_channels
    assert segment(other, head, kit.image).labels.shape == kit.image.shape[:2]


def _crafted_backbone(tmp_path, **unet):
    """The tiny backbone's weights under settings that claim another architecture."""
    state, meta = read_tensors(save_backbone(tmp_path / "b.safetensors", build_backbone("tiny"), CorruptionConfig()))
    meta["unet"].update(unet)
    return write_tensors(tmp_path / "crafted.safetensors", state, meta)


@pytest.mark.parametrize(
    "unet, fragment",
    [
        ({"base_channels": 4096}, "base_channels must be in"),
        ({"channel_mult": [1] * 40}, "at most 16"),
        ({"num_res_blocks": 100}, "num_res_blocks"),
        ({"base_channels": 1024}, "does not match its architecture"),
        ({"channel_mult": []}, "at least one level"),
        ({"head_channels": 0}, "head_channels"),
        ({"in_channels": 1}, "in_channels"),
        ({"base_channels": "32"}, "must be an integer"),
        ({"dropout": float("nan")}, "finite"),
        ({"attention_at": [8, True]}, "a number"),
    ],
)
def test_checkpoint_settings_that_disagree_with_the_weights_fail_before_building(tmp_path, unet, fragment):
    path = _crafted_backbone(tmp_path, **unet)
    with pytest.raises(CheckpointError, match=fragment):
        load_backbone(path)


def test_head_settings_that_disagree_with_the_weights_fail_before_building(kit, tmp_path):
    tensors, meta = read_tensors(kit.head_path)
    for change, fragment in [
        ({"config": {**meta["config"], "ensemble": 10**6}}, "ensemble must be in"),
        ({"config": {**meta["config"], "hidden": [60_000, 60_000]}}, "does not match"),
        ({"class_values": [1, 1]}, "distinct"),
        ({"class_values": [1, 2**40]}, "label ids"),
        ({"context": [1]}, "malformed"),
    ]:
        write_tensors(tmp_path / "h.safetensors", tensors, {**meta, **change})
        with pytest.raises(CheckpointError, match=fragment):
            Head.load(tmp_path / "h.safetensors")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seed", "-1"], "--seed: must be at least 0"),
        (["--steps", "-1"], "--steps: must be at least 0"),
        (["--device", "cpu:x"], "unknown device 'cpu:x'"),
        (["--device", "cuda:7"], "not available"),
        (["--ensemble", "0"], "--ensemble: must be at least 1"),
        (["--tile", "x"], "expected an integer"),
        (["--coarse-stride", "3"], "--coarse-stride: must be a power of two"),
    ],
)
def test_bad_options_are_one_line(kit, tmp_path, capsys, args, fragment):
    _png(tmp_path / "a.png")
    iio.imwrite(tmp_path / "a_mask.png", sparse_labels(24, 24).astype(np.uint8))
    status, err = _cli(
        capsys,
        "train-head",
        "--backbone",
        kit.backbone_path,
        "--images",
        tmp_path / "a.png",
        "--labels",
        tmp_path / "a_mask.png",
        "--out",
        tmp_path / "h.safetensors",
        *args,
    )
    assert status == 2
    _one_line(err, "napari-mdm train-head: error:", fragment)
    assert not (tmp_path / "h.safetensors").exists()


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't "
            "allocate memory: you tried to allocate 1099511627776 bytes"
        ),
        torch.OutOfMemoryError("CUDA out of memory"),
    ],
)
def test_running_out_of_memory_in_any_form_is_one_line(monkeypatch, capsys, tmp_path, error):
    def exhausted(args):
        raise error

    monkeypatch.setattr(cli, "cmd_evaluate", exhausted)
    status, err = _cli(capsys, "evaluate", "--pred", tmp_path, "--truth", tmp_path)
    assert status == 2 and "out of memory" in _one_line(err)


def test_system_errors_are_one_line(monkeypatch, capsys, tmp_path):
    def refused(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.png"))

    monkeypatch.setattr(cli, "cmd_evaluate", refused)
    status, err = _cli(capsys, "evaluate", "--pred", tmp_path, "--truth", tmp_path)
    assert status == 2 and _one_line(err).endswith("x.png: Permission denied")


def test_other_runtime_errors_are_not_disguised(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "cmd_evaluate", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["evaluate", "--pred", str(tmp_path), "--truth", str(tmp_path)])


def test_a_crop_that_cannot_fit_is_refused_with_the_number_before_allocating():
    image = two_region_image(32, 32)
    with pytest.raises(UserError, match=r"crop 4096 with batch size 8 needs at least [\d,.]+ GiB .* available"):
        pretrain([image], None, "tiny", config=PretrainConfig(steps=1, crop=4096, batch_size=8), device="cpu")
    # a lower bound: the shipped backbone's own run (small, batch 128, crop 256, bf16) fitted an 80 GiB GPU
    assert training_memory_bytes(PRESETS["small"], 256, 128, value_bytes=2) < 80 * 2**30


def test_ctrl_c_during_start_up_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_parser", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    status, err = _cli(capsys, "segment")
    assert status == 130 and _one_line(err) == "napari-mdm: interrupted"


def test_sigterm_exits_143_in_one_line_and_leaves_no_partial_output(monkeypatch, capsys, tmp_path):
    def killed_mid_write(args):
        with atomic_output(tmp_path / "m.tif") as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("SIGTERM must stop the command")

    monkeypatch.setattr(cli, "cmd_evaluate", killed_mid_write)
    status, err = _cli(capsys, "evaluate", "--pred", tmp_path, "--truth", tmp_path)
    assert status == 143 and "terminated" in _one_line(err)
    assert list(tmp_path.iterdir()) == [] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize(
    "surfaced_as",
    [OSError(errno.EINTR, "Interrupted system call"), CheckpointError("m.safetensors could not be read"), ValueError()],
)
def test_sigterm_that_a_library_turns_into_its_own_error_still_exits_143(monkeypatch, capsys, surfaced_as):
    """A C library interrupted by the signal may report it its own way (EINTR, a wrapped error):
    the run was still terminated, not refused nor a bug."""

    def interrupted_in_a_library(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            raise surfaced_as from None

    monkeypatch.setattr(cli, "cmd_evaluate", interrupted_in_a_library)
    status, err = _cli(capsys, "evaluate", "--pred", "p", "--truth", "t")
    assert status == 143 and "terminated" in _one_line(err)
    monkeypatch.setattr(cli, "cmd_evaluate", lambda args: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):  # the flag does not outlive its run
        cli.main(["evaluate", "--pred", "p", "--truth", "t"])


def test_a_fifo_named_png_is_skipped_in_a_folder_and_refused_by_name(tmp_path):
    _png(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in collect_images([tmp_path])] == ["a.png"]
    with pytest.raises(UserError, match="is not a regular file"):
        read_image(tmp_path / "pipe.png")
    with pytest.raises(UserError, match="is not a regular file"):
        read_labels(tmp_path / "pipe.png")
    os.mkfifo(tmp_path / "head.safetensors")
    with pytest.raises(CheckpointError, match="is not a regular file"):
        Head.load(tmp_path / "head.safetensors")


# --- stacks and compressed tiffs ------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["grey (5, H, W)", "rgb (2, H, W, 3)"])
def test_segment_files_segments_a_stack_plane_by_plane(kit, tmp_path, layout):
    planes = [(two_region_image(24, 32, seed=i) * 255).astype(np.uint8) for i in range(5 if "grey" in layout else 2)]
    stack = np.stack([p[..., 0] for p in planes]) if "grey" in layout else np.stack(planes)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    [out] = segment_files(kit.backbone, kit.head, [tmp_path / "stack.tif"], tmp_path / "out", uncertainty=True)
    labels = tifffile.imread(out)
    assert labels.shape == (len(planes), 24, 32)
    for i, plane in enumerate(stack):
        assert np.array_equal(labels[i], segment(kit.backbone, kit.head, plane).labels)
    assert tifffile.imread(tmp_path / "out" / "stack_uncertainty.tif").shape == (len(planes), 24, 32)
    with pytest.raises(UserError, match="is a stack of .* png holds one 2-D image"):
        segment_files(kit.backbone, kit.head, [tmp_path / "stack.tif"], tmp_path / "png", fmt="png")


@pytest.mark.parametrize("compression", ["zlib", "lzw", "jpeg"])
def test_compressed_tiffs_are_read(tmp_path, compression):
    image = (two_region_image(32, 32) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", image, compression=compression)
    read = read_image(tmp_path / "c.tif")
    assert read.shape == (32, 32, 3) and np.abs(read - image / 255).mean() < 0.03


def test_pretrain_reads_each_plane_of_a_stack(tmp_path, capsys):
    stack = np.stack([(two_region_image(32, 32, seed=i) * 255).astype(np.uint8) for i in range(5)])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    status, err = _cli(
        capsys,
        "pretrain",
        "--images",
        tmp_path / "stack.tif",
        "--out",
        tmp_path / "m.safetensors",
        "--steps",
        1,
        "--crop",
        16,
        "--batch-size",
        2,
        "--device",
        "cpu",
    )
    assert status == 0, err
    assert load_backbone(tmp_path / "m.safetensors").provenance["images"] == 5


def test_reconstruct_refuses_an_output_that_cannot_hold_a_stack_before_any_work(kit, tmp_path, capsys, monkeypatch):
    _png(tmp_path / "a.png")
    monkeypatch.setattr(cli, "_backbone", lambda args: pytest.fail("the output must be checked first"))
    status, err = _cli(
        capsys,
        "reconstruct",
        "--backbone",
        kit.backbone_path,
        "--image",
        tmp_path / "a.png",
        "--out",
        tmp_path / "r.png",
    )
    assert status == 2 and "use .tif or .zarr" in _one_line(err)


@pytest.mark.parametrize("statistic", ["zero std", "nan mean"])
def test_a_head_with_unusable_input_statistics_is_refused(kit, tmp_path, statistic):
    tensors, meta = read_tensors(kit.head_path)
    key = "input.std" if statistic == "zero std" else "input.mean"
    tensors[key] = torch.zeros_like(tensors[key]) if statistic == "zero std" else tensors[key] * float("nan")
    write_tensors(tmp_path / "h.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="malformed"):
        Head.load(tmp_path / "h.safetensors")


@pytest.mark.parametrize("name, compression", [("l.jpg", None), ("l.tif", "jpeg")])
def test_labels_stored_lossily_are_refused(tmp_path, name, compression):
    labels = np.zeros((16, 16), np.uint8)
    labels[4:12, 4:12] = 5
    if compression:
        tifffile.imwrite(tmp_path / name, labels, compression=compression)
    else:
        iio.imwrite(tmp_path / name, labels)
    with pytest.raises(UserError, match="lossy"):
        read_labels(tmp_path / name)
    tifffile.imwrite(tmp_path / "ok.tif", labels, compression="lzw")  # lossless compression is fine
    assert read_labels(tmp_path / "ok.tif").tolist() == labels.tolist()


def test_segment_slide_never_replaces_a_folder_of_other_files_or_its_slide(kit, tmp_path):
    from napari_mdm.slide_segmentation import segment_slide

    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, (two_region_image(64, 64) * 255).astype(np.uint8))
    results = tmp_path / "results.zarr"
    results.mkdir()
    (results / "precious.txt").write_text("keep")
    for out in (results, slide):
        with pytest.raises(UserError, match="is a folder of other files|is an input of this run"):
            segment_slide(kit.backbone_path, kit.head_path, slide, out, overwrite=True)
    assert (results / "precious.txt").read_text() == "keep" and slide.stat().st_size > 0


def test_a_real_sigterm_stops_pretraining_in_one_line_and_keeps_its_checkpoint(tmp_path):
    """End to end: ``kill PID`` on a running ``napari-mdm pretrain`` (exit 143, one line, no partial
    file; the last checkpoint stays loadable, as after Ctrl-C)."""
    import subprocess
    import time

    from test_reliability_support import cli_command, cli_env

    _png(tmp_path / "a.png", 32, 32)
    out = tmp_path / "m.safetensors"
    proc = subprocess.Popen(
        cli_command(
            "pretrain",
            "--images",
            tmp_path / "a.png",
            "--out",
            out,
            "--steps",
            100000,
            "--crop",
            16,
            "--batch-size",
            1,
            "--checkpoint-every",
            1,
            "--device",
            "cpu",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    deadline = time.monotonic() + 240
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated" in _one_line(err), err
    assert load_backbone(out).provenance["steps"] >= 1 and leftovers(tmp_path) == []


def test_a_damaged_training_state_is_a_clear_error_on_resume(tmp_path):
    from napari_mdm.pretrain import state_path

    image, out = two_region_image(32, 32), tmp_path / "m.safetensors"
    pretrain([image], out, "tiny", config=PretrainConfig(steps=1, crop=16, batch_size=1), device="cpu")
    good = read_tensors(state_path(out))
    for damage in ("step is text", "ema tensor missing", "train settings not an object"):
        tensors, meta = dict(good[0]), dict(good[1])
        if damage == "step is text":
            meta["step"] = "x"
        elif damage == "ema tensor missing":
            tensors.pop(next(k for k in tensors if k.startswith("ema.")))
        else:
            meta["train"] = [1]
        write_tensors(state_path(out), tensors, meta)
        with pytest.raises(CheckpointError, match="cannot resume from|does not match its architecture"):
            pretrain(
                [image], out, "tiny", config=PretrainConfig(steps=2, crop=16, batch_size=1), device="cpu", resume=True
            )
