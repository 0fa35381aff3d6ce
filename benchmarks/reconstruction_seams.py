"""Reconstructions larger than a tile (issue 15): seams at tile edges with the old blending window
(a Gaussian cut at 2 sigma, 13 % of its peak at the edge) and today's (faded to 0 at the edge),
and where the t = 900 colour cast comes from (the input's, the visible and the masked pixels'
mean colour against the reconstruction's, at t = 0, 500, 900). Shipped histology backbone, a
700 x 700 crop of a MoNuSeg training image, tiles of 512 (four: at 0 and 188 on each axis).
``python -m benchmarks.reconstruction_seams`` (about 4 minutes on one CPU core)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from benchmarks.data import DATA_ROOT
from napari_mdm import tiling
from napari_mdm.checkpoint import load_backbone
from napari_mdm.corruption import hashed_patch_mask
from napari_mdm.reconstruction import reconstruct

IMAGE = DATA_ROOT / "monuseg" / "train" / "TCGA-18-5592-01Z-00-DX1.png"
SIZE, TILE, EDGES = 700, 512, (188, 512)
RESULTS = Path(__file__).parent / "results" / "reconstruction_seams"


@lru_cache(maxsize=16)
def old_window(h: int, w: int) -> np.ndarray:
    """The window before the fix, for the comparison."""

    def axis(n: int) -> np.ndarray:
        return np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / max(n / 4, 1e-6)) ** 2)

    win = np.outer(axis(h), axis(w)).astype(np.float32)
    return np.maximum(win / win.max(), 1e-3)


def edge_steps(tiled: np.ndarray, whole: np.ndarray) -> dict[str, float]:
    """Step of (tiled - one-tile) across each tile edge over its median step nearby (1 = no seam)."""
    diff, out = tiled - whole, {}
    for axis, name in ((0, "row"), (1, "column")):
        step = np.abs(np.diff(diff, axis=axis)).mean(axis=(1 - axis, 2))
        for edge in EDGES:
            near = [k for k in range(edge - 33, edge + 32) if abs(k - edge + 1) > 2]
            out[f"{name} {edge}"] = round(float(step[edge - 1] / np.median(step[near])), 2)
    return out


def colours(image: np.ndarray, rec: np.ndarray, t: int, patch: int) -> dict[str, list[float]]:
    masked = hashed_patch_mask(0, 0, SIZE, SIZE, t / 1000, patch, 0).astype(bool)
    stats = {"input": image.reshape(-1, 3).mean(0), "reconstruction": rec.reshape(-1, 3).mean(0)}
    if masked.any() and (~masked).any():
        stats["reconstruction, visible pixels"] = rec[~masked].mean(0)
        stats["reconstruction, masked pixels"] = rec[masked].mean(0)
    return {k: [round(float(c), 3) for c in v] for k, v in stats.items()}


def main() -> None:
    image = iio.imread(IMAGE)[:SIZE, :SIZE, :3].astype(np.float32) / 255
    backbone = load_backbone("histology")
    _, whole = reconstruct(backbone, image, [0, 500, 900], tile=SIZE + 4)
    result = {"image": f"{IMAGE.name}[:{SIZE}, :{SIZE}]", "tile": TILE, "seams_t900": {}, "colours": {}}
    fixed = tiling.gaussian_window
    for name, window in (("before (Gaussian cut at the edge)", old_window), ("after (faded to 0)", fixed)):
        tiling.gaussian_window = window
        _, [tiled] = reconstruct(backbone, image, [900], tile=TILE)
        result["seams_t900"][name] = edge_steps(tiled, whole[2])
    tiling.gaussian_window = fixed
    for i, t in enumerate((0, 500, 900)):
        result["colours"][f"t={t}"] = colours(image, whole[i], t, backbone.corruption.patch_size)
    pretrain = [iio.imread(p)[..., :3].reshape(-1, 3).mean(0) / 255 for p in sorted((DATA_ROOT / "pretrain").glob("*"))]
    result["pretraining mean colour"] = [round(float(c), 3) for c in np.mean(pretrain, axis=0)]
    RESULTS.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# Reconstruction seams and colour ({result['image']}, tiles of {TILE}, histology backbone)", ""]
    lines += ["Step across each tile edge of (tiled - one tile) over its median nearby (1 = no seam), t = 900:", ""]
    lines += [f"- {name}: {steps}" for name, steps in result["seams_t900"].items()]
    lines += ["", "Mean RGB in [0, 1] (one tile):", ""]
    lines += [f"- {t}: {stats}" for t, stats in result["colours"].items()]
    lines += ["", f"Pretraining images' mean RGB: {result['pretraining mean colour']}"]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
