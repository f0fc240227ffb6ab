"""Quantisation-aware training and pruning (edgeseg.converters: tf_keras_twins, finetune, qat,
pruning) against independent references.

The tf_keras twin is checked against the Keras 3 model it was built from; the int8 TFLite models
against the QAT model's own fake-quantised prediction and against the labels; sparsity against
a NumPy count of the zeros; the loss against a NumPy computation from its definition.
Models are small (32 x 48 pixels, tiny U-Net) and train for a few steps on a 2-core machine.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
# Not importorskip: importing tfmot would set TF_USE_LEGACY_KERAS for the whole session.
for _package in ("tf_keras", "tensorflow_model_optimization"):
    if importlib.util.find_spec(_package) is None:
        pytest.skip(f'needs {_package}: pip install "edgeseg[train]"', allow_module_level=True)
import tensorflow as tf  # noqa: E402

from edgeseg.converters import finetune, pruning, qat, tf_keras_twins  # noqa: E402
from edgeseg.models import build  # noqa: E402
from tests.helpers import SMALL_MODELS, keras_predict, random_images  # noqa: E402

NUM_CLASSES = 7  # the synthetic dataset's classes
HEIGHT, WIDTH = 32, 48
TINY_UNET = {"filters": 4, "depth": 2}


def randomize(model, seed: int = 0):
    """Random weights everywhere, batch-norm statistics included, so that every weight matters."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.path.rsplit("/", 1)[-1]
        if name in ("moving_variance", "gamma"):
            value = rng.uniform(0.5, 1.5, variable.shape)
        else:
            value = rng.normal(0.0, 0.1, variable.shape)
        variable.assign(value.astype("float32"))
    return model


def estimate_batch_norm_statistics(model, images):
    """Sets every batch norm's moving statistics to those of ``images``, as training would."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum


@pytest.fixture(scope="module")
def synthetic():
    """(images float32 [0, 1], labels int32 with 255) of 8 synthetic scenes, 48 x 32."""
    import tempfile

    from edgeseg.data import read_synthetic, write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic(
            os.path.join(tmp, "synthetic"), n_train=8, n_val=2, size=(WIDTH, HEIGHT)
        )
        dataset = read_synthetic(root, "train")
        samples = [dataset[i] for i in range(len(dataset))]
    images = np.stack([image for image, _ in samples]).astype(np.float32) / 255.0
    labels = np.stack([label for _, label in samples]).astype(np.int32)
    assert (labels == 255).any() and labels[labels != 255].max() < NUM_CLASSES
    return images, labels


def batches(images, labels, batch: int = 4):
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def tflite_predict(content: bytes, images) -> np.ndarray:
    from edgeseg.runtime_tflite import load_interpreter, run_interpreter

    interpreter = load_interpreter(model_content=content)
    return np.concatenate([run_interpreter(interpreter, image[None]) for image in images])


def check_full_int8(content: bytes):
    from edgeseg.converters.tflite import non_builtin_ops
    from edgeseg.runtime_tflite import load_interpreter

    assert non_builtin_ops(content) == []
    assert qat.float_ops(content) == []
    interpreter = load_interpreter(model_content=content)
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    output = interpreter.get_output_details()[0]
    assert output["dtype"] == np.uint8
    assert tuple(output["shape"]) == (1, HEIGHT, WIDTH, NUM_CLASSES)


# --- imports ------------------------------------------------------------------------------------


def test_import_needs_no_tensorflow():
    code = ("import sys, edgeseg.converters.qat, edgeseg.converters.pruning, "
            "edgeseg.converters.finetune, edgeseg.converters.tf_keras_twins; "
            "assert 'tensorflow' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_importing_tfmot_leaves_tf_keras_on_keras_3():
    if os.environ.get("TF_USE_LEGACY_KERAS"):
        pytest.skip("TF_USE_LEGACY_KERAS is set in this environment")
    tf_keras_twins.import_tfmot()
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    assert tf.keras.version().startswith("3."), tf.keras.version()


# --- Keras 3 -> tf_keras ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "shape"),
    [
        ("enet", {}, (37, 50)),
        ("unet", TINY_UNET, (37, 50)),
        ("unet", {**TINY_UNET, "padding": "valid", "output": "mask"}, (44, 44)),
        ("segnet", SMALL_MODELS["segnet"], (37, 50)),
        ("fcn8s", SMALL_MODELS["fcn8s"], (37, 50)),
    ],
    ids=["enet", "unet", "unet-valid-mask", "segnet", "fcn8s"],
)
def test_tf_keras_twin_computes_the_same_function(name, options, shape):
    model = randomize(build(name, 5, (*shape, 3), **options))
    twin = tf_keras_twins.to_tf_keras(model)
    assert [layer.name for layer in twin.layers] == [layer.name for layer in model.layers]
    x = random_images(2, *shape, seed=1)
    want = keras_predict(model, x)
    got = twin(x, training=False).numpy()
    assert got.shape == want.shape
    if want.dtype == np.uint8:
        np.testing.assert_array_equal(got, want)
    else:
        assert want.std() > 1e-3
        # float32 rounding only: tf_keras runs batch norm as one fused kernel, Keras 3 does not.
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, atol=1e-5 * max(scale, 1.0), rtol=1e-4)


def test_to_tf_keras_names_a_layer_it_cannot_rebuild():
    @keras.saving.register_keras_serializable(package="edgeseg_test")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, Twice(name="twice")(inputs))
    with pytest.raises(ValueError, match="twice"):
        tf_keras_twins.to_tf_keras(model)


def test_from_tf_keras_round_trip_and_mismatch_error():
    model = randomize(build("unet", 5, (HEIGHT, WIDTH, 3), **TINY_UNET))
    twin = tf_keras_twins.to_tf_keras(model)
    target = build("unet", 5, (HEIGHT, WIDTH, 3), **TINY_UNET)
    tf_keras_twins.from_tf_keras(twin, target)
    for a, b in zip(model.weights, target.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    wider = build("unet", 5, (HEIGHT, WIDTH, 3), filters=8, depth=2)
    with pytest.raises(ValueError, match="shape"):
        tf_keras_twins.from_tf_keras(twin, wider)
    deeper = build("unet", 5, (HEIGHT, WIDTH, 3), filters=4, depth=3)
    with pytest.raises(ValueError, match="no source"):
        tf_keras_twins.from_tf_keras(twin, deeper)


# --- loss ---------------------------------------------------------------------------------------


def test_masked_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(2, 5, 6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 5, 6))
    labels[rng.random(labels.shape) < 0.25] = 255
    pixel_weights = rng.uniform(0.5, 3.0, size=labels.shape).astype(np.float32)
    class_weights = [0.5, 2.0, 1.0, 3.0]

    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    valid = labels != 255
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    weight = valid * np.asarray(class_weights)[np.where(valid, labels, 0)] * pixel_weights
    want = -(picked * weight).sum() / weight.sum()

    got = finetune.masked_sparse_cross_entropy(labels, logits, pixel_weights, class_weights)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    plain = -(picked * valid).sum() / valid.sum()
    np.testing.assert_allclose(
        float(finetune.masked_sparse_cross_entropy(labels, logits)), plain, rtol=1e-5
    )


# --- quantisation-aware training ----------------------------------------------------------------


def test_calibrate_ranges_fits_the_activations_and_restores_the_rest(synthetic):
    images, labels = synthetic
    model = randomize(build("unet", NUM_CLASSES, (HEIGHT, WIDTH, 3), **TINY_UNET))
    qat_model = qat.quantize_aware(tf_keras_twins.to_tf_keras(model))
    ranges = {
        v.name: v
        for v in qat_model.non_trainable_weights
        if v.name.split("/")[-1].split(":")[0] in qat._EMA_RANGES
    }
    assert ranges and all(float(np.max(np.abs(v))) == 6.0 for v in ranges.values())
    others = {
        v.name: np.asarray(v)
        for v in qat_model.weights
        if v.name not in ranges and "quantize_layer" not in v.name
    }

    assert qat.calibrate_ranges(qat_model, batches(images, labels), batches=2) == len(ranges)
    for variable in qat_model.weights:
        if variable.name in others:
            np.testing.assert_array_equal(np.asarray(variable), others[variable.name])
    # The logits' range now fits the logits (U-Net has no batch norm: training mode = inference).
    logits = qat_model(images, training=False).numpy()
    low = float(np.asarray(ranges["quant_classifier/post_activation_min:0"]))
    high = float(np.asarray(ranges["quant_classifier/post_activation_max:0"]))
    assert low <= min(logits.min(), 0) + 0.05 * (high - low)
    assert high >= logits.max() - 0.05 * (high - low)
    assert high - low < 1.5 * (max(logits.max(), 0) - min(logits.min(), 0))


@pytest.mark.slow
def test_qat_unet_converts_to_full_int8_that_agrees_with_the_qat_model(synthetic):
    images, labels = synthetic
    keras.utils.set_random_seed(0)
    model = build("unet", NUM_CLASSES, (HEIGHT, WIDTH, 3), **TINY_UNET)
    qat_model = qat.qat_finetune(model, batches(images, labels), epochs=3, lr=1e-2)
    assert len(qat_model.history.history["loss"]) == 3

    want = qat_model(images, training=False).numpy()
    content = qat.convert_qat_to_tflite(qat_model)
    check_full_int8(content)
    got = tflite_predict(content, images)
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9

    # The calibrated path (representative data, TFLITE_BUILTINS_INT8) gives the same.
    calibrated = qat.convert_qat_to_tflite(qat_model, lambda: iter(images[:4]))
    check_full_int8(calibrated)
    assert (tflite_predict(calibrated, images).argmax(-1) == want.argmax(-1)).mean() > 0.9


@pytest.mark.slow
def test_qat_enet_converts_to_full_int8_as_accurate_as_the_qat_model(synthetic):
    images, labels = synthetic
    keras.utils.set_random_seed(0)
    model = build("enet", NUM_CLASSES, (HEIGHT, WIDTH, 3))
    # A trained ENet's batch norms describe its data; a fresh one's do not, and its int8 ranges
    # (calibrated in training mode, as fit computes them) would not fit its inference.
    estimate_batch_norm_statistics(model, images)
    qat_model = qat.qat_finetune(
        model, batches(images, labels), epochs=4, lr=1e-2, calibration_batches=2, run_eagerly=True
    )
    # ENet's lone batch norms became diagonal 1x1 convolutions...
    assert type(qat_model.get_layer("quant_initial_bn").layer).__name__ == "Conv2D"
    weights = {v.name: np.asarray(v) for v in qat_model.weights}
    kernel, bias = weights["initial_bn/kernel:0"][0, 0], weights["initial_bn/bias:0"]
    np.testing.assert_array_equal(kernel, np.diag(np.diagonal(kernel)))  # stayed diagonal

    want = qat_model(images, training=False).numpy()
    content = qat.convert_qat_to_tflite(qat_model)  # the QAT ranges alone: no calibration data
    check_full_int8(content)
    got = tflite_predict(content, images)
    agree = got.argmax(-1) == want.argmax(-1)
    # After 8 steps from random weights many pixels are near-ties, and int8 rounding moves
    # some pooling indices (a value lands in another pixel of its 2 x 2 window), so overall
    # agreement is 0.89-0.99 depending on the seed; where the QAT model is not near a tie,
    # the int8 model agrees.
    ordered = np.sort(want, axis=-1)
    confident = ordered[..., -1] - ordered[..., -2] > 0.05 * (want.max() - want.min())
    assert agree.mean() > 0.85
    assert confident.mean() > 0.3 and agree[confident].mean() > 0.97
    # The int8 model is as accurate on the labels as the QAT model itself.
    valid = labels != 255
    accuracy_qat = (want.argmax(-1) == labels)[valid].mean()
    accuracy_int8 = (got.argmax(-1) == labels)[valid].mean()
    assert accuracy_qat > 0.25  # it learnt something (7 classes)
    assert abs(accuracy_int8 - accuracy_qat) < 0.02

    # ...and come back as batch norms that compute the same.
    fine_tuned = tf_keras_twins.from_tf_keras(qat_model, keras.models.clone_model(model))
    x = np.random.default_rng(3).normal(size=(2, HEIGHT // 2, WIDTH // 2, 16)).astype("float32")
    np.testing.assert_allclose(
        keras_predict(fine_tuned.get_layer("initial_bn"), x), x @ kernel + bias, atol=1e-5
    )


# --- pruning ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pruning_reaches_the_target_and_shrinks_the_compressed_int8_model(synthetic):
    images, labels = synthetic
    keras.utils.set_random_seed(0)
    model = randomize(build("unet", NUM_CLASSES, (HEIGHT, WIDTH, 3), **TINY_UNET))
    pruned, content, report = pruning.prune_finetune(
        model, batches(images, labels), epochs=3, target_sparsity=0.5, lr=1e-3
    )
    kernels = {
        layer.name: np.asarray(layer.kernel)
        for layer in pruned.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))
    }
    assert set(report["layers"]) == set(kernels)
    for name, kernel in kernels.items():
        sparsity = float((kernel == 0).mean())
        assert report["layers"][name]["sparsity"] == pytest.approx(sparsity)
        assert sparsity == pytest.approx(0.5, abs=0.05), name
    zeros = sum(int((k == 0).sum()) for k in kernels.values())
    assert report["kernel_sparsity"] == pytest.approx(zeros / sum(k.size for k in kernels.values()))
    # The input model was left alone.
    assert all(
        float((np.asarray(layer.kernel) == 0).mean()) < 0.01
        for layer in model.layers
        if hasattr(layer, "kernel")
    )

    assert report["non_builtin_ops"] == []
    before, after = report["before"], report["after"]
    assert after["int8_gzip_bytes"] < before["int8_gzip_bytes"]
    assert after["fp32_gzip_bytes"] < 0.8 * before["fp32_gzip_bytes"]
    assert after["int8_bytes"] == len(content)

    from edgeseg.runtime_tflite import load_interpreter

    assert load_interpreter(model_content=content).get_input_details()[0]["dtype"] == np.uint8
    got = tflite_predict(content, images[:2])
    want = keras_predict(pruned, images[:2])
    assert got.shape == want.shape
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9
