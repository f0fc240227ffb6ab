"""edgeseg.metrics against per-class counts written from the definitions, and the Keras metric."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeseg.metrics import ConfusionMatrix, confusion_matrix, scores_from_confusion

IGNORE = 255
K = 5


def random_batch(rng, shape=(3, 7, 9), num_classes=K, ignore_fraction=0.2, absent=()):
    labels = rng.integers(0, num_classes, size=shape)
    preds = rng.integers(0, num_classes, size=shape)
    for cls in absent:
        labels[labels == cls] = (cls + 1) % num_classes
        preds[preds == cls] = (cls + 1) % num_classes
    labels[rng.random(shape) < ignore_fraction] = IGNORE
    return labels, preds


def reference_scores(labels, preds, num_classes):
    """Scores by per-class boolean masks, straight from the definitions."""
    valid = labels != IGNORE
    iou, acc = [], []
    for cls in range(num_classes):
        is_gt = (labels == cls) & valid
        is_pred = (preds == cls) & valid
        tp = np.sum(is_gt & is_pred)
        fp = np.sum(~is_gt & is_pred)
        fn = np.sum(is_gt & ~is_pred)
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        acc.append(tp / (tp + fn) if tp + fn else math.nan)
    present_iou = [v for v in iou if not math.isnan(v)]
    present_acc = [v for v in acc if not math.isnan(v)]
    return {
        "per_class_iou": iou,
        "miou": sum(present_iou) / len(present_iou),
        "per_class_acc": acc,
        "class_avg_acc": sum(present_acc) / len(present_acc),
        "global_acc": np.sum((labels == preds) & valid) / np.sum(valid),
    }


def assert_scores_equal(scores, expected):
    for key in ("per_class_iou", "per_class_acc"):
        np.testing.assert_allclose(scores[key], expected[key], rtol=1e-12, equal_nan=True)
    for key in ("miou", "class_avg_acc", "global_acc"):
        assert scores[key] == pytest.approx(expected[key], rel=1e-12), key


def test_confusion_matrix_counts_pairs_and_skips_ignore():
    rng = np.random.default_rng(0)
    labels, preds = random_batch(rng)
    expected = np.zeros((K, K), dtype=np.int64)
    for truth, pred in zip(labels.ravel(), preds.ravel(), strict=True):
        if truth != IGNORE:
            expected[truth, pred] += 1
    cm = confusion_matrix(labels, preds, K)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == np.sum(labels != IGNORE)


def test_confusion_matrix_custom_ignore_index_and_none():
    labels = np.array([[0, 1], [2, 0]])
    preds = np.array([[0, 2], [2, 1]])
    np.testing.assert_array_equal(
        confusion_matrix(labels, preds, 3, ignore_index=0), [[0, 0, 0], [0, 0, 1], [0, 0, 1]]
    )
    assert confusion_matrix(labels, preds, 3, ignore_index=None).sum() == 4


def test_confusion_matrix_rejects_bad_values():
    labels = np.zeros((2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="preds hold class 5 but there are 3 classes"):
        confusion_matrix(labels, np.full((2, 2), 5), 3)
    with pytest.raises(ValueError, match="labels hold value 7"):
        confusion_matrix(np.full((2, 2), 7), labels, 3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(labels, np.zeros((2, 3)), 3)
    # An out-of-range prediction at an ignored pixel is not scored.
    assert confusion_matrix(np.array([IGNORE]), np.array([9]), 3).sum() == 0


def test_scores_match_definitions_with_absent_class():
    rng = np.random.default_rng(1)
    labels, preds = random_batch(rng, absent=(3,))
    scores = scores_from_confusion(confusion_matrix(labels, preds, K))
    expected = reference_scores(labels, preds, K)
    assert math.isnan(scores["per_class_iou"][3]) and math.isnan(scores["per_class_acc"][3])
    assert_scores_equal(scores, expected)


def test_class_only_predicted_has_zero_iou_and_no_accuracy():
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 2, 1, 1])
    scores = scores_from_confusion(confusion_matrix(labels, preds, 3))
    assert scores["per_class_iou"] == [0.5, 1.0, 0.0]
    assert math.isnan(scores["per_class_acc"][2])
    assert scores["miou"] == pytest.approx(0.5)
    assert scores["class_avg_acc"] == pytest.approx(0.75)
    assert scores["global_acc"] == pytest.approx(0.75)


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(2)
    batches = [random_batch(rng, shape=(2, 5, 6)) for _ in range(4)]
    streaming = ConfusionMatrix(K)
    for labels, preds in batches:
        streaming.update(labels, preds)
    all_labels = np.concatenate([b[0] for b in batches])
    all_preds = np.concatenate([b[1] for b in batches])
    one_shot = scores_from_confusion(confusion_matrix(all_labels, all_preds, K))
    result = streaming.result()
    assert result["confusion"] == one_shot["confusion"]
    assert_scores_equal(result, reference_scores(all_labels, all_preds, K))
    streaming.reset()
    assert streaming.result()["num_pixels"] == 0
    assert math.isnan(streaming.result()["miou"])


def test_format_table_lists_classes_and_means():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]))
    table = cm.format_table(["sky", "road", "car"])
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "accuracy", "pixels"]
    assert lines[2].split() == ["sky", "50.0", "50.0", "2"]
    assert lines[3].split() == ["road", "100.0", "100.0", "2"]
    assert lines[4].split() == ["car", "0.0", "-", "0"]
    assert "50.0" in lines[6] and "75.0" in lines[6]  # class IoU, class average accuracy
    assert lines[7].split()[-1] == "75.0"
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        cm.format_table(["a", "b"])


def test_import_does_not_load_tensorflow_or_keras():
    code = (
        "import sys, edgeseg.metrics, edgeseg.train, edgeseg.train.weights; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the Keras metric -------------------------------------------------------------------------


def logits_for(rng, preds, num_classes=K):
    """Random logits whose argmax is ``preds``."""
    logits = rng.normal(size=(*preds.shape, num_classes)).astype(np.float32)
    np.put_along_axis(logits, preds[..., None], 10.0, axis=-1)
    return logits


def test_keras_metric_equals_numpy_over_batches():
    from edgeseg.metrics import MeanIoUMetric

    rng = np.random.default_rng(3)
    metric = MeanIoUMetric(num_classes=K)
    reference = ConfusionMatrix(K)
    for i in range(3):
        labels, preds = random_batch(rng, shape=(2, 6, 5), absent=(4,) if i < 2 else ())
        labels_in = labels[..., None] if i == 1 else labels  # (N, H, W, 1) is accepted too
        metric.update_state(labels_in, logits_for(rng, preds))
        reference.update(labels, preds)
        assert float(metric.result()) == pytest.approx(reference.result()["miou"], rel=1e-6)
    np.testing.assert_array_equal(np.asarray(metric.confusion.numpy()), reference.confusion)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_keras_metric_sample_weight_and_out_of_range_labels():
    from edgeseg.train.keras_metrics import MeanIoUMetric

    labels = np.array([[[0, 1], [1, 7]]])  # 7 is neither a class nor the ignore value
    preds = np.array([[[0, 1], [0, 1]]])
    weights = np.array([[[1.0, 2.0], [0.0, 5.0]]])
    metric = MeanIoUMetric(num_classes=2)
    metric.update_state(labels, preds, sample_weight=weights)
    # Counted: (0, 0) weight 1, (1, 1) weight 2; the wrong pixel has weight 0, label 7 is skipped.
    np.testing.assert_array_equal(metric.confusion.numpy(), [[1.0, 0.0], [0.0, 2.0]])
    assert float(metric.result()) == pytest.approx(1.0)


def test_keras_metric_config_round_trip_and_compile():
    import keras

    from edgeseg.train.keras_metrics import MeanIoUMetric

    metric = MeanIoUMetric(num_classes=3, ignore_index=0, name="miou")
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(restored, MeanIoUMetric)
    assert restored.get_config() == metric.get_config()

    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(3, 1)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[MeanIoUMetric(3)])
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
    y = rng.integers(0, 3, size=(2, 4, 4))
    result = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    expected = scores_from_confusion(
        confusion_matrix(y, np.argmax(model.predict(x, verbose=0), axis=-1), 3)
    )["miou"]
    assert result["mean_iou"] == pytest.approx(expected, rel=1e-6)


JAX_METRIC_SCRIPT = """
import json, sys
import numpy as np
import keras
from edgeseg.train.keras_metrics import MeanIoUMetric
data = np.load(sys.argv[1])
metric = MeanIoUMetric(num_classes=int(data["num_classes"]))
for labels, logits in zip(data["labels"], data["logits"], strict=True):
    metric.update_state(labels, logits)
print(json.dumps({"backend": keras.backend.backend(), "miou": float(metric.result())}))
"""


def test_keras_metric_on_jax_backend(tmp_path):
    pytest.importorskip("jax", reason="the JAX backend check needs jax (pip install 'edgeseg[jax]')")
    rng = np.random.default_rng(5)
    batches = [random_batch(rng, shape=(2, 4, 5)) for _ in range(2)]
    reference = ConfusionMatrix(K)
    for labels, preds in batches:
        reference.update(labels, preds)
    np.savez(
        tmp_path / "batches.npz",
        labels=np.stack([b[0] for b in batches]),
        logits=np.stack([logits_for(rng, b[1]) for b in batches]),
        num_classes=K,
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", JAX_METRIC_SCRIPT, str(tmp_path / "batches.npz")],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    assert result["miou"] == pytest.approx(reference.result()["miou"], rel=1e-6)
