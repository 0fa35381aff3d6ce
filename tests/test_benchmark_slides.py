"""The slide benchmark's synthetic slide: one round section on glass, found by tissue detection
chunk for chunk, so the benchmark's cost per megapixel of tissue counts the chunks it should."""

import numpy as np

from benchmarks.slides import BLOCK, build_slide, tissue_megapixels
from napari_mdm.slide_segmentation import tissue_chunks
from napari_mdm.slides import open_slide, slide_levels


def test_the_section_is_what_tissue_detection_finds(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.data.available", lambda: False)  # synthetic tissue, no ../shared
    path = tmp_path / "slide.ome.tif"
    build_slide(path, 4 * BLOCK, tissue=0.1)
    levels = slide_levels(path)
    assert [level.shape[:2] for level in levels] == [(2048, 2048), (512, 512), (128, 128)]
    # the four middle blocks (0.1 of a 4 x 4 grid rounds to the disc through their centres)
    assert tissue_megapixels(4 * BLOCK, 0.1) == 4 * BLOCK * BLOCK / 1e6
    middle = {(y, x) for y in (BLOCK, 2 * BLOCK) for x in (BLOCK, 2 * BLOCK)}
    assert tissue_chunks(str(path), levels, 0, BLOCK) == middle
    pixels = open_slide(path, level=0)[0].read()
    glass = pixels[:BLOCK, :BLOCK]
    assert glass.min() > 0.9  # bright glass around the section
    assert np.median(pixels[BLOCK : 2 * BLOCK, BLOCK : 2 * BLOCK]) < 0.8
