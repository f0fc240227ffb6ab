"""The input pipelines: one sample path behind tf.data and PyDataset, the same examples from
both, and a PyDataset stream that repeats and continues across epochs and resumes."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.data import IGNORE_INDEX, open_dataset, write_synthetic
from edgeseg.train.pipeline import (
    AugmentConfig,
    Samples,
    border_weight_map,
    make_dataset,
    make_py_dataset,
)

SIZE = (40, 32)  # width, height


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("synth"), n_train=5, n_val=3, size=(56, 44),
                           seed=2)
    return open_dataset(f"synthetic:{root}", "train")


def test_evaluation_examples_are_the_resized_samples(train_set):
    import cv2

    samples = Samples(train_set, SIZE, training=False)
    for index in range(len(train_set)):
        image, label = train_set[index]
        got_image, got_label = samples.example(index)
        want = cv2.resize(image, SIZE, interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        np.testing.assert_array_equal(got_image, want)
        # Nearest with half-pixel centres: output (y, x) takes input (floor((y + .5) h / H), ...).
        rows = np.floor((np.arange(SIZE[1]) + 0.5) * label.shape[0] / SIZE[1]).astype(int)
        cols = np.floor((np.arange(SIZE[0]) + 0.5) * label.shape[1] / SIZE[0]).astype(int)
        np.testing.assert_array_equal(got_label, label[rows][:, cols])
        assert got_label.dtype == np.int32


def test_tf_data_and_py_dataset_give_the_same_evaluation_batches(train_set):
    pytest.importorskip("tensorflow")
    tf_batches = list(make_dataset(train_set, SIZE, 2, training=False))
    py_batches = list(make_py_dataset(train_set, SIZE, 2, training=False))
    assert len(tf_batches) == len(py_batches) == 3  # 5 samples: 2, 2, 1
    for (tf_images, tf_labels), (py_images, py_labels) in zip(tf_batches, py_batches,
                                                              strict=True):
        np.testing.assert_array_equal(tf_images.numpy(), py_images)
        np.testing.assert_array_equal(tf_labels.numpy(), py_labels)


def test_training_batches_of_both_pipelines(train_set):
    """Augmented crops in range, labels within the classes and void, U-Net weights that are
    the weight map of the label they came with; the PyDataset's example remade by hand."""
    pytest.importorskip("tensorflow")
    weights = np.linspace(0.5, 2.0, train_set.num_classes).astype(np.float32)
    options = {"augment": AugmentConfig(elastic=True), "class_weights": weights,
               "weight_map_things": [1, 2, 3, 4]}
    tf_batch = next(iter(make_dataset(train_set, SIZE, 5, training=True, **options)))
    images, labels, pixel_weights = (t.numpy() for t in tf_batch)
    assert images.shape == (5, SIZE[1], SIZE[0], 3) and images.dtype == np.float32
    assert labels.dtype == np.int32 and pixel_weights.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(labels)) <= set(range(train_set.num_classes)) | {IGNORE_INDEX}
    for label, weight in zip(labels, pixel_weights, strict=True):
        np.testing.assert_allclose(weight, border_weight_map(label, weights, [1, 2, 3, 4]),
                                   rtol=1e-6)

    py = make_py_dataset(train_set, SIZE, 5, training=True, **options)
    samples = py.samples
    # An example of the PyDataset stream, remade by hand from its documented seed.
    py_images, py_labels, _ = py[0]
    order = np.random.default_rng([0, 0, 0]).permutation(len(train_set))
    image, label, _ = samples.example(order[3], np.random.default_rng([0, 1, 3]))
    np.testing.assert_array_equal(py_images[3], image)
    np.testing.assert_array_equal(py_labels[3], label)


def test_py_dataset_stream_repeats_continues_over_epochs_and_resumes(train_set):
    def stream(first_epoch=0):
        return make_py_dataset(train_set, SIZE, 2, training=True, steps_per_epoch=4,
                               first_epoch=first_epoch, seed=7)

    a, b = stream(), stream()
    assert len(a) == 4  # steps_per_epoch full batches, beyond one pass of 5 samples
    first = [a[i] for i in range(4)]
    # The same seed gives the same batches, in whatever order the workers ask for them.
    for i in reversed(range(4)):
        for x, y in zip(b[i], first[i], strict=True):
            np.testing.assert_array_equal(x, y)
    a.on_epoch_end()
    second = [a[i] for i in range(4)]
    assert not np.array_equal(second[0][0], first[0][0])
    # A run resumed at epoch 1 continues exactly where epoch 0 ended.
    resumed = stream(first_epoch=1)
    for i in range(4):
        for x, y in zip(resumed[i], second[i], strict=True):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(IndexError):
        a[4]


def test_an_empty_split_is_refused_with_its_name(tmp_path):
    class Empty:
        name, split = "folder", "val"

        def __len__(self):
            return 0

    with pytest.raises(ValueError, match="'folder' split 'val' has no samples"):
        Samples(Empty(), SIZE, training=False)
