"""Panoptic quality against hand-computed cases and a per-pixel reference from the definition."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from edgeseg.panoptic import PanopticQuality, panoptic_counts, panoptic_quality

V = 255  # void
SKY, CAR, ROAD = 0, 1, 2  # sky and road are stuff, car a thing
THINGS = (CAR,)

# Image 1. Ground truth: sky (6 px), car A (instance 1, 6 px), car B (instance 2, 4 px),
# road (6 px), and two void pixels in column 3.
GT1_SEM = np.array(
    [
        [SKY, SKY, SKY, SKY, SKY, SKY],
        [CAR, CAR, CAR, V, CAR, CAR],
        [CAR, CAR, CAR, V, CAR, CAR],
        [ROAD, ROAD, ROAD, ROAD, ROAD, ROAD],
    ]
)
GT1_INST = np.array(
    [
        [0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 2, 2],
        [1, 1, 1, 0, 2, 2],
        [0, 0, 0, 0, 0, 0],
    ]
)
# Prediction: sky loses (0, 5) to road; one car (instance 7) covers car A and the void column;
# car B is predicted as road.
PRED1_SEM = np.array(
    [
        [SKY, SKY, SKY, SKY, SKY, ROAD],
        [CAR, CAR, CAR, CAR, ROAD, ROAD],
        [CAR, CAR, CAR, CAR, ROAD, ROAD],
        [ROAD, ROAD, ROAD, ROAD, ROAD, ROAD],
    ]
)
PRED1_INST = np.where(PRED1_SEM == CAR, 7, 0)
# By hand:
#   sky:  gt 6 px, pred 5 px, intersection 5, union 6 + 5 - 5 = 6, IoU 5/6 > 0.5: TP.
#   car:  car A 6 px vs the predicted car, 8 px of which 2 on void: intersection 6,
#         union 6 + 8 - 6 - 2 (void) = 6, IoU 1: TP. Car B is matched by nothing: FN.
#   road: gt 6 px, pred 1 + 4 + 6 = 11 px, intersection 6, union 11, IoU 6/11 > 0.5: TP.
#   per class PQ / SQ / RQ: sky 5/6, 5/6, 1; car (1 TP, 1 FN) 2/3, 1, 2/3; road 6/11, 6/11, 1.
IMAGE1 = {
    "tp": [1, 1, 1],
    "fp": [0, 0, 0],
    "fn": [0, 1, 0],
    "iou_sum": [5 / 6, 1.0, 6 / 11],
    "pq": (5 / 6 + 2 / 3 + 6 / 11) / 3,
    "sq": (5 / 6 + 1 + 6 / 11) / 3,
    "rq": (1 + 2 / 3 + 1) / 3,
    "things": {"pq": 2 / 3, "sq": 1.0, "rq": 2 / 3, "n": 1},
    "stuff": {"pq": (5 / 6 + 6 / 11) / 2, "sq": (5 / 6 + 6 / 11) / 2, "rq": 1.0, "n": 2},
}

# Image 2, for void: rows 1 and 2 of the ground truth are void.
GT2_SEM = np.array(
    [
        [SKY, SKY, SKY, SKY],
        [V, V, V, V],
        [V, V, V, V],
        [ROAD, ROAD, ROAD, ROAD],
    ]
)
GT2_INST = np.zeros_like(GT2_SEM)
PRED2_SEM = np.array(
    [
        [SKY, SKY, SKY, SKY],
        [CAR, CAR, CAR, CAR],
        [CAR, ROAD, ROAD, ROAD],
        [CAR, CAR, ROAD, ROAD],
    ]
)
PRED2_INST = np.array(
    [
        [0, 0, 0, 0],
        [1, 1, 1, 1],
        [2, 0, 0, 0],
        [2, 2, 0, 0],
    ]
)
# By hand:
#   sky: IoU 1: TP.
#   car 1: 4 px, all on void: unmatched but not a FP (more than half void).
#   car 2: 3 px, 1 on void (1/3): unmatched, a FP.
#   road: pred 5 px, 3 on void; intersection 2, union 4 + 5 - 2 - 3 = 4, IoU 2/4 = 0.5, not
#         above 0.5: no match. The gt road is a FN; the predicted road is 3/5 void: not a FP.
#   per class: sky 1, 1, 1; car (1 FP) 0, 0, 0; road (1 FN) 0, 0, 0.
IMAGE2 = {
    "tp": [1, 0, 0],
    "fp": [0, 1, 0],
    "fn": [0, 0, 1],
    "iou_sum": [1.0, 0.0, 0.0],
    "pq": 1 / 3,
    "sq": 1 / 3,
    "rq": 1 / 3,
    "things": {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1},
    "stuff": {"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2},
}


def assert_scores(result, expected):
    for name in ("pq", "sq", "rq"):
        assert result[name] == pytest.approx(expected[name], abs=1e-12), name
    for group in ("things", "stuff"):
        for name, value in expected[group].items():
            assert result[group][name] == pytest.approx(value, abs=1e-12), (group, name)
    for name in ("tp", "fp", "fn"):
        assert result["per_class"][name] == expected[name], name
    np.testing.assert_allclose(result["per_class"]["iou_sum"], expected["iou_sum"], atol=1e-12)


@pytest.mark.parametrize(
    ("maps", "expected"),
    [
        ((GT1_SEM, GT1_INST, PRED1_SEM, PRED1_INST), IMAGE1),
        ((GT2_SEM, GT2_INST, PRED2_SEM, PRED2_INST), IMAGE2),
    ],
    ids=["matching", "void"],
)
def test_hand_computed_cases(maps, expected):
    assert_scores(panoptic_quality(*maps, num_classes=3, thing_classes=THINGS), expected)


def test_counts_add_up_over_images():
    metric = PanopticQuality(num_classes=3, thing_classes=THINGS)
    metric.update(GT1_SEM, GT1_INST, PRED1_SEM, PRED1_INST)
    metric.update(GT2_SEM, GT2_INST, PRED2_SEM, PRED2_INST)
    result = metric.result()
    # sky: 2 TP (5/6 + 1); car: 1 TP (1), 1 FP, 1 FN; road: 1 TP (6/11), 1 FN.
    assert result["per_class"]["tp"] == [2, 1, 1]
    assert result["per_class"]["fp"] == [0, 1, 0]
    assert result["per_class"]["fn"] == [0, 1, 1]
    want_pq = [(5 / 6 + 1) / 2, 1 / 2, (6 / 11) / 1.5]
    np.testing.assert_allclose(result["per_class"]["pq"], want_pq, atol=1e-12)
    assert result["pq"] == pytest.approx(np.mean(want_pq), abs=1e-12)
    metric.reset()
    metric.update(GT1_SEM, GT1_INST, PRED1_SEM, PRED1_INST)
    assert_scores(metric.result(), IMAGE1)


def test_stuff_ignores_instance_ids_and_absent_classes_are_nan():
    gt = np.array([[0, 0], [0, 0]])
    pred_instance = np.array([[3, 4], [5, 6]])  # one stuff segment whatever the instance ids
    result = panoptic_quality(gt, np.zeros_like(gt), gt, pred_instance, 3, thing_classes=[2])
    assert result["pq"] == 1.0 and result["n"] == 1
    assert math.isnan(result["per_class"]["pq"][1]) and math.isnan(result["things"]["pq"])
    assert result["things"]["n"] == 0


def test_thing_instances_are_separate_segments():
    gt = np.array([[1, 1, 1, 1]])
    gt_instance = np.array([[1, 1, 2, 2]])
    merged = panoptic_quality(gt, gt_instance, gt, np.ones_like(gt), 2, thing_classes=[1])
    # The merged prediction has IoU 2/4 with each: no TP, 2 FN, 1 FP; PQ 0.
    assert merged["per_class"]["fn"][1] == 2 and merged["per_class"]["fp"][1] == 1
    assert merged["pq"] == 0.0


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="holds class 5 but there are 3 classes"):
        panoptic_quality(np.array([[5]]), np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)),
                         3, THINGS)
    with pytest.raises(ValueError, match="same shape"):
        panoptic_quality(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((2, 3)),
                         3, THINGS)
    with pytest.raises(ValueError, match="thing_classes"):
        PanopticQuality(3, thing_classes=[3])


def reference_counts(gt_sem, gt_inst, pred_sem, pred_inst, num_classes, things, void):
    """The definition, segment by segment with boolean masks."""

    def segments(sem, inst):
        found = {}
        for c in range(num_classes):
            if c in things:
                for i in np.unique(inst[sem == c]):
                    found[(c, int(i))] = (sem == c) & (inst == i)
            elif (sem == c).any():
                found[(c, 0)] = sem == c
        return found

    void_mask = gt_sem == void
    gt_segments = segments(gt_sem, gt_inst)
    pred_segments = segments(pred_sem, pred_inst)
    tp, fp, fn, iou_sum = (np.zeros(num_classes) for _ in range(4))
    matched_pred = set()
    for (c, _), gt_mask in gt_segments.items():
        match = None
        for (pc, pi), pred_mask in pred_segments.items():
            if pc != c:
                continue
            intersection = (gt_mask & pred_mask).sum()
            union = (gt_mask | (pred_mask & ~void_mask)).sum()
            if union and intersection / union > 0.5:
                match = ((pc, pi), intersection / union)
        if match is None:
            fn[c] += 1
        else:
            tp[c] += 1
            iou_sum[c] += match[1]
            matched_pred.add(match[0])
    for key, pred_mask in pred_segments.items():
        if key not in matched_pred and (pred_mask & void_mask).sum() / pred_mask.sum() <= 0.5:
            fp[key[0]] += 1
    return tp, fp, fn, iou_sum


def random_panoptic_map(rng, height, width, num_classes, void):
    """Rectangles of random classes and instance ids painted over a random stuff background."""
    sem = np.full((height, width), rng.integers(0, num_classes))
    inst = np.zeros((height, width), np.int64)
    for _ in range(rng.integers(3, 8)):
        y, x = rng.integers(0, height - 2), rng.integers(0, width - 2)
        h, w = rng.integers(2, 7), rng.integers(2, 7)
        value = void if rng.random() < 0.15 else rng.integers(0, num_classes)
        sem[y : y + h, x : x + w] = value
        inst[y : y + h, x : x + w] = rng.integers(1, 4)
    return sem, inst


def perturbed(rng, sem, inst, num_classes, void):
    """A prediction: the ground truth with a shifted block, noise and renumbered instances."""
    pred_sem = np.roll(sem, rng.integers(-1, 2), axis=int(rng.integers(0, 2))).copy()
    pred_inst = inst * 5 + 1
    noise = rng.random(sem.shape) < 0.1
    pred_sem[noise] = rng.integers(0, num_classes, noise.sum())
    pred_sem[pred_sem == void] = rng.integers(0, num_classes)
    return pred_sem, pred_inst


def test_random_maps_match_the_reference():
    rng = np.random.default_rng(0)
    num_classes, things, void = 5, (1, 3), V
    metric = PanopticQuality(num_classes, things)
    totals = [np.zeros(num_classes) for _ in range(4)]
    for _ in range(25):
        gt_sem, gt_inst = random_panoptic_map(rng, 12, 14, num_classes, void)
        pred_sem, pred_inst = perturbed(rng, gt_sem, gt_inst, num_classes, void)
        if rng.random() < 0.3:
            pred_sem[rng.random(pred_sem.shape) < 0.1] = void  # unlabelled predicted pixels
        want = reference_counts(gt_sem, gt_inst, pred_sem, pred_inst, num_classes, things, void)
        got = panoptic_counts(gt_sem, gt_inst, pred_sem, pred_inst, num_classes, things, void)
        for name, value in zip(("tp", "fp", "fn", "iou_sum"), want, strict=True):
            np.testing.assert_allclose(got[name], value, atol=1e-12, err_msg=name)
        for total, value in zip(totals, want, strict=True):
            total += value
        metric.update(gt_sem, gt_inst, pred_sem, pred_inst)
    tp, fp, fn, iou_sum = totals
    assert tp.sum() > 10 and fp.sum() > 5 and fn.sum() > 5  # the check covers all three
    present = tp + fp + fn > 0
    pq = iou_sum[present] / (tp + 0.5 * fp + 0.5 * fn)[present]
    sq = np.where(tp > 0, iou_sum / np.maximum(tp, 1), 0)[present]
    rq = tp[present] / (tp + 0.5 * fp + 0.5 * fn)[present]
    result = metric.result()
    assert result["pq"] == pytest.approx(pq.mean(), abs=1e-12)
    assert result["sq"] == pytest.approx(sq.mean(), abs=1e-12)
    assert result["rq"] == pytest.approx(rq.mean(), abs=1e-12)
    is_thing = np.isin(np.arange(num_classes), things)[present]
    assert result["things"]["pq"] == pytest.approx(pq[is_thing].mean(), abs=1e-12)
    assert result["stuff"]["pq"] == pytest.approx(pq[~is_thing].mean(), abs=1e-12)


def test_import_needs_no_tensorflow():
    code = (
        "import sys, edgeseg.panoptic; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
