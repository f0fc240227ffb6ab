"""Augmentation: identities, label sets, image/label consistency and the cv2.remap reference."""

import numpy as np
import pytest
import tensorflow as tf

from edgeseg.train.augment import (
    color_jitter,
    elastic_deform,
    elastic_deform_reference,
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


def smooth_image(height, width, channels=3):
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [0.5 + 0.4 * np.sin(x / 5.0 + c) * np.cos(y / 7.0 - c) for c in range(channels)]
    return np.stack(planes, axis=-1).astype(np.float32)


def test_elastic_with_zero_sigma_is_identity():
    label = block_label().astype(np.uint8)
    for image in (one_hot_image(label), np.random.default_rng(0).integers(0, 256, (24, 28, 3),
                                                                        dtype=np.uint8)):
        for fill in ("reflect", "zero"):
            out_image, out_label = elastic_deform(image, label, sigma=0.0, seed=3,
                                                  image_fill=fill)
            assert out_image.dtype == image.dtype and out_label.dtype == label.dtype
            np.testing.assert_array_equal(out_image.numpy(), image)
            np.testing.assert_array_equal(out_label.numpy(), label)


def test_label_values_stay_within_the_input_values_and_ignore():
    rng = np.random.default_rng(1)
    label = rng.choice(np.array([0, 3, 7], dtype=np.int32), size=(20, 24))
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    allowed = {0, 3, 7, IGNORE}
    seen = set()
    for seed in range(4):
        outputs = [
            random_scale_crop(image, label, out_size=(30, 36), scale_range=(0.5, 2.0),
                              seed=seed)[1],
            random_flip(image, label, seed=seed)[1],
            elastic_deform(image, label, sigma=8.0, seed=seed)[1],
        ]
        for out in outputs:
            values = set(np.unique(out.numpy()).tolist())
            assert values <= allowed
            seen |= values
    assert IGNORE in seen  # padding and out-of-image pixels were exercised


def test_elastic_moves_image_and_label_together():
    label = block_label()
    image = one_hot_image(label)
    for seed in range(3):
        out_image, out_label = elastic_deform(image, label, sigma=5.0, seed=seed)
        out_image, out_label = out_image.numpy(), out_label.numpy()
        scored = out_label != IGNORE
        assert np.mean(out_label[scored] != label[scored]) > 0.05  # it did deform
        assert_image_agrees_with_label(out_image, out_label)


def test_scale_crop_moves_image_and_label_together():
    label = block_label()
    image = one_hot_image(label)
    padded_pixels = 0
    for seed in range(4):
        out_image, out_label = random_scale_crop(image, label, out_size=(20, 20),
                                                 scale_range=(0.6, 1.6), seed=seed)
        out_image, out_label = out_image.numpy(), out_label.numpy()
        assert out_image.shape == (20, 20, K + 1) and out_label.shape == (20, 20)
        # The image has no black pixel: black is padding, which must be void in the label.
        padded = out_image.max(axis=-1) == 0
        np.testing.assert_array_equal(out_label[padded], IGNORE)
        padded_pixels += padded.sum()
        assert_image_agrees_with_label(out_image, out_label)
    assert padded_pixels > 0


def test_flip_flips_both_or_neither():
    label = block_label()
    image = one_hot_image(label)
    flipped_once = unflipped_once = False
    for seed in range(8):
        out_image, out_label = random_flip(image, label, seed=seed)
        if np.array_equal(out_label.numpy(), label[:, ::-1]):
            np.testing.assert_array_equal(out_image.numpy(), image[:, ::-1])
            flipped_once = True
        else:
            np.testing.assert_array_equal(out_label.numpy(), label)
            np.testing.assert_array_equal(out_image.numpy(), image)
            unflipped_once = True
    assert flipped_once and unflipped_once


@pytest.mark.parametrize("fill", ["reflect", "zero"])
def test_tf_warp_matches_cv2_remap_reference(fill):
    height, width = 26, 31
    image = smooth_image(height, width)
    label = np.random.default_rng(2).integers(0, 5, (height // 2 + 1, width // 3 + 1))
    label = np.kron(label, np.ones((2, 3), dtype=np.int64))[:height, :width].astype(np.int32)
    field = elastic_displacement(height, width, grid=3, sigma=6.0, seed=11).numpy()
    assert np.abs(field).max() > 3.0  # large enough to leave the image at the borders

    tf_image, tf_label = warp_image_and_label(image, label, field, image_fill=fill)
    ref_image, ref_label = elastic_deform_reference(image, label, field, image_fill=fill)
    # OpenCV 4 quantises bilinear positions to 1/32 px (5.0 agrees to 1e-7): on this smooth
    # image (slope < 0.1 per px) that is < 3e-3.
    np.testing.assert_allclose(tf_image.numpy(), ref_image, atol=1e-2)
    assert np.mean(np.abs(tf_image.numpy() - ref_image)) < 2e-3
    assert np.mean(tf_label.numpy() == ref_label) > 0.99
    assert (ref_label == IGNORE).any()

    uint8_image = np.round(image * 255).astype(np.uint8)
    tf_uint8, _ = warp_image_and_label(uint8_image, label, field, image_fill=fill)
    ref_uint8, _ = elastic_deform_reference(uint8_image, label, field, image_fill=fill)
    assert tf_uint8.dtype == tf.uint8
    assert np.abs(tf_uint8.numpy().astype(int) - ref_uint8.astype(int)).max() <= 3


def test_stateless_seeds_repeat_and_differ():
    label = block_label()
    image = one_hot_image(label)
    first = random_scale_crop(image, label, (16, 16), seed=5)[1].numpy()
    again = random_scale_crop(image, label, (16, 16), seed=[0, 5])[1].numpy()
    same = random_scale_crop(image, label, (16, 16), seed=5)[1].numpy()
    np.testing.assert_array_equal(first, same)
    assert not np.array_equal(first, again)
    a = elastic_displacement(10, 12, seed=tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(a, elastic_displacement(10, 12, seed=[1, 2]).numpy())


def test_color_jitter():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(color_jitter(image, seed=1).numpy(), image)

    dim = rng.uniform(0.05, 0.6, (6, 7, 3)).astype(np.float32)
    brighter = color_jitter(dim, brightness=0.5, seed=2).numpy()
    ratio = brighter / dim
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)  # one factor for all pixels
    assert 0.5 <= ratio.flat[0] <= 1.5 and ratio.flat[0] != 1.0

    grey = np.repeat(rng.uniform(0.1, 0.9, (6, 7, 1)), 3, axis=-1).astype(np.float32)
    np.testing.assert_allclose(
        color_jitter(grey, saturation=0.8, hue=0.4, seed=4).numpy(), grey, atol=1e-5)

    with pytest.raises(ValueError, match="hue must be at most 0.5"):
        color_jitter(image, hue=0.7)
    with pytest.raises(ValueError, match="RGB"):
        color_jitter(np.zeros((4, 4, 1), np.float32), saturation=0.2)


def test_augmentations_run_in_a_dataset_map_with_static_shapes():
    rng = np.random.default_rng(5)
    pairs = [
        (rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8), label.astype(np.uint8))
        for label in (block_label(), block_label(20, 22))
    ]
    # Examples of different sizes, as decoded from files: only the channels are static.
    examples = tf.data.Dataset.from_generator(
        lambda: iter(pairs),
        output_signature=(tf.TensorSpec([None, None, 3], tf.uint8),
                          tf.TensorSpec([None, None], tf.uint8)),
    )
    seeds = tf.data.Dataset.random(seed=0).batch(2)

    def augment(example, seed):
        image, label = example
        seed_a, seed_b, seed_c, seed_d = tf.unstack(
            tf.random.experimental.stateless_split(seed, 4))
        image, label = random_scale_crop(image, label, (16, 18), seed=seed_a)
        image, label = random_flip(image, label, seed=seed_b)
        image, label = elastic_deform(image, label, sigma=3.0, seed=seed_c)
        return color_jitter(image, 0.2, 0.2, 0.2, 0.05, seed=seed_d), label

    dataset = tf.data.Dataset.zip((examples, seeds)).map(augment).batch(2)
    image_spec, label_spec = dataset.element_spec
    assert image_spec.shape.as_list() == [None, 16, 18, 3] and image_spec.dtype == tf.uint8
    assert label_spec.shape.as_list() == [None, 16, 18] and label_spec.dtype == tf.uint8
    batch_images, batch_labels = next(iter(dataset))
    assert batch_images.shape == (2, 16, 18, 3)
    assert set(np.unique(batch_labels.numpy())) <= {0, 1, 2, 3, 4, IGNORE}
