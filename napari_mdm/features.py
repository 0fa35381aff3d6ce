"""Multi-timestep, multi-block decoder features of a frozen backbone, per pixel: whole images'
as int8 codes (``compact``; blocks below full resolution on their own grid, ``multiscale``),
tiles' in float16.

For each tile: corrupt it at each timestep (reproducibly, image-wide: see ``corruption``), run
the backbone up to the deepest decoder block needed, L2-normalise each chosen block per cell of
its grid, and keep it there or upsample it bilinearly to pixel resolution (a band of rows at a
time); optionally append the classic filter bank (``filterbank``) of the same tile and the
pixels' image-wide position. Tiles are blended (``tiling``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import Backbone, pooled_attention
from .block_progress import passes_blocks, per_block
from .compact import CompactFeatures
from .corruption import corrupt_region
from .devices import fast_bfloat16
from .filterbank import filter_features, num_filter_channels
from .io import ImageSource
from .jobs import ProgressFn, StopFn, UserError, check_stop, report
from .memory import release_free_memory, reused_heap, zeros
from .multiscale import CODED, CodedFeatures, MultiscaleFeatures
from .tiling import add_weighted, pad_to, tile_grid, weighted_tiles


@dataclass(frozen=True)
class FeatureConfig:
    timesteps: tuple[int, ...] = (50,)
    blocks: tuple[int, ...] | None = None
    """Decoder blocks to read; None picks :func:`default_blocks` of the backbone."""
    tile: int = 512
    """Tile side in image pixels. GroupNorm and attention see the whole tile, so features depend
    a little on the tile: larger tiles give more context; the head records the tile it used."""
    overlap: float = 0.25
    scale: float = 1.0
    """Resize factor applied before the backbone (0.5: half resolution, 4x less compute)."""
    seed: int = 0
    draws: int = 1
    """Mask/noise draws averaged per timestep (test-time averaging)."""
    normalize: bool = True
    filters: bool = True
    """Append the ilastik-like filter bank (144 channels, full resolution) to the diffusion
    features. On GlaS it lifts the untrained control by 1-8 Dice points (benchmarks/README.md);
    turn it off to measure a backbone on its own."""
    diffusion: bool = True
    """Read the backbone's decoder. Off (filter bank alone) skips the network entirely: on
    MoNuSeg nuclei the untrained network's features pull the filter bank down by 6 Dice points."""
    project: int = 0
    """Diffusion channels kept per timestep: the blocks' activations projected onto the backbone's
    leading principal components (``projection``), at each block's own resolution before
    upsampling, so the head sees tens of channels instead of hundreds. 0 keeps every channel."""
    bfloat16: bool = True
    """Run the backbone under bfloat16 autocast where the device has native bf16 units (AVX512-BF16
    or AMX CPUs, recent GPUs: about 25% faster, Dice unchanged on the demo), float32 elsewhere."""
    attention_pool: int = 2
    """The backbone's large self-attention layers (``POOLED_ATTENTION_TOKENS``: on a 512-px tile, those
    at 1/8 scale) attend to keys and values averaged over cells of this many x this many tokens: 2
    makes the shipped backbone's CPU pass 1.4x faster at 512 px (attention's share of a pass grows
    with the tile's area); Dice within 0.6 points (benchmarks/README.md). 1: exact attention."""
    position: bool = False
    """Append two channels, each pixel's row and column as a fraction of the whole image's height
    and width (0 at the top/left edge, 1 at the bottom/right): for aligned images (faces), where
    a thing lies tells what it is, a left eye from a right one."""
    compact: bool = True
    """Hold whole images' features as int8 codes (``compact``), one byte a value instead of
    float16's two: half the memory, and the head's prediction 1.3x faster on one thread (no float16
    conversion); labels as with float16 on 99.9 % of the pixels (``benchmarks.loop``). Off: float16."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureConfig:
        from .settings import from_settings

        if not isinstance(data, dict):
            raise ValueError(f"feature settings must be a JSON object, got {type(data).__name__}")
        values = {
            "filters": False,
            "diffusion": True,
            "project": 0,
            "bfloat16": False,
            "position": False,
            "compact": False,
            "attention_pool": 1,
            **data,
        }  # heads saved before the options existed
        return from_settings(
            cls,
            values,
            {
                "timesteps": (0, 100_000),
                "blocks": (0, 1000),
                "tile": (1, 1 << 16),
                "overlap": (0, 0.9),
                "scale": (0.05, 4),
                "seed": (0, 1 << 63),
                "draws": (1, 1000),
                "project": (0, 1 << 16),
                "attention_pool": (1, 64),
            },
        )


def default_blocks(backbone: Backbone) -> tuple[int, ...]:
    """The decoder's second half (the MDM paper read blocks 8-12 of 18) up to the first block
    whose output is at full resolution. The blocks after it run at full resolution and cost more
    than the rest of the network (the shipped backbone: 5.9 s instead of 2.7 s for a 512-px
    tile); the filter bank, or that first block, supplies the fine detail. Stopping one block
    earlier (3-6) saves 3-13 % of a first prediction and holds Dice on GlaS and MoNuSeg, but costs
    1.4-6.1 points with strokes on the loop's ``ihc`` image (``benchmarks/results/loop*.md``)."""
    model = backbone.model
    n = len(model.output_blocks)
    last = next(i for i in range(n) if model.block_scale(i) == 1)
    return tuple(range(min(n // 3, last), last + 1))


def resolve_config(backbone: Backbone, config: FeatureConfig | None) -> FeatureConfig:
    """Fill in the backbone's default blocks and check the config against it (a filter-bank-only
    config reads no network, so it fits any backbone)."""
    config = config or FeatureConfig()
    if not (config.diffusion or config.filters):
        raise UserError("no features chosen: use the backbone's diffusion features, the filter bank, or both")
    if config.blocks is None:
        config = replace(config, blocks=default_blocks(backbone))
    if config.diffusion:
        _check_against_backbone(backbone, config)
    elif config.tile < 1:
        raise UserError(f"tile must be at least 1, got {config.tile}")
    if not 0.05 <= config.scale <= 4:
        raise UserError(f"scale must be in [0.05, 4], got {config.scale}")
    if not 0 <= config.overlap < 0.9:
        raise UserError(f"overlap must be in [0, 0.9), got {config.overlap}")
    if config.draws < 1:
        raise UserError(f"draws must be at least 1, got {config.draws}")
    if config.attention_pool < 1:
        raise UserError(f"attention_pool must be at least 1 (1: exact attention), got {config.attention_pool}")
    if config.project < 0:
        raise UserError(f"project must be 0 (all channels) or a number of channels, got {config.project}")
    n = len(backbone.model.block_channels)
    widths = sum(backbone.model.block_channels[b] for b in config.blocks if 0 <= b < n)
    if config.project > widths:  # a small backbone keeps all its channels
        config = replace(config, project=0)
    return config


def _check_against_backbone(backbone: Backbone, config: FeatureConfig) -> None:
    n = len(backbone.model.output_blocks)
    bad = [b for b in config.blocks if not 0 <= b < n]
    if bad:
        raise UserError(f"decoder blocks {bad} do not exist: this backbone has blocks 0..{n - 1}")
    total = backbone.corruption.num_timesteps
    if any(not 0 <= t <= total for t in config.timesteps) or not config.timesteps:
        raise UserError(f"timesteps must be in 0..{total}, got {config.timesteps}")
    if config.tile < backbone.model.config.divisor or config.tile % backbone.model.config.divisor:
        raise UserError(f"tile must be a multiple of {backbone.model.config.divisor}, got {config.tile}")


def num_channels(backbone: Backbone, config: FeatureConfig) -> int:
    config = resolve_config(backbone, config)
    extra = (num_filter_channels() if config.filters else 0) + (POSITION_CHANNELS if config.position else 0)
    if not config.diffusion:
        return extra
    per_step = config.project or sum(backbone.model.block_channels[b] for b in config.blocks)
    return len(config.timesteps) * per_step + extra


POSITION_CHANNELS = 2


def features_nbytes(backbone: Backbone, config: FeatureConfig, h: int, w: int) -> int:
    """Bytes an (h, w) image's features take when held whole: compact codes and scales, or
    float16 values."""
    config = resolve_config(backbone, config)
    channels = num_channels(backbone, config)
    if config.compact:
        strides = group_strides(backbone, config)
        return MultiscaleFeatures.nbytes_for(channels, h, w, group_widths(backbone, config), strides)
    return 2 * channels * h * w


class Frame(NamedTuple):
    """Where an image lies in the whole it was cut from (a slide chunk in its slide): its top-left
    corner there and the whole's shape. Position channels are measured in the whole."""

    y0: int
    x0: int
    height: int
    width: int


def position_channels(y0: int, x0: int, size: tuple[int, int], whole: tuple[int, int]) -> torch.Tensor:
    """(2, h, w) float32: row / (H - 1) and column / (W - 1) in the whole (H, W) image of the
    pixels of an (h, w) region whose corner is at (y0, x0) there."""
    (h, w), (big_h, big_w) = size, whole
    rows = torch.arange(y0, y0 + h, dtype=torch.float32) / max(big_h - 1, 1)
    cols = torch.arange(x0, x0 + w, dtype=torch.float32) / max(big_w - 1, 1)
    return torch.stack([rows[:, None].expand(h, w), cols[None, :].expand(h, w)])


def tile_alignment(backbone: Backbone, config: FeatureConfig) -> int:
    """Image pixels that tile starts are multiples of: the network's coarsest step at the
    features' scale, so overlapping tiles see the same coarse grid (see ``tiling.axis_tiles``)."""
    return max(1, math.ceil(backbone.model.config.divisor / config.scale))


MARGIN = 16
"""Mirrored pixels added around each tile (at the backbone's resolution) and cut off again."""


def _downscale(x: np.ndarray, scale: float) -> np.ndarray:
    """Anti-aliased bilinear resize of a (C, h, w) array by ``scale`` (at least 1 px per side)."""
    if scale == 1:
        return x
    size = (max(1, round(x.shape[1] * scale)), max(1, round(x.shape[2] * scale)))
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    return F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)[0].numpy()


def steps_per_tile(backbone: Backbone, config: FeatureConfig) -> int:
    """Progress steps of one tile: each block of the network's pass, then the filter bank."""
    config = resolve_config(backbone, config)
    network = passes_blocks(backbone.model, max(config.blocks)) if config.diffusion else 0
    return network + int(config.filters)


def decoder_activations(
    backbone: Backbone,
    region: np.ndarray,
    y0: int,
    x0: int,
    config: FeatureConfig,
    on_step: Callable[[], None] = lambda: None,
) -> tuple[dict[int, torch.Tensor], tuple[int, int], tuple[int, int]]:
    """The chosen decoder blocks' activations at their own resolution (in the network's precision:
    bfloat16 under autocast) for an (h, w, 3) [0, 1] region, batched timestep-major (then draws);
    with the padded network input's size and the region's size at the backbone's scale.
    ``on_step()`` runs after each block of the network."""
    x = _downscale(region.transpose(2, 0, 1) * 2 - 1, config.scale)
    sh, sw = x.shape[1:]
    sy, sx = round(y0 * config.scale), round(x0 * config.scale)
    inputs, steps = [], []
    for t in config.timesteps:
        for draw in range(config.draws):
            corrupted = corrupt_region(x, sy, sx, t, backbone.corruption, config.seed + draw)
            # mirrored context on every side: without it the convolutions' zero padding makes the
            # outermost pixels look unlike any other (a bright frame in the uncertainty)
            framed = np.pad(corrupted, ((0, 0), (MARGIN, MARGIN), (MARGIN, MARGIN)), mode="symmetric")
            inputs.append(pad_to(framed, backbone.model.config.divisor))
            steps.append(t)
    device = backbone.device
    batch = torch.from_numpy(np.stack(inputs)).to(device)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bfloat16 and fast_bfloat16(device)),
        per_block(backbone.model, on_step),
        pooled_attention(config.attention_pool),
        reused_heap(),
    ):
        acts = backbone.model.decoder_features(batch, torch.tensor(steps, device=device), config.blocks)
    return acts, tuple(batch.shape[-2:]), (sh, sw)


def unit_norm(a: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """Each pixel's (or grid cell's) channel vector scaled to length sqrt(channels) (blocks weigh
    alike)."""
    scale = (a.shape[1] ** 0.5) / a.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return a.mul_(scale) if in_place else a * scale


def _as_float32(a: torch.Tensor, normalize: bool) -> torch.Tensor:
    """A block's maps in float32, normalised per cell of its grid if ``normalize``."""
    return unit_norm(a.float()) if normalize else a.float()


def _to_region(
    a: torch.Tensor, padded: tuple[int, int], scaled: tuple[int, int], size: tuple[int, int], normalize: bool
) -> torch.Tensor:
    """A block's maps (normalised per cell of its grid if ``normalize``) upsampled to the padded
    input, the margin cut off, resized to the region."""
    sh, sw = scaled
    a = _as_float32(a, normalize)
    if tuple(a.shape[-2:]) != padded:
        a = F.interpolate(a, size=padded, mode="bilinear", align_corners=False)
    a = a[:, :, MARGIN : MARGIN + sh, MARGIN : MARGIN + sw]
    return F.interpolate(a, size=size, mode="bilinear", align_corners=False) if scaled != size else a


BAND_BYTES = 16 << 20
"""About this many float32 bytes of upsampled maps at a time (a 576-px tile's 128-channel block
upsampled whole is 190 MB)."""


def _region_bands(
    a: torch.Tensor, padded: tuple[int, int], scaled: tuple[int, int], size: tuple[int, int], normalize: bool
) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`_to_region` of a block's maps in bands of rows: (first row, maps). Where the block's
    grid divides the padded input and the region is the backbone's input times a power of two
    (``config.scale`` 1, 1/2, 1/4 on even sides), each band is upsampled in one step from its own
    source rows plus one on each side, so it holds the rows of the whole upsampling (to float
    rounding: bilinear weights at power-of-two factors are exact in binary)."""
    n, c, gh, gw = a.shape
    fy, fx = padded[0] // gh, padded[1] // gw
    ky, kx = size[0] // scaled[0], size[1] // scaled[1]
    factors = (fy, fx, ky, kx)
    if (ky * scaled[0], kx * scaled[1]) != size or (fy * gh, fx * gw) != padded or any(f & (f - 1) for f in factors):
        yield 0, _to_region(a, padded, scaled, size, normalize)
        return
    (h, w), (fy, fx), (my, mx) = size, (fy * ky, fx * kx), (MARGIN * ky, MARGIN * kx)
    rows = max(fy, BAND_BYTES // (4 * n * c * gw * fx) // fy * fy)
    for r0 in range(0, h, rows):
        p0, p1 = my + r0, my + min(h, r0 + rows)
        s0, s1 = max(0, p0 // fy - 1), min(gh, -(-p1 // fy) + 1)
        band = a[:, :, s0:s1].float()
        if normalize:  # per cell of the block's grid, a band's source rows at a time
            band = unit_norm(band, in_place=a.dtype != torch.float32)  # in place on a fresh float32 copy
        if (fy, fx) != (1, 1):
            band = F.interpolate(band, scale_factor=(fy, fx), mode="bilinear", align_corners=False)
        yield r0, band[:, :, p0 - s0 * fy : p1 - s0 * fy, mx : mx + w]


def tile_features(
    backbone: Backbone,
    region: np.ndarray,
    y0: int,
    x0: int,
    config: FeatureConfig,
    on_step: Callable[[], None] = lambda: None,
    frame: Frame | None = None,
) -> torch.Tensor:
    """(C, h, w) float16 features of an (h, w, 3) [0, 1] region whose corner is at (y0, x0) of an
    image lying at ``frame`` in the whole (needed for ``config.position`` only); ``on_step()``
    runs after each of its :func:`steps_per_tile` steps.

    With ``config.scale`` < 1 the backbone sees the region downscaled (more context per
    receptive field, fewer pixels to compute) and its features are upsampled back to (h, w).
    With ``config.project`` each block is normalised and projected at its own resolution and only
    the projected channels are upsampled (projection and bilinear upsampling commute).
    The tile is filled one block at a time, so only one block is ever held in float32."""
    h, w = region.shape[:2]
    out = torch.empty(num_channels(backbone, config), h, w, dtype=torch.float16)
    if config.diffusion:
        _fill_diffusion(out.numpy(), (0, h, 0, w), None, backbone, region, (y0, x0), config, on_step)
    _fill_extras(out.numpy(), region, y0, x0, config, frame, on_step)
    return out


Write = Callable[[int, int, torch.Tensor, int], None]
"""``write(start, stop, maps, row)``: put the (stop - start, rows, w) float32 maps of channels
start:stop of one tile's rows from ``row`` on where they belong (blended by the tile's weight)."""


def _writer(out: np.ndarray | CodedFeatures, box: tuple[int, int, int, int], weight: np.ndarray | None) -> Write:
    """Writes into the region ``box`` (y0, y1, x0, x1) of ``out``: float16 added in place, or
    compact features' groups coded again (one group per write, see :func:`group_widths`)."""
    y0, y1, x0, x1 = box

    def rows(row: int, maps: torch.Tensor) -> tuple[slice, np.ndarray | None]:
        band = slice(row, row + maps.shape[1])
        return band, None if weight is None else weight[band]

    if isinstance(out, CODED):
        group = {start: g for g, (start, _) in enumerate(out.groups)}

        def write_codes(start: int, stop: int, maps: torch.Tensor, row: int) -> None:
            band, part = rows(row, maps)
            out.add_group(group[start], (y0 + band.start, y0 + band.stop, x0, x1), maps, part)

        return write_codes
    view = torch.from_numpy(out)[:, y0:y1, x0:x1]

    def write_values(start: int, stop: int, maps: torch.Tensor, row: int) -> None:
        band, part = rows(row, maps)
        add_weighted(view[start:stop, band], maps, part)

    return write_values


def group_strides(backbone: Backbone, config: FeatureConfig) -> list[int]:
    """Per group of :func:`group_widths`, the step in pixels of the grid compact features hold it
    on (``multiscale``): its block's own, for blocks below full resolution read at scale 1 without
    projection, whose grid cells tiles and margins line up with; 1 (per pixel) otherwise."""
    config = resolve_config(backbone, config)
    widths = group_widths(backbone, config)
    if not (widths and config.compact and config.scale == 1 and not config.project):
        return [1] * len(widths)
    align = tile_alignment(backbone, config)
    strides = [backbone.model.block_scale(b) for b in config.blocks] * len(config.timesteps)
    return [s if MARGIN % s == 0 and align % s == 0 else 1 for s in strides]


def group_widths(backbone: Backbone, config: FeatureConfig) -> list[int]:
    """Widths of the network's channel groups, in channel order: per timestep, each block (or the
    projection). Each is normalised per cell of its grid, so compact features code it with one scale
    a pixel (or a cell)."""
    config = resolve_config(backbone, config)
    if not config.diffusion:
        return []
    per_step = [config.project] if config.project else [backbone.model.block_channels[b] for b in config.blocks]
    return per_step * len(config.timesteps)


def empty_features(backbone: Backbone, config: FeatureConfig, h: int, w: int) -> np.ndarray | CodedFeatures:
    """Zeroed (C, H, W) features to fill: compact (coarse blocks on their own grid where
    :func:`group_strides` says so) or float16, as ``config.compact`` says."""
    channels, widths, strides = (
        num_channels(backbone, config),
        group_widths(backbone, config),
        group_strides(backbone, config),
    )
    if not config.compact:
        return zeros((channels, h, w), np.float16)
    if any(s > 1 for s in strides):
        return MultiscaleFeatures.empty(channels, h, w, widths, strides)
    return CompactFeatures.empty(channels, h, w, widths)


def _fill_extras(
    out: np.ndarray | CodedFeatures,
    region: np.ndarray | None,
    y0: int,
    x0: int,
    config: FeatureConfig,
    frame: Frame | None,
    on_step: Callable[[], None],
    should_stop: StopFn | None = None,
) -> None:
    """Write the channels that follow the network's into the last channels of ``out`` (C, h, w):
    the filter bank of ``region`` (read only for it), then the position in ``frame``'s whole of
    the pixels of the region whose corner is at (y0, x0)."""
    end = out.shape[0] - (POSITION_CHANNELS if config.position else 0)  # position comes last
    if config.filters:
        filter_features(region, should_stop=should_stop, out=_channels(out, end - num_filter_channels(), end))
        on_step()
    if config.position:
        if frame is None:
            raise ValueError("position channels need the frame of the image the tile lies in")
        target = _channels(out, end, out.shape[0])
        where = position_channels(frame.y0 + y0, frame.x0 + x0, out.shape[1:], (frame.height, frame.width))
        for k, values in enumerate(where):
            target[k] = values.numpy()


def _channels(out: np.ndarray | CodedFeatures, start: int, stop: int):
    """Channels start:stop of ``out`` as a target filled by ``target[k] = (H, W) values``."""
    return out.channels(start, stop - start) if isinstance(out, CODED) else out[start:stop]


def _channel_groups(
    backbone: Backbone, acts: dict[int, torch.Tensor], padded: tuple[int, int], config: FeatureConfig
) -> Iterator[tuple[int, torch.Tensor]]:
    """(channels, maps) per group of channels a timestep holds, in channel order, one group at a
    time: each block at its own resolution, or the sum of the blocks' projections upsampled to
    the padded input (projection and bilinear upsampling commute)."""
    if not config.project:
        for b in config.blocks:
            yield acts[b].shape[1], acts.pop(b)  # dropped once written
        return
    from .projection import projection_basis

    basis = projection_basis(backbone, config)  # per block: (T * draws, C_b, project)
    projected = (
        torch.einsum("nchw,nck->nkhw", unit_norm(acts[b].float()) if config.normalize else acts[b].float(), basis[b])
        for b in config.blocks
    )
    yield config.project, sum(F.interpolate(p, size=padded, mode="bilinear", align_corners=False) for p in projected)


def _fill_diffusion(
    out: np.ndarray | CodedFeatures,
    box: tuple[int, int, int, int],
    weight: np.ndarray | None,
    backbone: Backbone,
    region: np.ndarray,
    corner: tuple[int, int],
    config: FeatureConfig,
    on_step: Callable[[], None],
) -> None:
    """Run the network on ``region``, whose corner lies at ``corner`` (y, x) of its image, and blend
    its decoder maps (by ``weight``) into the first channels of the ``box`` (y0, y1, x0, x1) of
    ``out``, timestep-major then block then channel: each block normalised per cell of its own
    grid, draw-averaged, and either kept on that grid (``multiscale``) or upsampled to the region's
    pixels a band at a time, straight from the network's maps (no tile-sized float16 copy to blend)."""
    acts, padded, scaled = decoder_activations(backbone, region, *corner, config, on_step)
    steps, size = len(config.timesteps), region.shape[:2]
    per_step = config.project or sum(acts[b].shape[1] for b in config.blocks)
    groups_per_step = 1 if config.project else len(config.blocks)
    normalize = config.normalize and not config.project
    write, offset = _writer(out, box, weight), 0
    with torch.inference_mode():
        for g, (width, block) in enumerate(_channel_groups(backbone, acts, padded, config)):
            if isinstance(out, MultiscaleFeatures) and out.stride(g) > 1:
                maps = _draw_mean(_as_float32(block, normalize), steps, config.draws)
                for t in range(steps):
                    out.add_tile(g + t * groups_per_step, box, maps[t], MARGIN, weight)
            else:
                for row, band in _region_bands(block, padded, scaled, size, normalize):
                    maps = _draw_mean(band, steps, config.draws)
                    for t in range(steps):
                        write(t * per_step + offset, t * per_step + offset + width, maps[t], row)
            offset += width


def _draw_mean(maps: torch.Tensor, steps: int, draws: int) -> torch.Tensor:
    """(steps * draws, ...) maps, timestep-major, averaged over the draws: (steps, ...)."""
    maps = maps.unflatten(0, (steps, draws))
    return maps.mean(1) if draws > 1 else maps[:, 0]


def extract_features(
    backbone: Backbone,
    image: np.ndarray | ImageSource,
    config: FeatureConfig | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    frame: Frame | None = None,
) -> np.ndarray | CodedFeatures:
    """(C, H, W) features of an image of any size, compact or float16 (``config.compact``): the
    network's tile by tile (progress and cancel go by block of the network within each tile), the
    filter bank once over the whole image (overlapping tiles would compute it up to 2.25 times, and
    tile borders would differ from the image's). ``frame``: where the image lies in a larger one
    whose coordinates the position channels give (default: the image itself)."""
    config = resolve_config(backbone, config)
    source = image if isinstance(image, ImageSource) else ImageSource.from_array(image)
    h, w = source.shape
    frame = frame or Frame(0, 0, h, w)
    out = empty_features(backbone, config, h, w)
    network = replace(config, filters=False, position=False) if config.diffusion else None
    align = tile_alignment(backbone, config)
    tiles = len(tile_grid((h, w), config.tile, config.overlap, align)) if network else 0
    per_tile = steps_per_tile(backbone, network) if network else 0
    counter = itertools.count(1)

    def step() -> None:
        check_stop(should_stop)
        done = next(counter)
        where = f"tile {min(tiles, (done - 1) // per_tile + 1)}/{tiles}" if done <= tiles * per_tile else "filters"
        report(progress, done, tiles * per_tile + int(config.filters), where)

    if network:
        for box, weight in weighted_tiles((h, w), config.tile, config.overlap, align):
            y0, y1, x0, x1 = box
            _fill_diffusion(out, box, weight, backbone, source.region(y0, y1, x0, x1), (y0, x0), network, step)
    whole = source.region(0, h, 0, w) if config.filters else None
    _fill_extras(out, whole, 0, 0, config, frame, step, should_stop)
    release_free_memory()
    return out


def float16_features(
    backbone: Backbone, image: np.ndarray | ImageSource, config: FeatureConfig | None = None, **options
) -> np.ndarray:
    """:func:`extract_features` (``options``: its progress, should_stop, frame) as a (C, H, W)
    float16 array whatever ``config.compact`` says: for code that cuts, stacks or feeds channels
    elsewhere (a classifier of one's own, benchmarks)."""
    return extract_features(backbone, image, replace(config or FeatureConfig(), compact=False), **options)


FEATURES_VERSION = 7
"""Bumped whenever the code changes what a feature map holds, so caches from older code are not reused."""


def feature_signature(image: np.ndarray, backbone: Backbone, config: FeatureConfig) -> str:
    """Key of a feature map: code version + image content + backbone weights + every setting that changes it."""
    h = hashlib.sha256(f"napari-mdm-features/{FEATURES_VERSION}".encode())
    arr = np.ascontiguousarray(image)
    h.update(str((arr.shape, arr.dtype.str)).encode())
    h.update(arr.tobytes())
    h.update(backbone.digest.encode())
    h.update(json.dumps(resolve_config(backbone, config).to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:24]


class FeatureCache:
    """Features by signature, kept in memory (least recently used dropped past ``max_bytes``)
    and, with ``directory``, on disk as zarr with the signature checked on load."""

    def __init__(self, max_bytes: int = 4 << 30, directory: str | None = None):
        self.max_bytes = max_bytes
        self.directory = directory
        self._items: OrderedDict[str, np.ndarray | CodedFeatures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def _disk_path(self, key: str):
        from pathlib import Path

        return Path(self.directory) / f"{key}.zarr"

    def _load(self, key: str) -> np.ndarray | CodedFeatures | None:
        if self.directory is None or not self._disk_path(key).exists():
            return None
        import zarr

        try:
            node = zarr.open(str(self._disk_path(key)), mode="r")
            if node.attrs.get("signature") != key:
                return None
            if not isinstance(node, zarr.Group):
                return np.asarray(node)
            return (MultiscaleFeatures if "strides" in node.attrs else CompactFeatures).read_zarr(node)
        except (ValueError, KeyError, TypeError, OSError):  # damaged: computed again
            return None

    def _store(self, key: str, feats: np.ndarray | CodedFeatures) -> None:
        if self.directory is None:
            return
        import zarr

        from .files import atomic_output

        with atomic_output(self._disk_path(key)) as tmp:
            if isinstance(feats, CODED):
                node = feats.write_zarr(str(tmp))
            else:
                node = zarr.create_array(
                    store=str(tmp), shape=feats.shape, dtype=feats.dtype, chunks=(feats.shape[0], 256, 256)
                )
                node[...] = feats
            node.attrs["signature"] = key

    def get(
        self,
        image: np.ndarray,
        backbone: Backbone,
        config: FeatureConfig | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> np.ndarray | CodedFeatures:
        """Cached features of ``image``, computing (and caching) them on a miss."""
        config = resolve_config(backbone, config)
        key = feature_signature(image, backbone, config)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        feats = self._load(key)
        if feats is None:
            feats = extract_features(backbone, image, config, progress, should_stop)
            self._store(key, feats)
        self._items[key] = feats
        while len(self._items) > 1 and sum(v.nbytes for v in self._items.values()) > self.max_bytes:
            self._items.popitem(last=False)
        return feats
