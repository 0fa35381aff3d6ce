"""Whole slides (issue 17): pyramidal TIFF and OME-Zarr read lazily by level, segmented as a dask
graph into an OME-Zarr label pyramid, glass skipped, resumable, the same on a 2-worker cluster."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_mdm._reader import get_reader, is_label_image
from napari_mdm.checkpoint import random_backbone
from napari_mdm.cli import main
from napari_mdm.features import FeatureConfig
from napari_mdm.head import HeadConfig
from napari_mdm.jobs import Cancelled, UserError
from napari_mdm.pipeline import train_head
from napari_mdm.slide_segmentation import segment_slide
from napari_mdm.slides import SlideLevel, open_slide, pick_level, region_at_level, slide_levels

H, W, CHUNK = 256, 384, 128


def _tissue(seed: int = 0) -> np.ndarray:
    """Glass on the left third, pale tissue with one dark region on the rest."""
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), 245, np.uint8)
    img[:, 128:] = 140
    img[96:192, 224:320] = 50
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _write_tiff(path, img: np.ndarray, coarser: np.ndarray | None = None, mpp=(0.5, 0.5)) -> None:
    """A two-level OME-TIFF: ``img`` and ``coarser`` (by default every second pixel of it)."""
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            img,
            subifds=1,
            tile=(64, 64),
            photometric="rgb",
            metadata={"axes": "YXS", "PhysicalSizeY": mpp[0], "PhysicalSizeX": mpp[1]},
        )
        tif.write(img[::2, ::2] if coarser is None else coarser, subfiletype=1, tile=(64, 64), photometric="rgb")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A small pyramidal OME-TIFF slide and a head trained on strokes of its level 0."""
    root = tmp_path_factory.mktemp("slide")
    img = _tissue()
    _write_tiff(root / "slide.ome.tif", img)
    labels = np.zeros((H, W), np.uint8)
    labels[10:60, 140:200], labels[110:170, 240:300] = 1, 2
    # all channels: with 40 steps on the untrained backbone, 64 projected channels reach 87 % in one region
    head = train_head(
        random_backbone("tiny"),
        [img.astype(np.float32) / 255],
        [labels],
        FeatureConfig(tile=128, project=0),
        HeadConfig(ensemble=2, steps=40, batch_size=128),
        mpp=0.5,
    )
    head.save(root / "head.safetensors")
    return root


def _segment(slide, out, **kwargs):
    return segment_slide(
        "random-tiny", slide / "head.safetensors", slide / "slide.ome.tif", out, chunk=CHUNK, halo=16, **kwargs
    )


def test_pyramidal_tiff_levels_are_read_lazily_by_index_or_mpp(slide):
    levels = slide_levels(slide / "slide.ome.tif")
    assert [lv.shape for lv in levels] == [(H, W), (H // 2, W // 2)]
    assert [lv.mpp for lv in levels] == [(0.5, 0.5), (1.0, 1.0)] and levels[1].downsample == (2, 2)
    assert pick_level(levels, mpp=0.9).index == 1 and pick_level(levels, mpp=0.3).index == 0
    source, level = open_slide(slide / "slide.ome.tif", mpp=1.0)
    expected = _tissue()[::2, ::2][10:20, 30:50].astype(np.float32) / 255
    np.testing.assert_allclose(source.region(10, 20, 30, 50), expected, atol=1e-6)
    with pytest.raises(UserError, match="levels 0..1"):
        open_slide(slide / "slide.ome.tif", level=5)
    unknown = [SlideLevel(lv.index, lv.shape, lv.downsample, None) for lv in levels]
    with pytest.raises(UserError) as caught:
        pick_level(unknown, mpp=0.5)
    assert str(caught.value).endswith("per pixel; choose a level with --level")
    assert caught.value.in_plugin.endswith("per pixel; choose its level under 'level'")


def test_ome_zarr_images_are_slides_too(tmp_path):
    group = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w", zarr_format=2)
    img = _tissue()
    for i, data in enumerate((img, img[::2, ::2])):
        group.create_array(str(i), shape=data.shape, chunks=(64, 64, 3), dtype=data.dtype)[...] = data
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
            + [{"name": "c", "type": "channel"}],
            "datasets": [
                {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [s, s, 1]}]}
                for i, s in enumerate((0.25, 0.5))
            ],
        }
    ]
    levels = slide_levels(tmp_path / "image.ome.zarr")
    assert [lv.shape for lv in levels] == [(H, W), (H // 2, W // 2)]
    assert [lv.mpp for lv in levels] == [(0.25, 0.25), (0.5, 0.5)]  # from the y and x axes, not the channels
    assert open_slide(tmp_path / "image.ome.zarr", level=1)[0].shape == (H // 2, W // 2)


def test_a_slide_becomes_an_ngff_label_pyramid_with_glass_skipped(slide, tmp_path):
    result = _segment(slide, tmp_path / "labels.ome.zarr", uncertainty=True)
    assert (result.chunks, result.no_tissue, result.computed, result.resumed) == (6, 2, 4, 0)
    group = zarr.open_group(str(tmp_path / "labels.ome.zarr"), mode="r")
    attrs = dict(group.attrs)
    assert "image-label" in attrs and attrs["napari-mdm"]["complete"] is True
    assert [group[d["path"]].shape for d in attrs["multiscales"][0]["datasets"]] == [(H, W), (H // 2, W // 2)]
    labels = group["0"][:]
    assert (labels[:, :128] == 0).all()  # glass: never computed
    assert (labels[100:190, 230:310] == 2).mean() > 0.9 and (labels[:, 140:220] == 1).mean() > 0.9
    np.testing.assert_array_equal(group["1"][:], labels[::2, ::2])
    assert group["uncertainty"]["0"][:, 128:].max() > 0
    assert is_label_image(tmp_path / "labels.ome.zarr")
    [(levels, meta, kind), (maps, map_meta, map_kind)] = get_reader(str(tmp_path / "labels.ome.zarr"))(
        str(tmp_path / "labels.ome.zarr")
    )
    assert kind == "labels" and meta["multiscale"] and levels[1].shape == (H // 2, W // 2)
    assert meta["scale"] == (1.0, 1.0)  # level 0 of the slide: laid over it as it is
    # the optional uncertainty: a hidden multiscale image, marked so choosers do not offer it
    assert map_kind == "image" and map_meta["multiscale"] and not map_meta["visible"]
    assert map_meta["name"] == "labels_uncertainty" and map_meta["metadata"] == {"napari_mdm": "uncertainty"}
    np.testing.assert_array_equal(maps[1][:], maps[0][::2, ::2])


def test_a_label_image_of_a_coarser_level_is_laid_over_the_slide_and_a_slide_opens_as_multiscale(slide, tmp_path):
    _segment(slide, tmp_path / "coarse.ome.zarr", level=1)
    [(levels, meta, _)] = get_reader(str(tmp_path / "coarse.ome.zarr"))(str(tmp_path / "coarse.ome.zarr"))
    assert levels[0].shape == (H // 2, W // 2) and meta["scale"] == (2.0, 2.0)
    path = str(slide / "slide.ome.tif")
    [(arrays, meta, kind)] = get_reader(path)(path)
    assert kind == "image" and meta["multiscale"] and meta["rgb"] and meta["name"] == "slide"
    assert [a.shape for a in arrays] == [(H, W, 3), (H // 2, W // 2, 3)] and meta["contrast_limits"] == [0.0, 255.0]
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, _tissue())
    assert get_reader(str(flat)) is None  # one level: napari's own reader shows it


def test_levels_whose_axes_shrink_unequally_are_placed_and_chosen_per_axis(slide, tmp_path):
    from napari.layers import Image, Labels

    img = _tissue()
    _write_tiff(tmp_path / "aniso.ome.tif", img, coarser=img[::2, ::4], mpp=(0.25, 0.5))
    full, coarse = slide_levels(tmp_path / "aniso.ome.tif")
    assert coarse.downsample == (2, 4) and (full.mpp, coarse.mpp) == ((0.25, 0.5), (0.5, 2.0))
    [(arrays, meta, _)] = get_reader(str(tmp_path / "aniso.ome.tif"))(str(tmp_path / "aniso.ome.tif"))
    shown = Image(arrays, **meta)
    assert [tuple(f) for f in shown.downsample_factors] == [full.downsample, coarse.downsample]  # as napari draws it
    assert pick_level([full, coarse], mpp=1.0) is coarse and pick_level([full, coarse], mpp=0.4) is full
    region = region_at_level(coarse, (10.0, 40.0, 100.0, 200.0))
    assert (region.y0, region.y1, region.x0, region.x1) == (5, 50, 10, 50)
    assert region.scale == (2, 4) and region.translate == (10, 40)
    coarse_out = tmp_path / "aniso.ome.zarr"
    segment_slide("random-tiny", slide / "head.safetensors", tmp_path / "aniso.ome.tif", coarse_out, level=1)
    assert get_reader(str(coarse_out))(str(coarse_out))[0][1]["scale"] == (2, 4)  # laid over the slide per axis
    # odd sizes: a 257 x 385 slide whose level 1 is 128 x 192 shrank by 2.008 and 2.005
    odd = np.pad(img, ((0, 1), (0, 1), (0, 0)), mode="edge")
    _write_tiff(tmp_path / "odd.ome.tif", odd, coarser=odd[::2, ::2][:128, :192])
    _, half = slide_levels(tmp_path / "odd.ome.tif")
    assert half.downsample == (257 / 128, 385 / 192)
    assert region_at_level(half, (0, 0, 257, 385)).shape == (128, 192)
    out = tmp_path / "odd.ome.zarr"
    segment_slide("random-tiny", slide / "head.safetensors", tmp_path / "odd.ome.tif", out, chunk=CHUNK, level=0)
    [(levels, meta, _)] = get_reader(str(out))(str(out))
    datasets = zarr.open_group(str(out), mode="r").attrs["multiscales"][0]["datasets"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in datasets]
    assert [lv.shape for lv in levels] == [(257, 385), (129, 193)] and scales == [[1, 1], [257 / 129, 385 / 193]]
    labels = Labels(levels, **meta)
    np.testing.assert_allclose(labels.downsample_factors * labels.scale, scales)  # the file and napari agree


def test_a_region_of_the_view_maps_to_the_chosen_level(slide):
    full, half = slide_levels(slide / "slide.ome.tif")
    region = region_at_level(half, (10.5, -20.0, 101.0, 150.0))
    assert (region.y0, region.y1, region.x0, region.x1) == (5, 51, 0, 75)
    assert region.scale == (2.0, 2.0) and region.translate == (10.0, 0.0)
    assert region_at_level(full, (0, 0, 1e6, 1e6)).shape == (H, W)  # clipped to the slide
    with pytest.raises(UserError, match="shows none of the slide"):
        region_at_level(full, (-50, -50, -1, -1))
    with pytest.raises(UserError, match="zoom in, or segment the whole slide"):
        region_at_level(full, (0, 0, 100, 100), max_pixels=99 * 99)


def test_only_a_backbone_another_process_can_load_is_referenced(tmp_path):
    from napari_mdm.checkpoint import backbone_reference, load_backbone, save_backbone

    assert backbone_reference(random_backbone("tiny")) == "random-tiny"
    with pytest.raises(UserError, match="not saved as it is"):
        backbone_reference(random_backbone("tiny", seed=3))
    other = random_backbone("tiny", seed=3)
    save_backbone(tmp_path / "b.safetensors", other.model, other.corruption)
    assert backbone_reference(load_backbone(tmp_path / "b.safetensors")) == str(tmp_path / "b.safetensors")


def test_glass_after_tissue_is_skipped_too(slide, tmp_path):
    # glass on the right third: the chunks next to the tissue's last column hold no tissue
    _write_tiff(tmp_path / "mirrored.ome.tif", np.ascontiguousarray(_tissue()[:, ::-1]))
    result = segment_slide(
        "random-tiny", slide / "head.safetensors", tmp_path / "mirrored.ome.tif", tmp_path / "m.ome.zarr", chunk=CHUNK
    )
    assert (result.chunks, result.no_tissue, result.computed) == (6, 2, 4)


def test_a_cancelled_slide_job_resumes_and_ends_as_an_uninterrupted_one(slide, tmp_path):
    whole = _segment(slide, tmp_path / "whole.ome.zarr")
    progressed = []
    with pytest.raises(Cancelled):
        _segment(
            slide,
            tmp_path / "cut.ome.zarr",
            progress=lambda done, total, info: progressed.append(done),
            should_stop=lambda: len(progressed) >= 2,
        )
    again = _segment(slide, tmp_path / "cut.ome.zarr")
    assert again.resumed >= 2 and again.resumed + again.computed == whole.computed
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "cut.ome.zarr/0"))[:], zarr.open_array(str(tmp_path / "whole.ome.zarr/0"))[:]
    )


KILL_AFTER_TWO_CHUNKS = """
import os, signal, sys
from napari_mdm.slide_segmentation import segment_slide

done = []

def progress(finished, total, info):
    done.append(finished)
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no pyramid, no 'complete' flag

segment_slide("random-tiny", sys.argv[1], sys.argv[2], sys.argv[3], chunk=128, halo=16, progress=progress)
"""


def test_a_killed_slide_job_resumes_and_ends_as_an_uninterrupted_one(slide, tmp_path):
    import signal
    import subprocess
    import sys

    whole = _segment(slide, tmp_path / "whole.ome.zarr")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_TWO_CHUNKS, *map(str, (slide / "head.safetensors", slide / "slide.ome.tif"))]
        + [str(tmp_path / "killed.ome.zarr")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not zarr.open_group(str(tmp_path / "killed.ome.zarr")).attrs["napari-mdm"].get("complete")
    again = _segment(slide, tmp_path / "killed.ome.zarr")
    assert again.resumed >= 2 and again.resumed + again.computed == whole.computed
    for level in ("0", "1"):
        np.testing.assert_array_equal(
            zarr.open_array(str(tmp_path / f"killed.ome.zarr/{level}"))[:],
            zarr.open_array(str(tmp_path / f"whole.ome.zarr/{level}"))[:],
        )


def test_the_same_graph_runs_on_a_two_worker_cluster(slide, tmp_path):
    distributed = pytest.importorskip("distributed")
    _segment(slide, tmp_path / "local.ome.zarr", workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = _segment(slide, tmp_path / "cluster.ome.zarr", scheduler=cluster.scheduler_address)
    assert result.computed == 4
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "cluster.ome.zarr/0"))[:], zarr.open_array(str(tmp_path / "local.ome.zarr/0"))[:]
    )


def test_the_dashboard_shows_one_stage_of_tiles_named_by_their_corner(slide, tmp_path):
    distributed = pytest.importorskip("distributed")
    from dask.utils import key_split

    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as stream,
    ):
        result = _segment(slide, tmp_path / "seen.ome.zarr", scheduler=client)
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    keys = [task["key"] for task in stream.data]
    assert prefixes == ["segment-tile"] and {key_split(k) for k in keys} == {"segment-tile"}
    corners = sorted(tuple(int(v) for v in k.rsplit("-", 2)[1:]) for k in keys)
    assert len(corners) == result.computed == 4
    assert all(zarr.open_group(str(tmp_path / "seen.ome.zarr"))["0"][y, x] > 0 for y, x in corners)  # written


def test_the_cli_segments_a_slide_and_refuses_to_mix_jobs(slide, tmp_path, capsys):
    args = [
        "segment-slide",
        "--backbone",
        "random-tiny",
        "--head",
        str(slide / "head.safetensors"),
        "--slide",
        str(slide / "slide.ome.tif"),
        "--out",
        str(tmp_path / "out.ome.zarr"),
        "--chunk",
        "128",
    ]
    assert main(args) == 0 and "4 chunks segmented" in capsys.readouterr().out
    assert main(args) == 0 and "4 done by an earlier run" in capsys.readouterr().out
    assert main([*args[:-2], "--chunk", "256"]) == 2
    assert "a slide job with another chunk: it cannot resume; pass --overwrite" in capsys.readouterr().err
    (tmp_path / "notes.ome.zarr").mkdir()
    (tmp_path / "notes.ome.zarr" / "notes.txt").write_text("mine")
    assert main([*args[:-3], str(tmp_path / "notes.ome.zarr"), "--overwrite"]) == 2
    assert "is a folder of other files, and napari-mdm never replaces one; choose another --out" in (
        capsys.readouterr().err
    )
    assert (tmp_path / "notes.ome.zarr" / "notes.txt").read_text() == "mine"
