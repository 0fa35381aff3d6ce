"""A project: everything needed to keep improving a classifier across images and days, in one
file. A zip holding ``project.json`` (class names and colours, backbone reference, feature
settings), the images and their labels as ``.npy`` (read back without pickles), and the head
as safetensors. Written atomically; nothing in it runs code when opened."""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_output
from .jobs import UserError

PROJECT_FORMAT = "napari-mdm-project/1"
SUFFIX = ".mdmproject"


@dataclass
class Project:
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    """Labels by the name of their image."""
    classes: dict[int, tuple[str, str]] = field(default_factory=dict)
    backbone: dict = field(default_factory=dict)
    """{'name': ..., 'digest': ...} of the backbone the features came from."""
    features: dict = field(default_factory=dict)
    """The Few-shot settings: {'timesteps': '50', 'feature_set': 'diffusion+filters'}."""
    head: object | None = None


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_project(path: str | os.PathLike, project: Project) -> Path:
    """Write ``project`` to ``path`` (``.mdmproject`` is added), replacing it atomically."""
    path = Path(path)
    path = path if path.suffix == SUFFIX else path.with_name(path.name + SUFFIX)
    names = list(project.images)
    meta = {
        "format": PROJECT_FORMAT,
        "images": names,
        "labelled": [n for n in names if n in project.labels],
        "classes": {str(i): {"name": n, "color": c} for i, (n, c) in project.classes.items()},
        "backbone": project.backbone,
        "features": project.features,
        "head": project.head is not None,
    }
    with atomic_output(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("project.json", json.dumps(meta, indent=2))
            for i, name in enumerate(names):
                zf.writestr(f"images/{i}.npy", _npy(project.images[name]))
                if name in project.labels:
                    zf.writestr(f"labels/{i}.npy", _npy(project.labels[name]))
            if project.head is not None:
                head_file = tmp.with_name(tmp.name + ".head")
                try:
                    project.head.save(head_file)
                    zf.write(head_file, "head.safetensors")
                finally:
                    head_file.unlink(missing_ok=True)
    return path


def load_project(path: str | os.PathLike) -> Project:
    """Read a project written by :func:`save_project`, or a UserError that says what is wrong."""
    from .head import Head

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("project.json"))
            if meta.get("format") != PROJECT_FORMAT:
                raise UserError(f"{path} is not a napari-mdm project (format {meta.get('format')!r})")
            names = meta["images"]
            images = {
                n: np.load(io.BytesIO(zf.read(f"images/{i}.npy")), allow_pickle=False) for i, n in enumerate(names)
            }
            labels = {
                n: np.load(io.BytesIO(zf.read(f"labels/{i}.npy")), allow_pickle=False)
                for i, n in enumerate(names)
                if n in meta["labelled"]
            }
            head = None
            if meta.get("head"):
                head_file = path.with_name(f".{path.name}.head.safetensors")
                try:
                    head_file.write_bytes(zf.read("head.safetensors"))
                    head = Head.load(head_file)
                finally:
                    head_file.unlink(missing_ok=True)
    except UserError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot open project {path}: {type(err).__name__}: {err}") from None
    classes = {int(i): (c["name"], c["color"]) for i, c in meta.get("classes", {}).items()}
    return Project(images, labels, classes, meta.get("backbone", {}), meta.get("features", {}), head)
