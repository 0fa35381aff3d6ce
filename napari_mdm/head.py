"""The few-shot head: an ensemble of small pixel MLPs trained on sparse labels.

Each member is Linear(C, 128)-ReLU-BatchNorm-Linear(128, 32)-ReLU-BatchNorm-Linear(32, K), as in
the MDM paper. All members train at once as batched matrix products, each on its own
class-balanced batches. Prediction: majority vote; probabilities: the ensemble mean;
uncertainty: Jensen-Shannon divergence of the members (entropy of the mean minus mean entropy).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adam import Adam
from .checkpoint import CheckpointError, build_checked, read_tensors, write_tensors
from .devices import fast_bfloat16
from .features import FeatureConfig
from .io import MAX_LABEL, label_dtype
from .jobs import ProgressFn, StopFn, UserError, check_stop, first_line, report
from .memory import release_free_memory
from .multiscale import CODED, CodedFeatures
from .pixel_pool import CodedPixels, coded_pool, draw_pixels, gather, keeps_codes, standardised
from .refinement import coarse_to_fine

if TYPE_CHECKING:
    from .backbone import Backbone

HEAD_FORMAT = "napari-mdm-head/1"


@dataclass(frozen=True)
class HeadConfig:
    ensemble: int = 5
    hidden: tuple[int, ...] = (128, 32)
    steps: int = 0
    """Training steps; 0 picks them from the labelled pixels (:func:`training_steps`)."""
    batch_size: int = 0
    """Labelled pixels each member sees per step, class-balanced; 0 takes CLASS_BATCH of each class
    (256 for two classes). 256 instead of the 1024 of earlier versions makes the fit 2.5x faster on
    strokes and 2x with full masks, Dice within 0.7 points on GlaS and MoNuSeg, 3 seeds
    (``benchmarks/results/*_coarse_batch_x1``); a fixed 256 shared by six face classes (42 pixels
    each) cost 1.2-2.3 mIoU with full masks (``faces_round8_shots5_full*``), hence per class."""
    lr: float = 1e-3
    pixels_per_class: int = 100_000
    """Labelled pixels kept per class for training (a random subset when there are more)."""
    seed: int = 0
    bfloat16: bool = True
    """Fit and apply the ensemble's matrix products in bfloat16 where the processor has native
    bf16 units (AVX512-BF16 or AMX CPUs, recent GPUs: 3-4x faster); float32 elsewhere."""
    rank_tolerance: float = 0.004
    """Prediction applies the first layer (most of its cost) through the leading components of
    its output on the image at hand: the fewest that leave out at most this fraction of the
    output's variance (:func:`low_rank_first_layer`); 0 applies the exact layer. At 0.004 the
    first layer is 2-3x cheaper and labels differ from the exact layer's on a few pixels in a
    thousand, along class borders (``benchmarks.loop``)."""

    coarse_stride: int = 4
    """Prediction evaluates the head on every 4th pixel of every 4th row first and then only where
    the answer can change (:mod:`refinement`): a grid cell whose corners all vote unanimously for
    one class takes their interpolated maps. The head runs on a fifth to a third of the pixels
    and labels match the exact evaluation's on all but about 3 pixels in 10,000
    (``benchmarks.loop``); probabilities and uncertainty inside such cells are interpolated. A
    power of two; 1 evaluates every pixel."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HeadConfig:
        from .settings import from_settings

        config = from_settings(
            cls,
            # older heads ran in float32 with the exact first layer on every pixel
            {"bfloat16": False, "rank_tolerance": 0, "coarse_stride": 1, **data} if isinstance(data, dict) else data,
            {
                "ensemble": (1, 1000),
                "hidden": (1, 1 << 16),
                "steps": (0, 1 << 40),
                "batch_size": (0, 1 << 40),
                "lr": (0, 1e6),
                "pixels_per_class": (1, 1 << 40),
                "seed": (0, 1 << 63),
                "rank_tolerance": (0, 1),
                "coarse_stride": (1, 1 << 12),
            },
        )
        if not _power_of_two(config.coarse_stride):
            raise ValueError(f"coarse_stride must be a power of two, got {config.coarse_stride}")
        return config


def _power_of_two(n: int) -> bool:
    return n >= 1 and not n & (n - 1)


@dataclass(frozen=True)
class HeadContext:
    """What a head needs to be applied safely later: the features it read, the backbone they came
    from, and what its classes mean. Saved in the head file."""

    features: FeatureConfig | None = None
    """Feature settings; None for a head fitted on bare feature arrays (apply it with :meth:`Head.predict`)."""
    backbone_digest: str | None = None
    backbone_name: str | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    """Names of (some of) the class values, e.g. {1: "background", 2: "gland"}."""
    class_colors: dict[int, str] = field(default_factory=dict)
    """Display colours ('#rrggbb') the user chose for the class values in the plugin."""
    pixels: int = 0
    """Labelled pixels the head was trained on."""
    mpp: float | None = None
    """Microns per pixel of the training images, when known: slides are segmented at the level nearest it."""

    @classmethod
    def for_backbone(
        cls,
        backbone: Backbone,
        features: FeatureConfig,
        class_names: dict[int, str] | None = None,
        mpp: float | None = None,
    ) -> HeadContext:
        return cls(features, backbone.digest, backbone.name, dict(class_names or {}), mpp=mpp)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["features"] = self.features.to_dict() if self.features else None
        data["class_names"] = {str(k): v for k, v in self.class_names.items()}
        data["class_colors"] = {str(k): v for k, v in self.class_colors.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> HeadContext:
        """Read a saved context, also the free-form one of heads saved before it was typed."""
        features = data.get("features")
        names = data.get("class_names") or {}
        return cls(
            features=FeatureConfig.from_dict(features) if features else None,
            backbone_digest=data.get("backbone_digest", data.get("backbone")),
            backbone_name=data.get("backbone_name"),
            class_names={int(k): str(v) for k, v in names.items()},
            class_colors={int(k): str(v) for k, v in (data.get("class_colors") or {}).items()},
            pixels=int(data.get("pixels", 0)),
            mpp=None if data.get("mpp") is None else float(data["mpp"]),
        )


class EnsembleMLP(nn.Module):
    """``members`` independent MLPs evaluated together: input (E, N, C) -> logits (E, N, K)."""

    def __init__(self, members: int, in_ch: int, hidden: Sequence[int], classes: int):
        super().__init__()
        sizes = [in_ch, *hidden, classes]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norms = nn.ModuleList()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            bound = 1 / a**0.5
            self.weights.append(nn.Parameter(torch.empty(members, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(members, 1, b).uniform_(-bound, bound)))
            if i < len(hidden):
                self.norms.append(nn.BatchNorm1d(members * b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training-time pass: each member gets its own batch, BatchNorm uses batch statistics."""
        return self.from_first(torch.baddbmm(self.biases[0], x, self.weights[0]))

    def from_first(self, x: torch.Tensor) -> torch.Tensor:
        """The training-time pass from the first layer's (E, N, h) outputs on."""
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=False)):
            x = torch.baddbmm(b, x, w) if i else x
            if i < len(self.norms):
                e, n, c = x.shape
                x = torch.relu(x)
                x = self.norms[i](x.permute(1, 0, 2).reshape(n, e * c)).reshape(n, e, c).permute(1, 0, 2)
        return x

    @torch.no_grad()
    def folded(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Eval-mode layers with each BatchNorm folded into the next linear layer: (E, a, b) weights."""
        layers = []
        scale_shift = None
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            w, b = weight.detach().clone(), bias.detach().clone()
            if scale_shift is not None:
                scale, shift = scale_shift
                b = b + torch.bmm(shift, w)
                w = w * scale.transpose(1, 2)
            layers.append((w, b))
            if i < len(self.norms):
                bn = self.norms[i]
                e, c = w.shape[0], w.shape[2]
                scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(e, 1, c)
                shift = bn.bias.view(e, 1, c) - bn.running_mean.view(e, 1, c) * scale
                scale_shift = (scale, shift)
        return layers


LOW_RANK_MIN_PIXELS, LOW_RANK_SAMPLE = 65536, 4096
"""Images below LOW_RANK_MIN_PIXELS get the exact first layer (fitting a low-rank one would cost
more than it saves); the low-rank one is fitted on LOW_RANK_SAMPLE of the image's pixels."""


@dataclass(frozen=True)
class FirstLayer:
    """A first layer applied as ``expand @ (reduce @ x) + bias``: (r, C), (E * h, r), (E * h, 1)."""

    reduce: torch.Tensor
    expand: torch.Tensor
    bias: torch.Tensor

    def to(self, dtype: torch.dtype) -> FirstLayer:
        return FirstLayer(*(t.to(dtype).contiguous() for t in (self.reduce, self.expand, self.bias)))


def low_rank_first_layer(
    weight: torch.Tensor, bias: torch.Tensor, sample: torch.Tensor, tolerance: float
) -> FirstLayer | None:
    """The first layer ``weight @ x + bias`` ((E * h, C), (E * h, 1)) through the r leading
    principal axes of its output on the (C, s) ``sample`` of the image's pixels, r the fewest that
    leave out at most ``tolerance`` of that output's variance: the best rank-r approximation of the
    layer on these pixels (outputs keep their mean exactly). Features are highly correlated
    across their hundreds of channels, so r is a fraction of E * h and the first layer, most of the
    prediction's cost, shrinks by as much. None when a rank that low would not be cheaper."""
    out_ch, in_ch = weight.shape
    outputs = (weight @ sample).float()  # in the products' precision (bfloat16: 4x faster), then float32
    mean = outputs.mean(1, keepdim=True)
    centred = outputs - mean
    values, vectors = torch.linalg.eigh(centred @ centred.T)  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    total = float(values.sum())
    if not total > 0:
        return None
    left_out = 1 - values.cumsum(0) / total
    rank = int((left_out > tolerance).sum()) + 1
    if rank * (in_ch + out_ch) > 0.7 * in_ch * out_ch:
        return None
    axes = vectors[:, :rank]
    return FirstLayer(axes.T @ weight.float(), axes, bias.float() + mean - axes @ (axes.T @ mean))


def _low_rank_picks(n: int) -> torch.Tensor:
    """The LOW_RANK_SAMPLE pixels of n that a low-rank first layer is fitted on: fixed, sorted
    (4x faster to gather)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:LOW_RANK_SAMPLE].sort().values


@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) class values
    probabilities: np.ndarray  # (K, H, W) float32, ensemble mean
    uncertainty: np.ndarray  # (H, W) float32, Jensen-Shannon divergence of the ensemble
    class_values: list[int] = field(default_factory=list)


class Head:
    """A trained ensemble plus what it needs to be applied safely: its class values, input
    standardisation, and the feature settings and backbone it was trained with."""

    def __init__(
        self,
        net: EnsembleMLP,
        class_values: list[int],
        mean: torch.Tensor,
        std: torch.Tensor,
        config: HeadConfig,
        context: HeadContext | None = None,
    ):
        self.net = net.eval()
        self._pixel_cache: dict[tuple[torch.dtype, torch.dtype], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.class_values = class_values
        self.mean, self.std = mean, std
        self.config = config
        self.context = context or HeadContext()

    @property
    def in_channels(self) -> int:
        return int(self.mean.numel())

    def check_features(self, channels: int) -> None:
        if channels != self.in_channels:
            raise UserError(
                f"this head was trained on {self.in_channels} feature channels but got {channels}: "
                "use the backbone and feature settings it was trained with"
            )

    def _pixel_layers(self, dtype: torch.dtype, centre: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The eval-mode ensemble as channel-first layers for (C, n) pixels from which ``centre``
        was subtracted, the rest of the input standardisation folded into the first layer:
        [(E * h, C) weight, (E * h, 1) bias], then (E, out, in), (E, out, 1)."""
        key = (dtype, centre.dtype)
        if key not in self._pixel_cache:
            (w0, b0), *rest = self.net.folded()
            e, c, h = w0.shape
            scaled = w0 / self.std.view(1, c, 1)
            bias = b0 - torch.einsum("c,ech->eh", self.mean - centre.float(), scaled).unsqueeze(1)
            first = (scaled.permute(0, 2, 1).reshape(e * h, c), bias.reshape(e * h, 1))
            later = [(w.transpose(1, 2), b.transpose(1, 2)) for w, b in rest]
            self._pixel_cache[key] = [(w.to(dtype).contiguous(), b.to(dtype)) for w, b in [first, *later]]
        return self._pixel_cache[key]

    def _dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.config.bfloat16 and fast_bfloat16("cpu") else torch.float32

    def _centred(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(C, n) pixels minus the training mean (as rounded to the pixels' precision, which the
        first layer's bias expects), subtracted in float32 and only then rounded to ``dtype``: a
        channel that hardly varied in training (std clamped to 1e-3) would otherwise turn the
        rounding of its raw value into noise hundreds of times larger."""
        centre = self.mean.to(pixels.dtype).float()
        return pixels.float().sub_(centre[:, None]).to(dtype)

    @torch.inference_mode()
    def member_probabilities(self, pixels: torch.Tensor, first: FirstLayer | None = None) -> torch.Tensor:
        """(C, n) features -> (E, K, n) per-member class probabilities. The products run in
        bfloat16 where that is native (``HeadConfig.bfloat16``), the softmax in float32; ``first``
        replaces the exact first layer (:meth:`first_layer`); pixels are :meth:`_centred` first."""
        dtype = self._dtype()
        (w0, b0), *_ = self._pixel_layers(dtype, self.mean.to(pixels.dtype))
        x = self._centred(pixels, dtype)
        y = torch.addmm(b0, w0, x) if first is None else torch.addmm(first.bias, first.expand, first.reduce @ x)
        return self._after_first(y)

    def _after_first(self, y: torch.Tensor) -> torch.Tensor:
        """The first layer's (E * h, n) outputs -> (E, K, n) per-member class probabilities."""
        (_, _), *rest = self._pixel_layers(y.dtype, self.mean)
        y = y.view(self.net.weights[0].shape[0], -1, y.shape[-1])  # (E, h, n)
        for w, b in rest:
            y = torch.baddbmm(b, w, y.relu_())
        return F.softmax(y.float(), dim=1)

    def _compact_first(self, features: CodedFeatures) -> Callable[[slice | torch.Tensor], torch.Tensor]:
        """``fn(pixels)`` -> the first layer's (E * h, n) outputs on flat ``pixels`` (slice or indices) of
        compact features, computed on their codes (:meth:`CompactFeatures.product`): through the
        layer's leading components on the image (as :meth:`first_layer`) or the exact layer."""
        dtype = self._dtype()
        (w0, centred_bias), *_ = self._pixel_layers(torch.float32, self.mean)
        b0 = centred_bias - w0 @ self.mean[:, None]  # the layer on raw values, not centred ones
        n = features.shape[1] * features.shape[2]
        layer = None
        if self.config.rank_tolerance and n >= LOW_RANK_MIN_PIXELS:
            sample = torch.from_numpy(features.pixels(_low_rank_picks(n).numpy())).to(dtype)
            layer = low_rank_first_layer(w0.to(dtype), b0, sample, self.config.rank_tolerance)
        if layer is None:
            exact = features.product(w0, dtype)
            return lambda pixels: exact(pixels).add_(b0).to(dtype)
        reduce, expand, bias = features.product(layer.reduce, dtype), layer.expand.to(dtype), layer.bias.to(dtype)
        return lambda pixels: torch.addmm(bias, expand, reduce(pixels).to(dtype))

    @torch.inference_mode()
    def first_layer(self, pixels: torch.Tensor) -> FirstLayer | None:
        """The first layer as fitted to (C, n) ``pixels`` by :func:`low_rank_first_layer` (None:
        the exact layer, when the tolerance is 0, the image small or a low rank not cheaper)."""
        c, n = pixels.shape
        if not self.config.rank_tolerance or n < LOW_RANK_MIN_PIXELS:
            return None
        dtype = self._dtype()
        (w0, b0), *_ = self._pixel_layers(torch.float32, self.mean.to(pixels.dtype))
        sample = self._centred(pixels[:, _low_rank_picks(n)], dtype)
        layer = low_rank_first_layer(w0.to(dtype), b0, sample, self.config.rank_tolerance)
        return layer.to(dtype) if layer is not None else None

    def predict_maps(
        self,
        features: np.ndarray | torch.Tensor | CodedFeatures,
        chunk: int = 16384,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> np.ndarray:
        """(C, H, W) features -> (2K + 1, H, W) float32: mean probabilities, vote fractions, JS divergence.

        These maps blend linearly across tiles; :func:`maps_to_prediction` turns them into labels.
        The head runs coarse to fine (``HeadConfig.coarse_stride``, :mod:`refinement`). Progress is
        reported per chunk of pixels; 16k-pixel chunks keep each product's operands in cache
        (1.5-2x faster than 64k on one thread).
        """
        c, h, w = features.shape
        self.check_features(c)
        probabilities = self._chunk_probabilities(features)
        k = len(self.class_values)

        def evaluate(pixels: slice | torch.Tensor) -> torch.Tensor:
            probs = probabilities(pixels)  # (E, K, n)
            mean = probs.mean(0)
            winners = probs.transpose(1, 2).contiguous().argmax(-1)  # (E, n); argmax across a strided dim is slow
            votes = F.one_hot(winners, k).float().mean(0).T
            return torch.cat([mean, votes, (entropy(mean, 0) - entropy(probs, 1).mean(0))[None]])

        def decide(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # sure: every member votes for it
            return np.argmax(class_scores(maps, k), 0), maps[k : 2 * k].max(0) == 1

        out = torch.empty(2 * k + 1, h * w)
        coarse_to_fine(evaluate, decide, out, (h, w), self.config.coarse_stride, chunk, progress, should_stop)
        release_free_memory()
        return out.reshape(2 * k + 1, h, w).numpy()

    @torch.inference_mode()
    def _chunk_probabilities(
        self, features: np.ndarray | torch.Tensor | CodedFeatures
    ) -> Callable[[slice | torch.Tensor], torch.Tensor]:
        """``fn(pixels)`` -> (E, K, n) member probabilities of the flat ``pixels`` (slice or indices)."""
        if isinstance(features, CODED):
            first_output = self._compact_first(features)
            return lambda pixels: self._after_first(first_output(pixels))
        flat = torch.as_tensor(features).reshape(features.shape[0], -1)
        first = self.first_layer(flat)
        return lambda pixels: self.member_probabilities(flat[:, pixels], first)

    def predict(
        self,
        features: np.ndarray | torch.Tensor | CodedFeatures,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> Prediction:
        maps = self.predict_maps(features, progress=progress, should_stop=should_stop)
        return maps_to_prediction(maps, self.class_values)

    def save(self, path: str | os.PathLike, overwrite: bool = True) -> None:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({"input.mean": self.mean, "input.std": self.std})
        meta = {
            "format": HEAD_FORMAT,
            "config": self.config.to_dict(),
            "class_values": self.class_values,
            "context": self.context.to_dict(),
        }
        write_tensors(path, tensors, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Head:
        tensors, meta = read_tensors(path)
        if meta.get("format") != HEAD_FORMAT:
            raise CheckpointError(f"{path} is not a napari-mdm head (format {meta.get('format')!r})")
        try:
            config = HeadConfig.from_dict(meta["config"])
            class_values = _class_values(meta["class_values"])
            mean, std = tensors["input.mean"].float(), tensors["input.std"].float()
            raw_context = meta.get("context") or {}
            if (
                mean.ndim != 1
                or std.shape != mean.shape
                or not isinstance(raw_context, dict)
                or not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all())
            ):
                raise ValueError("the input statistics or the context are malformed")
            context = HeadContext.from_dict(raw_context)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(
                f"{path} is an incomplete or newer napari-mdm head ({type(err).__name__}: {first_line(err)})"
            ) from None
        net = build_checked(
            lambda: EnsembleMLP(config.ensemble, mean.numel(), config.hidden, len(class_values)),
            {k[4:]: v for k, v in tensors.items() if k.startswith("net.")},
            path,
        )
        return cls(net, class_values, mean, std, config, context)


def _class_values(values) -> list[int]:
    """A head's class values as read from its file: at least two distinct label ids."""
    if (
        not isinstance(values, list)
        or len(values) < 2
        or len(set(map(repr, values))) != len(values)
        or not all(type(v) is int and 0 <= v <= MAX_LABEL for v in values)
    ):
        raise ValueError(f"class values must be at least two distinct label ids in 0..{MAX_LABEL}")
    return values


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)


def class_scores(maps: np.ndarray, classes: int) -> np.ndarray:
    """(K, H, W) scores whose argmax is the head's decision: majority vote, ties broken by mean
    probability, from :meth:`Head.predict_maps` output."""
    return maps[classes : 2 * classes] + 1e-3 * maps[:classes]


def maps_to_prediction(maps: np.ndarray, class_values: Sequence[int]) -> Prediction:
    """Labels by the head's rule (:func:`class_scores`), probabilities and uncertainty from
    :meth:`Head.predict_maps` output."""
    k = len(class_values)
    probs, js = maps[:k], maps[2 * k]
    winner = np.argmax(class_scores(maps, k), axis=0)
    values = np.asarray(class_values, dtype=np.int64)
    labels = values[winner].astype(label_dtype(int(values.max())))
    return Prediction(labels, probs.astype(np.float32), np.maximum(js, 0).astype(np.float32), list(class_values))


def check_labels(labels: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]], ignore: int | None) -> list[int]:
    """The class values present, or a clear error for missing, one-class or misshapen labels."""
    for i, (lab, shape) in enumerate(zip(labels, shapes, strict=False)):
        if lab.shape != tuple(shape):
            raise UserError(f"labels {i + 1} have shape {lab.shape} but their image is {tuple(shape)}")
    present = sorted({int(v) for lab in labels for v in np.unique(lab)} - ({ignore} if ignore is not None else set()))
    if not present:
        raise UserError("no labels painted: paint at least two classes (label 0 means unlabelled)")
    if len(present) < 2:
        raise UserError(f"only one class ({present[0]}) is labelled: paint at least two classes, e.g. background too")
    return present


def _check_config(config: HeadConfig) -> None:
    if config.ensemble < 1 or config.batch_size < 0 or not config.lr > 0:
        raise UserError(
            f"ensemble ({config.ensemble}) must be at least 1, batch size ({config.batch_size}) 0 (automatic) "
            f"or more and the learning rate ({config.lr}) above 0"
        )
    if not _power_of_two(config.coarse_stride):
        raise UserError(f"the coarse stride must be a power of two (1: every pixel), got {config.coarse_stride}")
    if config.steps < 0 or config.seed < 0:
        raise UserError(f"steps ({config.steps}) must be 0 (automatic) or more and the seed ({config.seed}) 0 or more")


CLASS_BATCH = 128
"""Pixels of each class in a member's batch when ``HeadConfig.batch_size`` is 0 (automatic)."""

STROKE_STEPS, MASK_STEPS, STROKE_PIXELS = 50, 200, 100_000
"""Automatic training steps: strokes (up to STROKE_PIXELS labelled pixels) overfit with more
steps, full masks underfit with fewer. Measured (3 seeds, benchmarks/results/*_head_knobs_x1):
50 instead of 200 steps gave scribbles +1.6 Dice on GlaS and +1.0 on MoNuSeg, full masks +2.1 on
GlaS but -2.2 on MoNuSeg."""


def batch_per_class(config: HeadConfig, classes: int) -> int:
    """Labelled pixels of each class a member sees per step: CLASS_BATCH when ``config.batch_size``
    is 0 (automatic), else an equal share of it."""
    return max(1, config.batch_size // classes) if config.batch_size else CLASS_BATCH


def training_steps(config: HeadConfig, pixels: int) -> int:
    """The steps a head trains for on ``pixels`` labelled pixels: ``config.steps``, or when that is
    0, STROKE_STEPS for strokes and MASK_STEPS for (nearly) full masks."""
    if config.steps:
        return config.steps
    return STROKE_STEPS if pixels <= STROKE_PIXELS else MASK_STEPS


def _train(
    net: EnsembleMLP,
    x: torch.Tensor | CodedPixels,
    y: torch.Tensor,
    config: HeadConfig,
    device: str | torch.device,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> None:
    """Adam on standardised pixels ``x`` (bfloat16 for a bf16 fit: what autocast would cast each
    batch to, gathered at half the bytes; or coded, :class:`CodedPixels`) and class indices ``y``:
    each member its own class-balanced batch per step, products in bfloat16 where native."""
    k = int(net.weights[-1].shape[-1])
    opt = Adam(net.parameters(), lr=config.lr)
    pools = [torch.nonzero(y == c).squeeze(1) for c in range(k)]
    per_class = batch_per_class(config, k)
    gen = torch.Generator(device).manual_seed(config.seed)
    bf16 = x.dtype == torch.bfloat16  # fit_head's choice (HeadConfig.bfloat16 where native)
    net.train()
    for step in range(config.steps):
        check_stop(should_stop)
        idx = torch.cat(
            [p[torch.randint(len(p), (config.ensemble, per_class), generator=gen, device=device)] for p in pools], dim=1
        )  # (E, B): each member its own class-balanced batch
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            if isinstance(x, CodedPixels):
                logits = net.from_first(x.first_layer(idx, net.weights[0], net.biases[0]))
            else:
                logits = net(x[idx])
        loss = F.cross_entropy(logits.float().reshape(-1, k), y[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 10 == 0 or step + 1 == config.steps:
            report(progress, step + 1, config.steps, f"loss={loss.item():.4f}")


def fit_head(
    features: Sequence[np.ndarray | CodedFeatures],
    labels: Sequence[np.ndarray],
    config: HeadConfig | None = None,
    ignore: int | None = 0,
    context: HeadContext | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Head:
    """Train the ensemble on (C, H, W) features and (H, W) labels; label ``ignore`` is unlabelled."""
    config = config or HeadConfig()
    _check_config(config)
    if not features:
        raise UserError("no images to train on")
    channels = {f.shape[0] for f in features}
    if len(channels) != 1:
        raise UserError(f"feature maps differ in channel count: {sorted(channels)}")
    class_values = check_labels(labels, [f.shape[1:] for f in features], ignore)
    picks, classes = draw_pixels(labels, class_values, config.pixels_per_class, np.random.default_rng(config.seed))
    dtype = torch.bfloat16 if config.bfloat16 and fast_bfloat16(device) else torch.float32
    if keeps_codes(features, picks):
        x = coded_pool(features, picks, dtype)
        mean, std = x.mean, x.std
    else:
        x, mean, std = standardised(torch.from_numpy(gather(features, picks)), dtype)
    x, y = x.to(device), torch.from_numpy(classes).to(device)
    config = replace(config, steps=training_steps(config, len(y)))
    torch.manual_seed(config.seed)
    net = EnsembleMLP(config.ensemble, len(mean), config.hidden, len(class_values)).to(device)
    _train(net, x, y, config, device, progress, should_stop)
    context = replace(context or HeadContext(), pixels=int(len(y)))
    del x, y
    release_free_memory()
    return Head(net.cpu(), class_values, mean.cpu(), std.cpu(), config, context)
