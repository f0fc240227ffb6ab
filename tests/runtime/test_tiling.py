"""Overlap-tile segmentation against whole-image inference on the mirror-padded image."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from edgeseg.runtime.tiling import (
    blend_window,
    plan_tiles,
    reflect_indices,
    segment_tiled,
)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2)


def mirror_padded(image: np.ndarray, plan) -> np.ndarray:
    """The padded image the tiles are cut from, made independently with OpenCV."""
    top, left, bottom, right = plan.pad
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_REFLECT_101)


def crop_to_image(labels: np.ndarray, plan) -> np.ndarray:
    top, left = plan.pad[:2]
    width, height = plan.image_size
    return labels[top : top + height, left : left + width]


class NumpyConvNet:
    """Two 3x3 "same" convolutions with zero padding and a ReLU between them.

    Like a real "same"-padded network, it sees zeros beyond the edge of whatever it is given;
    its receptive-field radius is 2 pixels, so an overlap of 8 (2 pixels of guaranteed context
    on every side) must reproduce whole-image inference exactly.
    """

    def __init__(self, num_classes: int = 5, hidden: int = 6, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(size=(3, 3, 3, hidden))
        self.w2 = rng.normal(size=(3, 3, hidden, num_classes))
        self.calls = 0

    @staticmethod
    def conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        height, width = x.shape[:2]
        padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
        return sum(
            padded[dy : dy + height, dx : dx + width] @ w[dy, dx]
            for dy in range(3)
            for dx in range(3)
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        x = batch[0].astype(np.float64) - 0.5
        hidden = np.maximum(self.conv(x, self.w1), 0)
        return self.conv(hidden, self.w2)[None].astype(np.float32)


# --- geometry -----------------------------------------------------------------------------------


def test_reflect_indices_match_opencv_reflect_101_for_any_reach():
    for size in (1, 2, 5, 17):
        row = np.arange(size, dtype=np.float32)[None]
        expected = cv2.copyMakeBorder(row, 0, 0, 23, 31, cv2.BORDER_REFLECT_101)[0]
        np.testing.assert_array_equal(reflect_indices(-23, size + 54, size), expected)


def test_plan_covers_the_padded_image_with_a_regular_grid():
    plan = plan_tiles((130, 100), (48, 40), overlap=16)
    top, left, bottom, right = plan.pad
    assert (top, left) == (8, 8) and bottom >= 8 and right >= 8
    assert plan.stride == (32, 24)
    assert np.all(np.diff(plan.xs) == 32) and np.all(np.diff(plan.ys) == 24)
    assert plan.xs[0] == plan.ys[0] == 0
    assert plan.xs[-1] + 48 == plan.padded_size[0] and plan.ys[-1] + 40 == plan.padded_size[1]
    assert plan.padded_size[0] - plan.stride[0] < 130 + 16  # no tile more than needed


def test_blend_windows_of_neighbouring_tiles_add_up_to_one_in_the_overlap():
    tile, overlap = 96, 32
    window = blend_window(tile, overlap)
    stride = tile - overlap
    shared = window[stride:] + window[:overlap]  # tile A's end + tile B's start
    # The outer quarter of each tile's overlap carries (almost) no weight; the weights of the
    # two tiles still sum to 1 everywhere, up to the 1e-3 floor.
    np.testing.assert_allclose(shared, 1.0, atol=1.1e-3)
    assert window[: overlap // 4].max() <= 1e-3 and window[overlap : tile - overlap].min() == 1.0


def test_rejects_overlap_as_large_as_the_tile_and_label_map_outputs():
    image = smooth_image(40, 50)
    with pytest.raises(ValueError, match="overlap must be"):
        segment_tiled(NumpyConvNet(), image, (32, 32), overlap=32)
    with pytest.raises(ValueError, match="label map"):
        segment_tiled(lambda b: np.zeros(b.shape[:3], np.int64), image, (32, 32), overlap=8)
    with pytest.raises(ValueError, match="num_classes=3"):
        segment_tiled(NumpyConvNet(num_classes=5), image, (32, 32), overlap=8, num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        segment_tiled(lambda b: np.zeros((1, 8, 8, 2), np.float32), image, (32, 32), overlap=8)


# --- results ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, tile, overlap",
    [((97, 61), (32, 24), 8), ((50, 40), (64, 64), 8), ((130, 100), (48, 40), 16)],
)
def test_matches_whole_image_inference_exactly_when_overlap_covers_the_receptive_field(
    size, tile, overlap
):
    """Receptive-field radius 2, overlap / 4 >= 2: every pixel sees all of its context."""
    width, height = size
    image = smooth_image(height, width)
    net = NumpyConvNet()
    plan = plan_tiles(size, tile, overlap)
    labels = segment_tiled(net, image, tile, overlap=overlap)

    assert labels.shape == (height, width) and labels.dtype == np.uint8
    assert net.calls == len(plan.xs) * len(plan.ys)
    padded = mirror_padded(image, plan).astype(np.float32) / 255
    reference = crop_to_image(net(padded[None])[0].argmax(-1), plan)
    assert len(np.unique(reference)) >= 3  # a network that outputs one class proves nothing
    np.testing.assert_array_equal(labels, reference)


def test_too_small_an_overlap_leaves_differences_along_the_tile_boundaries():
    """The check above can fail: with no overlap, tile edges see zeros and seams appear."""
    image = smooth_image(61, 97)
    net = NumpyConvNet()
    plan = plan_tiles((97, 61), (32, 24), 0)
    labels = segment_tiled(net, image, (32, 24), overlap=0)
    padded = mirror_padded(image, plan).astype(np.float32) / 255
    reference = crop_to_image(net(padded[None])[0].argmax(-1), plan)
    differs = labels != reference
    assert differs.any()
    seams = np.zeros_like(differs)
    for x in plan.xs[1:]:
        seams[:, max(0, x - 2) : x + 2] = True
    for y in plan.ys[1:]:
        seams[max(0, y - 2) : y + 2] = True
    assert not differs[~seams].any()  # every difference is within 2 px of a tile boundary


def test_softmax_blending_gives_the_same_labels_when_tiles_agree():
    image = smooth_image(61, 97)
    net = NumpyConvNet()
    logits = segment_tiled(net, image, (32, 24), overlap=8)
    probs = segment_tiled(net, image, (32, 24), overlap=8, softmax=True)
    np.testing.assert_array_equal(probs, logits)


def test_large_image_memory_is_bounded_by_one_band_of_tiles():
    """1000x800 with 12 classes: a full-frame score buffer would be 38.4 MB."""
    height, width, classes = 800, 1000, 12
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    weights = np.random.default_rng(1).normal(size=(3, classes)).astype(np.float32)
    tile, overlap = (128, 128), 32
    plan = plan_tiles((width, height), tile, overlap)
    full_frame_bytes = height * width * classes * 4

    assert plan.accumulator_shape(classes) == (128, plan.padded_size[0], classes)
    assert plan.accumulator_bytes(classes) < full_frame_bytes / 5

    tracemalloc.start()
    try:
        labels = segment_tiled(lambda b: b @ weights, image, tile, overlap, num_classes=classes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # NumPy reports its buffers to tracemalloc: the band, the uint8 labels and a few tile-sized
    # temporaries (the tile, its scores, weighted scores, a chunk of rows for argmax).
    tile_scores_bytes = tile[0] * tile[1] * classes * 4
    assert peak < plan.accumulator_bytes(classes) + height * width + 6 * tile_scores_bytes
    assert peak < full_frame_bytes / 3
    # A per-pixel model has no context, so tiling must give exactly the per-pixel argmax.
    expected = ((image.astype(np.float32) / 255) @ weights).argmax(-1)
    np.testing.assert_array_equal(labels, expected)


# --- a real network -----------------------------------------------------------------------------


@pytest.mark.slow
def test_unet_tiles_agree_with_whole_image_unet_without_seams():
    """A random U-Net (filters 4, depth 2), built at the tile size and at the padded image's
    size with the same weights.

    Its receptive-field radius is about 22 px; with 96x96 tiles and an overlap of 48 every pixel
    gets at least 12 px of real context, so the pixels that differ are near-ties whose scores a
    tile edge's zero padding moved slightly. The comparison is with the whole image mirrored as
    the tiles are: inference on the unpadded image differs in a band along the border (there
    the network sees zeros instead of the mirrored image), checked separately.
    """
    import keras

    from edgeseg.models import build

    height, width, tile, overlap, rf_radius = 96, 128, (96, 96), 48, 22
    image = smooth_image(height, width)
    plan = plan_tiles((width, height), tile, overlap)
    padded_w, padded_h = plan.padded_size
    keras.utils.set_random_seed(0)
    tile_model = build("unet", 3, (tile[1], tile[0], 3), filters=4, depth=2)
    whole_model = build("unet", 3, (padded_h, padded_w, 3), filters=4, depth=2)
    plain_model = build("unet", 3, (height, width, 3), filters=4, depth=2)
    padded = mirror_padded(image, plan)[None].astype(np.float32) / 255

    def predict(model, x):
        return keras.ops.convert_to_numpy(model(x, training=False))

    # Centre the classifier's biases so that no class dominates a random network's output.
    weights = tile_model.get_weights()
    whole_model.set_weights(weights)
    weights[-1] = weights[-1] - np.median(predict(whole_model, padded).reshape(-1, 3), axis=0)
    for model in (tile_model, whole_model, plain_model):
        model.set_weights(weights)

    labels = segment_tiled(lambda x: predict(tile_model, x), image, tile, overlap=overlap)
    reference = crop_to_image(predict(whole_model, padded)[0].argmax(-1), plan)
    assert np.bincount(reference.ravel(), minlength=3).min() > 0.1 * reference.size

    agree = labels == reference
    assert agree.mean() >= 0.995
    # No seams: along every tile edge and overlap midline inside the image, as good as overall.
    top, left = plan.pad[:2]
    columns = {x - left + d for x in plan.xs for d in (0, overlap // 2, tile[0] - 1)}
    rows = {y - top + d for y in plan.ys for d in (0, overlap // 2, tile[1] - 1)}
    columns = sorted(c for c in columns if 0 <= c < width)
    rows = sorted(r for r in rows if 0 <= r < height)
    assert columns and rows
    assert agree[:, columns].mean() >= 0.99 and agree[rows].mean() >= 0.99

    plain = predict(plain_model, image[None].astype(np.float32) / 255)[0].argmax(-1)
    inner = (slice(rf_radius, -rf_radius), slice(rf_radius, -rf_radius))
    np.testing.assert_array_equal(reference[inner], plain[inner])
    assert (labels[inner] == plain[inner]).mean() >= 0.995
