"""Losses against NumPy computations from their definitions, on TensorFlow and JAX."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from edgeseg.train.losses import DiceLoss, WeightedSparseCrossEntropy

IGNORE = 255
K = 4
CLASS_WEIGHTS = [0.5, 2.0, 1.0, 3.0]


def make_inputs(seed=0, shape=(2, 5, 6)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(*shape, K)).astype(np.float32)
    labels = rng.integers(0, K, size=shape)
    labels[rng.random(shape) < 0.25] = IGNORE
    pixel_weights = rng.uniform(0.5, 3.0, size=shape).astype(np.float32)
    return logits, labels, pixel_weights


def numpy_log_softmax(logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def numpy_weighted_ce(logits, labels, class_weights=None, pixel_weights=None):
    """PyTorch's weighted-mean cross-entropy with ignore_index, pixel by pixel."""
    log_probs = numpy_log_softmax(logits)
    numerator = denominator = 0.0
    for index in np.ndindex(labels.shape):
        label = labels[index]
        if label == IGNORE:
            continue
        weight = 1.0 if class_weights is None else class_weights[label]
        if pixel_weights is not None:
            weight *= pixel_weights[index]
        numerator += -weight * log_probs[index][label]
        denominator += weight
    return numerator / denominator


def numpy_dice(logits, labels, smooth=1.0, pixel_weights=None):
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    valid = labels != IGNORE
    s = np.ones(labels.shape) if pixel_weights is None else pixel_weights.astype(np.float64)
    dice = []
    for cls in range(logits.shape[-1]):
        p = probs[..., cls][valid]
        g = (labels[valid] == cls).astype(np.float64)
        w = s[valid]
        dice.append((2 * np.sum(w * p * g) + smooth) / (np.sum(w * p) + np.sum(w * g) + smooth))
    return 1.0 - np.mean(dice)


def test_cross_entropy_matches_numpy_with_class_and_pixel_weights():
    logits, labels, pixel_weights = make_inputs()
    unweighted = WeightedSparseCrossEntropy(K)
    weighted = WeightedSparseCrossEntropy(K, class_weights=CLASS_WEIGHTS)
    assert float(unweighted(labels, logits)) == pytest.approx(
        numpy_weighted_ce(logits, labels), rel=1e-5)
    assert float(weighted(labels, logits)) == pytest.approx(
        numpy_weighted_ce(logits, labels, CLASS_WEIGHTS), rel=1e-5)
    assert float(weighted(labels, logits, sample_weight=pixel_weights)) == pytest.approx(
        numpy_weighted_ce(logits, labels, CLASS_WEIGHTS, pixel_weights), rel=1e-5)
    # Labels (N, H, W, 1) and per-pixel weights (N, H, W, 1) are the same thing.
    assert float(weighted(labels[..., None], logits, pixel_weights[..., None])) == pytest.approx(
        numpy_weighted_ce(logits, labels, CLASS_WEIGHTS, pixel_weights), rel=1e-5)


def test_cross_entropy_unweighted_equals_keras_ignore_class():
    logits, labels, _ = make_inputs(seed=1)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE)
    assert float(WeightedSparseCrossEntropy(K)(labels, logits)) == pytest.approx(
        float(keras_loss(labels, logits)), rel=1e-5)


def test_cross_entropy_from_probabilities_and_reductions():
    logits, labels, pixel_weights = make_inputs(seed=2)
    probs = tf.nn.softmax(logits).numpy()
    expected = numpy_weighted_ce(logits, labels, CLASS_WEIGHTS, pixel_weights)
    from_probs = WeightedSparseCrossEntropy(K, CLASS_WEIGHTS, from_logits=False)
    assert float(from_probs(labels, probs, pixel_weights)) == pytest.approx(expected, rel=1e-4)

    per_pixel = WeightedSparseCrossEntropy(K, CLASS_WEIGHTS, reduction="none")(
        labels, logits, pixel_weights).numpy()
    assert per_pixel.shape == labels.shape
    assert np.all(per_pixel[labels == IGNORE] == 0.0)
    log_probs = numpy_log_softmax(logits)
    valid = labels != IGNORE
    expected_map = np.zeros(labels.shape)
    expected_map[valid] = (
        -np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid]
        * np.asarray(CLASS_WEIGHTS)[labels[valid]] * pixel_weights[valid]
    )
    np.testing.assert_allclose(per_pixel, expected_map, rtol=1e-5, atol=1e-6)
    summed = WeightedSparseCrossEntropy(K, CLASS_WEIGHTS, reduction="sum")
    assert float(summed(labels, logits, pixel_weights)) == pytest.approx(
        expected_map.sum(), rel=1e-5)
    per_batch = WeightedSparseCrossEntropy(K, CLASS_WEIGHTS, reduction="sum_over_batch_size")
    assert float(per_batch(labels, logits, pixel_weights)) == pytest.approx(
        expected_map.sum() / labels.size, rel=1e-5)


def test_ignored_pixels_do_not_affect_loss_or_gradient():
    logits, labels, pixel_weights = make_inputs(seed=3)
    ignored = labels == IGNORE
    assert ignored.any()
    changed = logits.copy()
    changed[ignored] = np.random.default_rng(9).normal(scale=50.0, size=(ignored.sum(), K))
    changed_weights = np.where(ignored, 1e3, pixel_weights).astype(np.float32)
    for loss in (WeightedSparseCrossEntropy(K, CLASS_WEIGHTS), DiceLoss(K)):
        base = float(loss(labels, logits, pixel_weights))
        assert float(loss(labels, changed, changed_weights)) == pytest.approx(base, rel=1e-6)
        variable = tf.Variable(logits)
        with tf.GradientTape() as tape:
            value = loss(labels, variable, pixel_weights)
        gradient = tape.gradient(value, variable).numpy()
        assert np.all(gradient[ignored] == 0.0)
        assert np.abs(gradient[~ignored]).sum() > 0


def test_all_ignored_batch_gives_zero_loss():
    logits, labels, _ = make_inputs(seed=4)
    assert float(WeightedSparseCrossEntropy(K)(np.full_like(labels, IGNORE), logits)) == 0.0


def test_dice_matches_numpy():
    logits, labels, pixel_weights = make_inputs(seed=5)
    for smooth in (1.0, 0.1):
        assert float(DiceLoss(K, smooth=smooth)(labels, logits)) == pytest.approx(
            numpy_dice(logits, labels, smooth), rel=1e-5)
    assert float(DiceLoss(K)(labels, logits, pixel_weights)) == pytest.approx(
        numpy_dice(logits, labels, pixel_weights=pixel_weights), rel=1e-5)
    probs = tf.nn.softmax(logits).numpy()
    assert float(DiceLoss(K, from_logits=False)(labels, probs)) == pytest.approx(
        numpy_dice(logits, labels), rel=1e-5)


def test_dice_is_small_for_a_confident_correct_prediction():
    _, labels, _ = make_inputs(seed=6)
    perfect = 20.0 * np.eye(K, dtype=np.float32)[np.where(labels == IGNORE, 0, labels)]
    assert float(DiceLoss(K)(labels, perfect)) < 1e-3


def test_config_round_trip_and_registered_names():
    for loss in (
        WeightedSparseCrossEntropy(K, class_weights=np.array(CLASS_WEIGHTS), ignore_index=0,
                                   from_logits=False, reduction="sum"),
        DiceLoss(K, ignore_index=None, smooth=0.5),
    ):
        serialized = keras.losses.serialize(loss)
        assert serialized["registered_name"] == f"edgeseg>{type(loss).__name__}"
        restored = keras.losses.deserialize(serialized)
        assert type(restored) is type(loss)
        assert restored.get_config() == loss.get_config()
    assert WeightedSparseCrossEntropy(K, CLASS_WEIGHTS).get_config()["class_weights"] == CLASS_WEIGHTS


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="one weight per class"):
        WeightedSparseCrossEntropy(K, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        WeightedSparseCrossEntropy(K, class_weights=[1.0, -2.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="not one-hot"):
        WeightedSparseCrossEntropy(K)(np.zeros((1, 2, 2, K)), np.zeros((1, 2, 2, K)))


def test_fit_and_evaluate_with_pixel_weight_maps(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, K, size=(4, 6, 6))
    y[:, :2, :2] = IGNORE
    weight_maps = rng.uniform(0.1, 5.0, size=(4, 6, 6)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(K, 1)])
    loss = WeightedSparseCrossEntropy(K, class_weights=CLASS_WEIGHTS)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)

    expected = numpy_weighted_ce(model.predict(x, verbose=0), y, CLASS_WEIGHTS, weight_maps)
    evaluated = model.evaluate(x, y, sample_weight=weight_maps, batch_size=4, verbose=0)
    assert evaluated == pytest.approx(expected, rel=1e-5)

    dataset = tf.data.Dataset.from_tensor_slices((x, y, weight_maps)).batch(4)
    history = model.fit(dataset, epochs=2, shuffle=False, verbose=0)
    # One batch per epoch: the first logged loss is the loss before the first update.
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert history.history["loss"][1] < history.history["loss"][0]

    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(restored.loss, WeightedSparseCrossEntropy)
    assert restored.loss.class_weights == CLASS_WEIGHTS


JAX_LOSS_SCRIPT = """
import json, sys
import numpy as np
import keras
from edgeseg.train.losses import DiceLoss, WeightedSparseCrossEntropy
data = np.load(sys.argv[1])
k = int(data["num_classes"])
ce = WeightedSparseCrossEntropy(k, class_weights=data["class_weights"])
print(json.dumps({
    "backend": keras.backend.backend(),
    "ce": float(ce(data["labels"], data["logits"], data["pixel_weights"])),
    "dice": float(DiceLoss(k)(data["labels"], data["logits"], data["pixel_weights"])),
}))
"""


def test_losses_agree_on_jax_backend(tmp_path):
    pytest.importorskip("jax", reason="the JAX backend check needs jax (pip install 'edgeseg[jax]')")
    logits, labels, pixel_weights = make_inputs(seed=8)
    path = tmp_path / "inputs.npz"
    np.savez(path, logits=logits, labels=labels, pixel_weights=pixel_weights,
             class_weights=np.asarray(CLASS_WEIGHTS), num_classes=K)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", JAX_LOSS_SCRIPT, str(path)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    ce = WeightedSparseCrossEntropy(K, class_weights=CLASS_WEIGHTS)
    assert result["ce"] == pytest.approx(float(ce(labels, logits, pixel_weights)), rel=1e-5)
    assert result["dice"] == pytest.approx(float(DiceLoss(K)(labels, logits, pixel_weights)),
                                           rel=1e-5)
