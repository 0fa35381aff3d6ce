"""Safe checkpoints: safetensors weights plus JSON settings, never a pickle.

A backbone file carries its U-Net and corruption settings and its training provenance in the
safetensors header, so it rebuilds its own model; a readable ``.json`` with the same content is
written beside it. Files that are not safetensors (a torch pickle, a truncated download) are
refused with a clear message before anything in them is interpreted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbone import Backbone, UNet, UNetConfig
from .corruption import CorruptionConfig
from .files import atomic_output, plan_outputs, refuse_existing
from .jobs import UserError, first_line

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
BACKBONE_FORMAT = "napari-mdm-backbone/1"


class CheckpointError(UserError):
    """A checkpoint file that cannot be used: not safetensors, truncated, or of another kind."""


def shipped_dir() -> Path:
    """Where shipped checkpoints live: ``resources/`` of a source checkout, or the installed package."""
    if RESOURCES.is_dir():
        return RESOURCES
    from importlib.resources import files

    return Path(str(files("napari_mdm.resources")))


def shipped_backbones() -> dict[str, Path]:
    """Shipped backbones by name (``histology`` -> resources/histology.safetensors); pretraining
    state files (``*.state.safetensors``) are not backbones."""
    return {p.stem: p for p in sorted(shipped_dir().glob("*.safetensors")) if not p.stem.endswith(".state")}


RANDOM_PREFIX = "random-"
SHIPPED_DEFAULT = "histology"
FALLBACK_DEFAULT = "random-tiny"


def default_backbone_name() -> str:
    """The backbone used when none is named: the shipped histology backbone (GPU-pretrained; it
    beats the untrained control on the GlaS benchmark, see README), else, in an installation
    without it, the untrained ``random-tiny`` control."""
    return SHIPPED_DEFAULT if SHIPPED_DEFAULT in shipped_backbones() else FALLBACK_DEFAULT


def backbone_for(kind: str) -> tuple[str, str]:
    """The backbone to preselect for images of ``kind`` (``faces``): the shipped backbone of that
    name, pretrained on such images, else the default; with a line that says which and why."""
    if kind in shipped_backbones():
        return kind, f"'{kind}' preselected: the built-in backbone pretrained on {kind}"
    fallback = default_backbone_name()
    return fallback, (
        f"no '{kind}' backbone comes with this version of napari-mdm: '{fallback}' is preselected "
        "instead (pretrained on other images, it still works, less well)"
    )


def random_backbone(preset: str | UNetConfig = "tiny", seed: int = 0) -> Backbone:
    """The random-weight control (``random-tiny``, ``random-small``): the untrained network at its
    standard initialisation, identical for a given preset and seed. Its residual branches start at
    zero, so its decoder features are random multi-scale linear filters of the (masked) image."""
    from .backbone import build_backbone

    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = build_backbone(preset).eval().requires_grad_(False)
    torch.random.set_rng_state(rng_state)
    if isinstance(preset, str):
        name, digest = f"{RANDOM_PREFIX}{preset}", f"{RANDOM_PREFIX}{preset}-seed{seed}"
    else:  # the architecture of some checkpoint
        architecture = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        name, digest = "random", f"random-seed{seed}-{architecture}"
    return Backbone(model, CorruptionConfig(), {"preset": name, "seed": seed, "steps": 0}, digest, name)


def backbone_reference(backbone: Backbone) -> str:
    """What another process passes to :func:`load_backbone` to get ``backbone`` back (its shipped
    name, ``random-<preset>`` or its file); a UserError for one that was never saved."""
    if backbone.digest == f"{backbone.name}-seed0" and backbone.name.startswith(RANDOM_PREFIX):
        return backbone.name
    try:
        path = resolve_checkpoint(backbone.name)
    except UserError:
        path = None
    if path is None or file_digest(path) != backbone.digest:
        raise UserError(
            "the backbone in use is not saved as it is: save it ('Backbone' tab, Save checkpoint) "
            "and load that file, so the slide's workers can load it too"
        )
    return str(path)


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A path to an existing checkpoint file, from a path or the name of a shipped backbone."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_backbones()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    if path.exists():
        raise CheckpointError(f"{path} is not a file")
    names = ", ".join(shipped) or "none"
    raise CheckpointError(
        f"no checkpoint {str(name_or_path)!r}: not a file, and not a shipped backbone (shipped: {names})"
    )


MAX_HEADER_BYTES = 100_000_000
"""safetensors' own limit on the JSON header."""


def _safetensors_header(path: Path) -> dict | None:
    """The parsed header when ``path`` is safetensors (8-byte little-endian length, then that many
    bytes of a JSON object, within the file), else None."""
    with open(path, "rb") as fh:
        length = int.from_bytes(fh.read(8).ljust(8, b"\xff"), "little")
        if not 2 <= length <= min(MAX_HEADER_BYTES, path.stat().st_size - 8):
            return None
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, ValueError):
            return None
    return header if isinstance(header, dict) else None


def _is_pickle(head: bytes) -> bool:
    """Torch's zip format, or a pickle of protocol 2-5 (opcode PROTO 0x80, then the protocol)."""
    return head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _check_safetensors(path: Path) -> None:
    """Refuse files that are not safetensors without interpreting them: the header is parsed
    first (its length may well start with byte 0x80), pickles are named as such."""
    if _safetensors_header(path) is not None:
        return
    with open(path, "rb") as fh:
        head = fh.read(8)
    if _is_pickle(head):
        raise CheckpointError(
            f"{path} is a pickle/torch file; napari-mdm loads only safetensors checkpoints, "
            "because unpickling can run arbitrary code"
        )
    raise CheckpointError(f"{path} is not a valid safetensors file (truncated or another format)")


def write_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict, overwrite: bool = True
) -> Path:
    """Write tensors and a JSON-able ``meta`` dict atomically as safetensors."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_output(path, overwrite=overwrite) as tmp:
        save_file(flat, str(tmp), metadata={"meta": json.dumps(meta)})
    return Path(path)


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what :func:`write_tensors` wrote; any defect is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path} is not a regular file (a folder, pipe or device)" if path.exists() else f"{path} does not exist"
        )
    _check_safetensors(path)
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path} could not be read: {first_line(err)}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not a napari-mdm checkpoint (its settings are not a JSON object)")
    return tensors, meta


def file_digest(path: str | os.PathLike) -> str:
    """Short content hash of a file (part of feature-cache signatures)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def backbone_meta(model: UNet, corruption: CorruptionConfig, provenance: dict) -> dict:
    return {
        "format": BACKBONE_FORMAT,
        "unet": model.config.to_dict(),
        "corruption": corruption.to_dict(),
        "provenance": provenance,
    }


def sidecar_path(path: str | os.PathLike) -> Path:
    """The readable JSON copy of a backbone's settings, written beside it."""
    return Path(path).with_suffix(".json")


def save_backbone(
    path: str | os.PathLike,
    model: UNet,
    corruption: CorruptionConfig,
    provenance: dict | None = None,
    half: bool = True,
    overwrite: bool = True,
) -> Path:
    """Save inference weights (float16 by default: half the size, same features) and a JSON beside
    them; both obey ``overwrite`` and are checked before either is written."""
    refuse_existing(path, overwrite=True)  # a folder (even ".") has no side file
    plan_outputs([path, sidecar_path(path)], overwrite=overwrite)
    meta = backbone_meta(model, corruption, provenance or {})
    dtype = torch.float16 if half else torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = write_tensors(path, state, meta, overwrite=overwrite)
    with atomic_output(sidecar_path(path), overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def build_checked(factory, state: dict[str, torch.Tensor], source: Path) -> torch.nn.Module:
    """``factory()`` with the weights ``state`` loaded; the model is first built on the meta device
    (no memory) and compared with the file's tensors, so settings that disagree with the weights
    never allocate anything."""
    try:
        with torch.device("meta"):
            shell = factory()
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as err:
        raise CheckpointError(f"{source} has unusable settings: {first_line(err)}") from None
    check_state(shell.state_dict(), state, source)
    model = factory()
    load_state(model, state, source)
    return model


def build_from_meta(meta: dict, source: Path, state: dict[str, torch.Tensor]) -> tuple[UNet, CorruptionConfig]:
    if meta.get("format") != BACKBONE_FORMAT:
        raise CheckpointError(f"{source} is not a napari-mdm backbone (format {meta.get('format')!r})")
    try:
        config, corruption = UNetConfig.from_dict(meta["unet"]), CorruptionConfig.from_dict(meta["corruption"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source} has unusable settings: {first_line(err)}") from None
    return build_checked(lambda: UNet(config), state, source), corruption


def check_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse weights that do not fit the model's tensors (names and shapes) in one readable line."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{len(missing)} missing" if missing else "",
            f"{len(unexpected)} unexpected" if unexpected else "",
            f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else "",
        ]
        raise CheckpointError(f"{source} does not match its architecture: weights {', '.join(p for p in parts if p)}")


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights, turning an architecture mismatch into one readable line."""
    own = model.state_dict()
    check_state(own, state, source)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_backbone(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Backbone:
    """Load a backbone from a file, a shipped name, or ``random-<preset>`` (the untrained control),
    in eval mode, float32, on ``device``; None means :func:`default_backbone_name`."""
    name = str(name_or_path) if name_or_path is not None else default_backbone_name()
    if name.startswith(RANDOM_PREFIX) and not Path(name).exists():
        from .backbone import PRESETS

        preset = name[len(RANDOM_PREFIX) :]
        if preset not in PRESETS:
            raise CheckpointError(f"unknown random backbone {name!r}: use random-{', random-'.join(PRESETS)}")
        return random_backbone(preset).to(device)
    path = resolve_checkpoint(name)
    state, meta = read_tensors(path)
    model, corruption = build_from_meta(meta, path, state)
    provenance = meta.get("provenance", {})
    if not isinstance(provenance, dict):
        raise CheckpointError(f"{path} has unusable settings: its provenance is not a JSON object")
    model.eval().requires_grad_(False)
    return Backbone(model, corruption, provenance, file_digest(path), name).to(device)
