"""The face benchmark (issue 16): FASSEG frontal faces, six classes (background, skin, hair, eyes,
nose, mouth), heads trained on 1, 5 or 20 labelled faces (full masks or scribbles), mean IoU over
the six classes on the 50 frontal test faces, intersection and union summed over the test set per
class; optionally cross-pose (the same heads on the multipose test faces that have masks).

Rows: the ilastik-like forest on the filter bank, the MLP head on the random-weight control
(``random-tiny`` + filter bank) and on the shipped backbones (+ filter bank), beside the MDM
paper's CelebA-19 figure (59.9 mIoU, 20 labels, FFHQ-pretrained). Faces are read at ``--scale``
(0.5 by default: about 256 x 200, the size the MDM paper's face benchmarks use).

    python -m benchmarks.faces                          # seeds 0 1 2, shots 1 5 20, ~1-2 h here
    python -m benchmarks.faces --seeds 0 --name faces_seed0
    python -m benchmarks.faces --quick                  # a smoke run: 1 scribbled face, 2 test faces
    python -m benchmarks.faces --position               # also each backbone + position channels
    python -m benchmarks.faces --backbone faces=ft.safetensors  # also a candidate checkpoint

``--position`` adds a row per backbone whose features also hold each pixel's position in the face
(``FeatureConfig.position``): the faces are roughly aligned, so where a pixel lies says much.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.data import DATA_ROOT
from benchmarks.methods import fit_forest
from napari_mdm.checkpoint import load_backbone, shipped_backbones
from napari_mdm.feature_sets import DEFAULT_FEATURE_SET, FEATURE_SETS
from napari_mdm.features import FeatureConfig, float16_features, position_channels, resolve_config
from napari_mdm.filterbank import filter_features
from napari_mdm.head import HeadConfig, fit_head
from napari_mdm.io import read_image, read_labels
from napari_mdm.scribbles import scribbles_from_mask

CLASS_NAMES = ("background", "skin", "hair", "eyes", "nose", "mouth")
CLASSES = tuple(range(1, len(CLASS_NAMES) + 1))  # mask id + 1: 0 stays "unlabelled"
FACES = DATA_ROOT / "faces"
RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"method": "MDM paper, CelebA-19 (FFHQ-pretrained, 20 labels)", "miou": 59.9}
PIXELS_PER_CLASS = 4000
"""Labelled pixels kept per class and training face (features of the rest are never stored)."""


def faces(split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of ``frontal/train``, ``frontal/test`` or ``multipose/test`` (masked ones)."""
    folder = FACES / split
    images = sorted(p for p in folder.glob("*.jpg") if p.with_name(p.stem + "_mask.png").exists())
    return [(p, p.with_name(p.stem + "_mask.png")) for p in images]


def _resize(image: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    from skimage.transform import rescale

    if scale == 1:
        return image, mask
    small = rescale(image, scale, channel_axis=-1, anti_aliasing=True).astype(np.float32)
    return small, mask[:: round(1 / scale), :: round(1 / scale)][: small.shape[0], : small.shape[1]]


def load_face(pair: tuple[Path, Path], scale: float) -> tuple[np.ndarray, np.ndarray]:
    image, mask = _resize(read_image(pair[0]), read_labels(pair[1]).astype(np.uint8), scale)
    return image, mask + 1


def training_labels(reference: np.ndarray, protocol: str, seed: int) -> np.ndarray:
    if protocol == "full":
        return reference
    # small parts (eyes, nose, mouth) get one stroke each, large ones a few; about 1-2 % of pixels
    return scribbles_from_mask(reference, strokes=(4, 4, 3, 2, 1, 1), erode=(3, 3, 3, 1, 1, 1), seed=seed)


class Features:
    """Per method, the feature map of a face: a backbone's default feature set (with ``position``,
    also that set + position channels, as NAME+position), or the filter bank."""

    def __init__(self, backbones: dict[str, object], position: bool = False):
        self.backbones, self.position = backbones, position
        self.configs = {
            name: resolve_config(b, FeatureConfig(**FEATURE_SETS[DEFAULT_FEATURE_SET])) for name, b in backbones.items()
        }

    def of(self, image: np.ndarray) -> dict[str, np.ndarray]:
        out = {"filters": filter_features(image).astype(np.float16)}
        shape = image.shape[:2]
        # position channels come last in FeatureConfig(position=True)'s features: appended here,
        # the backbone runs once for both rows
        where = position_channels(0, 0, shape, shape).numpy().astype(np.float16)
        for name, backbone in self.backbones.items():
            out[name] = float16_features(backbone, image, self.configs[name])
            if self.position:
                out[f"{name}+position"] = np.concatenate([out[name], where])
        return out


def sample_pixels(features: dict[str, np.ndarray], labels: np.ndarray, seed: int) -> dict:
    """Up to PIXELS_PER_CLASS labelled pixels per class: their features per method and labels."""
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.permutation(np.flatnonzero(labels.ravel() == c))[:PIXELS_PER_CLASS] for c in CLASSES])
    return {
        "labels": labels.ravel()[picks],
        "features": {name: f.reshape(f.shape[0], -1)[:, picks] for name, f in features.items()},
    }


def train_methods(store: list[dict], indices: list[int], head: HeadConfig, seed: int) -> dict:
    """The forest and one MLP head per backbone, trained on the stored pixels of ``indices``."""
    y = np.concatenate([store[i]["labels"] for i in indices])
    methods = {}
    for name in store[0]["features"]:
        x = np.concatenate([store[i]["features"][name] for i in indices], axis=1)
        if name == "filters":
            methods["forest"] = fit_forest(x.T, y, seed)
        else:
            methods[name] = fit_head([x[:, None, :]], [y[None]], replace(head, seed=seed), ignore=0)
    return methods


def predict(method, name: str, features: dict[str, np.ndarray]) -> np.ndarray:
    if name == "forest":
        f = features["filters"]
        return method.predict(f.reshape(f.shape[0], -1).T.astype(np.float32)).reshape(f.shape[1:])
    return method.predict(features[name]).labels


class Scores:
    """Intersection and union per class, summed over a test set, per run."""

    def __init__(self):
        self.sums: dict[tuple, np.ndarray] = {}

    def add(self, key: tuple, pred: np.ndarray, truth: np.ndarray) -> None:
        counts = self.sums.setdefault(key, np.zeros((2, len(CLASSES))))
        for i, c in enumerate(CLASSES):
            p, t = pred == c, truth == c
            counts[0, i] += np.logical_and(p, t).sum()
            counts[1, i] += np.logical_or(p, t).sum()

    def miou(self, key: tuple) -> tuple[float, list[float]]:
        inter, union = self.sums[key]
        per_class = 100 * inter / np.maximum(union, 1)
        return float(per_class.mean()), [round(float(v), 1) for v in per_class]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args: argparse.Namespace) -> list[dict]:
    backbones = {"random-tiny": load_backbone("random-tiny")}
    backbones.update({name: load_backbone(name) for name in shipped_backbones()})
    backbones.update({name: load_backbone(path) for name, path in args.backbones})
    feats = Features(backbones, args.position)
    train = faces("frontal/train")[: args.max_train]
    stores = {p: [] for p in args.protocols}
    for i, pair in enumerate(train):
        image, reference = load_face(pair, args.scale)
        features = feats.of(image)
        for protocol in args.protocols:
            stores[protocol].append(sample_pixels(features, training_labels(reference, protocol, i), i))
        log(f"train features {i + 1}/{len(train)}")
    runs = {}
    for protocol in args.protocols:
        for shots in args.shots:
            for seed in args.seeds:
                indices = sorted(np.random.default_rng(seed).permutation(len(train))[: min(shots, len(train))])
                runs[(protocol, shots, seed)] = train_methods(stores[protocol], indices, args.head, seed)
        log(f"heads trained ({protocol})")
    scores = Scores()
    for test_set in args.test_sets:
        tests = faces(test_set)[: args.max_test]
        for k, pair in enumerate(tests):
            image, truth = load_face(pair, args.scale)
            if image.shape[:2] != truth.shape:  # 4 multipose masks are narrower or wider than their face
                log(f"{test_set}: skipped {pair[0].name}: its mask is {truth.shape}, the face {image.shape[:2]}")
                continue
            features = feats.of(image)
            for run_key, methods in runs.items():
                for name, method in methods.items():
                    scores.add((test_set, name, *run_key), predict(method, name, features), truth)
            log(f"{test_set}: tested {k + 1}/{len(tests)}")
    return [
        {
            "test_set": key[0],
            "method": key[1],
            "protocol": key[2],
            "shots": key[3],
            "seed": key[4],
            "miou": scores.miou(key)[0],
            "per_class": scores.miou(key)[1],
        }
        for key in scores.sums
    ]


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["test_set"], r["method"], r["protocol"], r["shots"]), []).append(r)
    return [
        {
            "test_set": t,
            "method": m,
            "protocol": p,
            "shots": s,
            "mean": float(np.mean([r["miou"] for r in rs])),
            "std": float(np.std([r["miou"] for r in rs])),
            "seeds": len(rs),
            "per_class": [round(float(v), 1) for v in np.mean([r["per_class"] for r in rs], axis=0)],
        }
        for (t, m, p, s), rs in sorted(groups.items())
    ]


def write(name: str, command: str, rows: list[dict], summary: list[dict], args: argparse.Namespace) -> None:
    RESULTS.joinpath(f"{name}.json").write_text(
        json.dumps(
            {
                "command": command,
                "scale": args.scale,
                "classes": CLASS_NAMES,
                "paper": PAPER,
                "summary": summary,
                "runs": rows,
            },
            indent=2,
        )
        + "\n"
    )
    lines = [
        f"# Faces: FASSEG, mIoU % over {len(CLASSES)} classes (scale {args.scale})",
        "",
        f"`{command}`",
        "",
        f"Paper for reference: {PAPER['method']}: {PAPER['miou']}.",
        "",
        "| test set | method | labels | faces | mIoU | per class (" + ", ".join(CLASS_NAMES) + ") |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['test_set']} | {s['method']} | {s['protocol']} | {s['shots']} | {s['mean']:.1f} ± {s['std']:.1f} "
        f"| {', '.join(map(str, s['per_class']))} |"
        for s in summary
    ]
    RESULTS.joinpath(f"{name}.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocols", nargs="+", choices=("full", "scribble"), default=["full", "scribble"])
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--cross-pose", action="store_true", help="also test on the multipose test faces")
    parser.add_argument("--quick", action="store_true", help="1 scribbled training face, 2 test faces, one seed")
    parser.add_argument("--position", action="store_true", help="also each backbone with position channels")
    parser.add_argument(
        "--backbone",
        dest="backbones",
        action="append",
        default=[],
        type=lambda text: tuple(text.split("=", 1)) if "=" in text else (Path(text).stem, text),
        metavar="NAME=PATH",
        help="also this checkpoint (a candidate, e.g. a fine-tuned faces backbone); repeatable",
    )
    parser.add_argument(
        "--head",
        dest="head_options",
        action="append",
        default=[],
        type=_head_option,
        metavar="FIELD=INTEGER",
        help="a HeadConfig field other than the core's default, e.g. batch_size=1024 or coarse_stride=1; repeatable",
    )
    parser.add_argument(
        "--name", default=None, help="results file name (default: faces; --quick writes only when named)"
    )
    args = parser.parse_args(argv)
    args.test_sets = ["frontal/test"] + (["multipose/test"] if args.cross_pose else [])
    args.max_train, args.max_test = (2, 2) if args.quick else (None, None)
    if args.quick:
        args.shots, args.seeds, args.protocols = [1], [0], ["scribble"]
    args.head = HeadConfig(**dict(args.head_options))  # the core's defaults, as a user gets them, unless told
    return args


def _head_option(text: str) -> tuple[str, int]:
    """'batch_size=1024' -> ('batch_size', 1024), for an integer field of HeadConfig."""
    key, _, value = text.partition("=")
    if not isinstance(getattr(HeadConfig(), key, None), int) or not value.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer HeadConfig field as FIELD=INTEGER, got {text!r}")
    return key, int(value)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if not faces("frontal/train"):
        raise SystemExit(f"no FASSEG faces in {FACES}: see ../shared/data/README.md")
    rows = run(args)
    summary = summarize(rows)
    for s in summary:
        print(
            f"{s['test_set']:<16} {s['method']:<12} {s['protocol']:<9} {s['shots']:>3}  {s['mean']:5.1f} ± {s['std']:.1f}"
        )
    if not args.quick or args.name:
        command = " ".join(["python -m benchmarks.faces", *(sys.argv[1:] if argv is None else argv)])
        write(args.name or "faces", command, rows, summary, args)
    return summary


if __name__ == "__main__":
    main()
