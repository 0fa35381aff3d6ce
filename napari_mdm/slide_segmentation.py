"""Whole-slide segmentation as a dask graph: one task per output chunk (its region read with a
halo so chunk borders see real context), run by dask's local scheduler or a dask.distributed
cluster, written into an OME-Zarr label image (NGFF 0.4 ``image-label`` with a multiscale
pyramid) that napari opens lazily as Labels.

Nothing is lost at scale: each finished chunk leaves a marker, so a killed or cancelled job
started again with the same settings skips what is done; tiles with no tissue (white glass) are
never computed and stay 0. Workers load the backbone and head once per process, by reference
(a checkpoint path or shipped name, and a head file), so the graph itself is small.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .files import OVERWRITE, is_zarr_store, plan_outputs
from .jobs import Cancelled, ProgressFn, Remedy, StopFn, UserError, check_stop, report
from .slides import SlideLevel, SlideRegion

NGFF_VERSION = "0.4"
DONE_DIR = ".napari-mdm-done"
TISSUE_OPTICAL_DENSITY = 0.15
"""A pixel is tissue when its darkest channel's optical density (-log10 of the [0, 1] intensity)
exceeds this: bare glass is near 0.05, pale stroma 0.2 and more."""


@dataclass(frozen=True)
class SlideJob:
    """Everything a worker needs for a chunk, by value (the graph is sent to other processes)."""

    slide: str
    level: int
    backbone: str
    head: str
    device: str
    out: str
    chunk: int
    halo: int
    uncertainty: bool

    def signature(self) -> dict:
        """What must match for a restarted job to reuse finished chunks."""
        from .checkpoint import RANDOM_PREFIX, file_digest, resolve_checkpoint

        built_in = self.backbone.startswith(RANDOM_PREFIX) and not Path(self.backbone).exists()
        return {
            "slide": str(Path(self.slide).resolve()),
            "level": self.level,
            "chunk": self.chunk,
            "halo": self.halo,
            "head": file_digest(self.head),
            "uncertainty": self.uncertainty,
            "backbone": self.backbone if built_in else file_digest(resolve_checkpoint(self.backbone)),
        }


@dataclass
class SlideResult:
    out: Path
    chunks: int
    computed: int
    resumed: int
    """Chunks finished by an earlier run and skipped."""
    no_tissue: int
    seconds: float


SLIDE_CHUNK, SLIDE_HALO = 896, 64
"""Output chunk side (one dask task, progress step and resume unit each) and the context read
around it. Each task reads 1024² pixels: 2 x 2 overlapping network tiles of 576 on the coarse grid,
whose 656-channel features (0.7 GB as int8 codes) are blended whole, so the filter bank and the head
run once per pixel (``inference.WHOLE_IMAGE_FEATURES_BYTES``). A 1024 chunk reads 1152²: 3 x 3
network tiles of 512, 1.8x its pixels instead of 1.3x (its features, 0.9 GB, are held whole since
they are int8; with float16 they were not, and it took 49 against about 20 s a chunk at 1 thread)."""


@lru_cache(maxsize=4)
def _level(slide: str, level: int):
    """A worker's open slide level (the file stays open for its next chunks)."""
    from .slides import open_slide

    return open_slide(slide, level=level)[0]


@lru_cache(maxsize=4)
def _models(backbone: str, head: str, device: str):
    """The backbone and head of a worker process, loaded on its first chunk only."""
    from .checkpoint import load_backbone
    from .devices import resolve_device
    from .head import Head

    return load_backbone(backbone, device=resolve_device(device)), Head.load(head)


def chunk_grid(shape: tuple[int, int], chunk: int) -> list[tuple[int, int]]:
    """Top-left corners of the output chunks covering ``shape``."""
    return [(y, x) for y in range(0, shape[0], chunk) for x in range(0, shape[1], chunk)]


def _marker(out: Path, y: int, x: int) -> Path:
    return out / DONE_DIR / f"{y}_{x}"


def _segment_region(backbone, head, source, y0: int, y1: int, x0: int, x1: int, halo: int, **job):
    """Labels and uncertainty of rows y0:y1, columns x0:x1 of ``source``, computed with ``halo``
    pixels of real context around them (so the region's border looks like its inside)."""
    from .features import Frame
    from .inference import segment

    h, w = source.shape
    ry0, rx0 = max(0, y0 - halo), max(0, x0 - halo)
    ry1, rx1 = min(h, y1 + halo), min(w, x1 + halo)
    frame = Frame(ry0, rx0, h, w)  # position channels, if the head reads them, are the slide's
    prediction = segment(backbone, head, source.region(ry0, ry1, rx0, rx1), frame=frame, **job)
    crop = np.s_[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
    return prediction.labels[crop], prediction.uncertainty[crop]


def segment_chunk(job: SlideJob, y: int, x: int) -> tuple[int, int]:
    """Segment the output chunk at (y, x): its region plus a halo, cropped back and written."""
    import zarr

    backbone, head = _models(job.backbone, job.head, job.device)
    source = _level(job.slide, job.level)
    y1, x1 = min(y + job.chunk, source.shape[0]), min(x + job.chunk, source.shape[1])
    labels, uncertainty = _segment_region(backbone, head, source, y, y1, x, x1, job.halo)
    group = zarr.open_group(job.out, mode="r+")
    group["0"][y:y1, x:x1] = labels
    if job.uncertainty:
        group["uncertainty"]["0"][y:y1, x:x1] = uncertainty
    _marker(Path(job.out), y, x).touch()
    return y, x


def level_for_head(levels: list[SlideLevel], head, level: int | None = None, mpp: float | None = None) -> SlideLevel:
    """Level ``level``, else the one nearest ``mpp``, else the one nearest the mpp the head was
    trained at, else full resolution."""
    from .slides import pick_level

    return pick_level(levels, level, mpp if mpp is not None or level is not None else head.context.mpp)


def visible_region(
    slide: str | os.PathLike, head, box: tuple[float, float, float, float], level: int | None = None
) -> SlideRegion:
    """The region of a slide a viewer shows, ``box`` (top, left, bottom, right in level-0 pixels),
    at the level :func:`level_for_head` picks; a UserError when it misses the slide or is too big."""
    from .slides import region_at_level, slide_levels

    return region_at_level(level_for_head(slide_levels(slide), head, level), box)


def segment_slide_region(
    backbone,
    head,
    slide: str | os.PathLike,
    region: SlideRegion,
    *,
    halo: int = SLIDE_HALO,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and uncertainty of one region of a slide (:func:`visible_region`), its level scaled
    as the whole-slide job scales it and read with a halo of context."""
    from .slides import open_slide

    source, _ = open_slide(slide, level=region.level.index)
    job = {"progress": progress, "should_stop": should_stop}
    return _segment_region(backbone, head, source, region.y0, region.y1, region.x0, region.x1, halo, **job)


def tissue_chunks(slide: str, levels: list[SlideLevel], level: int, chunk: int) -> set[tuple[int, int]]:
    """Chunks of ``level`` that hold any tissue, judged on the slide's smallest level (``levels``
    as :func:`~napari_mdm.slides.slide_levels` gave them)."""
    from .slides import open_slide

    thumb_level = levels[-1]
    thumb, _ = open_slide(slide, level=thumb_level.index)
    pixels = thumb.read()
    density = -np.log10(np.clip(pixels, 1e-3, 1)).max(axis=-1)
    ty, tx = np.nonzero(density > TISSUE_OPTICAL_DENSITY)
    target = levels[level]
    sy = target.shape[0] / thumb_level.shape[0]
    sx = target.shape[1] / thumb_level.shape[1]
    found = set()
    for last_y in (False, True):  # a thumbnail pixel covers up to two chunks per axis: those of
        for last_x in (False, True):  # its first and its last target pixel (not the next one's)
            cy = _target_pixel(ty, sy, target.shape[0], last_y) // chunk
            cx = _target_pixel(tx, sx, target.shape[1], last_x) // chunk
            found.update(zip((cy * chunk).tolist(), (cx * chunk).tolist(), strict=True))
    return found


def _target_pixel(thumb: np.ndarray, scale: float, size: int, last: bool) -> np.ndarray:
    """The first (or last) pixel of the target level that thumbnail pixels ``thumb`` cover."""
    pixel = np.ceil((thumb + 1) * scale).astype(int) - 1 if last else (thumb * scale).astype(int)
    return np.minimum(pixel, size - 1)


def _multiscales(shapes: list[tuple[int, int]], name: str, downsample: tuple[float, float]) -> list[dict]:
    """NGFF multiscales whose scales are in the slide's level-0 pixels, per axis (level 0 of a job
    at slide level k has that level's downsample; each coarser level its size ratio to level 0,
    as napari scales it), so a viewer lays the output over the slide."""
    (h, w), (dy, dx) = shapes[0], downsample
    return [
        {
            "version": NGFF_VERSION,
            "name": name,
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [
                {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [dy * h / sh, dx * w / sw]}]}
                for i, (sh, sw) in enumerate(shapes)
            ],
        }
    ]


def _create_levels(group, shapes: list[tuple[int, int]], chunk: int, dtype, fill) -> None:
    for i, level_shape in enumerate(shapes):
        group.create_array(str(i), shape=level_shape, chunks=(chunk, chunk), dtype=dtype, fill_value=fill)


def pyramid_shapes(shape: tuple[int, int], smallest: int = 256) -> list[tuple[int, int]]:
    """Level shapes halving until the longer side is at most ``smallest``."""
    shapes = [shape]
    while max(shapes[-1]) > smallest:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


ANOTHER_OUTPUT = Remedy(cli="choose another --out", plugin="choose another folder under 'save to'")


def _existing_job(out: Path) -> dict | None:
    """The job signature an existing output was written by, None when it is not our label image."""
    import zarr

    try:
        return dict(zarr.open_group(str(out), mode="r").attrs).get("napari-mdm", {}).get("job")
    except Exception:  # noqa: BLE001 (not a zarr group at all)
        return None


def _check_existing(out: Path, signature: dict, overwrite: bool) -> bool:
    """True when ``out`` is this job's output, to resume; a UserError when it is something that
    may not be replaced (a folder of other files) or that replacing was not asked for."""
    theirs, ours = _existing_job(out), json.loads(json.dumps(signature))
    if theirs == ours:
        return True
    if out.is_dir() and not is_zarr_store(out):
        raise UserError(f"{out} is a folder of other files, and napari-mdm never replaces one", ANOTHER_OUTPUT)
    if not overwrite and theirs is None:
        raise UserError(f"{out} exists and is not the output of a napari-mdm slide job", OVERWRITE)
    if not overwrite:
        other = ", ".join(key for key in ours if theirs.get(key) != ours[key])
        raise UserError(f"{out} holds the output of a slide job with another {other}: it cannot resume", OVERWRITE)
    return False


def _prepare_output(job: SlideJob, level: SlideLevel, dtype: np.dtype, overwrite: bool) -> None:
    """Create the OME-Zarr label image, or check that an existing one is this job's (to resume)."""
    import zarr

    out, signature = Path(job.out), job.signature()
    if out.exists() and _check_existing(out, signature, overwrite):
        return
    # only a zarr store may be replaced, never a folder of other files or an input
    plan_outputs([out], [p for p in (job.slide, job.head, job.backbone) if Path(p).exists()], overwrite)
    if out.exists():
        import shutil

        shutil.rmtree(out) if out.is_dir() else out.unlink()
    group = zarr.open_group(str(out), mode="w", zarr_format=2)
    shapes = pyramid_shapes(level.shape)
    _create_levels(group, shapes, job.chunk, dtype, 0)
    if job.uncertainty:
        maps = group.create_group("uncertainty")
        _create_levels(maps, shapes, job.chunk, "float32", 0.0)
        maps.attrs["multiscales"] = _multiscales(shapes, "uncertainty", level.downsample)
    group.attrs.update(
        {
            "multiscales": _multiscales(shapes, out.name, level.downsample),
            "image-label": {"version": NGFF_VERSION, "source": {"image": job.slide}},
            "napari-mdm": {"job": signature, "complete": False},
        }
    )
    (out / DONE_DIR).mkdir()


def build_pyramid(out: str | os.PathLike, should_stop: StopFn | None = None) -> None:
    """Fill levels 1.. of the label image (and of the uncertainty) from level 0, taking every
    second pixel: labels are not averaged."""
    import zarr

    root = zarr.open_group(str(out), mode="r+")
    maps = root["uncertainty"] if "uncertainty" in root else None
    for group in (root, maps) if maps is not None and "multiscales" in maps.attrs else (root,):
        paths = [d["path"] for d in group.attrs["multiscales"][0]["datasets"]]
        for finer, coarser in zip(paths[:-1], paths[1:], strict=True):
            src, dst = group[finer], group[coarser]
            step = src.chunks[0] * 2
            for y in range(0, src.shape[0], step):
                check_stop(should_stop)
                dst[y // 2 : (y + step) // 2] = src[y : y + step : 2, ::2]


TASK_PREFIX = "segment-tile"
"""What the dask dashboard names a slide job's tasks: its progress bars and task stream group
tasks by the key's words before the first token, so every tile of every job counts as one stage."""


def tile_tasks(job: SlideJob, corners: list[tuple[int, int]]) -> list:
    """One delayed :func:`segment_chunk` per tile, keyed ``segment-tile-RUN-Y-X`` (RUN tells
    apart runs that share a cluster; Y, X the tile's corner in the level's pixels)."""
    import dask

    run = uuid.uuid4().hex
    return [
        dask.delayed(segment_chunk, pure=False)(job, y, x, dask_key_name=f"{TASK_PREFIX}-{run}-{y}-{x}")
        for y, x in corners
    ]


def _run_local(tasks: list, workers: int, progress: ProgressFn | None, should_stop: StopFn | None) -> None:
    """dask's threaded scheduler, with progress per finished chunk and cancel between chunks."""
    import dask
    import torch
    from dask.callbacks import Callback

    done = [0]

    class Progress(Callback):
        def _posttask(self, key, result, dsk, state, id):  # noqa: A002  (dask's signature)
            if isinstance(result, tuple) and len(result) == 2:
                done[0] += 1
                report(progress, done[0], len(tasks), f"chunk {done[0]}/{len(tasks)}")

        def _pretask(self, key, dsk, state):
            check_stop(should_stop)

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))  # the workers share the cores
    try:
        with Progress():
            dask.compute(*tasks, scheduler="threads", num_workers=workers)
    finally:
        torch.set_num_threads(threads)


def _run_distributed(tasks: list, scheduler, progress: ProgressFn | None, should_stop: StopFn | None) -> None:
    """The same graph on a dask.distributed cluster (an address or a Client)."""
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = client.compute(tasks)
        for i, future in enumerate(as_completed(futures), 1):
            future.result()  # a failed chunk raises here
            report(progress, i, len(futures), f"chunk {i}/{len(futures)}")
            if should_stop is not None and should_stop():
                client.cancel(futures)
                raise Cancelled("cancelled by the user")
    finally:
        if client is not scheduler:
            client.close()


def segment_slide(
    backbone: str,
    head: str | os.PathLike,
    slide: str | os.PathLike,
    out: str | os.PathLike,
    *,
    level: int | None = None,
    mpp: float | None = None,
    chunk: int = SLIDE_CHUNK,
    halo: int = SLIDE_HALO,
    tissue: bool = True,
    uncertainty: bool = False,
    scheduler=None,
    workers: int = 1,
    device: str = "auto",
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> SlideResult:
    """Segment one level of a slide into the OME-Zarr label image ``out``.

    ``backbone`` is a checkpoint path or shipped name and ``head`` a head file, so each worker
    loads them itself. The level is ``level``, else the one nearest ``mpp`` microns per pixel,
    else the head's recorded mpp, else full resolution. ``scheduler``: None runs dask's local
    threaded scheduler with ``workers`` threads; an address or a ``distributed.Client`` runs the
    graph on that cluster. Started again after a kill or cancel, it skips the finished chunks.
    """
    from .head import Head
    from .io import label_dtype
    from .slides import slide_levels

    if chunk < 64 or halo < 0 or workers < 1:
        raise UserError(f"chunk must be at least 64 (got {chunk}), halo at least 0 ({halo}), workers at least 1")
    start = time.perf_counter()
    trained = Head.load(head)
    levels = slide_levels(slide)
    chosen = level_for_head(levels, trained, level, mpp)
    job = SlideJob(str(slide), chosen.index, str(backbone), str(head), device, str(out), chunk, halo, uncertainty)
    _prepare_output(job, chosen, label_dtype(max(trained.class_values)), overwrite)
    grid = chunk_grid(chosen.shape, chunk)
    wanted = tissue_chunks(job.slide, levels, job.level, chunk) if tissue else set(grid)
    todo = [(y, x) for y, x in grid if (y, x) in wanted and not _marker(Path(out), y, x).exists()]
    resumed = sum((y, x) in wanted for y, x in grid) - len(todo)
    tasks = tile_tasks(job, todo)
    if scheduler is None:
        _run_local(tasks, workers, progress, should_stop)
    else:
        _run_distributed(tasks, scheduler, progress, should_stop)
    build_pyramid(out, should_stop)
    _mark_complete(out)
    return SlideResult(Path(out), len(grid), len(todo), resumed, len(grid) - len(wanted), time.perf_counter() - start)


def _mark_complete(out: str | os.PathLike) -> None:
    import zarr

    group = zarr.open_group(str(out), mode="r+")
    group.attrs["napari-mdm"] = {**group.attrs["napari-mdm"], "complete": True}
