"""A time-conditioned U-Net in the guided-diffusion style, with addressable decoder blocks.

Residual blocks carry a timestep embedding (scale-shift GroupNorm), self-attention runs at the
configured downsampling factors, and the decoder's ``output_blocks`` are numbered from 0 so
features can be read from any of them (see :meth:`UNet.decoder_features`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .corruption import CorruptionConfig


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the backbone; saved into every checkpoint so it rebuilds its own model."""

    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_at: tuple[int, ...] = (8,)
    """Downsampling factors (1 = full resolution) at which self-attention is used."""
    head_channels: int = 32
    dropout: float = 0.0
    in_channels: int = 3
    out_channels: int = 3

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def num_decoder_blocks(self) -> int:
        return len(self.channel_mult) * (self.num_res_blocks + 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        """Settings read from a file, checked (types, limits, consistency) before any model is built."""
        from .settings import from_settings

        config = from_settings(cls, data, SETTING_LIMITS)
        if not config.channel_mult:
            raise ValueError("channel_mult must list at least one level")
        for channels in (config.base_channels * m for m in config.channel_mult):
            if channels % max(1, channels // config.head_channels):
                raise ValueError(f"{channels} channels do not split into heads of {config.head_channels}")
        return config


SETTING_LIMITS = {
    "base_channels": (1, 1024),
    "channel_mult": (1, 16),
    "num_res_blocks": (0, 8),
    "attention_at": (1, 1 << 16),
    "head_channels": (1, 1 << 14),
    "dropout": (0, 1),
    "in_channels": (3, 3),
    "out_channels": (3, 3),
}
"""What a checkpoint's U-Net settings may hold (RGB in and out; the ``paper`` preset is far inside)."""


PRESETS: dict[str, UNetConfig] = {
    # runs on a laptop CPU; 1.6M parameters
    "tiny": UNetConfig(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_at=(8,)),
    # float16 weights fit in 16 MiB; 7.2M parameters
    "small": UNetConfig(base_channels=64, channel_mult=(1, 1, 2, 2, 2), num_res_blocks=1, attention_at=(8, 16)),
    # the MDM paper's reference layout (282M parameters here: no residual up/down-sampling blocks)
    "paper": UNetConfig(
        base_channels=192, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attention_at=(8, 16, 32), head_channels=64
    ),
}
DEFAULT_PRESET = "tiny"
"""What a fresh pretraining run builds when no preset is named: it trains on a laptop CPU."""


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, as in the transformer and DDPM papers."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _norm(channels: int) -> nn.GroupNorm:
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.out_norm = _norm(out_ch)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


POOLED_ATTENTION_TOKENS = 4096
"""Self-attention over at least this many tokens may attend to pooled keys (:func:`pooled_attention`):
its cost grows with the square of the tokens, so on a 512-px tile the shipped backbone's three layers
at 1/8 scale (68 x 68 tokens) are 40 % of a CPU pass, and those at 1/16 (34 x 34) 3 %."""

_KEY_POOL: ContextVar[int] = ContextVar("attention_key_pool", default=1)


@contextmanager
def pooled_attention(factor: int) -> Iterator[None]:
    """In this thread, while the block runs, self-attention layers over at least
    ``POOLED_ATTENTION_TOKENS`` tokens attend to keys and values averaged over ``factor`` x
    ``factor`` cells: ``factor``² times less attention work; queries (and so the output's
    resolution) are unchanged. 1: exact attention."""
    token = _KEY_POOL.set(factor)
    try:
        yield
    finally:
        _KEY_POOL.reset(token)


class Attention(nn.Module):
    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv1d(channels, channels, 1))

    def _split_heads(self, t: torch.Tensor, parts: int) -> torch.Tensor:
        """(b, parts * channels, tokens) -> (parts, b, heads, tokens, head channels), contiguous:
        with a strided last axis torch falls back from its fused attention kernel to the unfused
        one, 4x slower on a CPU."""
        b, channels, tokens = t.shape
        head_channels = channels // parts // self.heads
        return t.reshape(b, parts, self.heads, head_channels, tokens).permute(1, 0, 2, 4, 3).contiguous()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))
        pool = _KEY_POOL.get()
        if pool > 1 and h * w >= POOLED_ATTENTION_TOKENS:
            kv = F.avg_pool2d(qkv[:, c:].reshape(b, 2 * c, h, w), pool, ceil_mode=True).flatten(2)
            (q,), (k, v) = self._split_heads(qkv[:, :c], 1), self._split_heads(kv, 2)
        else:
            q, k, v = self._split_heads(qkv, 3)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h * w)
        return x + self.proj(out).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Block(nn.Sequential):
    """A sequence of layers that all receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb)
        return x


class UNet(nn.Module):
    """Predicts an image-shaped target (x0 or noise, by corruption mode) from a corrupted image and t."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch = config.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_conv = nn.Conv2d(config.in_channels, ch, 3, padding=1)

        self.input_blocks = nn.ModuleList()
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * config.base_channels, emb_dim, config.dropout)]
                ch = mult * config.base_channels
                if ds in config.attention_at:
                    layers.append(Attention(ch, config.head_channels))
                self.input_blocks.append(Block(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(Block(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle = Block(
            ResBlock(ch, ch, emb_dim, config.dropout),
            Attention(ch, config.head_channels),
            ResBlock(ch, ch, emb_dim, config.dropout),
        )

        self.output_blocks = nn.ModuleList()
        self.block_channels: list[int] = []
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                out_ch = mult * config.base_channels
                layers = [ResBlock(ch + skip_channels.pop(), out_ch, emb_dim, config.dropout)]
                ch = out_ch
                if ds in config.attention_at:
                    layers.append(Attention(ch, config.head_channels))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Block(*layers))
                self.block_channels.append(ch)

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, config.out_channels, 3, padding=1)))

    def block_scale(self, index: int) -> int:
        """Downsampling factor of decoder block ``index``'s output."""
        levels = len(self.config.channel_mult)
        level = levels - 1 - index // (self.config.num_res_blocks + 1)
        last_in_level = index % (self.config.num_res_blocks + 1) == self.config.num_res_blocks
        return 2 ** (level - 1) if (last_in_level and level) else 2**level

    def _encode(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        divisor = self.config.divisor
        if x.shape[-1] % divisor or x.shape[-2] % divisor:
            raise ValueError(f"input height and width must be multiples of {divisor}, got {tuple(x.shape[-2:])}")
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels))
        h = self.input_conv(x)
        skips = [h]
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        return self.middle(h, emb), emb, skips

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, emb, skips = self._encode(x, t)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def decoder_features(self, x: torch.Tensor, t: torch.Tensor, blocks: tuple[int, ...]) -> dict[int, torch.Tensor]:
        """Activations of the chosen decoder blocks; stops after the deepest one needed."""
        n = len(self.output_blocks)
        bad = [b for b in blocks if not 0 <= b < n]
        if bad:
            raise ValueError(f"decoder blocks {bad} do not exist: this backbone has blocks 0..{n - 1}")
        h, emb, skips = self._encode(x, t)
        wanted = set(blocks)
        found: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if index in wanted:
                found[index] = h
                if len(found) == len(wanted):
                    break
        return found


@dataclass
class Backbone:
    """A frozen backbone ready for features and reconstructions."""

    model: UNet
    corruption: CorruptionConfig
    provenance: dict = field(default_factory=dict)
    digest: str = "unsaved"
    name: str = "unsaved"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Backbone:
        """Move to ``device`` with channels-last weights: the convolutions run 10-20% faster
        (oneDNN on CPUs, tensor cores on GPUs); results are the same up to rounding."""
        self.model.to(device, memory_format=torch.channels_last)
        return self


def build_backbone(config: UNetConfig | str) -> UNet:
    """A fresh model from a config or a preset name."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}: choose one of {', '.join(PRESETS)}")
        config = PRESETS[config]
    return UNet(config)


def randomize(model: UNet, seed: int = 0) -> UNet:
    """Give every layer PyTorch's default random init, undoing the zero-init of residual outputs.

    This is the random-weight control: an untrained network whose decoder features are random
    multi-scale filters (a zero-initialised network passes only its skip paths through).
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.reset_parameters()
    torch.random.set_rng_state(gen_state)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
