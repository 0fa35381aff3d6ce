"""Training labels from ground-truth masks: the paper's full masks, or scribbles like a user's.

Labels use the plugin's convention: 0 = unlabelled, 1 = background, 2 = foreground.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_mdm.scribbles import scribbles_from_mask

BACKGROUND, FOREGROUND = 1, 2
PROTOCOLS = ("full", "scribble")


def full_labels(mask: np.ndarray) -> np.ndarray:
    """Every pixel labelled (the MDM paper's protocol)."""
    return np.where(mask > 0, FOREGROUND, BACKGROUND).astype(np.uint8)


@dataclass(frozen=True)
class ScribbleStyle:
    """How many strokes per class and how far inside the region: glands take a few long
    strokes, nuclei (a few pixels across) one short stroke or dot in each of many of them."""

    strokes: tuple[int, int] = (8, 8)
    """(background, foreground) strokes."""
    erode: tuple[int, int] = (4, 4)
    width: int = 1


SCRIBBLE_STYLES = {"glas": ScribbleStyle(), "monuseg": ScribbleStyle(strokes=(12, 40), erode=(4, 1))}


def scribble_labels(mask: np.ndarray, seed: int, style: ScribbleStyle = ScribbleStyle()) -> np.ndarray:
    """A few thin strokes per class, as a user would paint them (about 1-2% of GlaS pixels,
    0.5% of MoNuSeg's); see :func:`napari_mdm.scribbles.scribbles_from_mask`."""
    reference = np.where(mask > 0, FOREGROUND, BACKGROUND).astype(np.uint8)
    return scribbles_from_mask(reference, style.strokes, style.erode, seed, style.width)


def make_labels(mask: np.ndarray, protocol: str, seed: int, style: ScribbleStyle = ScribbleStyle()) -> np.ndarray:
    if protocol == "full":
        return full_labels(mask)
    if protocol == "scribble":
        return scribble_labels(mask, seed, style)
    raise ValueError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
