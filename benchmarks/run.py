"""The few-shot benchmark (issue 6): ours and the baselines, side by side, in one command.

    python -m benchmarks.run --quick                       # CI-sized, a few minutes
    python -m benchmarks.run --backbone mdm=benchmarks/checkpoints/mdm.safetensors \\
        --backbone ddpm=benchmarks/checkpoints/ddpm.safetensors --backbone mdm_l2=...   # full

For each dataset, image scale, protocol (full masks / scribbles), number of labelled images and
seed (which images, and the head's initialisation), every method is trained on the same pixels
and scored by Dice per test image (foreground, at full resolution), averaged over the test
images. Results: ``benchmarks/results/NAME.json`` and ``.md`` and ``.png`` (``benchmarks.report``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize

from napari_mdm import pixel_pool
from napari_mdm.backbone import PRESETS, Backbone, count_parameters
from napari_mdm.checkpoint import load_backbone, random_backbone, shipped_backbones
from napari_mdm.compact import CompactFeatures
from napari_mdm.features import num_channels
from napari_mdm.files import atomic_output
from napari_mdm.head import HeadConfig, class_scores, fit_head
from napari_mdm.io import read_image, read_labels
from napari_mdm.metrics import dice

from . import data, report
from .labels import FOREGROUND, PROTOCOLS, SCRIBBLE_STYLES, make_labels
from .methods import (
    CLASSES,
    FeatureSpec,
    base_configs,
    compute_bases,
    fit_forest,
    forest_scores,
    spec_features,
    spec_groups,
    train_supervised_unet,
    unet_scores,
)

RESULTS = Path(__file__).resolve().parent / "results"
FULL_SHOTS = {"glas": (8, 85), "monuseg": (3, 20)}
QUICK_SHOTS = {"glas": (2,), "monuseg": (1,)}


@dataclass
class Settings:
    datasets: tuple[str, ...] = ("glas", "monuseg")
    shots: dict = field(default_factory=lambda: dict(FULL_SHOTS))
    seeds: tuple[int, ...] = (0, 1, 2)
    scales: tuple[float, ...] = (1.0, 0.5)
    protocols: tuple[str, ...] = PROTOCOLS
    test_limit: int | None = None
    max_size: int | None = None
    pixels_per_class: int = 100_000
    head_steps: int = 300
    ensemble: int = 10
    unet_steps: int = 300
    unet_crop: int = 128
    concat: tuple[str, ...] | None = None
    """Backbones whose features are also tried concatenated with the filter bank (None = all)."""
    forest_pixels: int = 20_000
    methods: tuple[str, ...] = ("head", "filters_head", "concat", "forest", "unet")
    sweep: str | None = None
    sweep_timesteps: tuple[int, ...] = (0, 50, 150, 250)
    sweep_blocks: tuple[str, ...] = ("2-4", "5-7", "2-7")
    variants: tuple[str, ...] = ()
    """Extra head inputs with the core's fast-path knobs, e.g. 'fast=histology:blocks=3-7:project=64:filters'."""
    coded_pool: bool = False
    """Int8 variants' heads fit on compact features with the network's groups kept coded whatever
    the pool's size (``napari_mdm.pixel_pool``: the core does so only for large pools)."""


def parse_blocks(text: str) -> tuple[int, ...]:
    """'2-4' -> (2, 3, 4); '2,5,7' -> (2, 5, 7)."""
    if "-" in text:
        a, b = text.split("-")
        return tuple(range(int(a), int(b) + 1))
    return tuple(int(v) for v in text.split(","))


def parse_variant(text: str, backbones: dict[str, Backbone]) -> FeatureSpec:
    """'NAME=BACKBONE:blocks=3-7:project=64:timesteps=50:scale=0.5:pool=2:bf16:filters:int8:steps=50:fp32:hidden=64,32:rank=0:pixels=65536:coarse=1:batch=512'
    -> a FeatureSpec (pool: the attention's key pooling; bf16: the backbone in bfloat16; int8: features coded as compact ones; steps,
    fp32, hidden, rank, pixels, coarse, batch: the head's steps, float32 products, hidden layer widths, first-layer
    rank tolerance, labelled pixels kept per class, coarse-to-fine stride and batch size)."""
    name, _, rest = text.partition("=")
    backbone, *options = rest.split(":")
    if backbone not in backbones:
        raise SystemExit(f"--variant {text}: no backbone {backbone!r} ({', '.join(backbones)})")
    fields: dict = {}
    for option in options:
        key, _, value = option.partition("=")
        if key == "blocks":
            fields["blocks"] = parse_blocks(value)
        elif key == "timesteps":
            fields["timesteps"] = tuple(int(v) for v in value.split(","))
        elif key in ("project", "scale"):
            fields["project" if key == "project" else "feature_scale"] = (int if key == "project" else float)(value)
        elif key in ("bf16", "filters", "fp32", "int8"):
            fields[{"bf16": "bfloat16", "filters": "filters", "fp32": "head_float32", "int8": "compact"}[key]] = True
        elif key == "pool":
            fields["attention_pool"] = int(value)
        elif key == "steps":
            fields["head_steps"] = int(value)
        elif key == "hidden":
            fields["head_hidden"] = tuple(int(v) for v in value.split(","))
        elif key == "rank":
            fields["head_rank_tolerance"] = float(value)
        elif key == "pixels":
            fields["head_pixels"] = int(value)
        elif key in ("coarse", "batch"):
            fields[{"coarse": "head_coarse_stride", "batch": "head_batch"}[key]] = int(value)
        else:
            raise SystemExit(f"--variant {text}: unknown option {option!r}")
    return FeatureSpec(f"mlp({name})", backbone=backbone, **fields)


def feature_specs(settings: Settings, backbones: dict[str, Backbone]) -> list[FeatureSpec]:
    specs = []
    if "filters_head" in settings.methods:
        specs.append(FeatureSpec("mlp(filters)", filters=True))
    for name in backbones:
        if "head" in settings.methods:
            specs.append(FeatureSpec(f"mlp({name})", backbone=name))
        if "concat" in settings.methods and (settings.concat is None or name in settings.concat):
            specs.append(FeatureSpec(f"mlp({name}+filters)", backbone=name, filters=True))
    if settings.sweep:
        for t in settings.sweep_timesteps:
            for blocks in settings.sweep_blocks:
                specs.append(
                    FeatureSpec(
                        f"mlp({settings.sweep} t={t} b={blocks})",
                        backbone=settings.sweep,
                        timesteps=(t,),
                        blocks=parse_blocks(blocks),
                    )
                )
    return specs + [parse_variant(v, backbones) for v in settings.variants]


def load_backbones(pairs: list[str], preset: str, include_shipped: bool) -> dict[str, Backbone]:
    """``random`` (untrained, seed 0, the architecture of the first checkpoint or ``preset``), the
    checkpoints given as NAME=PATH, and the shipped ``histology`` backbone when it exists."""
    loaded: dict[str, Backbone] = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        if not path:
            raise SystemExit(f"--backbone wants NAME=PATH, got {pair!r}")
        loaded[name] = load_backbone(path)
    if include_shipped and "histology" in shipped_backbones() and "histology" not in loaded:
        loaded["histology"] = load_backbone("histology")
    config = next(iter(loaded.values())).model.config if loaded else PRESETS[preset]
    return {"random": random_backbone(config), **loaded}


def load_sample(sample: data.Sample, scale: float, max_size: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(full-resolution image, its 0/1 mask, the image at ``scale``)."""
    image, mask = read_image(sample.image), read_labels(sample.mask)
    if max_size:
        image, mask = image[:max_size, :max_size], mask[:max_size, :max_size]
    small = image if scale == 1 else resize(image, scaled_shape(mask.shape, scale), order=1, anti_aliasing=True)
    return image, mask, small.astype(np.float32)


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def scale_labels(labels: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1:
        return labels
    return resize(labels, scaled_shape(labels.shape, scale), order=0, preserve_range=True, anti_aliasing=False).astype(
        labels.dtype
    )


def upsample(scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if scores.shape[1:] == tuple(shape):
        return scores
    return F.interpolate(
        torch.from_numpy(np.ascontiguousarray(scores))[None], size=shape, mode="bilinear", align_corners=False
    )[0].numpy()


def plans(n_train: int, shots: tuple[int, ...], seeds: tuple[int, ...]) -> list[tuple[int, int, tuple[int, ...]]]:
    """(shots, seed, training image indices): the seed picks the images (all of them when shots >= n)."""
    out = []
    for n in shots:
        for seed in seeds:
            subset = range(n_train) if n >= n_train else np.random.default_rng(seed).permutation(n_train)[:n]
            out.append((min(n, n_train), seed, tuple(sorted(int(i) for i in subset))))
    return out


class PixelStore:
    """The base features (per backbone, filter bank) of the labelled pixels each training image
    contributes, per protocol and class, in a fixed random order: a head trained on n images
    takes the first ceil(budget / n) of each class from each, so the whole pixel budget never
    depends on n and only samples are kept."""

    def __init__(self, budget: int):
        self.budget = budget
        self.items: dict[tuple[int, str], dict] = {}

    def add(self, index: int, protocol: str, labels: np.ndarray, features: dict[str, np.ndarray], cap: int) -> None:
        rng = np.random.default_rng([index, PROTOCOLS.index(protocol)])
        picks = [rng.permutation(np.flatnonzero(labels.ravel() == c))[:cap] for c in CLASSES]
        self.items[(index, protocol)] = {
            "pixels": picks,
            "features": [{name: f.reshape(f.shape[0], -1)[:, p] for name, f in features.items()} for p in picks],
            "fraction": float((labels > 0).mean()),
        }

    def take(
        self, indices: tuple[int, ...], protocol: str, select: Callable[[dict[str, np.ndarray]], np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per image (C, 1, n) features, made from the stored base features by ``select``, and
        (1, n) labels, for ``fit_head``."""
        m = math.ceil(self.budget / len(indices))
        feats, labels = [], []
        for i in indices:
            parts = [
                select({name: part[:, :m] for name, part in per_class.items()})
                for per_class in self.items[(i, protocol)]["features"]
            ]
            feats.append(np.concatenate(parts, axis=1)[:, None, :])
            labels.append(
                np.concatenate([np.full(part.shape[1], c, np.uint8) for part, c in zip(parts, CLASSES, strict=False)])[
                    None
                ]
            )
        return feats, labels

    def fraction(self, indices: tuple[int, ...], protocol: str) -> float:
        return float(np.mean([self.items[(i, protocol)]["fraction"] for i in indices]))


Scorer = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_split(
    split: data.Split,
    scale: float,
    settings: Settings,
    backbones: dict[str, Backbone],
    specs: list[FeatureSpec],
    on_tested: Callable[[list[dict]], None] = lambda records: None,
) -> list[dict]:
    """Train every method on every plan of one dataset at one scale, then score all test images;
    ``on_tested`` gets the records so far after each test image (a long run keeps what it measured)."""
    configs = base_configs(specs, backbones)
    need_filters = any(s.filters for s in specs) or "forest" in settings.methods
    compact = any(s.compact for s in specs)
    style = SCRIBBLE_STYLES[split.dataset]
    shots = settings.shots[split.dataset]
    runs = plans(len(split.train), shots, settings.seeds)
    fewest = {}
    for n, _, subset in runs:
        for i in subset:
            fewest[i] = min(fewest.get(i, n), n)
    store = PixelStore(settings.pixels_per_class)
    train_images: dict[int, np.ndarray] = {}
    train_labels: dict[tuple[int, str], np.ndarray] = {}
    features_seconds = 0.0
    for k, i in enumerate(sorted(fewest)):
        _, mask, small = load_sample(split.train[i], scale, settings.max_size)
        start = time.perf_counter()
        bases = compute_bases(small, backbones, configs, need_filters, compact)
        features_seconds += time.perf_counter() - start
        train_images[i] = small
        for protocol in settings.protocols:
            labels = scale_labels(make_labels(mask, protocol, seed=i, style=style), scale)
            train_labels[(i, protocol)] = labels
            store.add(i, protocol, labels, bases, math.ceil(settings.pixels_per_class / fewest[i]))
        log(f"{split.dataset} x{scale}: train features {k + 1}/{len(fewest)}")
    del bases

    scorers: dict[tuple[str, str, int, int], Scorer] = {}
    fractions: dict[tuple[str, int, int], float] = {}
    fit_seconds: dict[str, list[float]] = {}
    for protocol in settings.protocols:
        for n, seed, subset in runs:
            fractions[(protocol, n, seed)] = store.fraction(subset, protocol)
            head_config = HeadConfig(
                ensemble=settings.ensemble,
                steps=settings.head_steps,
                pixels_per_class=settings.pixels_per_class,
                seed=seed,
            )
            for spec in specs:
                start = time.perf_counter()
                feats, labels = store.take(
                    subset, protocol, lambda b, spec=spec: spec_features(spec, b, backbones, configs)
                )
                spec_config = replace(
                    head_config,
                    steps=spec.head_steps or head_config.steps,
                    bfloat16=not spec.head_float32,
                    hidden=spec.head_hidden or head_config.hidden,
                    rank_tolerance=head_config.rank_tolerance
                    if spec.head_rank_tolerance is None
                    else spec.head_rank_tolerance,
                    pixels_per_class=spec.head_pixels or head_config.pixels_per_class,
                    coarse_stride=spec.head_coarse_stride or head_config.coarse_stride,
                    batch_size=spec.head_batch or head_config.batch_size,
                )
                if settings.coded_pool and spec.compact:
                    feats = [CompactFeatures.from_array(f, spec_groups(spec, backbones, configs)) for f in feats]
                head = fit_head(feats, labels, spec_config, ignore=0)
                fit_seconds.setdefault(spec.name, []).append(time.perf_counter() - start)
                scorers[(spec.name, protocol, n, seed)] = _head_scorer(head, spec.name)
            if "forest" in settings.methods:
                start = time.perf_counter()
                feats, labels = store.take(subset, protocol, lambda b: b["filters"])
                x = np.concatenate([f[:, 0, :].T for f in feats])
                forest = fit_forest(x, np.concatenate([lab[0] for lab in labels]), seed, settings.forest_pixels)
                fit_seconds.setdefault("rf(filters)", []).append(time.perf_counter() - start)
                scorers[("rf(filters)", protocol, n, seed)] = lambda f, img, forest=forest: forest_scores(
                    forest, f["filters"]
                )
            if "unet" in settings.methods:
                start = time.perf_counter()
                model = train_supervised_unet(
                    [train_images[i] for i in subset],
                    [train_labels[(i, protocol)] for i in subset],
                    next(iter(backbones.values())).model.config,
                    seed,
                    settings.unet_steps,
                    settings.unet_crop,
                )
                fit_seconds.setdefault("unet(supervised)", []).append(time.perf_counter() - start)
                scorers[("unet(supervised)", protocol, n, seed)] = lambda f, img, model=model: unet_scores(model, img)
            log(f"{split.dataset} x{scale}: trained {protocol} n={n} seed={seed}")
    del store, train_images, train_labels

    tests = pick_tests(split.test, settings.test_limit)
    dices: dict[tuple, dict[str, float]] = {key: {} for key in scorers}
    for k, sample in enumerate(tests):
        _, mask, small = load_sample(sample, scale, settings.max_size)
        bases = compute_bases(small, backbones, configs, need_filters, compact)
        features = {s.name: spec_features(s, bases, backbones, configs) for s in specs}
        if need_filters:
            features["filters"] = bases["filters"]
        for key, scorer in scorers.items():
            scores = upsample(scorer(features, small), mask.shape)
            predicted = np.asarray(CLASSES)[scores.argmax(0)]
            dices[key][sample.name] = dice(predicted == FOREGROUND, mask)
        log(f"{split.dataset} x{scale}: tested {k + 1}/{len(tests)} ({sample.name})")
        on_tested(_dice_records(split.dataset, scale, dices, fractions))

    return _dice_records(split.dataset, scale, dices, fractions) + [
        {
            "dataset": split.dataset,
            "scale": scale,
            "timing": {
                "train_feature_seconds": features_seconds,
                "fit_seconds": {k: float(np.mean(v)) for k, v in fit_seconds.items()},
            },
        }
    ]


def _dice_records(dataset: str, scale: float, dices: dict[tuple, dict[str, float]], fractions: dict) -> list[dict]:
    """One record per method, protocol, shots and seed: its mean Dice over the images tested so far."""
    return [
        {
            "dataset": dataset,
            "scale": scale,
            "method": method,
            "protocol": protocol,
            "shots": n,
            "seed": seed,
            "dice": float(np.mean(list(per_image.values()))),
            "per_image": per_image,
            "label_fraction": fractions[(protocol, n, seed)],
        }
        for (method, protocol, n, seed), per_image in dices.items()
        if per_image
    ]


def _head_scorer(head, name: str) -> Scorer:
    """Class scores whose argmax is the head's own rule: majority vote, ties by mean probability."""

    def score(features: dict[str, np.ndarray], image: np.ndarray) -> np.ndarray:
        return class_scores(head.predict_maps(features[name]), len(head.class_values))

    return score


def pick_tests(tests: tuple[data.Sample, ...], limit: int | None) -> list[data.Sample]:
    """All test images, or ``limit`` of them spread evenly over the list (GlaS: testA and testB)."""
    if not limit or limit >= len(tests):
        return list(tests)
    return [tests[int(i)] for i in np.linspace(0, len(tests) - 1, limit).round()]


def summarize(records: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if "method" in r:
            groups.setdefault((r["dataset"], r["scale"], r["method"], r["protocol"], r["shots"]), []).append(r)
    return [
        {
            "dataset": d,
            "scale": s,
            "method": m,
            "protocol": p,
            "shots": n,
            "mean": 100 * float(np.mean([r["dice"] for r in rs])),
            "std": 100 * float(np.std([r["dice"] for r in rs])),
            "seeds": len(rs),
            "test_images": len(rs[0]["per_image"]),
            "label_fraction": float(np.mean([r["label_fraction"] for r in rs])),
        }
        for (d, s, m, p, n), rs in sorted(groups.items())
    ]


def measure_speed(backbones: dict[str, Backbone], specs: list[FeatureSpec], settings: Settings) -> dict:
    """Interactive figures on a 512 x 512 image: feature, head-training and prediction seconds."""
    sample = data.load_split("glas").test[0] if data.available() else None
    image = (
        read_image(sample.image)[:512, :512] if sample else np.random.default_rng(0).random((512, 512, 3), np.float32)
    )
    image = np.pad(image, ((0, 512 - image.shape[0]), (0, 512 - image.shape[1]), (0, 0)), mode="symmetric")
    truth = read_labels(sample.mask)[:512, :512] if sample else (image[..., 0] > 0.5).astype(np.uint8)
    truth = np.pad(truth, ((0, 512 - truth.shape[0]), (0, 512 - truth.shape[1])), mode="symmetric")
    labels = make_labels(truth, "scribble", 0)
    out: dict = {
        "image": "512x512",
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_before": round(os.getloadavg()[0], 2),
    }
    configs = base_configs(specs, backbones)
    for name, backbone in backbones.items():
        start = time.perf_counter()
        feats = compute_bases(image, {name: backbone}, {name: configs[name]}, False)[name] if name in configs else None
        if feats is None:
            continue
        out[f"features_seconds[{name}]"] = round(time.perf_counter() - start, 2)
        out[f"feature_bytes_per_pixel[{name}]"] = feats.dtype.itemsize * feats.shape[0]
        out[f"parameters[{name}]"] = count_parameters(backbone.model)
    start = time.perf_counter()
    filt = compute_bases(image, {}, {}, True)["filters"]
    out["features_seconds[filters]"] = round(time.perf_counter() - start, 2)
    out["feature_bytes_per_pixel[filters]"] = filt.dtype.itemsize * filt.shape[0]
    name = "mdm" if "mdm" in backbones else next(iter(backbones))
    feats = compute_bases(image, {name: backbones[name]}, {name: configs.get(name)}, False)[name]
    config = HeadConfig(ensemble=settings.ensemble, steps=settings.head_steps)
    start = time.perf_counter()
    head = fit_head([feats], [labels], config)
    out[
        f"head_fit_seconds[{name}, scribbles {100 * (labels > 0).mean():.1f}% px, {config.steps} steps, ensemble {config.ensemble}]"
    ] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    head.predict(feats)
    out[f"head_predict_seconds[{name}]"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    forest = fit_forest(filt.reshape(filt.shape[0], -1).T[labels.ravel() > 0], labels.ravel()[labels.ravel() > 0], 0)
    out["rf_fit_seconds"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    forest_scores(forest, filt)
    out["rf_predict_seconds"] = round(time.perf_counter() - start, 2)
    return out


def _write_json(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path``, whole or not at all (a stopped run leaves no torn file)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str))


def _keep_partial(path: Path, records: list[dict]) -> None:
    """The records measured so far, where a stopped run leaves them."""
    _write_json(path, {"summary": summarize(records), "records": records})


def code_version() -> dict:
    """The commit the run used and the package files that differed from it (features depend on
    the core's defaults, e.g. the feature tile, so a result is tied to the code that made it)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args],
                cwd=Path(__file__).resolve().parents[1],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "modified": git("status", "--porcelain", "napari_mdm").splitlines()}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="CI-sized: GlaS, 2 training images, 10 test images, 1 seed"
    )
    parser.add_argument("--name", help="results file name (default: quick or full)")
    parser.add_argument("--backbone", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--preset", default="tiny", help="architecture of the random backbone without checkpoints")
    parser.add_argument("--no-shipped", action="store_true", help="leave out resources/histology.safetensors")
    parser.add_argument("--datasets", nargs="+", choices=("glas", "monuseg"))
    parser.add_argument("--shots", nargs="+", type=int, help="labelled training images (same for each dataset)")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--scales", nargs="+", type=float, help="image scale(s) features are computed at")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS)
    parser.add_argument("--methods", nargs="+", choices=Settings().methods)
    parser.add_argument("--test-limit", type=int, help="test images per dataset (spread over the list)")
    parser.add_argument("--max-size", type=int, help="crop every image to at most this many pixels a side (tests)")
    parser.add_argument("--ensemble", type=int)
    parser.add_argument("--head-steps", type=int)
    parser.add_argument("--unet-steps", type=int)
    parser.add_argument("--unet-crop", type=int)
    parser.add_argument("--concat", nargs="+", metavar="BACKBONE", help="backbones to concatenate with the filter bank")
    parser.add_argument("--sweep", metavar="BACKBONE", help="also sweep timesteps x blocks for this backbone")
    parser.add_argument("--sweep-timesteps", nargs="+", type=int)
    parser.add_argument("--sweep-blocks", nargs="+", help="block ranges, e.g. 2-4 5-7 2,5,7")
    parser.add_argument(
        "--variant",
        action="append",
        dest="variants",
        metavar="NAME=BACKBONE:OPTIONS",
        help="extra head input with fast-path knobs, e.g. fast=histology:blocks=3-7:project=64 "
        "(options: blocks, timesteps, project, scale, bf16, filters, int8, steps, fp32, hidden, rank, pixels)",
    )
    parser.add_argument("--coded-pool", action="store_true", help="int8 variants fit on codes whatever the pool's size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-speed", action="store_true", help="skip the 512x512 speed figures")
    parser.add_argument("--speed-only", action="store_true", help="only the 512x512 speed and memory figures")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.quick:
        settings = replace(
            settings,
            datasets=("glas",),
            shots=dict(QUICK_SHOTS),
            seeds=(0,),
            scales=(0.5,),
            test_limit=10,
            head_steps=100,
            ensemble=3,
            unet_steps=30,
            unet_crop=64,
        )
    overrides = {
        "datasets": args.datasets,
        "seeds": args.seeds,
        "scales": args.scales,
        "protocols": args.protocols,
        "methods": args.methods,
        "test_limit": args.test_limit,
        "max_size": args.max_size,
        "ensemble": args.ensemble,
        "head_steps": args.head_steps,
        "unet_steps": args.unet_steps,
        "unet_crop": args.unet_crop,
        "concat": args.concat,
        "sweep": args.sweep,
        "sweep_timesteps": args.sweep_timesteps,
        "sweep_blocks": args.sweep_blocks,
        "variants": args.variants,
        "coded_pool": args.coded_pool or None,
    }
    settings = replace(
        settings, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
    )
    if args.shots:
        settings = replace(settings, shots={d: tuple(args.shots) for d in settings.datasets})
    return args, settings


def main(argv: list[str] | None = None) -> dict:
    args, settings = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not data.available():
        raise SystemExit(f"benchmark data not found under {data.DATA_ROOT} (set NAPARI_MDM_DATA)")
    if settings.coded_pool:
        pixel_pool.CODED_POOL_BYTES = 0
    started = time.time()
    code = code_version()  # the code this run imported, not what is checked out when it ends
    backbones = load_backbones(args.backbone, args.preset, not args.no_shipped)
    if settings.sweep and settings.sweep not in backbones:
        raise SystemExit(f"--sweep {settings.sweep}: no such backbone ({', '.join(backbones)})")
    specs = feature_specs(settings, backbones)
    log(f"backbones: {', '.join(backbones)}; head inputs: {', '.join(s.name for s in specs)}")
    name = args.name or ("speed" if args.speed_only else "quick" if args.quick else "full")
    partial = args.out / f"{name}.partial.json"
    records = []
    for dataset in () if args.speed_only else settings.datasets:
        split = data.load_split(dataset)
        for scale in settings.scales:
            records.extend(
                run_split(
                    split, scale, settings, backbones, specs, lambda current: _keep_partial(partial, records + current)
                )
            )
    result = {
        "name": name,
        "command": "python -m benchmarks.run "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "settings": {**asdict(settings), "specs": [asdict(s) for s in specs]},
        "backbones": {
            n: {
                "digest": b.digest,
                "provenance": b.provenance,
                "channels": num_channels(b, base_configs([s for s in specs if s.backbone == n], backbones)[n])
                if any(s.base == n for s in specs)
                else None,
            }
            for n, b in backbones.items()
        },
        "summary": summarize(records),
        "records": records,
        "paper": report.PAPER,
        "speed": {} if args.no_speed else measure_speed(backbones, specs, settings),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "code": code,
        "host": {"machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__},
    }
    path = args.out / f"{name}.json"
    _write_json(path, result)
    partial.unlink(missing_ok=True)
    report.write_report(path)
    print(report.markdown(result))
    return result


if __name__ == "__main__":
    main()
