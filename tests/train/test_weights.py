"""Class weights and the U-Net weight map against values worked out by hand."""

import math

import numpy as np
import pytest

from edgeseg.train.weights import (
    count_class_pixels,
    enet_class_weights,
    median_frequency_weights,
    unet_weight_map,
)


def test_enet_weights_by_hand():
    # counts 50, 30, 20 of 100 pixels: p = 0.5, 0.3, 0.2; w = 1 / ln(1.02 + p).
    expected = [1 / math.log(1.52), 1 / math.log(1.32), 1 / math.log(1.22)]
    np.testing.assert_allclose(expected, [2.388286, 3.601894, 5.028895], atol=1e-6)
    np.testing.assert_allclose(enet_class_weights([50, 30, 20]), expected, rtol=0, atol=1e-6)
    # A class that never occurs gets the bound 1 / ln(c).
    assert enet_class_weights([10, 0], c=1.1)[1] == pytest.approx(1 / math.log(1.1))


def test_enet_weights_reject_bad_input():
    with pytest.raises(ValueError, match="greater than 1"):
        enet_class_weights([1, 2], c=1.0)
    with pytest.raises(ValueError, match="all zero"):
        enet_class_weights([0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        enet_class_weights([3, -1])


# Three label maps, 4 classes (class 3 never occurs), 255 = void.
IMAGES = [
    np.array([[0, 0], [0, 1]]),  # class 0: 3, class 1: 1; 4 labelled pixels
    np.array([[1, 1], [2, 2]]),  # class 1: 2, class 2: 2; 4 labelled pixels
    np.array([[0, 0, 0], [0, 0, 255]]),  # class 0: 5; 5 labelled pixels
]


def test_count_class_pixels_by_hand():
    pixels, image_pixels = count_class_pixels(IMAGES, num_classes=4)
    np.testing.assert_array_equal(pixels, [8, 3, 2, 0])
    # class 0 is in images 1 and 3 (4 + 5), class 1 in images 1 and 2 (4 + 4), class 2 in 2.
    np.testing.assert_array_equal(image_pixels, [9, 8, 4, 0])
    batched, _ = count_class_pixels([np.stack([IMAGES[0], IMAGES[1]])], num_classes=4)
    np.testing.assert_array_equal(batched, [3, 3, 2, 0])
    with pytest.raises(ValueError, match="label map 0 has label 7 but there are 4 classes"):
        count_class_pixels([np.array([[7]])], num_classes=4)


def test_median_frequency_by_hand():
    # freq = 8/9, 3/8, 2/4; median 0.5; w = 0.5 / freq; class 3 absent -> 0.
    weights = median_frequency_weights([8, 3, 2, 0], image_counts=[9, 8, 4, 0])
    np.testing.assert_allclose(weights, [0.5625, 4 / 3, 1.0, 0.0], rtol=1e-12)


def test_median_frequency_fallback_uses_all_pixels():
    # freq = counts / 13; median of the present ones is 3 / 13; w = 3 / counts.
    weights = median_frequency_weights([8, 3, 2, 0])
    np.testing.assert_allclose(weights, [0.375, 1.0, 1.5, 0.0], rtol=1e-12)
    with pytest.raises(ValueError, match="at least pixel_counts"):
        median_frequency_weights([8, 3], image_counts=[7, 3])


def two_squares(gap, size=10, margin=10):
    """Two size x size cells side by side, ``gap`` background columns apart."""
    labels = np.zeros((size + 2 * margin, 2 * size + gap + 2 * margin), dtype=np.int32)
    labels[margin : margin + size, margin : margin + size] = 1
    labels[margin : margin + size, margin + size + gap : margin + 2 * size + gap] = 2
    return labels


@pytest.mark.parametrize("gap", [1, 4, 5])
def test_unet_weight_in_the_gap_between_two_cells(gap):
    w0, sigma = 10.0, 5.0
    labels = two_squares(gap)
    weights = unet_weight_map(labels, w0=w0, sigma=sigma)
    assert weights.dtype == np.float32 and weights.shape == labels.shape
    # Every gap pixel on a row through both cells is g/2 + g/2 from the two borders in total
    # (distance to the cell's pixel edge, see the docstring).
    row = 15
    gap_columns = slice(20, 20 + gap)
    expected = 1.0 + w0 * math.exp(-(gap**2) / (2 * sigma**2))
    np.testing.assert_allclose(weights[row, gap_columns], expected, rtol=1e-5)
    assert weights[0, 0] == pytest.approx(1.0, abs=1e-6)  # far from the cells: w_c
    np.testing.assert_array_equal(weights[labels > 0], 1.0)  # inside the cells: w_c


def test_unet_weight_with_class_weights_map():
    labels = two_squares(3)
    class_map = np.where(labels > 0, 2.0, 0.5)
    weights = unet_weight_map(labels, class_weights_map=class_map, w0=4.0, sigma=2.0)
    assert weights[15, 21] == pytest.approx(0.5 + 4.0 * math.exp(-9 / 8), rel=1e-5)
    np.testing.assert_array_equal(weights[labels > 0], 2.0)


def test_unet_weight_map_against_brute_force():
    labels = np.zeros((9, 11), dtype=np.int64)
    labels[1:3, 1:4] = 1
    labels[5:8, 2:4] = 2
    labels[2:7, 7:9] = 3
    labels[8, 10] = 4
    cells = [np.argwhere(labels == i) for i in range(1, 5)]
    expected = np.ones(labels.shape)
    for y, x in np.argwhere(labels == 0):
        distances = sorted(np.sqrt(((c - [y, x]) ** 2).sum(axis=1)).min() - 0.5 for c in cells)
        expected[y, x] += 10.0 * math.exp(-((distances[0] + distances[1]) ** 2) / 50.0)
    np.testing.assert_allclose(unet_weight_map(labels), expected, rtol=1e-5)


def test_unet_weight_needs_two_cells_for_the_border_term():
    labels = np.zeros((8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(unet_weight_map(labels), 1.0)
    labels[2:4, 2:4] = 5
    np.testing.assert_array_equal(unet_weight_map(labels, class_weights_map=0.7), np.float32(0.7))
