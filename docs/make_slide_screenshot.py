"""docs/slide.png: a whole slide segmented by ``segment_slide`` and opened in napari, the slide as
a multiscale image and the label pyramid over it, with the plugin's export tab on 'slide'.

The slide is ``benchmarks.slides``'s: real GlaS/MoNuSeg blocks on glass as a pyramidal OME-TIFF;
the head is trained on one GlaS training image and its gland mask. Run under an X display from
the repository root (``Xvfb :99 & DISPLAY=:99 python docs/make_slide_screenshot.py``); about two
minutes on a CPU; the work is kept in build/slide_screenshot, so a second run only shoots.

``--slide SLIDE --labels OUT.ome.zarr --png PNG`` shoots a slide segmented elsewhere instead, e.g.
the 20,000-px slide of ``python -m benchmarks.slides --keep DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import napari
from make_screenshots import DOCS, dismiss_notifications, settle

from benchmarks.slides import _head, build_slide
from napari_mdm._widgets import PANEL
from napari_mdm._widgets.classes import apply_classes
from napari_mdm.checkpoint import default_backbone_name, load_backbone
from napari_mdm.feature_sets import DEFAULT_FEATURE_SET
from napari_mdm.slide_segmentation import segment_slide

SIDE = 1536
WORK = Path(__file__).resolve().parent.parent / "build" / "slide_screenshot"
"""Kept between runs: the slide job resumes, so a second run only redoes the screenshot."""


def segmented() -> Path:
    """The slide in WORK, segmented whole (built, trained and segmented only as far as not done)."""
    WORK.mkdir(parents=True, exist_ok=True)
    if not (WORK / "slide.ome.tif").exists():
        build_slide(WORK / "slide.ome.tif", SIDE, tissue=0.7, seed=3)
    head = WORK / "head.safetensors"
    if not head.exists():
        _head(load_backbone(default_backbone_name()), DEFAULT_FEATURE_SET, WORK)
    result = segment_slide(
        default_backbone_name(), head, WORK / "slide.ome.tif", WORK / "slide_mask.ome.zarr", chunk=512
    )
    print(f"{result.computed} chunks segmented ({result.resumed} earlier), {result.no_tissue} without tissue")
    return WORK / "slide_mask.ome.zarr"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", type=Path, help="a segmented slide (default: build and segment WORK's)")
    parser.add_argument("--labels", type=Path, help="its segment-slide output")
    parser.add_argument("--png", type=Path, default=DOCS / "slide.png")
    args = parser.parse_args()
    if (args.slide is None) != (args.labels is None):
        parser.error("--slide and --labels go together")
    slide_path, out = (args.slide, args.labels) if args.slide else (WORK / "slide.ome.tif", segmented())
    viewer = napari.Viewer(title="napari-mdm")
    viewer.window.resize(1400, 900)
    [slide] = viewer.open(slide_path, plugin="napari-mdm")
    [labels] = viewer.open(out, plugin="napari-mdm")
    _, panel = viewer.window.add_plugin_dock_widget("napari-mdm", PANEL)
    export = panel.tools["Segment and export"]
    apply_classes(labels, export.session.classes)
    labels.contour, labels.opacity = 3, 1.0  # class outlines: the tissue stays readable
    export.source.value = "slide"
    export.slides.extent.value = "whole slide"
    panel.show_tool("Segment and export")
    dismiss_notifications()
    settle(1)
    viewer.reset_view()
    settle(2)
    viewer.screenshot(str(args.png), canvas_only=False)
    print("wrote", args.png, "| slide levels", [tuple(map(int, s)) for s in slide.level_shapes])
    viewer.close()


if __name__ == "__main__":
    main()
