"""Mask R-CNN training targets against hand-worked cases and the ops they invert."""

import numpy as np
import pytest
from keras import ops as kops

from edgeseg.models.maskrcnn import ops
from edgeseg.models.maskrcnn.targets import (
    box_iou_numpy,
    crop_and_resize_masks,
    detection_targets,
    encode_boxes_numpy,
    mini_masks,
    rpn_targets,
)

GT_A = (0.1, 0.1, 0.3, 0.3)  # area 0.04
GT_B = (0.5, 0.0, 0.7, 0.4)  # area 0.08
# Anchor, IoU with its best GT and the label it must get (positive 0.7, negative 0.3).
HAND_ANCHORS = [
    ((0.1, 0.1, 0.3, 0.3), 1.0, 1),  # GT A itself
    ((0.1, 0.1, 0.3, 0.32), 0.04 / 0.044, 1),  # above 0.7
    ((0.1, 0.1, 0.3, 0.2), 0.5, 0),  # between the thresholds: neutral
    ((0.6, 0.6, 0.8, 0.8), 0.0, -1),
    ((0.1, 0.1, 0.3, 0.15), 0.25, -1),  # below 0.3
    ((0.5, 0.0, 0.7, 0.2), 0.5, 1),  # GT B's best anchor: positive below 0.7
    ((0.5, 0.0, 0.7, 0.1), 0.25, -1),
    ((0.9, 0.9, 1.0, 1.0), 0.0, -1),
]


def random_boxes(rng, count):
    corners = rng.uniform(0, 1, size=(count, 2, 2))
    low, high = corners.min(axis=1), corners.max(axis=1) + 0.02
    return np.concatenate([low, high], axis=1).astype(np.float32)


def test_numpy_twins_match_ops():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 30), random_boxes(rng, 7)
    np.testing.assert_allclose(
        box_iou_numpy(a, b), kops.convert_to_numpy(ops.box_iou(a, b)), atol=1e-6
    )
    np.testing.assert_allclose(
        encode_boxes_numpy(a[:7], b), kops.convert_to_numpy(ops.encode_boxes(a[:7], b)),
        rtol=1e-5, atol=1e-5,
    )


def test_rpn_targets_hand_built_case():
    anchors = np.array([a for a, _, _ in HAND_ANCHORS], np.float32)
    expected_iou = np.array([iou for _, iou, _ in HAND_ANCHORS])
    gt = np.array([GT_A, GT_B, (0, 0, 0, 0)], np.float32)  # the last row is padding
    np.testing.assert_allclose(box_iou_numpy(anchors, gt[:2]).max(axis=1), expected_iou,
                               atol=1e-6)
    targets = rpn_targets(anchors, gt, rng=0)
    np.testing.assert_array_equal(targets.match, [label for _, _, label in HAND_ANCHORS])
    assert targets.match.dtype == np.int32 and targets.deltas.shape == (len(anchors), 4)

    # Positive deltas decode back to their GT box; all other rows are zero.
    decoded = kops.convert_to_numpy(ops.decode_boxes(targets.deltas, anchors))
    np.testing.assert_allclose(decoded[[0, 1]], [GT_A, GT_A], atol=1e-6)
    np.testing.assert_allclose(decoded[5], GT_B, atol=1e-6)
    assert np.all(targets.deltas[targets.match != 1] == 0)


def test_rpn_best_anchor_rule_needs_some_overlap():
    anchors = np.array([a for a, _, _ in HAND_ANCHORS], np.float32)
    # A GT that no anchor touches makes no positive (matterport would make all positive).
    targets = rpn_targets(anchors, [(0.4, 0.85, 0.45, 0.88)], rng=0)
    assert np.all(targets.match == -1)
    assert np.all(rpn_targets(anchors, np.zeros((0, 4)), rng=0).match == -1)


def test_rpn_crowd_boxes_block_negatives_and_make_no_positives():
    anchors = np.array([a for a, _, _ in HAND_ANCHORS], np.float32)
    gt = np.array([GT_A, (0.55, 0.55, 0.85, 0.85)], np.float32)
    targets = rpn_targets(anchors, gt, rng=0, gt_class_ids=[2, -1])
    # Anchor 3 overlaps the crowd box: neutral instead of negative. Anchor 5 (B's best) is
    # negative now that B is gone.
    np.testing.assert_array_equal(targets.match, [1, 1, 0, 0, -1, -1, -1, -1])


def test_rpn_sampling_is_balanced_and_a_subset():
    image = 64
    anchors = ops.generate_anchors(image, (8, 16, 32), (0.5, 1, 2), (4, 8, 16))
    gt = ops.normalize_boxes([(4, 4, 30, 34), (30, 20, 60, 62), (10, 40, 26, 56)], image)
    # A lower positive IoU, so that there are more positives than half the sample.
    kwargs = {"positive_iou": 0.5, "negative_iou": 0.3}
    full = rpn_targets(anchors, gt, rpn_train_anchors=10**6, rng=0, **kwargs)
    num_positive = int(np.sum(full.match == 1))
    assert num_positive > 8
    sampled = rpn_targets(anchors, gt, rpn_train_anchors=16, rng=1, **kwargs)
    assert np.sum(sampled.match == 1) == 8  # half of 16
    assert np.sum(sampled.match == -1) == 8
    assert np.all(full.match[sampled.match == 1] == 1)
    assert np.all(full.match[sampled.match == -1] == -1)
    np.testing.assert_array_equal(sampled.deltas[sampled.match == 1],
                                  full.deltas[sampled.match == 1])
    np.testing.assert_array_equal(
        rpn_targets(anchors, gt, rpn_train_anchors=16, rng=1, **kwargs).match, sampled.match
    )
    # Few positives: negatives fill up to the total.
    few = rpn_targets(anchors, gt, rpn_train_anchors=2 * num_positive + 10, rng=2, **kwargs)
    assert np.sum(few.match == 1) == num_positive
    assert np.sum(few.match == -1) == num_positive + 10


def test_rpn_targets_reject_bad_thresholds():
    with pytest.raises(ValueError, match="negative_iou <= positive_iou"):
        rpn_targets(np.zeros((1, 4)), np.zeros((0, 4)), positive_iou=0.3, negative_iou=0.7)


# ------------------------------------------------------------------------------ head targets

IMAGE = 64


def rectangle_mask():
    mask = np.zeros((IMAGE, IMAGE), np.uint8)
    mask[16:40, 8:48] = 1  # rows 16-39, columns 8-47
    return mask


def jittered(rng, box, count, scale):
    return np.clip(box + rng.normal(scale=scale, size=(count, 4)), 0, 1).astype(np.float32)


def test_detection_targets_positive_fraction_classes_and_deltas():
    rng = np.random.default_rng(0)
    gt_boxes = np.array([GT_A, GT_B], np.float32)
    gt_classes = np.array([3, 1])
    gt_masks = np.zeros((2, IMAGE, IMAGE), np.uint8)
    near = np.concatenate([jittered(rng, gt_boxes[0], 60, 0.005),
                           jittered(rng, gt_boxes[1], 60, 0.005)])
    far = np.tile(np.array([[0.8, 0.8, 0.95, 0.95]], np.float32), (300, 1))
    far += rng.uniform(0, 0.04, size=far.shape).astype(np.float32)
    proposals = np.concatenate([near, far, np.zeros((20, 4), np.float32)])
    targets = detection_targets(proposals, gt_classes, gt_boxes, gt_masks, rng=0)

    assert targets.rois.shape == (200, 4) and targets.masks.shape == (200, 28, 28)
    num_positive = int(np.sum(targets.class_ids > 0))
    assert num_positive == int(200 * 0.33) == 66
    assert np.all(targets.class_ids[:66] > 0) and np.all(targets.class_ids[66:] == 0)
    assert np.all(targets.valid)  # 66 + (int(66 / 0.33) - 66) = 200
    iou = box_iou_numpy(targets.rois, gt_boxes)
    assert np.all(iou[:66].max(axis=1) >= 0.5) and np.all(iou[66:].max(axis=1) < 0.5)
    assigned = iou[:66].argmax(axis=1)
    np.testing.assert_array_equal(targets.class_ids[:66], gt_classes[assigned])
    decoded = kops.convert_to_numpy(ops.decode_boxes(targets.deltas[:66], targets.rois[:66]))
    np.testing.assert_allclose(decoded, gt_boxes[assigned], atol=1e-5)
    assert np.all(targets.deltas[66:] == 0)

    # Few positives: the ratio holds over the ROIs sampled, the rest is zero padding.
    few = detection_targets(np.concatenate([near[:10], far]), gt_classes, gt_boxes, gt_masks,
                            rng=1)
    assert np.sum(few.class_ids > 0) == 10
    assert np.sum(few.valid) == int(10 / 0.33) == 30
    assert np.all(few.rois[30:] == 0) and not few.valid[30:].any()
    # No positives: no ROIs, as in matterport.
    none = detection_targets(far, gt_classes, gt_boxes, gt_masks, rng=2)
    assert not none.valid.any() and np.all(none.rois == 0)


def test_detection_targets_mask_crops_of_a_rectangle():
    mask = rectangle_mask()
    gt_box = ops.normalize_boxes([(16, 8, 40, 48)], IMAGE)
    scale = IMAGE - 1
    # ROI 1 samples rows and columns 10-37 exactly (28 samples, one pixel apart).
    exact = np.array([10, 10, 37, 37], np.float32) / scale
    # ROI 2 samples rows 12.25, 13.25, ... 39.25 and columns 8-35.
    shifted = np.array([12.25, 8, 39.25, 35], np.float32) / scale
    negatives = np.array([[0.0, 0.9, 0.1, 1.0]] * 5, np.float32)
    targets = detection_targets(np.concatenate([[exact, shifted], negatives]), [2], gt_box,
                                mask[None], rng=0)
    assert np.sum(targets.class_ids == 2) == 2
    by_roi = {tuple(np.round(r * scale, 2)): m for r, m in zip(targets.rois, targets.masks,
                                                              strict=True)}

    np.testing.assert_array_equal(by_roi[(10, 10, 37, 37)], mask[10:38, 10:38])
    expected = np.zeros((28, 28))
    # Row 15.25 reads 0.25 of row 16 (-> 0); row 39.25 reads 0.75 of row 39 (-> 1).
    expected[4:28] = 1
    np.testing.assert_array_equal(by_roi[(12.25, 8, 39.25, 35)], expected)
    assert np.all(targets.masks[2:] == 0)


def test_crop_and_resize_matches_bilinear_definition():
    rng = np.random.default_rng(3)
    masks = rng.random((2, 9, 7)).astype(np.float32)
    boxes = np.array([[0.1, 0.2, 0.8, 0.9], [-0.2, 0.0, 0.5, 1.2]], np.float32)
    crops = crop_and_resize_masks(masks, boxes, (4, 5), indices=[1, 0])

    def bilinear(image, y, x):
        h, w = image.shape
        if not (0 <= y <= h - 1 and 0 <= x <= w - 1):
            return 0.0
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
        dy, dx = y - y0, x - x0
        return ((1 - dy) * (1 - dx) * image[y0, x0] + (1 - dy) * dx * image[y0, x1]
                + dy * (1 - dx) * image[y1, x0] + dy * dx * image[y1, x1])

    for b, (image, box) in enumerate(zip(masks[[1, 0]], boxes, strict=True)):
        ys = box[0] * 8 + np.arange(4) * (box[2] - box[0]) * 8 / 3
        xs = box[1] * 6 + np.arange(5) * (box[3] - box[1]) * 6 / 4
        expected = [[bilinear(image, y, x) for x in xs] for y in ys]
        np.testing.assert_allclose(crops[b], expected, atol=1e-5)


def test_mini_masks_give_nearly_the_same_targets():
    mask = rectangle_mask()
    mask[20:30, 20:30] = 0  # a hole, so that the crop has inner detail
    gt_box = ops.normalize_boxes([(16, 8, 40, 48)], IMAGE)
    rng = np.random.default_rng(4)
    proposals = jittered(rng, gt_box[0], 20, 0.02)
    full = detection_targets(proposals, [1], gt_box, mask[None], rng=5)
    mini = detection_targets(proposals, [1], gt_box, mini_masks(mask[None], gt_box), rng=5,
                             gt_masks_are_mini=True)
    positive = full.class_ids > 0
    assert positive.sum() > 5
    np.testing.assert_array_equal(full.rois, mini.rois)
    agreement = np.mean(full.masks[positive] == mini.masks[positive])
    assert agreement > 0.95


def test_crop_and_resize_matches_tensorflow():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(6)
    masks = rng.random((3, 20, 17)).astype(np.float32)
    boxes = np.concatenate([random_boxes(rng, 5), [[-0.1, -0.2, 1.1, 1.05]]]).astype(np.float32)
    indices = np.array([0, 2, 1, 1, 0, 2])
    expected = tf.image.crop_and_resize(masks[..., None], boxes, indices, (28, 28),
                                        extrapolation_value=0.0).numpy()[..., 0]
    np.testing.assert_allclose(crop_and_resize_masks(masks, boxes, 28, indices), expected,
                               atol=1e-5)


def test_targets_run_in_a_tf_data_map_with_fixed_shapes():
    tf = pytest.importorskip("tensorflow")
    anchors = ops.generate_anchors(IMAGE, (8, 16, 32), (0.5, 1, 2), (4, 8, 16))
    gt_box = ops.normalize_boxes([(16, 8, 40, 48)], IMAGE)
    proposals = jittered(np.random.default_rng(7), gt_box[0], 50, 0.03)

    def targets(seed):
        rpn = rpn_targets(anchors, gt_box, rpn_train_anchors=32, rng=int(seed))
        heads = detection_targets(proposals, [1], gt_box, rectangle_mask()[None], train_rois=20,
                                  rng=int(seed))
        return (*rpn, *heads)

    types = (tf.int32, tf.float32, tf.float32, tf.int32, tf.float32, tf.float32, tf.bool)
    dataset = tf.data.Dataset.range(3).map(lambda s: tf.numpy_function(targets, [s], types))
    for match, deltas, rois, class_ids, _, masks, valid in dataset:
        assert match.shape == (len(anchors),) and deltas.shape == (len(anchors), 4)
        assert rois.shape == (20, 4) and masks.shape == (20, 28, 28) and valid.shape == (20,)
        assert 0 < int(tf.reduce_sum(tf.cast(match == 1, tf.int32))) <= 16
        assert int(tf.reduce_sum(class_ids)) == int(20 * 0.33)
