"""The ``napari-mdm`` command line: thin over the core modules, with progress bars and
one-line errors (no traceback) for user mistakes."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .jobs import Cancelled, UserError


def _ints(text: str) -> tuple[int, ...]:
    """argparse type for lists of integers (commas or spaces), by the same rule as the widgets."""
    from .parsing import parse_ints

    try:
        return parse_ints(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _Bar:
    """A tqdm bar fed by the core's ``progress(done, total, info)`` callback."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int, info: str) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar.total != total:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=self.desc, unit="", dynamic_ncols=True, file=sys.stderr,
                            disable=None if not os.environ.get("NAPARI_MDM_PROGRESS") else False)
        self.bar.n = done
        self.bar.set_postfix_str(info, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _backbone(args):
    from .checkpoint import FALLBACK_DEFAULT, default_backbone_name, load_backbone
    from .devices import resolve_device

    if args.backbone is None:
        args.backbone = default_backbone_name()
        if args.backbone == FALLBACK_DEFAULT:
            print(f"napari-mdm: using {FALLBACK_DEFAULT} (the untrained control: the shipped histology "
                  "backbone, resources/histology.safetensors, is missing from this installation)", file=sys.stderr)
    return load_backbone(args.backbone, device=resolve_device(args.device))


def _pair_labels(images: list[Path], labels: list[str]) -> list[Path]:
    """Labels given file by file (same order as the images) or as a folder holding NAME_mask.*,
    NAME_labels.* or NAME.* for each image NAME."""
    from .io import IMAGE_SUFFIXES

    if len(labels) == 1 and Path(labels[0]).is_dir() and Path(labels[0]).suffix != ".zarr":
        folder = Path(labels[0])
        paired = []
        for img in images:
            stem = img.name.split(".")[0]
            hits = [folder / f"{stem}{tag}{ext}" for tag in ("_mask", "_labels", "") for ext in IMAGE_SUFFIXES]
            found = [h for h in hits if h.exists() and h != img]
            if not found:
                raise UserError(f"no labels for {img.name} in {folder} (looked for {stem}_mask.*, {stem}_labels.*)")
            paired.append(found[0])
        return paired
    if len(labels) != len(images):
        raise UserError(f"{len(images)} images but {len(labels)} label files: give one label file per image, "
                        "or a folder of labels")
    return [Path(p) for p in labels]


def cmd_pretrain(args) -> int:
    import numpy as np

    from .backbone import PRESETS
    from .checkpoint import load_backbone
    from .corruption import CorruptionConfig
    from .io import collect_images, read_image
    from .files import refuse_existing
    from .pretrain import PretrainConfig, pretrain, state_path
    from .ranks import ranks_from_env

    if args.resume and not state_path(args.out).exists():
        raise UserError(f"--resume: there is no saved training state {state_path(args.out)}")
    for path in (args.out, state_path(args.out)):
        refuse_existing(path, args.overwrite or args.resume)
    if not 0.05 <= args.scale <= 1:
        raise UserError(f"--scale must be in [0.05, 1], got {args.scale}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UserError(f"--max-minutes must be above 0, got {args.max_minutes}")
    paths = collect_images(args.images, args.exclude)
    images = [read_image(p) for p in paths]
    if args.scale != 1:
        from skimage.transform import rescale

        images = [rescale(im, args.scale, channel_axis=-1, anti_aliasing=True).astype(np.float32) for im in images]
    corruption = CorruptionConfig(mode=args.mode, mask_shape=args.mask_shape)
    config = PretrainConfig(steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
                            loss=args.loss, seed=args.seed, checkpoint_every=args.checkpoint_every,
                            compile=args.compile)
    deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    init = load_backbone(args.init) if args.init else None
    provenance = {"command": " ".join(["napari-mdm", *map(str, args.argv)]),
                  "preset": None if init else args.preset, "mode": args.mode, "scale": args.scale,
                  "data": sorted({str(p.parent) for p in paths})}
    bar = _Bar("pretrain")
    try:
        result = pretrain(images, out=args.out, unet=PRESETS[args.preset], corruption=corruption, config=config,
                          device=args.device, resume=args.resume, init=init, provenance=provenance, progress=bar,
                          should_stop=None if deadline is None else lambda: time.monotonic() > deadline)
    finally:
        bar.close()
    loss = np.mean(result.losses[-50:]) if result.losses else float("nan")
    state = f"stopped after --max-minutes {args.max_minutes} (continue with --resume)" if result.cancelled else "finished"
    if ranks_from_env().main:  # under torchrun, one process speaks for the job
        print(f"{state} at step {result.step}: mean loss of the last steps {loss:.4f}; wrote {args.out}")
    return 0


def cmd_reconstruct(args) -> int:
    import numpy as np

    from .files import refuse_existing
    from .io import read_image, write_array
    from .reconstruction import reconstruct

    refuse_existing(args.out, args.overwrite)
    backbone = _backbone(args)
    corrupted, recon = reconstruct(backbone, read_image(args.image), args.timesteps, seed=args.seed)
    stack = (np.stack([corrupted, recon], axis=1) * 255).round().astype(np.uint8)  # (T, 2, H, W, 3)
    write_array(args.out, stack, overwrite=args.overwrite)
    print(f"wrote {args.out}: (timestep, [masked input, reconstruction], H, W, RGB) for t = {list(args.timesteps)}")
    return 0


def cmd_train_head(args) -> int:
    from .feature_sets import FEATURE_SETS
    from .features import FeatureConfig
    from .files import refuse_existing
    from .head import HeadConfig
    from .io import collect_images, read_image, read_labels
    from .pipeline import train_head

    refuse_existing(args.out, args.overwrite)
    backbone = _backbone(args)
    images = collect_images(args.images, args.exclude)
    label_paths = _pair_labels(images, args.labels)
    config = FeatureConfig(timesteps=args.timesteps, blocks=args.blocks, tile=args.tile, scale=args.scale,
                           **FEATURE_SETS[args.features])
    head_cfg = HeadConfig(ensemble=args.ensemble, steps=args.steps, seed=args.seed)
    bar = _Bar("train-head")
    try:
        head = train_head(backbone, [read_image(p) for p in images], [read_labels(p) for p in label_paths], config,
                          head_cfg, ignore=None if args.dense else 0, progress=bar)
    finally:
        bar.close()
    head.save(args.out, overwrite=args.overwrite)
    print(f"trained a {head_cfg.ensemble}-member head on {len(images)} images "
          f"({head.in_channels} feature channels, classes {head.class_values}); wrote {args.out}")
    return 0


def cmd_segment(args) -> int:
    from .head import Head
    from .inference import segment_files
    from .io import collect_images

    backbone = _backbone(args)
    head = Head.load(args.head)
    paths = collect_images(args.images, args.exclude)
    bar = _Bar("segment")
    try:
        written = segment_files(backbone, head, paths, args.out, fmt=args.format, uncertainty=args.uncertainty,
                                overwrite=args.overwrite, draws=args.draws, progress=bar)
    finally:
        bar.close()
    print(f"wrote {len(written)} masks to {args.out}")
    return 0


def cmd_segment_slide(args) -> int:
    from .checkpoint import default_backbone_name
    from .slide_segmentation import segment_slide

    bar = _Bar("segment-slide")
    try:
        result = segment_slide(args.backbone or default_backbone_name(), args.head, args.slide, args.out,
                               level=args.level, mpp=args.mpp, chunk=args.chunk, tissue=not args.all_tiles,
                               uncertainty=args.uncertainty, scheduler=args.scheduler, workers=args.workers,
                               device=args.device, overwrite=args.overwrite, progress=bar)
    finally:
        bar.close()
    print(f"wrote {result.out}: {result.computed} chunks segmented, {result.resumed} done by an earlier run, "
          f"{result.no_tissue} without tissue skipped, in {result.seconds:.0f} s")
    return 0


def _truth_for(pred: Path, truth_dir: Path) -> Path | None:
    from .io import IMAGE_SUFFIXES

    stem = pred.name.split(".")[0]
    for tag in ("_mask", "_labels", "_inst", ""):
        for ext in IMAGE_SUFFIXES:
            candidate = truth_dir / f"{stem}{tag}{ext}"
            if candidate.exists():
                return candidate
    return None


def cmd_evaluate(args) -> int:
    import numpy as np
    from skimage.measure import label as connected

    from . import metrics
    from .io import collect_images, read_labels

    preds = [p for p in collect_images([args.pred]) if not p.name.split(".")[0].endswith("_uncertainty")]
    scores = []
    for pred_path in preds:
        truth_path = _truth_for(pred_path, Path(args.truth))
        if truth_path is None:
            print(f"{pred_path.name}: no ground truth in {args.truth}, skipped", file=sys.stderr)
            continue
        pred, truth = read_labels(pred_path), read_labels(truth_path)
        if pred.shape != truth.shape:
            raise UserError(f"{pred_path.name} has shape {pred.shape} but {truth_path.name} has {truth.shape}")
        if args.metric == "dice":
            score = metrics.dice(pred, truth)
        elif args.metric == "iou":
            score = metrics.iou(pred, truth)
        elif args.metric == "miou":
            score = metrics.mean_iou(pred, truth)
        else:
            inst = truth if truth.max() > 1 else connected(truth > 0)
            score = metrics.aji(connected(pred > 0), inst)
        scores.append(score)
        print(f"{pred_path.name}\t{args.metric}\t{score:.4f}")
    if not scores:
        raise UserError(f"no prediction in {args.pred} has ground truth in {args.truth}")
    print(f"mean\t{args.metric}\t{np.mean(scores):.4f}\t({len(scores)} images)")
    return 0


def has_screen() -> bool:
    """False on a Linux machine without X or Wayland (a server, CI): napari cannot open there."""
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_gui(args) -> int:
    if not has_screen():
        print("napari-mdm: no screen here (DISPLAY is not set), running the headless demo instead", file=sys.stderr)
        return cmd_demo(argparse.Namespace(out=args.out, backbone=None, device="auto"))
    import napari

    from ._widgets import populate_viewer

    populate_viewer(napari.Viewer(title="napari-mdm"), args.paths)
    napari.run()
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.out, backbone=args.backbone, device=args.device)


def _add_backbone_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=None,
                   help="checkpoint file, shipped name, or random-tiny / random-small (the untrained control); "
                        "default: the shipped histology backbone, else random-tiny")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: %(default)s)")


def _add_pretrain(sub) -> None:
    from .backbone import DEFAULT_PRESET, PRESETS
    from .corruption import MASK_SHAPES, MODES, CorruptionConfig
    from .objectives import LOSSES
    from .pretrain import PretrainConfig

    defaults, corruption = PretrainConfig(), CorruptionConfig()
    p = sub.add_parser("pretrain", help="pretrain or fine-tune a backbone on images")
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    p.add_argument("--exclude", nargs="*", default=["*_mask.*", "*_inst.*"], help="glob patterns to skip")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    p.add_argument("--init", help="start from this backbone (fine-tuning) instead of a fresh preset")
    p.add_argument("--mode", choices=MODES, default=corruption.mode)
    p.add_argument("--mask-shape", choices=MASK_SHAPES, default=corruption.mask_shape)
    p.add_argument("--loss", choices=LOSSES, default=defaults.loss)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--crop", type=int, default=defaults.crop)
    p.add_argument("--scale", type=float, default=1.0,
                   help="downscale the images by this factor first (0.5: crops cover 4x the tissue); "
                        "extract features with the same --scale")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint's saved state")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this many minutes and save (for time-limited machines; --resume goes on)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (long GPU runs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint (without --resume)")
    p.set_defaults(func=cmd_pretrain)


def _add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="masked inputs and reconstructions per timestep")
    _add_backbone_options(p)
    p.add_argument("--image", required=True)
    p.add_argument("--timesteps", type=_ints, default=(100, 500, 900))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .tif or .zarr")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_reconstruct)


def _add_train_head(sub) -> None:
    from .feature_sets import DEFAULT_FEATURE_SET, FEATURE_SETS
    from .features import FeatureConfig
    from .head import HeadConfig

    features, head = FeatureConfig(), HeadConfig()
    p = sub.add_parser("train-head", help="train the few-shot head on labelled images")
    _add_backbone_options(p)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--exclude", nargs="*", default=["*_mask.*", "*_inst.*", "*_labels.*"])
    p.add_argument("--labels", nargs="+", required=True, help="label files (one per image) or a folder")
    p.add_argument("--dense", action="store_true",
                   help="labels are full masks in which 0 is a class (background), not 'unlabelled'")
    p.add_argument("--timesteps", type=_ints, default=features.timesteps)
    p.add_argument("--blocks", type=_ints, default=features.blocks, help="decoder blocks (default: the backbone's)")
    p.add_argument("--tile", type=int, default=features.tile, help="tile side in pixels (default: %(default)s)")
    p.add_argument("--scale", type=float, default=features.scale,
                   help="resize images by this factor before the backbone (0.5 = half resolution)")
    p.add_argument("--features", choices=FEATURE_SETS, default=DEFAULT_FEATURE_SET,
                   help="the backbone's diffusion features, the classic filter bank, or both (default: "
                        "%(default)s; 'filters' runs no network)")
    p.add_argument("--ensemble", type=int, default=head.ensemble)
    p.add_argument("--steps", type=int, default=head.steps)
    p.add_argument("--seed", type=int, default=head.seed)
    p.add_argument("--out", required=True, help="head file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing head file")
    p.set_defaults(func=cmd_train_head)


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment images with a trained head")
    _add_backbone_options(p)
    p.add_argument("--head", required=True)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--exclude", nargs="*", default=["*_mask.*", "*_inst.*", "*_labels.*"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("tif", "zarr", "png"), default="tif")
    p.add_argument("--uncertainty", action="store_true", help="also write NAME_uncertainty")
    p.add_argument("--draws", type=int, default=None, help="average features over this many mask draws")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_segment)


def _add_segment_slide(sub) -> None:
    p = sub.add_parser("segment-slide", help="segment a whole slide (pyramidal TIFF/SVS/OME-TIFF, OME-Zarr, zarr) "
                                             "into an OME-Zarr label image, on dask")
    _add_backbone_options(p)
    p.add_argument("--head", required=True)
    p.add_argument("--slide", required=True)
    p.add_argument("--out", required=True, help="output OME-Zarr label image (NAME.ome.zarr)")
    p.add_argument("--level", type=int, default=None, help="pyramid level (0 = full resolution)")
    p.add_argument("--mpp", type=float, default=None,
                   help="microns per pixel to segment at (the nearest level; default: the head's, else level 0)")
    p.add_argument("--chunk", type=int, default=1024, help="output chunk side: one dask task each")
    p.add_argument("--all-tiles", action="store_true", help="segment blank background too (no tissue detection)")
    p.add_argument("--uncertainty", action="store_true", help="also write the uncertainty (uncertainty/0)")
    p.add_argument("--scheduler", default=None, help="dask.distributed scheduler address (default: local threads)")
    p.add_argument("--workers", type=int, default=1, help="local worker threads (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an output of another job (same job: resumes)")
    p.set_defaults(func=cmd_segment_slide)


def _add_evaluate_gui_demo(sub) -> None:
    p = sub.add_parser("evaluate", help="score predicted masks against ground truth")
    p.add_argument("--pred", required=True, help="folder of predicted masks")
    p.add_argument("--truth", required=True, help="folder of true masks (NAME_mask.* or NAME.*)")
    p.add_argument("--metric", choices=("dice", "iou", "miou", "aji"), default="dice")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("gui", help="napari with the plugin's widgets and the histology sample (or PATHS); "
                                   "without a screen, the headless demo")
    p.add_argument("paths", nargs="*", help="images or masks to open instead of the sample")
    p.add_argument("--out", default="napari-mdm-demo", help="demo output folder when there is no screen")
    p.set_defaults(func=cmd_gui)

    p = sub.add_parser("demo", help="headless end-to-end run on bundled sample data")
    _add_backbone_options(p)
    p.add_argument("--out", default="napari-mdm-demo")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-mdm", description="Few-shot segmentation with masked-diffusion features.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_pretrain, _add_reconstruct, _add_train_head, _add_segment, _add_segment_slide,
                _add_evaluate_gui_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in checkpoints' provenance
    try:
        return args.func(args)
    except UserError as err:
        print(f"napari-mdm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"napari-mdm {args.command}: error: out of memory: use smaller images (large ones as zarr or tif, "
              "segmented with --format zarr) or a smaller --tile", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"napari-mdm {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"napari-mdm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
