"""edgeseg.metrics against per-class counts written from the definitions, and the Keras metric."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeseg.data.cityscapes import CITYSCAPES_CLASSES
from edgeseg.metrics import (
    CityscapesScores,
    ConfusionMatrix,
    confusion_matrix,
    scores_from_confusion,
)

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
    from edgeseg.train.keras_metrics import MeanIoUMetric

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


# --- the Cityscapes benchmark's scores, from their definitions ----------------------------------

# labelId of each trainId, and the category of each trainId (cityscapesScripts helpers/labels.py).
CS_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
CS_CATEGORY = ["flat"] * 2 + ["construction"] * 3 + ["object"] * 3 + ["nature"] * 2 + ["sky"] \
    + ["human"] * 2 + ["vehicle"] * 6


def cityscapes_scene(rng, height=24, width=40):
    """trainId labels (255 void) and instanceIds of one image, drawn as rectangles."""
    labels = rng.integers(0, 11, (height, width))  # stuff classes
    labels[rng.random((height, width)) < 0.1] = IGNORE
    instance_ids = np.array(CS_LABEL_IDS + [0] * 237)[labels]  # void stored as 0
    for k, train in enumerate(rng.integers(11, 20, 10)):  # 19: a caravan, not scored
        h, w = rng.integers(1, 12, 2)
        y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        label_id = 29 if train == 19 else CS_LABEL_IDS[train]
        labels[y:y + h, x:x + w] = IGNORE if train == 19 else train
        instance_ids[y:y + h, x:x + w] = label_id * 1000 + k
    preds = np.where(rng.random(labels.shape) < 0.6, np.where(labels == IGNORE, 0, labels),
                     rng.integers(0, 19, labels.shape))
    return labels, preds, instance_ids


def cityscapes_reference(images):
    """The four scores by boolean masks and a loop over instances, from the definitions."""
    from edgeseg.metrics import CITYSCAPES_AVERAGE_INSTANCE_SIZE as average_size

    names = list(CITYSCAPES_CLASSES)
    labels = np.concatenate([im[0].ravel() for im in images])
    preds = np.concatenate([im[1].ravel() for im in images])
    valid = labels != IGNORE

    def iou(is_gt, is_pred, tp=None, fn=None):
        tp = np.sum(is_gt & is_pred) if tp is None else tp
        fn = np.sum(is_gt & ~is_pred) if fn is None else fn
        fp = np.sum(valid & ~is_gt & is_pred)
        return tp / (tp + fp + fn) if tp + fp + fn else math.nan

    def weighted(member):  # member(trainId) -> bool; weighted TP and FN over all instances
        tp = fn = 0.0
        for _, pred, instance_ids in images:
            for value in np.unique(instance_ids[instance_ids > 1000]):
                label_id = value // 1000
                if label_id not in CS_LABEL_IDS:
                    continue
                train = CS_LABEL_IDS.index(label_id)
                if not member(train):
                    continue
                mask = instance_ids == value
                weight = average_size[names[train]] / mask.sum()
                hits = np.sum(np.isin(pred[mask], [c for c in range(19) if member(c)]))
                tp += weight * hits
                fn += weight * (mask.sum() - hits)
        return tp, fn

    per_class_iou = {n: iou(labels == c, preds == c) for c, n in enumerate(names)}
    per_class_iiou = {}
    for c in range(11, 19):
        tp, fn = weighted(lambda t, c=c: t == c)
        per_class_iiou[names[c]] = iou(labels == c, preds == c, tp, fn)
    cat = np.array(CS_CATEGORY)
    categories = ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
    gt_cat = np.where(valid, cat[np.minimum(labels, 18)], "void")
    per_category_iou = {k: iou(gt_cat == k, cat[preds] == k) for k in categories}
    per_category_iiou = {}
    for k in ("human", "vehicle"):
        tp, fn = weighted(lambda t, k=k: CS_CATEGORY[t] == k)
        per_category_iiou[k] = iou(gt_cat == k, cat[preds] == k, tp, fn)
    return {
        "class_iou": np.nanmean(list(per_class_iou.values())),
        "class_iiou": np.nanmean(list(per_class_iiou.values())),
        "category_iou": np.nanmean(list(per_category_iou.values())),
        "category_iiou": np.nanmean(list(per_category_iiou.values())),
        "per_class_iou": per_class_iou, "per_class_iiou": per_class_iiou,
        "per_category_iou": per_category_iou, "per_category_iiou": per_category_iiou,
    }


def test_cityscapes_scores_match_their_definitions():
    rng = np.random.default_rng(3)
    images = [cityscapes_scene(rng) for _ in range(3)]
    scores = CityscapesScores()
    for labels, preds, instance_ids in images:
        scores.update(labels, preds, instance_ids)
    result = scores.result()
    expected = cityscapes_reference(images)

    assert list(result) == list(expected)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert list(result[key]) == list(value), key
            np.testing.assert_allclose(list(result[key].values()), list(value.values()),
                                       rtol=1e-12, equal_nan=True, err_msg=key)
        else:
            assert result[key] == pytest.approx(value, rel=1e-12), key
    assert 0 < result["class_iiou"] < 1 and result["class_iiou"] != result["class_iou"]
    # The class IoU is the confusion matrix's mean IoU.
    cm = ConfusionMatrix(19)
    for labels, preds, _ in images:
        cm.update(labels, preds)
    assert result["class_iou"] == pytest.approx(cm.result()["miou"])


def test_cityscapes_iiou_weighs_small_instances_up():
    # Two cars: a 100-pixel one fully found, a 4-pixel one missed. Unweighted, the car IoU is
    # 100 / 104; weighted by 12794 / size, the small car counts as much as the large one.
    labels = np.full((20, 20), 0)
    instance_ids = np.full((20, 20), 7)
    labels[:10, :10] = 13
    instance_ids[:10, :10] = 26000
    labels[15:17, 15:17] = 13
    instance_ids[15:17, 15:17] = 26001
    preds = np.where(instance_ids == 26000, 13, 0)
    scores = CityscapesScores()
    scores.update(labels, preds, instance_ids)
    result = scores.result()
    assert result["per_class_iou"]["car"] == pytest.approx(100 / 104)
    assert result["per_class_iiou"]["car"] == pytest.approx(0.5)
    assert result["per_category_iiou"]["vehicle"] == pytest.approx(0.5)
    assert math.isnan(result["per_class_iiou"]["person"])


def test_cityscapes_scores_without_instance_ids_leave_iiou_out():
    rng = np.random.default_rng(4)
    labels, preds, instance_ids = cityscapes_scene(rng)
    scores = CityscapesScores()
    scores.update(labels, preds, instance_ids)
    scores.update(labels, preds)  # an image without its *_instanceIds.png
    result = scores.result()
    assert math.isnan(result["class_iiou"]) and math.isnan(result["category_iiou"])
    assert not math.isnan(result["class_iou"]) and not math.isnan(result["category_iou"])


def test_cityscapes_scores_reject_bad_instance_ids():
    labels = np.zeros((4, 4), dtype=np.uint8)
    scores = CityscapesScores()
    with pytest.raises(ValueError, match=r"7001 is an instance of 'road'.*only person"):
        scores.update(labels, labels, np.full((4, 4), 7001))
    with pytest.raises(ValueError, match=r"instance id 40001 names labelId 40"):
        scores.update(labels, labels, np.full((4, 4), 40001))
    with pytest.raises(ValueError, match=r"same shape"):
        scores.update(labels, labels, np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"preds hold class 19"):
        scores.update(labels, np.full((4, 4), 19), np.zeros((4, 4)))
    assert scores.num_images == 0 and scores.confusion.confusion.sum() == 0
