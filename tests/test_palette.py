"""edgeseg.palette: the VOC colour map and the colouriser, against their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.palette import colour_lookup, colourise, voc_palette


def test_voc_palette_matches_the_voc_pngs():
    palette = voc_palette(256)
    # Entries of VOC's SegmentationClass PNG palette (VOCdevkit's labelcolormap).
    assert tuple(palette[0]) == (0, 0, 0)
    assert tuple(palette[1]) == (128, 0, 0)
    assert tuple(palette[15]) == (192, 128, 128)  # person
    assert tuple(palette[255]) == (224, 224, 192)  # border
    assert len({tuple(c) for c in voc_palette(21)}) == 21


def test_colourise_looks_up_each_pixel_and_colours_missing_values():
    palette = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], dtype=np.uint8)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (37, 53)).astype(np.uint8)
    label[0, 0] = 255
    picture = colourise(label, palette, missing_colour=(1, 2, 3))
    expected = np.array([tuple(palette[v]) if v < 3 else (1, 2, 3) for v in label.ravel()],
                        np.uint8).reshape(37, 53, 3)
    np.testing.assert_array_equal(picture, expected)
    np.testing.assert_array_equal(colourise(label, colour_lookup(palette)), colourise(label, palette))
    assert tuple(colourise(label, palette)[0, 0]) == (0, 0, 0)


def test_colourise_refuses_what_is_not_a_label_map():
    with pytest.raises(ValueError, match="uint8 class ids"):
        colourise(np.zeros((2, 2), np.int32), voc_palette(3))
    with pytest.raises(ValueError, match="at most 256"):
        colour_lookup(np.zeros((300, 3), np.uint8))
