"""Whole-slide segmentation figures (issue 17): a synthetic slide made of real GlaS/MoNuSeg tiles on
glass, segmented by ``segment_slide`` on a dask LocalCluster of 1 and 2 worker processes.

Prints and writes seconds per megapixel of tissue, peak RSS per worker (should stay flat as the
slide grows) and the speed-up from 1 to 2 workers:

    python -m benchmarks.slides --sides 2048 5120 --features filters      # engine figures
    python -m benchmarks.slides --sides 1024 --features diffusion+filters  # the default head's cost
    python -m benchmarks.slides --quick                                    # CI-sized
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from benchmarks import data
from napari_mdm.checkpoint import default_backbone_name, load_backbone
from napari_mdm.feature_sets import FEATURE_SETS
from napari_mdm.features import FeatureConfig
from napari_mdm.head import HeadConfig
from napari_mdm.io import read_image, read_labels
from napari_mdm.pipeline import train_head
from napari_mdm.slide_segmentation import segment_slide

BLOCK = 512
GLASS = np.array([242, 240, 245], np.float32)
RESULTS = Path(__file__).resolve().parent / "results"


def _sources(seed: int) -> list[np.ndarray]:
    """uint8 RGB training images to cut tissue blocks from (synthetic texture without the data)."""
    if data.available():
        samples = [s.image for name in ("glas", "monuseg") for s in data.load_split(name).train[:6]]
        return [(read_image(p) * 255).astype(np.uint8) for p in samples]
    rng = np.random.default_rng(seed)
    return [(rng.random((600, 600, 3)) * 120 + 60).astype(np.uint8)]


def _in_section(by: int, bx: int, n: int, tissue: float) -> bool:
    """Whether block (by, bx) of an n x n grid lies in the section: one round piece of tissue in
    the middle of the glass covering the fraction ``tissue`` of it, as a biopsy on a slide does
    (tissue spread evenly over the glass would make every chunk a tissue chunk)."""
    radius = n * np.sqrt(tissue / np.pi)
    return (by + 0.5 - n / 2) ** 2 + (bx + 0.5 - n / 2) ** 2 <= radius**2


def _block(sources: list[np.ndarray], by: int, bx: int, n: int, tissue: float, seed: int) -> np.ndarray:
    """The full-resolution block at (by, bx): a tissue crop or glass, the same on every call."""
    rng = np.random.default_rng([seed, by, bx])
    if not _in_section(by, bx, n, tissue):
        return np.clip(GLASS + rng.normal(0, 2, (BLOCK, BLOCK, 3)), 0, 255).astype(np.uint8)
    src = sources[rng.integers(len(sources))]
    y, x = rng.integers(src.shape[0] - BLOCK + 1), rng.integers(src.shape[1] - BLOCK + 1)
    return src[y : y + BLOCK, x : x + BLOCK]


def build_slide(path: Path, side: int, tissue: float = 0.1, seed: int = 0) -> None:
    """A pyramidal OME-TIFF of ``side`` x ``side`` pixels (levels 1/1, 1/4, 1/16), written block by block."""
    sources = _sources(seed)
    n = -(-side // BLOCK)

    def tiles(step: int):
        size = BLOCK // step
        for by in range(0, n, 1):
            for bx in range(n):
                yield _block(sources, by, bx, n, tissue, seed)[::step, ::step][:size, :size]

    with tifffile.TiffWriter(path, ome=True, bigtiff=True) as tif:
        for i, step in enumerate((1, 4, 16)):
            shape = (n * BLOCK // step, n * BLOCK // step, 3)
            options = (
                {"subifds": 2, "metadata": {"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}}
                if i == 0
                else {"subfiletype": 1}
            )
            tif.write(
                tiles(step),
                shape=shape,
                dtype=np.uint8,
                tile=(BLOCK // step,) * 2,
                photometric="rgb",
                compression="zlib",
                **options,
            )


def _head(backbone, features: str, root: Path) -> Path:
    """A head trained on one labelled training image (full mask), saved for the workers."""
    if data.available():
        sample = data.load_split("glas").train[0]
        image, mask = read_image(sample.image), read_labels(sample.mask).astype(np.uint8) + 1
    else:
        rng = np.random.default_rng(0)
        image = rng.random((256, 256, 3)).astype(np.float32)
        mask = (image[..., 0] > 0.5).astype(np.uint8) + 1
    head = train_head(backbone, [image], [mask], FeatureConfig(**FEATURE_SETS[features]), HeadConfig(), ignore=None)
    head.save(root / "head.safetensors")
    return root / "head.safetensors"


def _worker_state() -> tuple[float, int]:
    """Peak RSS (MiB) and torch threads of the calling worker process."""
    import torch

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, torch.get_num_threads()


def tissue_megapixels(side: int, tissue: float) -> float:
    """Megapixels of tissue on a slide :func:`build_slide` made (its section's blocks)."""
    n = -(-side // BLOCK)
    blocks = sum(_in_section(by, bx, n, tissue) for by in range(n) for bx in range(n))
    return blocks * BLOCK * BLOCK / 1e6


def measure(side: int, workers: int, backbone: str, head: Path, root: Path, tissue: float) -> dict:
    """One slide segmented on a fresh LocalCluster of ``workers`` single-threaded processes."""
    from distributed import Client, LocalCluster

    slide = root / f"slide_{side}.ome.tif"
    if not slide.exists():
        build_slide(slide, side, tissue)
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        start = time.perf_counter()
        result = segment_slide(
            backbone, head, slide, root / f"out_{side}_{workers}.ome.zarr", scheduler=client, overwrite=True
        )
        seconds = time.perf_counter() - start
        states = list(client.run(_worker_state).values())
    tissue_mp = tissue_megapixels(side, tissue)
    return {
        "side": side,
        "workers": workers,
        "seconds": round(seconds, 1),
        "chunks": result.chunks,
        "tissue_chunks": result.computed,
        "tissue_megapixels": round(tissue_mp, 1),
        "seconds_per_tissue_megapixel": round(seconds / max(tissue_mp, 1e-9), 2),
        "peak_rss_mib_per_worker": [round(peak) for peak, _ in states],
        "torch_threads_per_worker": [threads for _, threads in states],
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 5120])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--features", choices=list(FEATURE_SETS), default="filters")
    parser.add_argument("--quick", action="store_true", help="one 2048-px slide, filter-bank head, 1 and 2 workers")
    parser.add_argument("--tissue", type=float, default=0.1, help="fraction of the glass the section covers")
    parser.add_argument("--keep", type=Path, default=None, help="keep slides, head and outputs in this folder")
    parser.add_argument("--name", default=None, help="results/NAME.json and .md (default: slides_<features>)")
    args = parser.parse_args(argv)
    sides = [2048] if args.quick else args.sides
    features = "filters" if args.quick else args.features
    backbone = default_backbone_name()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        head = _head(load_backbone(backbone), features, root)
        for side in sides:
            for workers in args.workers:
                rows.append(measure(side, workers, backbone, head, root, args.tissue))
                print(json.dumps(rows[-1]), flush=True)
                if not args.quick:  # after every row: a stopped run keeps what it measured
                    _write(rows, args.name or f"slides_{features}", features, backbone, argv)
    return rows


def _write(rows: list[dict], name: str, features: str, backbone: str, argv: list[str] | None) -> None:
    command = "python -m benchmarks.slides " + shlex.join(sys.argv[1:] if argv is None else argv)
    RESULTS.joinpath(f"{name}.json").write_text(
        json.dumps({"command": command, "features": features, "backbone": backbone, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        f"# Whole-slide segmentation ({features} head, backbone {backbone})",
        "",
        f"`{command}`",
        "",
        "| slide | workers | seconds | tissue MP | chunks computed | s per tissue MP | peak RSS per worker (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['side']}² | {r['workers']} | {r['seconds']} | {r['tissue_megapixels']} | "
        f"{r['tissue_chunks']}/{r['chunks']} | "
        f"{r['seconds_per_tissue_megapixel']} | {', '.join(map(str, r['peak_rss_mib_per_worker']))} |"
        for r in rows
    ]
    RESULTS.joinpath(f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
