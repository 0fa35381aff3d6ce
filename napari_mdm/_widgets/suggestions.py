"""'Where should I label next?': the most uncertain windows as a Shapes layer of rectangles, and,
after the next training, how much less uncertain the head became there."""

from __future__ import annotations

import numpy as np

from ..jobs import UserError
from .layers import OUTPUT_KEY, plane_shape
from .workers import notify_info

SUGGESTIONS = 5
WINDOW_FRACTION = 10
"""Suggested windows are a tenth of the image's shorter side (at least 16 pixels)."""


def suggestions_name(image_name: str) -> str:
    return f"{image_name}: label here"


def show_suggestions(viewer, image) -> None:
    """Rectangles on the most uncertain windows of ``image`` (the plane on screen of a stack),
    from the uncertainty of its last prediction."""
    from ..suggest import mean_in, suggest_regions

    name = f"{image.name} uncertainty"
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is None or layer.metadata.get(OUTPUT_KEY) != "uncertainty":
        raise UserError(f"no uncertainty for {image.name!r} yet: press 'Train & predict' first")
    stack = len(plane_shape(image)) == 3
    plane = min(viewer.dims.current_step[0], layer.data.shape[0] - 1) if stack else None
    uncertainty = np.asarray(layer.data[plane] if stack else layer.data)
    size = max(16, min(uncertainty.shape) // WINDOW_FRACTION)
    boxes = suggest_regions(uncertainty, SUGGESTIONS, size)
    if not boxes:
        raise UserError(f"the head is sure everywhere on {image.name!r}: nothing to suggest")
    lead = [plane] if stack else []
    rectangles = [np.array([[*lead, y0, x0], [*lead, y1, x1]]) for y0, x0, y1, x1 in boxes]
    meta = {OUTPUT_KEY: "suggestions", "boxes": boxes, "plane": plane, "before": mean_in(boxes, uncertainty)}
    target = suggestions_name(image.name)
    if target in viewer.layers:
        viewer.layers.remove(target)
    active = viewer.layers.selection.active
    viewer.add_shapes(
        rectangles,
        shape_type="rectangle",
        name=target,
        edge_color="yellow",
        face_color="transparent",
        edge_width=max(1, size // 16),
        metadata=meta,
    )
    if active is not None:
        viewer.layers.selection.active = active
    notify_info(
        f"{len(boxes)} places on {image.name!r} where a stroke would help most (yellow boxes): "
        "paint there and train again"
    )


def report_gain(viewer, image_name: str) -> None:
    """After training: how the uncertainty changed in the windows suggested before."""
    from ..suggest import mean_in

    target, unc_name = suggestions_name(image_name), f"{image_name} uncertainty"
    if target not in viewer.layers or unc_name not in viewer.layers:
        return
    meta = viewer.layers[target].metadata
    data = viewer.layers[unc_name].data
    after = mean_in(meta["boxes"], np.asarray(data if meta["plane"] is None else data[meta["plane"]]))
    notify_info(f"uncertainty where suggested on {image_name!r}: {meta['before']:.3f} -> {after:.3f}")
