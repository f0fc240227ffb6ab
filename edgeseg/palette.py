"""Class colours: the one default palette and the one colouriser of label maps."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["colour_lookup", "colourise", "voc_palette"]


def voc_palette(entries: int = 256) -> np.ndarray:
    """The Pascal VOC colour map: entry ``i`` spreads the bits of ``i`` over R, G and B.

    It is the palette of VOC's ``SegmentationClass`` PNGs (class 1 is (128, 0, 0), the border
    255 is (224, 224, 192)) and the default for any label set: neighbours differ strongly.

    Returns:
        An (entries, 3) uint8 array of RGB colours.
    """
    palette = np.zeros((entries, 3), dtype=np.uint8)
    for index in range(entries):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def colour_lookup(
    palette: np.ndarray | Sequence[Sequence[int]],
    missing_colour: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """A (256, 3) uint8 table: ``palette[i]`` for each class, ``missing_colour`` beyond it."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) > 256:
        raise ValueError(f"a uint8 label map has at most 256 values; got {len(palette)} colours")
    lookup = np.empty((256, 3), dtype=np.uint8)
    lookup[:] = np.asarray(missing_colour, dtype=np.uint8)
    lookup[: len(palette)] = palette
    return lookup


def colourise(
    label_map: np.ndarray,
    palette: np.ndarray | Sequence[Sequence[int]],
    missing_colour: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """An RGB picture (H, W, 3) uint8 of a uint8 label map: class i in ``palette[i]``.

    Values without a palette entry (the ignore value 255 among them) get ``missing_colour``.
    A (256, 3) table from :func:`colour_lookup` may be passed as ``palette`` for speed. OpenCV's
    LUT does the lookup: several times faster than NumPy indexing at camera resolutions.
    """
    label_map = np.asarray(label_map)
    if label_map.dtype != np.uint8:
        raise ValueError(f"label_map must be uint8 class ids, got dtype {label_map.dtype}")
    lookup = colour_lookup(palette, missing_colour)
    if label_map.ndim != 2 or label_map.size == 0:
        return lookup[label_map]
    return cv2.LUT(cv2.merge([label_map, label_map, label_map]), lookup.reshape(256, 1, 3))
