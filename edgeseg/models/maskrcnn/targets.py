"""Training targets of a Mask R-CNN: RPN anchor labels and deltas, head ROIs, classes and masks.

A NumPy reference implementation of matterport/Mask_RCNN's ``build_rpn_targets`` and
``detection_targets_graph`` (He et al. 2017, "Mask R-CNN", section 3.1; Ren et al. 2015,
"Faster R-CNN", section 3.1.2), with fixed output shapes so that it can run per image in a
``tf.data`` map (through ``tf.numpy_function``) or on the host between steps. The arithmetic
is NumPy only (fast on the host, no graph tracing), with NumPy twins of ``ops.box_iou`` and
``ops.encode_boxes`` that the tests hold to the originals.

Conventions are those of ``edgeseg.models.maskrcnn.ops``: boxes are normalised
``(y1, x1, y2, x2)`` (``normalize_boxes``: 0 is the first pixel row / column, 1 the last),
deltas are ``encode_boxes``'s ``(dy, dx, log dh, log dw) / BBOX_STD_DEV``. Class ids are 1..K
with 0 background; a negative GT class id marks a crowd box (matterport's convention). Rows of
zeros in ``gt_boxes`` or ``proposals`` are padding and are left out.

Differences from matterport, on purpose:

- ``rpn_targets`` returns deltas per anchor, ``(num_anchors, 4)``, zero except at positive
  anchors, instead of matterport's ``(RPN_TRAIN_ANCHORS_PER_IMAGE, 4)`` list of the positives
  in anchor order; the RPN box loss then needs no ``batch_pack_graph`` to line the two up.
- ``detection_targets`` returns a ``valid`` flag per ROI so that the zero padding can be left
  out of the head class loss (matterport counts padded ROIs as background).
- a GT box whose best IoU with every anchor is 0 does not turn every anchor positive (in
  matterport, ``overlaps == max`` is then true for all anchors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from edgeseg.models.maskrcnn.ops import BBOX_STD_DEV

# Matterport: anchors that overlap a crowd box by more than this are never negatives.
CROWD_IOU = 0.001


class RpnTargets(NamedTuple):
    """Targets of the region proposal network for one image.

    Attributes:
        match: (num_anchors,) int32: 1 positive, -1 negative, 0 neutral (not trained).
        deltas: (num_anchors, 4) float32 ``encode_boxes`` deltas of each positive anchor to
            its GT box; zeros elsewhere.
    """

    match: np.ndarray
    deltas: np.ndarray


class DetectionTargets(NamedTuple):
    """Targets of the box, class and mask heads for the ``train_rois`` sampled ROIs of an image.

    Positive ROIs come first, then negatives, then zero padding.

    Attributes:
        rois: (train_rois, 4) float32 normalised boxes, the heads' input.
        class_ids: (train_rois,) int32: the GT class of positive ROIs, 0 for negatives and
            padding.
        deltas: (train_rois, 4) float32 deltas from each positive ROI to its GT box; zeros
            elsewhere.
        masks: (train_rois, mask_h, mask_w) float32 0/1: the GT mask of each positive ROI
            cropped to the ROI; zeros elsewhere.
        valid: (train_rois,) bool: the ROI was sampled (not padding).
    """

    rois: np.ndarray
    class_ids: np.ndarray
    deltas: np.ndarray
    masks: np.ndarray
    valid: np.ndarray


def _as_generator(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _boxes(name: str, boxes) -> np.ndarray:
    array = np.asarray(boxes, np.float32)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must be (N, 4) boxes (y1, x1, y2, x2), got shape {array.shape}")
    return array


def _not_padding(boxes: np.ndarray) -> np.ndarray:
    return np.any(boxes != 0, axis=1)


def box_iou_numpy(boxes_a, boxes_b) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes, as ``ops.box_iou``: (N, M) float32."""
    a = np.asarray(boxes_a, np.float32)[:, None, :]
    b = np.asarray(boxes_b, np.float32)[None, :, :]
    inter_h = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
    inter_w = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
    intersection = inter_h * inter_w
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0).astype(
            np.float32
        )


def encode_boxes_numpy(boxes, anchors, std: Sequence[float] = BBOX_STD_DEV) -> np.ndarray:
    """``ops.encode_boxes`` in NumPy (matterport's ``box_refinement``): (..., 4) float32."""
    boxes = np.asarray(boxes, np.float32)
    anchors = np.asarray(anchors, np.float32)
    height, width = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    anchor_h, anchor_w = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    deltas = np.stack(
        [
            (boxes[..., 0] + 0.5 * height - (anchors[..., 0] + 0.5 * anchor_h)) / anchor_h,
            (boxes[..., 1] + 0.5 * width - (anchors[..., 1] + 0.5 * anchor_w)) / anchor_w,
            np.log(height / anchor_h),
            np.log(width / anchor_w),
        ],
        axis=-1,
    )
    return (deltas / np.asarray(std, np.float32)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# RPN


def rpn_targets(
    anchors,
    gt_boxes,
    rpn_train_anchors: int = 256,
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
    rng: np.random.Generator | int | None = None,
    gt_class_ids=None,
) -> RpnTargets:
    """Anchor labels and box deltas for the RPN, as matterport's ``build_rpn_targets``.

    An anchor is positive when its IoU with some GT box is at least ``positive_iou``, and the
    anchor(s) of highest IoU with each GT box are positive whatever that IoU (so that every GT
    has an anchor; ties all count, as in matterport). It is negative when its best IoU is below
    ``negative_iou`` and it overlaps no crowd box (IoU above 0.001), neutral otherwise. Then at
    most ``rpn_train_anchors // 2`` positives are kept at random, and negatives fill the rest up
    to ``rpn_train_anchors`` (Faster R-CNN, section 3.1.3); the others become neutral.

    Args:
        anchors: (num_anchors, 4) normalised boxes (``ops.generate_anchors``).
        gt_boxes: (num_gt, 4) normalised GT boxes; zero rows are padding.
        rpn_train_anchors: anchors labelled per image (positives plus negatives).
        positive_iou, negative_iou: the IoU thresholds.
        rng: a ``np.random.Generator`` or a seed, for the sampling.
        gt_class_ids: optional (num_gt,) class ids; boxes with a negative id are crowds, which
            make no positives and keep overlapping anchors from being negatives.

    Returns:
        ``RpnTargets(match, deltas)``, see there; deltas are per anchor, not matterport's
        fixed-length list of positives.
    """
    rng = _as_generator(rng)
    anchors = _boxes("anchors", anchors)
    gt_boxes = _boxes("gt_boxes", gt_boxes)
    if not 0 <= negative_iou <= positive_iou <= 1:
        raise ValueError(
            f"need 0 <= negative_iou <= positive_iou <= 1, got negative_iou={negative_iou}, "
            f"positive_iou={positive_iou}"
        )
    if rpn_train_anchors < 1:
        raise ValueError(f"rpn_train_anchors must be a positive integer, got {rpn_train_anchors}")
    num_anchors = len(anchors)
    match = np.zeros(num_anchors, np.int32)
    deltas = np.zeros((num_anchors, 4), np.float32)

    keep = _not_padding(gt_boxes)
    if gt_class_ids is not None:
        gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
        if len(gt_class_ids) != len(gt_boxes):
            raise ValueError(f"got {len(gt_class_ids)} gt_class_ids for {len(gt_boxes)} gt_boxes")
        crowd = keep & (gt_class_ids < 0)
        keep &= gt_class_ids >= 0
    else:
        crowd = np.zeros(len(gt_boxes), bool)
    gt_boxes, crowd_boxes = gt_boxes[keep], gt_boxes[crowd]
    if len(crowd_boxes):
        no_crowd = box_iou_numpy(anchors, crowd_boxes).max(axis=1) < CROWD_IOU
    else:
        no_crowd = np.ones(num_anchors, bool)

    if len(gt_boxes) == 0:
        match[no_crowd] = -1
    else:
        overlaps = box_iou_numpy(anchors, gt_boxes)  # (num_anchors, num_gt)
        best_gt = overlaps.argmax(axis=1)
        best_iou = overlaps[np.arange(num_anchors), best_gt]
        # Negatives first, so that the positive rules below override them.
        match[(best_iou < negative_iou) & no_crowd] = -1
        best_per_gt = overlaps.max(axis=0)
        is_best = (overlaps == best_per_gt[None, :]) & (best_per_gt[None, :] > 0)
        best_anchors, best_gts = np.nonzero(is_best)
        match[best_anchors] = 1
        match[best_iou >= positive_iou] = 1
        # A best anchor keeps the GT it is best for (when it is best for two, the later one).
        assigned = best_gt.copy()
        assigned[best_anchors] = best_gts

    positives = np.flatnonzero(match == 1)
    extra = len(positives) - rpn_train_anchors // 2
    if extra > 0:
        match[rng.choice(positives, extra, replace=False)] = 0
    negatives = np.flatnonzero(match == -1)
    extra = len(negatives) - (rpn_train_anchors - int(np.sum(match == 1)))
    if extra > 0:
        match[rng.choice(negatives, extra, replace=False)] = 0

    positives = np.flatnonzero(match == 1)
    if len(positives):
        deltas[positives] = encode_boxes_numpy(gt_boxes[assigned[positives]], anchors[positives])
    return RpnTargets(match, deltas)


# ---------------------------------------------------------------------------------------------
# Masks


def crop_and_resize_masks(masks, boxes, mask_shape=(28, 28), indices=None) -> np.ndarray:
    """Bilinear crops of masks, as ``tf.image.crop_and_resize`` (extrapolation 0) samples them.

    Sample i of n along an axis of length L lies at ``y1 * (L - 1) + i * (y2 - y1) * (L - 1) /
    (n - 1)`` (the box centre when n = 1), between the four neighbouring pixels; samples outside
    the mask are 0. This is how matterport crops GT masks to ROIs and how ``ops.roi_align``
    samples feature maps.

    Args:
        masks: (num_masks, H, W) masks (any real dtype).
        boxes: (num_boxes, 4) normalised boxes in the masks' frame.
        mask_shape: (height, width) of the crops.
        indices: (num_boxes,) the mask each box crops; by default box i crops mask i.

    Returns:
        (num_boxes, mask_h, mask_w) float32, not thresholded.
    """
    masks = np.asarray(masks, np.float32)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (num_masks, H, W), got shape {masks.shape}")
    boxes = _boxes("boxes", boxes)
    out_h, out_w = (int(mask_shape), int(mask_shape)) if np.isscalar(mask_shape) else mask_shape
    if indices is None:
        if len(boxes) != len(masks):
            raise ValueError(
                f"got {len(boxes)} boxes for {len(masks)} masks; give indices to pair them"
            )
        indices = np.arange(len(boxes))
    indices = np.asarray(indices, np.intp).reshape(-1)
    num = len(boxes)
    if num == 0:
        return np.zeros((0, out_h, out_w), np.float32)
    height, width = masks.shape[1:]

    def positions(start, end, samples, size):
        if samples > 1:
            step = (end - start) * (size - 1) / (samples - 1)
            return start[:, None] * (size - 1) + np.arange(samples)[None, :] * step[:, None]
        return (0.5 * (start + end) * (size - 1))[:, None]

    ys = positions(boxes[:, 0].astype(np.float64), boxes[:, 2].astype(np.float64), out_h, height)
    xs = positions(boxes[:, 1].astype(np.float64), boxes[:, 3].astype(np.float64), out_w, width)
    y0, x0 = np.floor(ys), np.floor(xs)
    wy, wx = (ys - y0)[:, :, None], (xs - x0)[:, None, :]
    y0, x0 = y0.astype(np.intp), x0.astype(np.intp)
    inside = ((ys >= 0) & (ys <= height - 1))[:, :, None] & ((xs >= 0) & (xs <= width - 1))[
        :, None, :
    ]

    def read(rows, columns):
        rows = np.clip(rows, 0, height - 1)[:, :, None]
        columns = np.clip(columns, 0, width - 1)[:, None, :]
        return masks[indices[:, None, None], rows, columns]

    top = read(y0, x0) * (1 - wx) + read(y0, x0 + 1) * wx
    bottom = read(y0 + 1, x0) * (1 - wx) + read(y0 + 1, x0 + 1) * wx
    crops = top * (1 - wy) + bottom * wy
    return np.where(inside, crops, 0).astype(np.float32)


def relative_boxes(boxes, frames) -> np.ndarray:
    """``boxes`` in the normalised coordinates of ``frames`` (pairwise, both (N, 4)).

    Matterport's transform for mini masks: a ROI in the coordinates of its GT box, so that
    a mask stored for the box alone (``mini_masks``) can be cropped to the ROI.
    """
    boxes, frames = np.asarray(boxes, np.float32), np.asarray(frames, np.float32)
    height = frames[:, 2:3] - frames[:, 0:1]
    width = frames[:, 3:4] - frames[:, 1:2]
    scale = np.concatenate([height, width, height, width], axis=1)
    shift = np.concatenate([frames[:, :2], frames[:, :2]], axis=1)
    return ((boxes - shift) / scale).astype(np.float32)


def mini_masks(masks, boxes, mini_shape=(56, 56), threshold: float = 0.5) -> np.ndarray:
    """Full-image masks cropped to their own boxes and resized, as matterport's ``minimize_mask``.

    A mini mask holds a GT mask at a fixed size, so that a batch of GT masks costs
    ``num_gt * 56 * 56`` instead of ``num_gt * H * W``; ``detection_targets(...,
    gt_masks_are_mini=True)`` crops ROIs out of them. Small losses of detail at the edges are
    the price (matterport's ``USE_MINI_MASK``).

    Returns:
        (num_gt, mini_h, mini_w) uint8 0/1, the bilinear crop above ``threshold``.
    """
    return (crop_and_resize_masks(masks, boxes, mini_shape) > threshold).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Head targets


def detection_targets(
    proposals,
    gt_classes,
    gt_boxes,
    gt_masks,
    train_rois: int = 200,
    positive_fraction: float = 0.33,
    positive_iou: float = 0.5,
    mask_shape=(28, 28),
    rng: np.random.Generator | int | None = None,
    gt_masks_are_mini: bool = False,
) -> DetectionTargets:
    """Sampled ROIs and their class, box and mask targets, as matterport's ``DetectionTargetLayer``.

    A proposal is positive when its IoU with a (non-crowd) GT box is at least ``positive_iou``
    and negative when it is below, and, if there are crowd boxes, it overlaps none of them by
    more than 0.001. At most ``int(train_rois * positive_fraction)`` positives are sampled at
    random, then ``int(positives / positive_fraction) - positives`` negatives (matterport's
    ``ROI_POSITIVE_RATIO``: the ratio holds for the ROIs sampled, which may be fewer than
    ``train_rois``; as in matterport, an image without positives gives no ROIs at all). Each
    positive takes the GT box of highest IoU: its class, the deltas to its
    box and its mask, cropped to the ROI by bilinear sampling and rounded (above 0.5 is 1; 0.5
    itself rounds to 0, as ``tf.round`` does).

    Args:
        proposals: (num_proposals, 4) normalised RPN proposals; zero rows are padding.
            Matterport adds the GT boxes to the proposals when training the heads alone;
            concatenate them before the call to do the same.
        gt_classes: (num_gt,) class ids 1..K; a negative id is a crowd box.
        gt_boxes: (num_gt, 4) normalised GT boxes; zero rows are padding.
        gt_masks: (num_gt, H, W) full-image GT masks (0/1), or mini masks of each GT box
            (``mini_masks``) with ``gt_masks_are_mini``.
        train_rois: ROIs per image, after padding.
        positive_fraction: the largest fraction of positive ROIs.
        positive_iou: the IoU from which a proposal is positive.
        mask_shape: (height, width) of the mask targets.
        rng: a ``np.random.Generator`` or a seed, for the sampling.
        gt_masks_are_mini: ``gt_masks`` are mini masks in GT-box coordinates.

    Returns:
        ``DetectionTargets(rois, class_ids, deltas, masks, valid)`` with fixed shapes.
    """
    rng = _as_generator(rng)
    if not 0 < positive_fraction <= 1:
        raise ValueError(f"positive_fraction must be in (0, 1], got {positive_fraction}")
    if train_rois < 1:
        raise ValueError(f"train_rois must be a positive integer, got {train_rois}")
    out_h, out_w = (int(mask_shape), int(mask_shape)) if np.isscalar(mask_shape) else mask_shape
    proposals = _boxes("proposals", proposals)
    proposals = proposals[_not_padding(proposals)]
    gt_boxes = _boxes("gt_boxes", gt_boxes)
    gt_classes = np.asarray(gt_classes).reshape(-1).astype(np.int32)
    gt_masks = np.asarray(gt_masks)
    if not len(gt_classes) == len(gt_boxes) == len(gt_masks):
        raise ValueError(
            f"gt_classes, gt_boxes and gt_masks must have one entry per GT object, got "
            f"{len(gt_classes)}, {len(gt_boxes)} and {len(gt_masks)}"
        )
    real = _not_padding(gt_boxes)
    crowd = real & (gt_classes < 0)
    keep = real & (gt_classes > 0)
    crowd_boxes = gt_boxes[crowd]
    gt_classes, gt_boxes, gt_masks = gt_classes[keep], gt_boxes[keep], gt_masks[keep]

    if len(gt_boxes) and len(proposals):
        overlaps = box_iou_numpy(proposals, gt_boxes)
        best_gt = overlaps.argmax(axis=1)
        best_iou = overlaps[np.arange(len(proposals)), best_gt]
    else:
        best_gt = np.zeros(len(proposals), np.intp)
        best_iou = np.zeros(len(proposals), np.float32)
    if len(crowd_boxes) and len(proposals):
        no_crowd = box_iou_numpy(proposals, crowd_boxes).max(axis=1) < CROWD_IOU
    else:
        no_crowd = np.ones(len(proposals), bool)

    positive = np.flatnonzero(best_iou >= positive_iou)
    negative = np.flatnonzero((best_iou < positive_iou) & no_crowd)
    positive = rng.permutation(positive)[: int(train_rois * positive_fraction)]
    negative_count = int(len(positive) / positive_fraction) - len(positive)
    negative = rng.permutation(negative)[: max(min(negative_count, train_rois - len(positive)), 0)]

    num_pos, num_neg = len(positive), len(negative)
    rois = np.zeros((train_rois, 4), np.float32)
    class_ids = np.zeros(train_rois, np.int32)
    deltas = np.zeros((train_rois, 4), np.float32)
    masks = np.zeros((train_rois, out_h, out_w), np.float32)
    valid = np.zeros(train_rois, bool)
    rois[:num_pos] = proposals[positive]
    rois[num_pos : num_pos + num_neg] = proposals[negative]
    valid[: num_pos + num_neg] = True
    if num_pos:
        assigned = best_gt[positive]
        positive_rois = proposals[positive]
        class_ids[:num_pos] = gt_classes[assigned]
        deltas[:num_pos] = encode_boxes_numpy(gt_boxes[assigned], positive_rois)
        crop_boxes = positive_rois
        if gt_masks_are_mini:
            crop_boxes = relative_boxes(positive_rois, gt_boxes[assigned])
        crops = crop_and_resize_masks(gt_masks, crop_boxes, (out_h, out_w), indices=assigned)
        masks[:num_pos] = crops > 0.5
    return DetectionTargets(rois, class_ids, deltas, masks, valid)
