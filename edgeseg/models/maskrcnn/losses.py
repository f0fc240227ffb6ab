"""The five losses of a Mask R-CNN, in ``keras.ops`` so that they run under TensorFlow and JAX.

As matterport/Mask_RCNN's ``rpn_class_loss_graph``, ``rpn_bbox_loss_graph``,
``mrcnn_class_loss_graph``, ``mrcnn_bbox_loss_graph`` and ``mrcnn_mask_loss_graph`` (He et al.
2017, "Mask R-CNN", section 3: ``L = L_cls + L_box + L_mask``), on the targets of
``edgeseg.models.maskrcnn.targets``. Each loss is the mean over the entries it counts, across
the batch, and 0 (with zero gradient, never NaN) when there is none: no labelled anchor, no
positive anchor, no sampled ROI or no positive ROI.

Smooth L1 is Fast R-CNN's (Girshick 2015, equation 3): ``0.5 x^2`` for ``|x| < 1``, else
``|x| - 0.5``; the box losses average it over the four coordinates of each positive, as
matterport does. Unlike matterport, the RPN class loss also takes one objectness logit per
anchor (edgeseg's RPN head) and the mask loss takes logits by default (edgeseg's mask head;
``from_logits=False`` for sigmoid outputs); matterport's ``active_class_ids`` (classes absent
from an image's dataset) is not modelled.
"""

from __future__ import annotations

from keras import ops

# Probabilities are clipped to [EPSILON, 1 - EPSILON] before the log, as Keras' crossentropy.
EPSILON = 1e-7


def _masked_mean(values, mask):
    """Mean of ``values`` where ``mask`` is true, 0 where it is nowhere true.

    ``where`` rather than a product, so that a non-finite value left out cannot make NaN.
    """
    mask = ops.cast(mask, "bool")
    total = ops.sum(ops.cast(mask, "float32"))
    return ops.sum(ops.where(mask, values, 0.0)) / ops.maximum(total, 1.0)


def _sparse_cross_entropy(labels, logits):
    """-log softmax(logits)[label] per entry; labels must be valid indices."""
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    one_hot = ops.one_hot(ops.cast(labels, "int32"), ops.shape(logits)[-1])
    return -ops.sum(log_probs * one_hot, axis=-1)


def smooth_l1(targets, predictions):
    """Element-wise smooth L1 of ``predictions - targets``, float32."""
    diff = ops.abs(ops.cast(targets, "float32") - ops.cast(predictions, "float32"))
    return ops.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5)


def _select_class(values, class_ids, axis):
    """``values[..., class_ids, ...]`` along ``axis`` (the class axis) by a one-hot product."""
    num_classes = values.shape[axis]
    one_hot = ops.one_hot(ops.maximum(ops.cast(class_ids, "int32"), 0), num_classes)
    rank = len(values.shape)
    axis = axis % rank
    # one_hot is (batch, rois, C); put C on ``axis`` with unit axes for the others.
    one_hot = ops.reshape(
        one_hot,
        (*ops.shape(one_hot)[:2], *([1] * (axis - 2)), num_classes, *([1] * (rank - axis - 1))),
    )
    return ops.sum(ops.cast(values, "float32") * one_hot, axis=axis)


def _binary_cross_entropy(targets, predictions, from_logits: bool):
    """Element-wise binary cross-entropy, float32; stable for logits, clipped for probabilities."""
    targets = ops.cast(targets, "float32")
    predictions = ops.cast(predictions, "float32")
    if from_logits:
        return (
            ops.maximum(predictions, 0.0)
            - predictions * targets
            + ops.log1p(ops.exp(-ops.abs(predictions)))
        )
    probs = ops.clip(predictions, EPSILON, 1.0 - EPSILON)
    return -(targets * ops.log(probs) + (1.0 - targets) * ops.log(1.0 - probs))


def rpn_class_loss(rpn_match, rpn_logits):
    """Anchor object / background cross-entropy over the labelled anchors.

    Args:
        rpn_match: (batch, anchors) 1 positive, -1 negative, 0 neutral (``RpnTargets.match``).
        rpn_logits: (batch, anchors) or (batch, anchors, 1) objectness logits (a sigmoid, as
            edgeseg's RPN head), or (batch, anchors, 2) background / object logits (a softmax,
            as matterport's). The two agree: softmax over ``(0, z)`` is ``sigmoid(z)``.

    Returns:
        A float32 scalar: the mean over the anchors with a non-zero match.
    """
    rpn_match = ops.cast(rpn_match, "int32")
    labels = ops.cast(ops.equal(rpn_match, 1), "int32")
    labelled = ops.not_equal(rpn_match, 0)
    rank, last = len(rpn_logits.shape), rpn_logits.shape[-1]
    if rank == len(rpn_match.shape) + 1 and last == 2:
        return _masked_mean(_sparse_cross_entropy(labels, rpn_logits), labelled)
    if rank == len(rpn_match.shape) + 1 and last == 1:
        rpn_logits = ops.squeeze(rpn_logits, axis=-1)
    elif rank != len(rpn_match.shape):
        raise ValueError(
            f"rpn_logits must be (batch, anchors), (batch, anchors, 1) or (batch, anchors, 2) "
            f"for rpn_match of shape {tuple(rpn_match.shape)}, got {tuple(rpn_logits.shape)}"
        )
    return _masked_mean(_binary_cross_entropy(labels, rpn_logits, from_logits=True), labelled)


def rpn_box_loss(rpn_match, target_deltas, rpn_deltas):
    """Smooth L1 of the anchor deltas of positive anchors.

    Args:
        rpn_match: (batch, anchors), as for ``rpn_class_loss``.
        target_deltas: (batch, anchors, 4) per-anchor deltas (``RpnTargets.deltas``).
        rpn_deltas: (batch, anchors, 4) predicted deltas.

    Returns:
        A float32 scalar: the mean over positive anchors and their four deltas.
    """
    positive = ops.cast(ops.equal(ops.cast(rpn_match, "int32"), 1), "float32")
    per_anchor = ops.mean(smooth_l1(target_deltas, rpn_deltas), axis=-1)
    return _masked_mean(per_anchor, positive)


def head_class_loss(class_ids, class_logits, valid):
    """ROI classification cross-entropy over the sampled (not padding) ROIs.

    Args:
        class_ids: (batch, rois) int GT class, 0 background (``DetectionTargets.class_ids``).
        class_logits: (batch, rois, num_classes) logits.
        valid: (batch, rois) bool, the ROI was sampled (``DetectionTargets.valid``).

    Returns:
        A float32 scalar: the mean over the valid ROIs.
    """
    class_ids = ops.maximum(ops.cast(class_ids, "int32"), 0)
    return _masked_mean(_sparse_cross_entropy(class_ids, class_logits), valid)


def head_box_loss(class_ids, target_deltas, pred_deltas):
    """Smooth L1 of the GT class's box deltas of the positive ROIs.

    Args:
        class_ids: (batch, rois) int GT class; positives have a class above 0.
        target_deltas: (batch, rois, 4) (``DetectionTargets.deltas``).
        pred_deltas: (batch, rois, num_classes, 4) class-specific predicted deltas.

    Returns:
        A float32 scalar: the mean over positive ROIs and their four deltas.
    """
    predicted = _select_class(pred_deltas, class_ids, axis=-2)  # (batch, rois, 4)
    per_roi = ops.mean(smooth_l1(target_deltas, predicted), axis=-1)
    return _masked_mean(per_roi, ops.greater(ops.cast(class_ids, "int32"), 0))


def mask_loss(class_ids, target_masks, pred_masks, from_logits: bool = True):
    """Per-pixel binary cross-entropy of the GT class's mask on positive ROIs.

    Args:
        class_ids: (batch, rois) int GT class; positives have a class above 0.
        target_masks: (batch, rois, mask_h, mask_w) 0/1 (``DetectionTargets.masks``).
        pred_masks: (batch, rois, mask_h, mask_w, num_classes) per-class mask logits
            (edgeseg's mask head), or sigmoid probabilities (matterport's) with
            ``from_logits=False``.
        from_logits: ``pred_masks`` are logits.

    Returns:
        A float32 scalar: the mean over the pixels of positive ROIs.
    """
    predicted = _select_class(pred_masks, class_ids, axis=-1)  # (batch, rois, h, w)
    per_pixel = _binary_cross_entropy(target_masks, predicted, from_logits)
    per_roi = ops.mean(ops.reshape(per_pixel, (*ops.shape(per_pixel)[:2], -1)), axis=-1)
    return _masked_mean(per_roi, ops.greater(ops.cast(class_ids, "int32"), 0))
