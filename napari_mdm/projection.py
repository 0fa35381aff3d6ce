"""A per-backbone PCA basis of decoder features, so the head sees tens of channels, not hundreds.

The basis is fitted once per backbone and feature setting (timesteps, blocks, scale, seed,
components) on fixed reference images that ship with scikit-image (the ``ihc`` histology sample
and the ``astronaut`` photograph), deterministically: a head that records ``project=k`` and its
backbone is applied with the same basis on any machine, and the feature cache's key (the
feature settings) stays valid; the samples are computed in float32 even where the features use
bfloat16, so the basis does not depend on the machine's bf16 units. Components are those of the
blocks' per-pixel normalised activations concatenated, as the head would see them without the
projection.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import Backbone

REFERENCE_SIDE = 256
"""Side of each reference crop; features are sampled on a grid of a quarter of that side."""

_BASES: dict[tuple, dict[int, torch.Tensor]] = {}


def reference_images() -> list[np.ndarray]:
    """(side, side, 3) float32 [0, 1] crops of scikit-image's bundled samples."""
    from skimage import data

    ihc, astronaut = data.immunohistochemistry(), data.astronaut()
    s = REFERENCE_SIDE
    crops = [ihc[:s, :s], ihc[-s:, -s:], ihc[128 : 128 + s, 256 : 256 + s], astronaut[:s, 128 : 128 + s]]
    return [np.ascontiguousarray(c, dtype=np.float32) / 255 for c in crops]


def _samples(backbone: Backbone, config) -> torch.Tensor:
    """(timesteps, pixels, channels) normalised block activations on the reference grid."""
    from .features import decoder_activations, unit_norm

    grid = (REFERENCE_SIDE // 4, REFERENCE_SIDE // 4)
    per_image = []
    for image in reference_images():
        # float32 and exact attention whatever the feature settings: the basis must not depend on
        # whether this machine has bfloat16 units, or a head trained on one would read other axes
        # on another, nor on which attention setting first filled the cache (its key leaves it out)
        exact = replace(config, draws=1, bfloat16=False, attention_pool=1)
        acts, _, _ = decoder_activations(backbone, image, 0, 0, exact)
        maps = [
            F.interpolate(
                unit_norm(acts[b]) if config.normalize else acts[b], size=grid, mode="bilinear", align_corners=False
            )
            for b in config.blocks
        ]
        per_image.append(torch.cat(maps, dim=1).flatten(2).transpose(1, 2))  # (T, pixels, C)
    return torch.cat(per_image, dim=1).double()


def fit_basis(samples: torch.Tensor, components: int) -> torch.Tensor:
    """(T, C, components) leading principal axes of (T, N, C) samples, signs fixed (largest entry
    positive) so that the basis is the same wherever it is computed."""
    centred = samples - samples.mean(1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred / max(1, samples.shape[1] - 1)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = vectors.flip(-1)[..., :components]
    signs = torch.sign(top.gather(1, top.abs().argmax(1, keepdim=True)))
    return (top * signs).float()


def _basis_key(backbone: Backbone, config) -> str:
    """What the basis depends on, as text: the weights and every setting the samples use."""
    settings = (config.timesteps, config.blocks, config.project, config.scale, config.seed, config.normalize)
    return f"napari-mdm-projection/1 {backbone.digest} {settings}"


def _cache_file(key: str) -> Path:
    """Where a computed basis is kept between sessions: ``$NAPARI_MDM_CACHE`` or
    ``~/.cache/napari-mdm`` (fitting one takes a few seconds of backbone time on a CPU)."""
    root = (
        os.environ.get("NAPARI_MDM_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-mdm"
    )
    return Path(root) / f"projection-{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"


def _stored_basis(key: str) -> torch.Tensor | None:
    """The basis saved for ``key`` in the cache, or None when absent or unreadable."""
    from .checkpoint import CheckpointError, read_tensors

    path = _cache_file(key)
    if not path.is_file():
        return None
    try:
        tensors, meta = read_tensors(path)
    except CheckpointError:
        return None
    return tensors["basis"] if meta.get("key") == key and "basis" in tensors else None


def _store_basis(key: str, basis: torch.Tensor) -> None:
    """Keep the basis for the next session; a cache that cannot be written is skipped silently."""
    from .checkpoint import write_tensors
    from .jobs import UserError

    try:
        write_tensors(_cache_file(key), {"basis": basis}, {"key": key})
    except (UserError, OSError):
        pass


def projection_basis(backbone: Backbone, config) -> dict[int, torch.Tensor]:
    """Per decoder block, the (timesteps x draws, C_block, project) slice of the basis, batched as
    :func:`napari_mdm.features.decoder_activations` batches its inputs; computed once per backbone
    and setting; for a backbone loaded from a file, kept in the disk cache (:func:`_cache_file`)
    for later sessions (random and unsaved backbones have no content hash to key it by)."""
    key = _basis_key(backbone, config)
    memory_key = (key, id(backbone.model), str(backbone.device))
    saved = re.fullmatch("[0-9a-f]{16}", backbone.digest) is not None  # a checkpoint file's content hash
    if memory_key not in _BASES:
        basis = _stored_basis(key) if saved else None
        if basis is None:
            basis = fit_basis(_samples(backbone, config), config.project)
            if saved:
                _store_basis(key, basis)
        widths = [backbone.model.block_channels[b] for b in config.blocks]
        parts = torch.split(basis, widths, dim=1)
        _BASES[memory_key] = {b: part.to(backbone.device) for b, part in zip(config.blocks, parts, strict=True)}
    return {b: part.repeat_interleave(config.draws, dim=0) for b, part in _BASES[memory_key].items()}
