"""Augmentation: identities, label sets, image/label consistency, and the warp against a NumPy
bilinear / nearest sampler written from the definition."""

import numpy as np
import pytest

from edgeseg.train.augment import (
    color_jitter,
    elastic_deform,
    elastic_displacement,
    random_flip,
    random_scale_crop,
    warp_image_and_label,
)

IGNORE = 255
K = 5


def block_label(height=24, width=28):
    """Large regions of classes 1..4 with a stripe of class 0, and a few void pixels."""
    label = np.ones((height, width), dtype=np.int32)
    label[: height // 2, width // 2 :] = 2
    label[height // 2 :, : width // 2] = 3
    label[height // 2 :, width // 2 :] = 4
    label[:, 5:8] = 0
    label[0, :2] = IGNORE
    return label


def one_hot_image(label):
    """An image with one channel per class (and one for void) that encodes the label."""
    return np.eye(K + 1, dtype=np.float32)[np.where(label == IGNORE, K, label)]


def assert_image_agrees_with_label(image, label):
    """Checks that image (bilinear) and label (nearest) were moved by the same transform.

    Bilinear sampling mixes the 4 source pixels around a point; nearest sampling takes the
    closest of them, whose weight is at least 1/4. So where one class channel holds more than
    3/4 of the weight, the nearest source pixel belongs to that class: the label must be it.
    """
    scored = label != IGNORE
    pure = (image.max(axis=-1) > 0.75 + 1e-5) & scored
    assert pure.sum() > 0.5 * scored.sum()
    np.testing.assert_array_equal(image.argmax(axis=-1)[pure], label[pure])


def rng(seed):
    return np.random.default_rng(seed)


def reflect_101(index, size):
    """Mirrors indices into 0..size-1 without repeating the edge."""
    period = max(2 * (size - 1), 1)
    folded = np.mod(index, period)
    return np.where(folded >= size, period - folded, folded)


def warp_from_definition(image, label, displacement, fill, ignore=IGNORE):
    """Output (y, x) samples the input at (y + dy, x + dx): the image bilinearly from its four
    neighbours (mirrored or black outside), the label from the nearest pixel (half up) or
    ``ignore`` outside."""
    height, width = label.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    sx, sy = cols + displacement[..., 0], rows + displacement[..., 1]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    source = image.astype(np.float64)

    def pixel(y, x):
        if fill == "reflect":
            return source[reflect_101(y, height), reflect_101(x, width)]
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        return source[np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)] * inside[..., None]

    top = (1 - fx) * pixel(y0, x0) + fx * pixel(y0, x0 + 1)
    bottom = (1 - fx) * pixel(y0 + 1, x0) + fx * pixel(y0 + 1, x0 + 1)
    nx, ny = np.floor(sx + 0.5).astype(int), np.floor(sy + 0.5).astype(int)
    inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
    nearest = label[np.clip(ny, 0, height - 1), np.clip(nx, 0, width - 1)]
    return (1 - fy) * top + fy * bottom, np.where(inside, nearest, ignore)


def smooth_image(height, width, channels=3):
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [0.5 + 0.4 * np.sin(x / 5.0 + c) * np.cos(y / 7.0 - c) for c in range(channels)]
    return np.stack(planes, axis=-1).astype(np.float32)


def test_elastic_with_zero_sigma_is_identity():
    label = block_label().astype(np.uint8)
    for image in (one_hot_image(label), rng(0).integers(0, 256, (24, 28, 3), dtype=np.uint8)):
        for fill in ("reflect", "zero"):
            out_image, out_label = elastic_deform(image, label, sigma=0.0, rng=rng(3),
                                                  image_fill=fill)
            assert out_image.dtype == image.dtype and out_label.dtype == label.dtype
            np.testing.assert_array_equal(out_image, image)
            np.testing.assert_array_equal(out_label, label)
            # A zero field through the warp itself is the identity too.
            zero = np.zeros((*label.shape, 2), np.float32)
            warped_image, warped_label = warp_image_and_label(image, label, zero, image_fill=fill)
            np.testing.assert_array_equal(warped_image, image)
            np.testing.assert_array_equal(warped_label, label)


def test_label_values_stay_within_the_input_values_and_ignore():
    generator = rng(1)
    label = generator.choice(np.array([0, 3, 7], dtype=np.int32), size=(20, 24))
    image = generator.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    allowed = {0, 3, 7, IGNORE}
    seen = set()
    for seed in range(4):
        outputs = [
            random_scale_crop(image, label, out_size=(30, 36), scale_range=(0.5, 2.0),
                              rng=rng(seed))[1],
            random_flip(image, label, rng=rng(seed))[1],
            elastic_deform(image, label, sigma=8.0, rng=rng(seed))[1],
        ]
        for out in outputs:
            assert out.dtype == label.dtype
            values = set(np.unique(out).tolist())
            assert values <= allowed
            seen |= values
    assert IGNORE in seen  # padding and out-of-image pixels were exercised


def test_elastic_moves_image_and_label_together():
    label = block_label()
    image = one_hot_image(label)
    for seed in range(3):
        out_image, out_label = elastic_deform(image, label, sigma=5.0, rng=rng(seed))
        scored = out_label != IGNORE
        assert np.mean(out_label[scored] != label[scored]) > 0.05  # it did deform
        assert_image_agrees_with_label(out_image, out_label)


def test_scale_crop_moves_image_and_label_together():
    label = block_label()
    image = one_hot_image(label)
    padded_pixels = 0
    for seed in range(4):
        out_image, out_label = random_scale_crop(image, label, out_size=(20, 20),
                                                 scale_range=(0.6, 1.6), rng=rng(seed))
        assert out_image.shape == (20, 20, K + 1) and out_label.shape == (20, 20)
        # The image has no black pixel: black is padding, which must be void in the label.
        padded = out_image.max(axis=-1) == 0
        np.testing.assert_array_equal(out_label[padded], IGNORE)
        padded_pixels += padded.sum()
        assert_image_agrees_with_label(out_image, out_label)
    assert padded_pixels > 0


def test_scale_crop_at_scale_one_is_a_window_of_the_input():
    label = block_label()
    image = rng(4).integers(0, 256, (*label.shape, 3), dtype=np.uint8)
    for seed in range(3):
        out_image, out_label = random_scale_crop(image, label, (10, 12), (1.0, 1.0),
                                                 rng=rng(seed))
        # Find the window: the crop must equal the input at one offset, image and label alike.
        hits = [(y, x) for y in range(label.shape[0] - 9) for x in range(label.shape[1] - 11)
                if np.array_equal(image[y:y + 10, x:x + 12], out_image)]
        assert len(hits) == 1
        y, x = hits[0]
        np.testing.assert_array_equal(out_label, label[y:y + 10, x:x + 12])


def test_flip_flips_both_or_neither():
    label = block_label()
    image = one_hot_image(label)
    flipped_once = unflipped_once = False
    for seed in range(8):
        out_image, out_label = random_flip(image, label, rng=rng(seed))
        if np.array_equal(out_label, label[:, ::-1]):
            np.testing.assert_array_equal(out_image, image[:, ::-1])
            flipped_once = True
        else:
            np.testing.assert_array_equal(out_label, label)
            np.testing.assert_array_equal(out_image, image)
            unflipped_once = True
    assert flipped_once and unflipped_once


@pytest.mark.parametrize("fill", ["reflect", "zero"])
def test_warp_matches_the_definition(fill):
    height, width = 26, 31
    image = smooth_image(height, width)
    label = rng(2).integers(0, 5, (height // 2 + 1, width // 3 + 1))
    label = np.kron(label, np.ones((2, 3), dtype=np.int64))[:height, :width].astype(np.int32)
    field = elastic_displacement(height, width, grid=3, sigma=6.0, rng=rng(11))
    assert field.shape == (height, width, 2) and field.dtype == np.float32
    assert np.abs(field).max() > 3.0  # large enough to leave the image at the borders

    out_image, out_label = warp_image_and_label(image, label, field, image_fill=fill)
    ref_image, ref_label = warp_from_definition(image, label, field, fill)
    # OpenCV quantises bilinear positions to 1/32 px: on this smooth image (slope < 0.1 per
    # px) that is < 3e-3.
    np.testing.assert_allclose(out_image, ref_image, atol=1e-2)
    assert np.mean(np.abs(out_image - ref_image)) < 2e-3
    assert np.mean(out_label == ref_label) > 0.99  # ties at exactly half a pixel may differ
    assert (ref_label == IGNORE).any()

    uint8_image = np.round(image * 255).astype(np.uint8)
    out_uint8, _ = warp_image_and_label(uint8_image, label, field, image_fill=fill)
    ref_uint8, _ = warp_from_definition(uint8_image, label, field, fill)
    assert out_uint8.dtype == np.uint8
    assert np.abs(out_uint8.astype(int) - np.round(ref_uint8)).max() <= 3


def test_displacement_field_interpolates_its_grid_and_has_sigma():
    # Each of the grid x grid tiles' centres holds one of the drawn vectors (half-pixel
    # convention): sample at the centres of a 3x3 tiling of a 30x30 image.
    field = elastic_displacement(30, 30, grid=3, sigma=4.0, rng=rng(7))
    coarse = rng(7).normal(0.0, 4.0, (3, 3, 2)).astype(np.float32)
    centres = field[5::10, 5::10]
    np.testing.assert_allclose(centres, coarse, atol=0.35 * 4.0)
    assert np.corrcoef(centres.ravel(), coarse.ravel())[0, 1] > 0.95
    draws = np.concatenate([elastic_displacement(3, 3, 3, 4.0, rng(s)).ravel()
                            for s in range(200)])
    assert np.std(draws) == pytest.approx(4.0, rel=0.1)


def test_same_generator_seed_repeats_and_another_differs():
    label = block_label()
    image = one_hot_image(label)
    first = random_scale_crop(image, label, (16, 16), rng=rng(5))[1]
    same = random_scale_crop(image, label, (16, 16), rng=rng(5))[1]
    other = random_scale_crop(image, label, (16, 16), rng=rng([0, 5]))[1]
    np.testing.assert_array_equal(first, same)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(elastic_displacement(10, 12, rng=rng([1, 2])),
                                  elastic_displacement(10, 12, rng=rng([1, 2])))


def test_color_jitter():
    generator = rng(3)
    image = generator.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(color_jitter(image, rng=rng(1)), image)

    dim = generator.uniform(0.05, 0.6, (6, 7, 3)).astype(np.float32)
    brighter = color_jitter(dim, brightness=0.5, rng=rng(2))
    ratio = brighter / dim
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)  # one factor for all pixels
    assert 0.5 <= ratio.flat[0] <= 1.5 and ratio.flat[0] != 1.0

    # Contrast scales each channel's distance from that channel's mean by one factor.
    mid = generator.uniform(0.4, 0.6, (6, 7, 3)).astype(np.float32)
    out = color_jitter(mid, contrast=0.5, rng=rng(6))
    mean = mid.mean(axis=(0, 1))
    factor = (out - mean) / (mid - mean)
    np.testing.assert_allclose(factor, factor.flat[0], rtol=1e-3)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), mean, atol=1e-6)

    grey = np.repeat(generator.uniform(0.1, 0.9, (6, 7, 1)), 3, axis=-1).astype(np.float32)
    np.testing.assert_allclose(color_jitter(grey, saturation=0.8, hue=0.4, rng=rng(4)), grey,
                               atol=1e-5)
    # A hue shift of a third of a turn maps pure red to pure green (RGB -> GBR order).
    red = np.zeros((2, 2, 3), np.float32)
    red[..., 0] = 1.0

    class Third:
        def uniform(self, low, high):
            return 1 / 3

    np.testing.assert_allclose(color_jitter(red, hue=0.5, rng=Third())[..., 1], 1.0, atol=1e-5)

    with pytest.raises(ValueError, match="hue must be at most 0.5"):
        color_jitter(image, hue=0.7)
    with pytest.raises(ValueError, match="RGB"):
        color_jitter(np.zeros((4, 4, 1), np.float32), saturation=0.2)
