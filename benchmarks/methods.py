"""What the benchmark compares, each trained on the same pixels of the same images.

- the MLP-ensemble head (core ``fit_head``) on per-pixel features named by a :class:`FeatureSpec`:
  diffusion features of a backbone, the filter bank, or both concatenated;
- the ilastik-like pixel classifier: filter bank + a 100-tree random forest;
- a supervised U-Net trained from scratch on the same labels (same ``UNet`` class, 2 outputs).

Features of one image are computed once per backbone (the union of the timesteps and blocks
that the specs ask of it) and sliced per spec, so a block/timestep sweep costs one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.ensemble import RandomForestClassifier

from napari_mdm.backbone import Backbone, UNet, UNetConfig
from napari_mdm.compact import CompactFeatures
from napari_mdm.features import FeatureConfig, default_blocks, extract_features, group_widths, num_channels
from napari_mdm.filterbank import filter_features

from .labels import BACKGROUND, FOREGROUND

CLASSES = (BACKGROUND, FOREGROUND)


@dataclass(frozen=True)
class FeatureSpec:
    """Head inputs: diffusion features of ``backbone`` (at ``timesteps``, ``blocks``; None = the
    backbone's default blocks), the filter bank, or both."""

    name: str
    backbone: str | None = None
    timesteps: tuple[int, ...] = (50,)
    blocks: tuple[int, ...] | None = None
    filters: bool = False
    project: int = 0
    """The core's fast-path knobs (``FeatureConfig``): projected channels, bf16, feature scale."""
    bfloat16: bool = False
    feature_scale: float = 1.0
    attention_pool: int = 1
    """``FeatureConfig.attention_pool`` (1: exact attention, as the shared pass)."""
    head_steps: int | None = None
    """Head knobs (``HeadConfig``) for this input: training steps (None: the run's) and float32
    products instead of bfloat16."""
    head_float32: bool = False
    head_hidden: tuple[int, ...] | None = None
    """The head's hidden layer widths (None: the core's default)."""
    head_rank_tolerance: float | None = None
    """The head's ``rank_tolerance`` (None: the core's default; 0: the exact first layer)."""
    head_pixels: int | None = None
    """The head's ``pixels_per_class`` (None: the run's)."""
    head_batch: int | None = None
    """The head's ``batch_size`` (None: the core's default)."""
    head_coarse_stride: int | None = None
    """The head's ``coarse_stride`` (None: the core's default; 1: every pixel evaluated)."""
    compact: bool = False
    """Features coded in int8 as ``FeatureConfig.compact`` holds them (here: coded once over the
    whole image and decoded, see :func:`compute_bases`)."""

    @property
    def base(self) -> str | None:
        """Key of the feature pass it reads: the backbone's shared pass, or its own for fast-path knobs."""
        own_pass = self.project or self.bfloat16 or self.feature_scale != 1 or self.attention_pool != 1
        if self.backbone is None or not own_pass:
            return self.backbone
        # leading principal components are nested: one pass at the largest ``project`` serves all
        precision = "bf16" if self.bfloat16 else ""
        return f"{self.backbone}~t{self.timesteps}b{self.blocks}s{self.feature_scale}{precision}p{self.attention_pool}"


def blocks_of(spec: FeatureSpec, backbone: Backbone) -> tuple[int, ...]:
    return spec.blocks if spec.blocks is not None else default_blocks(backbone)


def base_configs(specs: list[FeatureSpec], backbones: dict[str, Backbone]) -> dict[str, FeatureConfig]:
    """One feature pass per backbone covering every timestep and block its specs need."""
    wanted: dict[str, tuple[set, set]] = {}
    own = {}
    for spec in specs:
        if spec.base is not None and spec.base != spec.backbone:
            project = max(spec.project, own[spec.base].project if spec.base in own else 0)
            own[spec.base] = FeatureConfig(
                timesteps=spec.timesteps,
                blocks=blocks_of(spec, backbones[spec.backbone]),
                filters=False,
                project=project,
                bfloat16=spec.bfloat16,
                scale=spec.feature_scale,
                attention_pool=spec.attention_pool,
                compact=False,  # specs cut channels from the float16 base (coded copies: compute_bases)
            )
        elif spec.backbone is not None:
            steps, blocks = wanted.setdefault(spec.backbone, (set(), set()))
            steps.update(spec.timesteps)
            blocks.update(blocks_of(spec, backbones[spec.backbone]))
    # diffusion channels only: the filter bank is computed once, apart, and appended per spec
    return {
        **{
            name: FeatureConfig(
                timesteps=tuple(sorted(s)),
                blocks=tuple(sorted(b)),
                filters=False,
                project=0,
                bfloat16=False,
                attention_pool=1,
                compact=False,
            )
            for name, (s, b) in wanted.items()
        },
        **own,
    }


def compute_bases(
    image: np.ndarray,
    backbones: dict[str, Backbone],
    configs: dict[str, FeatureConfig],
    filters: bool,
    compact: bool = False,
) -> dict[str, np.ndarray]:
    """(C, H, W) float16 base features of one image: per backbone, plus ``"filters"``; with
    ``compact``, each also as the core's compact features hold it, decoded (key + CODED): a
    backbone's extracted compact (blocks below full resolution on their grid, the rest coded per
    pixel), the filter bank coded per channel, as those of any spec cut from them would be."""
    bases = {key: extract_features(backbones[key.split("~")[0]], image, config) for key, config in configs.items()}
    if filters:
        bases["filters"] = filter_features(image)
    if compact:
        bases |= {
            key + CODED: extract_features(
                backbones[key.split("~")[0]], image, replace(config, compact=True)
            ).to_float16()
            for key, config in configs.items()
        }
        if filters:
            bases["filters" + CODED] = CompactFeatures.from_array(bases["filters"], []).to_float16()
    return bases


CODED = "#int8"


def channel_index(spec: FeatureSpec, backbone: Backbone, config: FeatureConfig) -> np.ndarray:
    """Channels of ``spec`` inside the base features of ``config`` (timestep-major, then blocks)."""
    widths = backbone.model.block_channels
    per_step = sum(widths[b] for b in config.blocks)
    starts = dict(zip(config.blocks, np.cumsum([0] + [widths[b] for b in config.blocks]), strict=False))
    index = [
        config.timesteps.index(t) * per_step + starts[b] + np.arange(widths[b])
        for t in spec.timesteps
        for b in blocks_of(spec, backbone)
    ]
    return np.concatenate(index)


def spec_features(
    spec: FeatureSpec, bases: dict[str, np.ndarray], backbones: dict[str, Backbone], configs: dict[str, FeatureConfig]
) -> np.ndarray:
    parts = []
    coded = CODED if spec.compact else ""
    if spec.base is not None and spec.base != spec.backbone:
        base, width = bases[spec.base + coded], configs[spec.base].project
        if spec.project and spec.project < width:  # the first components of each timestep
            base = base[np.concatenate([t * width + np.arange(spec.project) for t in range(len(spec.timesteps))])]
        parts.append(base)
    elif spec.backbone is not None:
        base = bases[spec.backbone + coded]
        config = configs[spec.backbone]
        index = channel_index(spec, backbones[spec.backbone], config)
        parts.append(base if len(index) == len(base) else base[index])
    if spec.filters:
        parts.append(bases["filters" + coded])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def spec_groups(spec: FeatureSpec, backbones: dict[str, Backbone], configs: dict[str, FeatureConfig]) -> list[int]:
    """The network's channel groups of an int8 spec, as compact features group them: only for a
    spec that reads its backbone's whole base (with or without the filter bank)."""
    config = configs.get(spec.base) if spec.base is not None else None
    if config is None or spec.base != spec.backbone:  # its own pass: the spec's blocks and timesteps
        whole = config is not None and not config.project
    else:
        whole = len(channel_index(spec, backbones[spec.backbone], config)) == num_channels(
            backbones[spec.backbone], config
        )
    if not whole:
        raise SystemExit(f"{spec.name}: --coded-pool needs an int8 variant reading its backbone's whole base")
    return group_widths(backbones[spec.backbone], config)


def fit_forest(
    x: np.ndarray, y: np.ndarray, seed: int, per_class: int = 20_000, trees: int = 100
) -> RandomForestClassifier:
    """ilastik's classifier: a random forest on a class-balanced subsample of labelled pixels."""
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)])
    forest = RandomForestClassifier(n_estimators=trees, n_jobs=1, random_state=seed)
    return forest.fit(x[keep].astype(np.float32), y[keep])


def forest_scores(forest: RandomForestClassifier, features: np.ndarray) -> np.ndarray:
    """(len(CLASSES), H, W) class probabilities of a (C, H, W) feature map."""
    c, h, w = features.shape
    probs = forest.predict_proba(features.reshape(c, -1).T.astype(np.float32))
    out = np.zeros((len(CLASSES), h * w), np.float32)
    for column, value in enumerate(forest.classes_):
        out[CLASSES.index(int(value))] = probs[:, column]
    return out.reshape(len(CLASSES), h, w)


def _labelled_crop(image: np.ndarray, labels: np.ndarray, crop: int, rng: np.random.Generator):
    """A (3, crop, crop) image crop and its labels, centred near a random labelled pixel."""
    ys, xs = np.nonzero(labels)
    i = rng.integers(len(ys))
    h, w = labels.shape
    y0 = int(np.clip(ys[i] - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, max(0, h - crop)))
    x0 = int(np.clip(xs[i] - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, max(0, w - crop)))
    img = image[y0 : y0 + crop, x0 : x0 + crop].transpose(2, 0, 1)
    lab = labels[y0 : y0 + crop, x0 : x0 + crop]
    ph, pw = crop - lab.shape[0], crop - lab.shape[1]
    if ph or pw:
        img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="symmetric")
        lab = np.pad(lab, ((0, ph), (0, pw)))
    if rng.random() < 0.5:
        img, lab = img[:, :, ::-1], lab[:, ::-1]
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[::-1]
    return img, lab


def train_supervised_unet(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    config: UNetConfig,
    seed: int,
    steps: int = 300,
    crop: int = 128,
    batch: int = 4,
    lr: float = 1e-3,
) -> UNet:
    """The backbone architecture with a 2-class output, trained from scratch with cross-entropy
    on random crops around labelled pixels (unlabelled pixels are ignored)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = UNet(replace(config, out_channels=len(CLASSES))).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t = torch.zeros(batch, dtype=torch.long)
    for _ in range(steps):
        picks = [_labelled_crop(images[j], labels[j], crop, rng) for j in rng.integers(len(images), size=batch)]
        x = torch.from_numpy(np.stack([p[0] for p in picks]).astype(np.float32) * 2 - 1)
        y = torch.from_numpy(np.stack([p[1] for p in picks]).astype(np.int64) - 1)  # unlabelled -> -1
        loss = F.cross_entropy(model(x, t), y, ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.inference_mode()
def unet_scores(model: UNet, image: np.ndarray) -> np.ndarray:
    """(len(CLASSES), H, W) softmax of the supervised U-Net on a whole (H, W, 3) image."""
    h, w = image.shape[:2]
    d = model.config.divisor
    x = np.pad(image.transpose(2, 0, 1), ((0, 0), (0, -h % d), (0, -w % d)), mode="symmetric")
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) * 2 - 1)[None]
    return F.softmax(model(x, torch.zeros(1, dtype=torch.long)), 1)[0, :, :h, :w].numpy()
