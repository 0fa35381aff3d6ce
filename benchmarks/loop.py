"""The paint -> predict loop (issue 14): our head against the ilastik-like forest, stage by stage.

    python -m benchmarks.loop            # 512 and 1024 px, scribbles and full masks (the knob
                                         # ladder at 512 px only)
    python -m benchmarks.loop --quick    # CI-sized: 256 px, scribbles, forest / before / default

The image is scikit-image's ``ihc`` sample (512 x 512; 1024 x 1024 is it mirrored 2 x 2) with the
demo's stain reference (``napari_mdm.demo``): labels on the left half only (the demo's strokes,
or the reference itself as a full mask), Dice averaged over the three classes on the right half.
Stages: features, head fit, prediction of the whole image (their sum is the first prediction),
then one more stroke and retrain + repredict with the features cached. Each method and size runs
in a fresh process, so its peak RSS (``ru_maxrss``) is its own. Results: ``results/NAME.json``, ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {
    # name: (FeatureConfig overrides, HeadConfig overrides); None is the forest on the filter bank
    "forest": None,
    "before": ({"project": 0, "blocks": "all", "bfloat16": False}, {"ensemble": 10, "steps": 300, "bfloat16": False}),
    "+early stop": ({"project": 0, "bfloat16": False}, {"ensemble": 10, "steps": 300, "bfloat16": False}),
    "+head 5x200": ({"project": 0, "bfloat16": False}, {"ensemble": 5, "steps": 200, "bfloat16": False}),
    "+bf16 head": ({"project": 0, "bfloat16": False}, {"ensemble": 5, "steps": 200, "bfloat16": True}),
    "+bf16 backbone": ({"project": 0, "bfloat16": True}, {"ensemble": 5, "steps": 200, "bfloat16": True}),
    "+auto steps": ({"project": 0, "bfloat16": True}, {"ensemble": 5, "steps": 0, "bfloat16": True}),
    "+projection": ({"project": 64, "bfloat16": True}, {"ensemble": 5, "steps": 0, "bfloat16": True}),
    "hidden 64": ({}, {"hidden": (64, 32)}),
    "exact first layer": ({"compact": False}, {"rank_tolerance": 0, "coarse_stride": 1}),
    "every pixel": ({}, {"coarse_stride": 1}),
    "batch 1024": ({}, {"batch_size": 1024}),
    "blocks 3-6": ({"blocks": "before full"}, {}),
    "exact attention": ({"attention_pool": 1}, {}),
    "no filter bank": ({"filters": False}, {}),
    "float16 features": ({"compact": False}, {}),
    "default": ({}, {}),
}
"""'before' is the default until issue 14 (decoder blocks 3-9 of the shipped backbone, all 784
channels, ensemble 10 x 300 steps, float32); each next row adds one knob: the decoder stopped at its
first full-resolution block, a 5 x 200 ensemble, the head's products in bfloat16 and then the
backbone's (where the CPU has bf16 units), automatic head steps (50 for strokes, 200 for full
masks), the 64-channel projection (`--project 64`); all of them predict through the head's exact
first layer. 'hidden 64' is the default with a head half as wide (first hidden layer 64 instead of
128); 'exact first layer' is the default predicting through the head's whole first layer
(``rank_tolerance=0``) instead of its leading components on the image, on float16 features and
on every pixel (the plugin's "exact prediction", but with pooled attention); 'every pixel' is the
default evaluating the head on every pixel instead of coarse to fine (``HeadConfig.coarse_stride``);
'batch 1024' is the default fitting on batches of 1024 labelled pixels per member (the default
before the eighth round) instead of 128 of each class; 'blocks 3-6' is the default without the
decoder's first full-resolution block (tried as the default in the ninth round: results/loop_blocks36.md); 'float16 features' is the default holding features in float16
instead of int8 codes (``FeatureConfig.compact``); 'exact attention' is the default with the
backbone's large attention layers attending to every key instead of 2 x 2-pooled ones
(``FeatureConfig.attention_pool``); 'no filter bank' is the default without the filter bank (``--features
diffusion``). 'default' is whatever the core's defaults are today."""
LADDER = ("before", "+early stop", "+head 5x200", "+bf16 head", "+bf16 backbone", "+auto steps", "+projection")
"""The knob ladder's rows, measured with the exact first layer on every pixel, batches of 1024,
float16 features and exact attention they had."""


def loop_image(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) uint8 image and its stain reference: the ``ihc`` sample, mirrored to size."""
    from napari_mdm.demo import sample_image, stain_reference

    image = sample_image()
    reps = -(-size // image.shape[0])
    tiled = np.concatenate(
        [
            np.concatenate([image[:, ::-1] if j % 2 else image for j in range(reps)], axis=1)[::-1]
            if i % 2
            else np.concatenate([image[:, ::-1] if j % 2 else image for j in range(reps)], axis=1)
            for i in range(reps)
        ],
        axis=0,
    )[:size, :size]
    return np.ascontiguousarray(tiled), stain_reference(tiled)


def loop_labels(reference: np.ndarray, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels on the left half (strokes or the full reference) and the same plus one more stroke."""
    from napari_mdm.demo import demo_scribbles

    h, w = reference.shape
    labels = demo_scribbles(reference) if protocol == "scribble" else reference.copy()
    labels[:, w // 2 :] = 0
    more = labels.copy()
    row = slice(h // 2, h // 2 + 3)
    more[row, w // 2 : w // 2 + w // 8] = reference[row, w // 2 : w // 2 + w // 8]  # a stroke across the border
    return labels, more


def _blocks(feature_overrides: dict, backbone) -> dict:
    """Blocks named by where they end: "all" the decoder's second half to its end, "before full"
    the default's without its first full-resolution block (3-6 here)."""
    from napari_mdm.features import default_blocks

    n = len(backbone.model.output_blocks)
    named = {"all": tuple(range(n // 3, n)), "before full": default_blocks(backbone)[:-1]}
    blocks = feature_overrides.get("blocks")
    return {**feature_overrides, "blocks": named[blocks]} if isinstance(blocks, str) else feature_overrides


def _ours(name: str, backbone_name: str, image: np.ndarray, labels: list[np.ndarray]) -> tuple[dict, np.ndarray]:
    """Seconds per stage of the MLP head loop, and the first prediction's labels."""
    from napari_mdm.checkpoint import load_backbone
    from napari_mdm.features import FeatureConfig, extract_features, resolve_config
    from napari_mdm.head import HeadConfig, fit_head
    from napari_mdm.io import normalize_image

    feature_overrides, head_overrides = METHODS[name]
    backbone = load_backbone(backbone_name)
    if name in LADDER:  # rows from before the low-rank layer, int8 codes and pooled attention
        feature_overrides, head_overrides = (
            {"compact": False, "attention_pool": 1, **feature_overrides},
            {"rank_tolerance": 0, "coarse_stride": 1, "batch_size": 1024, **head_overrides},
        )
    config = resolve_config(backbone, FeatureConfig(**_blocks(feature_overrides, backbone)))
    head_config = HeadConfig(**head_overrides)
    out: dict = {"channels": None}
    start = time.perf_counter()
    features = extract_features(backbone, normalize_image(image), config)
    out["features_s"], out["channels"] = time.perf_counter() - start, int(features.shape[0])
    start = time.perf_counter()
    head = fit_head([features], [labels[0]], head_config)
    out["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    prediction = head.predict(features).labels
    out["predict_s"] = time.perf_counter() - start
    start = time.perf_counter()
    fit_head([features], [labels[1]], head_config).predict(features)
    out["retrain_s"] = time.perf_counter() - start
    return out, prediction


def _forest(image: np.ndarray, labels: list[np.ndarray], threads: int) -> tuple[dict, np.ndarray]:
    """The same stages for the ilastik-like filter bank + random forest (``benchmarks.methods``)."""
    from napari_mdm.filterbank import filter_features
    from napari_mdm.io import normalize_image

    from .methods import fit_forest

    def fit_predict(lab: np.ndarray) -> tuple[float, float, np.ndarray]:
        start = time.perf_counter()
        where = lab.ravel() > 0
        forest = fit_forest(flat[where], lab.ravel()[where], seed=0)
        forest.n_jobs = threads
        fitted = time.perf_counter()
        predicted = forest.predict(flat).reshape(lab.shape)
        return fitted - start, time.perf_counter() - fitted, predicted

    out: dict = {}
    start = time.perf_counter()
    features = filter_features(normalize_image(image))
    flat = features.reshape(features.shape[0], -1).T.astype(np.float32)
    out["features_s"], out["channels"] = time.perf_counter() - start, int(features.shape[0])
    out["fit_s"], out["predict_s"], prediction = fit_predict(labels[0])
    fit_s, predict_s, _ = fit_predict(labels[1])
    out["retrain_s"] = fit_s + predict_s
    return out, prediction


def run_one(method: str, size: int, protocol: str, backbone: str, threads: int) -> dict:
    """One method on one image size and label protocol, in this process: stages, Dice, peak RSS."""
    import torch

    from napari_mdm.metrics import dice

    torch.set_num_threads(threads)
    image, reference = loop_image(size)
    labels = loop_labels(reference, protocol)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if method == "forest":
        out, prediction = _forest(image, list(labels), threads)
    else:
        out, prediction = _ours(method, backbone, image, list(labels))
    right = np.s_[:, size // 2 :]
    classes = np.unique(reference)
    out["dice"] = 100 * float(np.mean([dice(prediction[right] == c, reference[right] == c) for c in classes]))
    out["first_s"] = out["features_s"] + out["fit_s"] + out["predict_s"]
    out = {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}
    return {
        "method": method,
        "size": size,
        "protocol": protocol,
        "labelled_percent": round(100 * float((labels[0] > 0).mean()), 2),
        **out,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_mib": round(base_rss),
    }


def in_fresh_process(method: str, size: int, protocol: str, backbone: str, threads: int) -> dict:
    """:func:`run_one` in a child process (its own peak RSS); its result is the last stdout line."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [
        sys.executable,
        "-m",
        "benchmarks.loop",
        "--child",
        json.dumps([method, size, protocol, backbone, threads]),
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1]
    )
    if done.returncode:
        raise SystemExit(f"{method} at {size} px failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """The run with the median first prediction (a real run, every column from it), with every
    run's first prediction in ``first_s_runs`` when there are several."""
    ordered = sorted(runs, key=lambda r: r["first_s"])
    middle = dict(ordered[len(ordered) // 2])
    if len(runs) > 1:
        middle["first_s_runs"] = [r["first_s"] for r in ordered]
    return middle


def markdown(result: dict) -> str:
    lines = [
        f"# Benchmark `{result['name']}`",
        "",
        f"Command: `{result['command']}`  ",
        f"Started {result['started']}, {result['wall_seconds'] / 60:.1f} min; {result['threads']} threads; "
        f"load average {result['load_before']} before, {result['load_after']} after (a shared 2-core CPU).",
        "",
        "| image | labels | method | channels | features s | head fit s | prediction s | first prediction s "
        "| x forest | retrain + repredict s | peak RSS MiB | Dice % |",
        "|---|" * 1 + "---|" * 11,
    ]
    forest = {(r["size"], r["protocol"]): r["first_s"] for r in result["rows"] if r["method"] == "forest"}
    for r in result["rows"]:
        ratio = r["first_s"] / forest[(r["size"], r["protocol"])] if (r["size"], r["protocol"]) in forest else None
        lines.append(
            f"| {r['size']}² | {r['protocol']} ({r['labelled_percent']}%) | {r['method']} | {r['channels']} "
            f"| {r['features_s']} | {r['fit_s']} | {r['predict_s']} | {_first(r)} "
            f"| {'' if ratio is None else f'{ratio:.2f}'} | {r['retrain_s']} | {r['peak_rss_mib']} | {r['dice']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _first(row: dict) -> str:
    """The first prediction's seconds, with the range over repeats where there were several."""
    runs = row.get("first_s_runs")
    return f"{row['first_s']}" + (f" ({runs[0]}-{runs[-1]})" if runs else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 px, scribbles, forest / before / default")
    parser.add_argument("--sizes", nargs="+", type=int)
    parser.add_argument("--protocols", nargs="+", choices=("scribble", "full"))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS))
    parser.add_argument(
        "--smallest-only",
        nargs="*",
        choices=list(METHODS),
        help="methods measured at the smallest size only (default: the knob ladder's middle rows)",
    )
    parser.add_argument("--backbone", default="histology", help="backbone for our methods (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and forest jobs (default: %(default)s)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each case, round robin; the table shows the median run and the range (default: 1)",
    )
    parser.add_argument("--name", help="results file name (default: loop, or loop_quick)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = {"sizes": [256], "protocols": ["scribble"], "methods": ["forest", "before", "default"], "smallest_only": []}
    full = {
        "sizes": [512, 1024],
        "protocols": ["scribble", "full"],
        "methods": [m for m in METHODS if m != "default"],
        "smallest_only": ["before", "+early stop", "+head 5x200", "+bf16 head"],
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.name = args.name or ("loop_quick" if args.quick else "loop")
    return args


def write(args: argparse.Namespace, result: dict) -> None:
    """The JSON and the table, written atomically (after every row, so a stopped run keeps its rows)."""
    args.out.mkdir(parents=True, exist_ok=True)
    for suffix, text in (("json", json.dumps(result, indent=1)), ("md", markdown(result))):
        tmp = args.out / f".{args.name}.{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(args.out / f"{args.name}.{suffix}")


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_one(*json.loads(args.child))))
        return None
    started = time.time()
    result = {
        "name": args.name,
        "command": "python -m benchmarks.loop "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "threads": args.threads,
        "backbone": args.backbone,
        "load_before": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(),
        "rows": [],
    }
    cases = [
        (method, size, protocol)
        for size in args.sizes
        for protocol in args.protocols
        for method in args.methods
        if size == min(args.sizes) or method not in args.smallest_only
    ]
    runs: dict[tuple, list[dict]] = {case: [] for case in cases}
    for _ in range(args.repeats):  # round robin: drifts in the machine's load hit every method alike
        for case in cases:
            runs[case].append(in_fresh_process(*case, args.backbone, args.threads))
            result["rows"] = [median_run(done) for done in runs.values() if done]
            result.update(wall_seconds=round(time.time() - started, 1), load_after=round(os.getloadavg()[0], 2))
            write(args, result)
            print(f"[{time.strftime('%H:%M:%S')}] {runs[case][-1]}", flush=True)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
