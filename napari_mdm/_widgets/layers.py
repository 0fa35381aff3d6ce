"""Layers as the core sees them: 2-D images and label planes, choosers that follow the layer list,
and results shown by updating a layer of the same name or adding one."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from magicgui.widgets import ComboBox, Select
from napari.layers import Image, Labels, Layer

from ..jobs import UserError


def plane_shape(layer: Image) -> tuple[int, ...]:
    """The shape a labels layer for ``layer`` must have: its data without the RGB axis."""
    return tuple(layer.data.shape[:-1] if layer.rgb else layer.data.shape)


def image_planes(layer: Image) -> list[np.ndarray]:
    """The 2-D images of an image layer: itself, or each plane of a stack (N, H, W[, 3|4])."""
    if layer.multiscale:
        raise UserError(
            f"{layer.name!r} is multiscale (a slide): segment it in 'Segment and export' with 'segment: slide'"
        )
    shape = plane_shape(layer)
    if len(shape) == 2:
        return [np.asarray(layer.data)]
    if len(shape) == 3:
        return [np.asarray(layer.data[i]) for i in range(shape[0])]
    raise UserError(
        f"{layer.name!r} has {len(shape)} dimensions {shape}: napari-mdm works on 2-D images "
        "and stacks of them (N, H, W)"
    )


def label_planes(labels: Labels, image: Image) -> list[np.ndarray]:
    """Copies of the label planes that belong to ``image``, checked against its shape."""
    if tuple(labels.data.shape) != plane_shape(image):
        raise UserError(
            f"labels {labels.name!r} have shape {tuple(labels.data.shape)} but image {image.name!r} is "
            f"{plane_shape(image)}: press 'New labels' to make a labels layer of the right shape"
        )
    data = np.array(labels.data)
    return [data] if data.ndim == 2 else list(data)


OUTPUT_KEY = "napari_mdm"
"""Metadata key marking layers napari-mdm made (predictions, uncertainty, reconstructions)."""


def is_output(layer: Layer) -> bool:
    return OUTPUT_KEY in layer.metadata


MASK_MAX_VALUES = 16
_MASK_SAMPLE = 65_536


def looks_like_mask(layer: Image) -> bool:
    """An image layer that is really a mask: grey integers with a handful of values (a mask
    opened by napari's image reader). Judged from a strided sample of its first plane."""
    if layer.rgb or layer.multiscale or np.dtype(layer.data.dtype).kind not in "uib":
        return False
    plane = layer.data
    while plane.ndim > 2:
        plane = plane[0]
    step = max(1, int(np.sqrt(plane.shape[0] * plane.shape[1] / _MASK_SAMPLE)))
    return len(np.unique(np.asarray(plane[::step, ::step]))) <= MASK_MAX_VALUES


def is_picture(layer: Layer) -> bool:
    """An image worth segmenting by default: not one of our outputs (uncertainty, reconstructions,
    maps we wrote and read back) and not a mask opened as an image."""
    return isinstance(layer, Image) and not is_output(layer) and not looks_like_mask(layer)


def pair_labels(images: list[Image], candidates: list[Labels]) -> list[tuple[Image, Labels | None]]:
    """Each image with the labels layer called 'IMAGE labels', else the first unused one of its shape."""
    pairs: list[tuple[Image, Labels | None]] = []
    for image in images:
        used = [lab for _, lab in pairs]
        fits = [lab for lab in candidates if tuple(lab.data.shape) == plane_shape(image) and lab not in used]
        named = [lab for lab in fits if lab.name == f"{image.name} labels"]
        pairs.append((image, (named or fits or [None])[0]))
    return pairs


def layer_choices(viewer, kind: type[Layer]) -> Callable:
    """A magicgui ``choices`` callable: the viewer's layers of one kind by name, our outputs left out."""
    return lambda widget=None: [
        (layer.name, layer) for layer in viewer.layers if isinstance(layer, kind) and not is_output(layer)
    ]


def follow_layer_list(viewer, widget) -> None:
    """Refresh ``widget``'s choosers whenever a layer is added, removed, moved or renamed."""
    events = viewer.layers.events
    for event in (events.inserted, events.removed, events.reordered, events.renamed):
        event.connect(widget.reset_choices)


def layer_select(viewer, kind: type[Layer], label: str) -> Select:
    select = Select(choices=layer_choices(viewer, kind), label=label, allow_multiple=True)
    select.native.setMaximumHeight(90)
    return select


def layer_combo(viewer, kind: type[Layer], label: str) -> ComboBox:
    return ComboBox(choices=layer_choices(viewer, kind), label=label)


_KINDS = {"image": Image, "labels": Labels}


def show_result(viewer, name: str, data: np.ndarray, kind: str, role: str = "prediction", **kwargs) -> Layer:
    """Put ``data`` in the layer called ``name`` if it is our output of the same kind and role
    (keeping the user's display settings), else add a layer with ``kwargs`` marked as our output
    (``role``; napari numbers the name if it is taken, so no other layer is ever replaced); the
    layer the user was working on stays active."""
    existing = viewer.layers[name] if name in viewer.layers else None
    if isinstance(existing, _KINDS[kind]) and existing.metadata.get(OUTPUT_KEY) == role:
        existing.data = data
        existing.metadata = {**existing.metadata, **kwargs.get("metadata", {})}
        return existing
    active = viewer.layers.selection.active
    metadata = {**kwargs.pop("metadata", {}), OUTPUT_KEY: role}
    layer = getattr(viewer, f"add_{kind}")(data, name=name, metadata=metadata, **kwargs)
    if active is not None:
        viewer.layers.selection.active = active
    return layer


def stack_planes(planes: list[np.ndarray], like: tuple[int, ...]) -> np.ndarray:
    """Per-plane results back into the layout of their source: one plane, or a stack."""
    return planes[0] if len(like) == 2 else np.stack(planes)
