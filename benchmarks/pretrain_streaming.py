"""Pretraining memory with streamed crops (issue 17): peak RSS of a short pretraining run on the
first N images of a folder, crops streamed from a few open images (``PretrainImages.from_files``)
against every image read into memory first (``PretrainImages.from_arrays``, what pretraining did
before). Each run is its own process, so its peak RSS is its own; the losses must agree.

    python -m benchmarks.pretrain_streaming                 # $NAPARI_MDM_DATA/pretrain, N = 29, 58, 115
    python -m benchmarks.pretrain_streaming --counts 4 8    # a quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.data import DATA_ROOT

RESULTS = Path(__file__).resolve().parent / "results"
FOLDER = DATA_ROOT / "pretrain"

RUN = """
import json, resource, sys
from napari_mdm.io import collect_images
from napari_mdm.pretrain import PretrainConfig, pretrain
from napari_mdm.pretrain_images import PretrainImages
from napari_mdm.inference import open_planes
mode, folder, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
paths = collect_images([folder])[:count]
if mode == "streamed":
    images = PretrainImages.from_files(paths)
else:
    images = PretrainImages.from_arrays([plane.read() for p in paths for plane in open_planes(p)])
result = pretrain(images, None, "tiny", config=PretrainConfig(steps=5, batch_size=4, crop=64), device="cpu")
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "loss": result.losses}))
"""


def measure(mode: str, folder: Path, count: int) -> dict:
    """Peak RSS (MiB) and losses of one run in a fresh process."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", RUN, mode, str(folder), str(count)], capture_output=True, text=True, check=True
    )
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - start, 1)}


def markdown(result: dict) -> str:
    lines = [
        "# Pretraining memory: streamed crops against images read whole",
        "",
        f"Command: `{result['command']}`  ",
        f"Folder: `{result['folder']}`; tiny preset, 5 steps of 4 crops of 64², CPU, one process per run.",
        "",
        "| images | peak RSS streamed (MiB) | peak RSS read whole (MiB) | same losses |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        same = "yes" if row["streamed"]["loss"] == row["whole"]["loss"] else "NO"
        lines.append(
            f"| {row['images']} | {row['streamed']['peak_rss_mib']:.0f} | {row['whole']['peak_rss_mib']:.0f} | {same} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--counts", type=int, nargs="+", default=[29, 58, 115])
    parser.add_argument("--name", default="pretrain_streaming")
    args = parser.parse_args(argv)
    rows = []
    for count in args.counts:
        row = {"images": count, **{mode: measure(mode, args.folder, count) for mode in ("streamed", "whole")}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    command = " ".join(["python -m benchmarks.pretrain_streaming", *(argv if argv is not None else sys.argv[1:])])
    result = {"command": command, "folder": str(args.folder), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
