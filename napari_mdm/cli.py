"""The ``napari-mdm`` command line: thin over the core modules, with progress bars and
one-line errors (no traceback) for user mistakes."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .jobs import Cancelled, UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line, ``napari-mdm CMD: error: ...``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _at_least(low: int):
    """An argparse type: an integer of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _power_of_two(text: str) -> int:
    """An argparse type: 1, 2, 4, 8, ..."""
    value = _at_least(1)(text)
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two (1, 2, 4, 8, ...), got {value}")
    return value


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value}")
    return value


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
            self.bar = tqdm(
                total=total,
                desc=self.desc,
                unit="",
                dynamic_ncols=True,
                file=sys.stderr,
                disable=None if not os.environ.get("NAPARI_MDM_PROGRESS") else False,
            )
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
            print(
                f"napari-mdm: using {FALLBACK_DEFAULT} (the untrained control: the shipped histology "
                "backbone, resources/histology.safetensors, is missing from this installation)",
                file=sys.stderr,
            )
    return load_backbone(args.backbone, device=resolve_device(args.device))


def _backbone_file(args) -> list[Path]:
    """The backbone file a command reads, when it names one (an input no output may replace)."""
    return [Path(args.backbone)] if args.backbone and Path(args.backbone).exists() else []


def _pair_labels(images: list[Path], labels: list[str]) -> list[Path]:
    """Labels given file by file (same order as the images) or as a folder holding NAME_mask.*,
    NAME_labels.* or NAME.* for each image NAME (the name up to its last suffix)."""
    from .io import IMAGE_SUFFIXES
    from .naming import LABEL_TAGS, companion, stem

    if len(labels) == 1 and Path(labels[0]).is_dir() and Path(labels[0]).suffix != ".zarr":
        folder = Path(labels[0])
        paired = []
        for img in images:
            found = companion(img, folder, LABEL_TAGS, IMAGE_SUFFIXES)
            if found is None:
                raise UserError(
                    f"no labels for {img.name} in {folder} (looked for {stem(img)}_mask.*, {stem(img)}_labels.*)"
                )
            paired.append(found)
        return paired
    if len(labels) != len(images):
        raise UserError(
            f"{len(images)} images but {len(labels)} label files: give one label file per image, or a folder of labels"
        )
    return [Path(p) for p in labels]


def _pretraining_images(args):
    """Check the pretrain command's options and outputs before any work, then index its images
    (each plane of a stack, rescaled by --scale), read crop by crop while training."""
    from .checkpoint import resolve_checkpoint, sidecar_path
    from .files import plan_outputs, refuse_existing
    from .io import collect_images
    from .pretrain import state_path
    from .pretrain_images import PretrainImages

    if args.resume and not state_path(args.out).exists():
        raise UserError(f"--resume: there is no saved training state {state_path(args.out)}")
    if not 0.05 <= args.scale <= 1:
        raise UserError(f"--scale must be in [0.05, 1], got {args.scale}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UserError(f"--max-minutes must be above 0, got {args.max_minutes}")
    paths = collect_images(args.images, args.exclude)
    refuse_existing(args.out, overwrite=True)  # `--out .` is a folder: no weights, side file or state beside it
    inputs = [*paths, *([resolve_checkpoint(args.init)] if args.init and Path(args.init).exists() else [])]
    plan_outputs([args.out, sidecar_path(args.out), state_path(args.out)], inputs, args.overwrite or args.resume)
    return PretrainImages.from_files(paths, args.scale), paths


def cmd_pretrain(args) -> int:
    import numpy as np

    from .backbone import PRESETS
    from .checkpoint import load_backbone
    from .corruption import CorruptionConfig
    from .pretrain import PretrainConfig, pretrain
    from .ranks import ranks_from_env

    images, paths = _pretraining_images(args)
    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        loss=args.loss,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        compile=args.compile,
    )
    deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    init = load_backbone(args.init) if args.init else None
    provenance = {
        "command": " ".join(["napari-mdm", *map(str, args.argv)]),
        "preset": None if init else args.preset,
        "mode": args.mode,
        "scale": args.scale,
        "data": sorted({str(p.parent) for p in paths}),
    }
    bar = _Bar("pretrain")
    try:
        result = pretrain(
            images,
            out=args.out,
            unet=PRESETS[args.preset],
            corruption=CorruptionConfig(mode=args.mode, mask_shape=args.mask_shape),
            config=config,
            device=args.device,
            resume=args.resume,
            init=init,
            provenance=provenance,
            progress=bar,
            should_stop=None if deadline is None else lambda: time.monotonic() > deadline,
        )
    finally:
        bar.close()
    loss = np.mean(result.losses[-50:]) if result.losses else float("nan")
    stopped = f"stopped after --max-minutes {args.max_minutes} (continue with --resume)"
    if ranks_from_env().main:  # under torchrun, one process speaks for the job
        print(
            f"{stopped if result.cancelled else 'finished'} at step {result.step}: "
            f"mean loss of the last steps {loss:.4f}; wrote {args.out}"
        )
    return 0


def cmd_reconstruct(args) -> int:
    import numpy as np

    from .files import plan_outputs
    from .io import read_image, write_array
    from .reconstruction import reconstruct

    if Path(args.out).suffix.lower() not in (".tif", ".tiff", ".zarr"):
        raise UserError(f"cannot write {args.out}: reconstructions are a stack; use .tif or .zarr")
    plan_outputs([args.out], [args.image, *_backbone_file(args)], args.overwrite)
    backbone = _backbone(args)
    corrupted, recon = reconstruct(backbone, read_image(args.image), args.timesteps, seed=args.seed)
    stack = (np.stack([corrupted, recon], axis=1) * 255).round().astype(np.uint8)  # (T, 2, H, W, 3)
    write_array(args.out, stack, overwrite=args.overwrite)
    print(f"wrote {args.out}: (timestep, [masked input, reconstruction], H, W, RGB) for t = {list(args.timesteps)}")
    return 0


def cmd_train_head(args) -> int:
    from .feature_sets import FEATURE_SETS
    from .features import FeatureConfig
    from .files import plan_outputs
    from .head import HeadConfig
    from .io import collect_images, read_image, read_labels
    from .pipeline import train_head

    images = collect_images(args.images, args.exclude)
    label_paths = _pair_labels(images, args.labels)
    plan_outputs([args.out], [*images, *label_paths, *_backbone_file(args)], args.overwrite)
    backbone = _backbone(args)
    config = FeatureConfig(
        timesteps=args.timesteps,
        blocks=args.blocks,
        tile=args.tile,
        scale=args.scale,
        project=args.project,
        bfloat16=not args.float32,
        position=args.position,
        compact=not args.float16_features,
        attention_pool=args.attention_pool,
        **FEATURE_SETS[args.features],
    )
    head_cfg = HeadConfig(
        ensemble=args.ensemble,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        bfloat16=not args.float32,
        rank_tolerance=args.rank_tolerance,
        coarse_stride=args.coarse_stride,
    )
    bar = _Bar("train-head")
    try:
        head = train_head(
            backbone,
            [read_image(p) for p in images],
            [read_labels(p) for p in label_paths],
            config,
            head_cfg,
            ignore=None if args.dense else 0,
            progress=bar,
        )
    finally:
        bar.close()
    head.save(args.out, overwrite=args.overwrite)
    print(
        f"trained a {head_cfg.ensemble}-member head on {len(images)} images "
        f"({head.in_channels} feature channels, classes {head.class_values}); wrote {args.out}"
    )
    return 0


def cmd_segment(args) -> int:
    from .head import Head
    from .inference import plan_segmentation, segment_files
    from .io import collect_images

    head = Head.load(args.head)
    paths = collect_images(args.images, args.exclude)
    plan_segmentation(
        head, paths, args.out, args.format, args.uncertainty, args.overwrite, [args.head, *_backbone_file(args)]
    )
    backbone = _backbone(args)
    bar = _Bar("segment")
    try:
        written = segment_files(
            backbone,
            head,
            paths,
            args.out,
            fmt=args.format,
            uncertainty=args.uncertainty,
            overwrite=args.overwrite,
            draws=args.draws,
            progress=bar,
        )
    finally:
        bar.close()
    print(f"wrote {len(written)} masks to {args.out}")
    return 0


def cmd_segment_slide(args) -> int:
    from .checkpoint import default_backbone_name
    from .slide_segmentation import segment_slide

    bar = _Bar("segment-slide")
    try:
        result = segment_slide(
            args.backbone or default_backbone_name(),
            args.head,
            args.slide,
            args.out,
            level=args.level,
            mpp=args.mpp,
            chunk=args.chunk,
            tissue=not args.all_tiles,
            uncertainty=args.uncertainty,
            scheduler=args.scheduler,
            workers=args.workers,
            device=args.device,
            overwrite=args.overwrite,
            progress=bar,
        )
    finally:
        bar.close()
    print(
        f"wrote {result.out}: {result.computed} chunks segmented, {result.resumed} done by an earlier run, "
        f"{result.no_tissue} without tissue skipped, in {result.seconds:.0f} s"
    )
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np
    from skimage.measure import label as connected

    from . import metrics
    from .io import IMAGE_SUFFIXES, collect_images, read_labels
    from .naming import TRUTH_TAGS, companion, is_uncertainty

    preds = [p for p in collect_images([args.pred]) if not is_uncertainty(p)]
    scores = []
    for pred_path in preds:
        truth_path = companion(pred_path, args.truth, TRUTH_TAGS, IMAGE_SUFFIXES)
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
        return cmd_demo(argparse.Namespace(out=args.out, backbone=None, device="auto", faces=False))
    import napari

    from ._widgets import populate_viewer

    populate_viewer(napari.Viewer(title="napari-mdm"), args.paths)
    napari.run()
    return 0


def cmd_demo(args) -> int:
    if args.faces:
        from .faces import run_face_demo

        return run_face_demo(args.out, backbone=args.backbone, device=args.device)
    from .demo import run_demo

    return run_demo(args.out, backbone=args.backbone, device=args.device)


def _add_backbone_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backbone",
        default=None,
        help="checkpoint file, shipped name, or random-tiny / random-small (the untrained control); "
        "default: the shipped histology backbone, else random-tiny",
    )
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
    p.add_argument("--steps", type=_at_least(1), default=defaults.steps)
    p.add_argument("--batch-size", type=_at_least(1), default=defaults.batch_size)
    p.add_argument("--crop", type=_at_least(1), default=defaults.crop)
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="downscale the images by this factor first (0.5: crops cover 4x the tissue); "
        "extract features with the same --scale",
    )
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=_at_least(0), default=defaults.seed)
    p.add_argument("--checkpoint-every", type=_at_least(1), default=defaults.checkpoint_every)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint's saved state")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this many minutes and save (for time-limited machines; --resume goes on)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (long GPU runs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint (without --resume)")
    p.set_defaults(func=cmd_pretrain)


def _add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="masked inputs and reconstructions per timestep")
    _add_backbone_options(p)
    p.add_argument("--image", required=True)
    p.add_argument("--timesteps", type=_ints, default=(100, 500, 900))
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument("--out", required=True, help="output .tif or .zarr")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_reconstruct)


def _add_train_head(sub) -> None:
    from .head import HeadConfig

    head = HeadConfig()
    p = sub.add_parser("train-head", help="train the few-shot head on labelled images")
    _add_backbone_options(p)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--exclude", nargs="*", default=["*_mask.*", "*_inst.*", "*_labels.*"])
    p.add_argument("--labels", nargs="+", required=True, help="label files (one per image) or a folder")
    p.add_argument(
        "--dense",
        action="store_true",
        help="labels are full masks in which 0 is a class (background), not 'unlabelled'",
    )
    _add_feature_options(p)
    _add_head_options(p, head)
    p.add_argument("--out", required=True, help="head file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing head file")
    p.set_defaults(func=cmd_train_head)


def _add_feature_options(p) -> None:
    """The feature settings a head is trained with (``FeatureConfig``)."""
    from .feature_sets import DEFAULT_FEATURE_SET, FEATURE_SETS
    from .features import FeatureConfig

    features = FeatureConfig()
    p.add_argument("--timesteps", type=_ints, default=features.timesteps)
    p.add_argument("--blocks", type=_ints, default=features.blocks, help="decoder blocks (default: the backbone's)")
    p.add_argument(
        "--tile", type=_at_least(1), default=features.tile, help="tile side in pixels (default: %(default)s)"
    )
    p.add_argument(
        "--scale",
        type=float,
        default=features.scale,
        help="resize images by this factor before the backbone (0.5 = half resolution)",
    )
    p.add_argument(
        "--features",
        choices=FEATURE_SETS,
        default=DEFAULT_FEATURE_SET,
        help="the backbone's diffusion features, the classic filter bank, or both (default: "
        "%(default)s; 'filters' runs no network)",
    )
    p.add_argument(
        "--project",
        type=_at_least(0),
        default=features.project,
        help="diffusion channels kept, projected onto the backbone's principal components "
        "(default: %(default)s; 0 keeps all channels: a slower head)",
    )
    p.add_argument(
        "--float32",
        action="store_true",
        help="run the backbone and the head in float32 even where bfloat16 is native (slower; by "
        "default bfloat16 is used on CPUs with AVX512-BF16/AMX units and recent GPUs)",
    )
    p.add_argument(
        "--position",
        action="store_true",
        help="add each pixel's position in the image (row and column, 0 to 1) to its features: "
        "for aligned images such as faces, where left and right or top and bottom tell classes apart",
    )
    p.add_argument(
        "--float16-features",
        action="store_true",
        help="hold whole images' features in float16 instead of int8 codes (twice the memory, "
        "prediction about 1.3x slower on one CPU thread; labels differ on about 1 pixel in 1000)",
    )
    p.add_argument(
        "--attention-pool",
        type=_at_least(1),
        metavar="N",
        default=features.attention_pool,
        help="the backbone's large attention layers attend to keys averaged over N x N cells of "
        "their map (default: %(default)s, a 1.4x faster network on a CPU at 512 px; 1: exact attention)",
    )


def _add_head_options(p, head) -> None:
    from .head import CLASS_BATCH

    p.add_argument("--ensemble", type=_at_least(1), default=head.ensemble)
    p.add_argument(
        "--steps",
        type=_at_least(0),
        default=head.steps,
        help="head training steps (default: 0, automatic: 50 for strokes, 200 for full masks)",
    )
    p.add_argument(
        "--batch-size",
        type=_at_least(0),
        default=head.batch_size,
        help="labelled pixels each head member sees per step, class-balanced (default: 0, automatic: "
        f"{CLASS_BATCH} of each class)",
    )
    p.add_argument("--seed", type=_at_least(0), default=head.seed)
    p.add_argument(
        "--rank-tolerance",
        type=_fraction,
        default=head.rank_tolerance,
        help="variance of the head's first layer that prediction may leave out to apply it through "
        "fewer components, per image (default: %(default)s, 2-3x cheaper; 0: the exact layer)",
    )
    p.add_argument(
        "--coarse-stride",
        type=_power_of_two,
        metavar="N",
        default=head.coarse_stride,
        help="prediction runs the head on every Nth pixel of every Nth row first, then only where "
        "classes meet or the ensemble disagrees (default: %(default)s, 1.6-2x faster; 1: every pixel)",
    )


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment images with a trained head")
    _add_backbone_options(p)
    p.add_argument("--head", required=True)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--exclude", nargs="*", default=["*_mask.*", "*_inst.*", "*_labels.*"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("tif", "zarr", "png"), default="tif")
    p.add_argument("--uncertainty", action="store_true", help="also write NAME_uncertainty")
    p.add_argument("--draws", type=_at_least(1), default=None, help="average features over this many mask draws")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_segment)


def _add_segment_slide(sub) -> None:
    from .slide_segmentation import SLIDE_CHUNK

    p = sub.add_parser(
        "segment-slide",
        help="segment a whole slide (pyramidal TIFF/SVS/OME-TIFF, OME-Zarr, zarr) "
        "into an OME-Zarr label image, on dask",
    )
    _add_backbone_options(p)
    p.add_argument("--head", required=True)
    p.add_argument("--slide", required=True)
    p.add_argument("--out", required=True, help="output OME-Zarr label image (NAME.ome.zarr)")
    p.add_argument("--level", type=int, default=None, help="pyramid level (0 = full resolution)")
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="microns per pixel to segment at (the nearest level; default: the head's, else level 0)",
    )
    p.add_argument(
        "--chunk",
        type=_at_least(64),
        default=SLIDE_CHUNK,
        help="output chunk side: one dask task each (default: %(default)s, which with the halo reads "
        "1024 px: 2 x 2 network tiles)",
    )
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

    p = sub.add_parser(
        "gui",
        help="napari with the plugin's widgets and the histology sample (or PATHS); "
        "without a screen, the headless demo",
    )
    p.add_argument("paths", nargs="*", help="images or masks to open instead of the sample")
    p.add_argument("--out", default="napari-mdm-demo", help="demo output folder when there is no screen")
    p.set_defaults(func=cmd_gui)

    p = sub.add_parser("demo", help="headless end-to-end run on bundled sample data")
    _add_backbone_options(p)
    p.add_argument("--out", default="napari-mdm-demo")
    p.add_argument(
        "--faces",
        action="store_true",
        help="the face workflow instead: scripted strokes on the astronaut portrait (skin, hair, eyes, "
        "nose, mouth, background), the face backbone when one is built in",
    )
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="napari-mdm", description="Few-shot segmentation with masked-diffusion features.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (
        _add_pretrain,
        _add_reconstruct,
        _add_train_head,
        _add_segment,
        _add_segment_slide,
        _add_evaluate_gui_demo,
    ):
        add(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so outputs are kept or cleaned up as for Ctrl-C."""


class _SigtermFlag:
    """Remembers that SIGTERM arrived: a C library interrupted by it may surface the interruption
    as its own error (an OSError for EINTR, a wrapped exception), which still means "terminated"."""

    received = False

    @classmethod
    def handle(cls, signum, frame) -> None:
        cls.received = True
        raise Terminated()


def _out_of_memory(err: BaseException) -> bool:
    """MemoryError, or torch's RuntimeError for a failed CPU or GPU allocation."""
    text = str(err).lower()
    return isinstance(err, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _report(err: BaseException, command: str) -> int | None:
    """Print the one line for an error that is not a bug and return the exit status; None for a bug."""
    prefix = f"napari-mdm {command}".rstrip()
    if isinstance(err, Terminated) or _SigtermFlag.received:
        print(f"{prefix}: terminated (SIGTERM); finished outputs are kept", file=sys.stderr)
        return 143
    if isinstance(err, (KeyboardInterrupt, Cancelled)):
        print(f"{prefix}: {'cancelled' if isinstance(err, Cancelled) else 'interrupted'}", file=sys.stderr)
        return 130
    if isinstance(err, UserError):
        print(f"{prefix}: error: {err}", file=sys.stderr)
        return 2
    if isinstance(err, OSError):  # the system refused (permissions, a vanished file): not a bug
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prefix}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    if isinstance(err, (MemoryError, RuntimeError)) and _out_of_memory(err):
        print(
            f"{prefix}: error: out of memory: use smaller images (large ones as zarr or tif, segmented with "
            "--format zarr), a smaller --tile, --crop or --batch-size",
            file=sys.stderr,
        )
        return 2
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; user errors, running out of memory, Ctrl-C (exit 130, also during start-up)
    and SIGTERM (exit 143) end with one line on stderr, never a traceback."""
    import signal
    import threading

    command = ""
    in_main_thread = threading.current_thread() is threading.main_thread()
    _SigtermFlag.received = False
    previous = signal.signal(signal.SIGTERM, _SigtermFlag.handle) if in_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in checkpoints' provenance
        return args.func(args)
    except (KeyboardInterrupt, Cancelled, Exception) as err:
        status = _report(err, command)
        if status is None:
            raise
        return status
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
