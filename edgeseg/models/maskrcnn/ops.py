"""Box, anchor, ROIAlign and NMS operations of a mobile Mask R-CNN, with TFLite builtins only.

The graph operations use ``keras.ops`` only, so that they run under the TensorFlow and JAX
backends, and they convert to TFLite without Flex (select TF) or custom operators:

- ``roi_align`` samples bilinearly with gathers and arithmetic instead of
  ``tf.image.crop_and_resize``, which has no TFLite builtin (tensorflow issues 19293, 24407,
  44201, 51904);
- ``nms_padded`` emits TFLite's builtin ``NON_MAX_SUPPRESSION_V4`` under TensorFlow and has
  fixed-size (padded) outputs, so that every tensor of the converted graph has a static shape.

Conventions, as in matterport/Mask_RCNN (He et al. 2017, "Mask R-CNN"): boxes are
``(y1, x1, y2, x2)``, normalised so that 0 is the first pixel row / column and 1 the last one
(``normalize_boxes``); anchors and deltas follow ``mrcnn.utils``. Anchors are NumPy constants,
computed once for an input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from edgeseg.models.layers import PACKAGE

# Matterport's RPN_BBOX_STD_DEV / BBOX_STD_DEV: deltas are divided by these to have unit scale.
BBOX_STD_DEV = (0.1, 0.1, 0.2, 0.2)
# Matterport's RPN_ANCHOR_SCALES at its 1024 x 1024 input, one scale per FPN level P2-P6.
ANCHOR_SCALES = (32, 64, 128, 256, 512)
ANCHOR_RATIOS = (0.5, 1, 2)
FPN_STRIDES = (4, 8, 16, 32, 64)
# ROIAlign reads P2-P5 (FPN paper, Lin et al. 2017, equation 1: k0 = 4 for a 224 x 224 box).
ROI_LEVELS = (2, 3, 4, 5)
CANONICAL_LEVEL = 4
CANONICAL_SIZE = 224.0
# Samples this far (in cells) outside a feature map still read its border; see roi_align.
BORDER_MARGIN = 1e-3


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    else:
        pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or a (height, width) pair, got {value!r}")
    return pair


# ---------------------------------------------------------------------------------------------
# Anchors (NumPy constants)


def normalize_boxes(boxes, image_size) -> np.ndarray:
    """Pixel boxes ``(y1, x1, y2, x2)`` (y2, x2 exclusive) -> normalised boxes, as ``norm_boxes``.

    Matterport's convention:
    ``(y1 / (H - 1), x1 / (W - 1), (y2 - 1) / (H - 1), (x2 - 1) / (W - 1))``, so that a
    normalised coordinate c maps to pixel ``c * (H - 1)``, the same as
    ``tf.image.crop_and_resize`` and ``roi_align`` sample.
    """
    height, width = _pair(image_size, "image_size")
    scale = np.array([height - 1, width - 1, height - 1, width - 1], np.float64)
    shift = np.array([0, 0, 1, 1], np.float64)
    return ((np.asarray(boxes, np.float64) - shift) / scale).astype(np.float32)


def denormalize_boxes(boxes, image_size) -> np.ndarray:
    """Normalised boxes -> pixel boxes (y2, x2 exclusive), the inverse of ``normalize_boxes``."""
    height, width = _pair(image_size, "image_size")
    scale = np.array([height - 1, width - 1, height - 1, width - 1], np.float64)
    shift = np.array([0, 0, 1, 1], np.float64)
    return (np.asarray(boxes, np.float64) * scale + shift).astype(np.float32)


def generate_anchors(
    image_size,
    scales: Sequence[float],
    ratios: Sequence[float],
    strides: Sequence[int],
    anchor_stride: int = 1,
) -> np.ndarray:
    """Anchors of every FPN level, as matterport's ``generate_pyramid_anchors``.

    Level i has one scale ``scales[i]`` (the square root of the anchor area in pixels) and
    stride ``strides[i]``; its feature map is ``ceil(H / stride) x ceil(W / stride)``. An anchor
    of ratio r (width / height) is ``scale / sqrt(r)`` high and ``scale * sqrt(r)`` wide, centred
    on the pixel ``(row * stride, column * stride)`` (top-left aligned, no half-stride offset).
    Order: level, then feature-map row, column, then ratio (Mask R-CNN's RPN, FPN section 4.1).

    Args:
        image_size: the network input, an int or (height, width).
        scales: one anchor scale per level, e.g. ``ANCHOR_SCALES`` or ``mobile_anchor_scales``.
        ratios: width / height ratios, e.g. ``ANCHOR_RATIOS``.
        strides: feature stride per level, e.g. ``FPN_STRIDES`` (P2-P6).
        anchor_stride: place anchors on every n-th feature-map cell.

    Returns:
        (N, 4) float32 normalised ``(y1, x1, y2, x2)``, N = sum over levels of
        ``ceil(h / anchor_stride) * ceil(w / anchor_stride) * len(ratios)``.
    """
    height, width = _pair(image_size, "image_size")
    if len(scales) != len(strides):
        raise ValueError(
            f"need one scale per level: got {len(scales)} scales {tuple(scales)} for "
            f"{len(strides)} strides {tuple(strides)}"
        )
    if anchor_stride < 1:
        raise ValueError(f"anchor_stride must be a positive integer, got {anchor_stride!r}")
    ratios = np.asarray(ratios, np.float64)
    levels = []
    for scale, stride in zip(scales, strides, strict=True):
        rows = np.arange(0, math.ceil(height / stride), anchor_stride) * stride
        columns = np.arange(0, math.ceil(width / stride), anchor_stride) * stride
        centre_y, centre_x = np.meshgrid(rows, columns, indexing="ij")
        centres = np.stack([centre_y.ravel(), centre_x.ravel()], axis=-1)[:, None, :]
        sizes = np.stack([scale / np.sqrt(ratios), scale * np.sqrt(ratios)], axis=-1)[None]
        boxes = np.concatenate([centres - 0.5 * sizes, centres + 0.5 * sizes], axis=-1)
        levels.append(boxes.reshape(-1, 4))
    return normalize_boxes(np.concatenate(levels, axis=0), (height, width))


def mobile_anchor_scales(image_size) -> tuple[float, ...]:
    """Matterport's anchor scales (32, ..., 512 at 1024) scaled to the input size.

    At 512 x 512 they are halved, (16, 32, 64, 128, 256), as GustavZ/Mobile_Mask_RCNN does. A
    non-square input is scaled by its longer side, the side matterport resizes to
    ``IMAGE_MAX_DIM``.
    """
    height, width = _pair(image_size, "image_size")
    factor = max(height, width) / 1024.0
    return tuple(float(scale * factor) for scale in ANCHOR_SCALES)


# ---------------------------------------------------------------------------------------------
# Box arithmetic (keras.ops)


def _corners(boxes):
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def encode_boxes(boxes, anchors, std: Sequence[float] = BBOX_STD_DEV):
    """Regression targets of ``boxes`` relative to ``anchors``, as matterport's ``box_refinement``.

    ``(dy, dx, log dh, log dw) / std`` with dy, dx the centre offset in anchor heights / widths
    (Girshick et al. 2014, R-CNN appendix C; Faster R-CNN equation 2).

    Args:
        boxes, anchors: ``(..., 4)`` ``(y1, x1, y2, x2)`` of broadcastable shapes, positive
            heights and widths.
        std: the divisors of the four deltas.

    Returns:
        ``(..., 4)`` float32 deltas.
    """
    boxes = ops.cast(boxes, "float32")
    anchors = ops.cast(anchors, "float32")
    y1, x1, y2, x2 = _corners(boxes)
    ay1, ax1, ay2, ax2 = _corners(anchors)
    height, width = y2 - y1, x2 - x1
    anchor_height, anchor_width = ay2 - ay1, ax2 - ax1
    deltas = ops.stack(
        [
            (y1 + 0.5 * height - (ay1 + 0.5 * anchor_height)) / anchor_height,
            (x1 + 0.5 * width - (ax1 + 0.5 * anchor_width)) / anchor_width,
            ops.log(height / anchor_height),
            ops.log(width / anchor_width),
        ],
        axis=-1,
    )
    return deltas / ops.convert_to_tensor(np.asarray(std, np.float32))


def decode_boxes(deltas, anchors, std: Sequence[float] = BBOX_STD_DEV):
    """Boxes from regression deltas, the inverse of ``encode_boxes`` (``apply_box_deltas``).

    Returns:
        ``(..., 4)`` float32 ``(y1, x1, y2, x2)``, not clipped (see ``clip_boxes``).
    """
    deltas = ops.cast(deltas, "float32") * ops.convert_to_tensor(np.asarray(std, np.float32))
    anchors = ops.cast(anchors, "float32")
    ay1, ax1, ay2, ax2 = _corners(anchors)
    anchor_height, anchor_width = ay2 - ay1, ax2 - ax1
    centre_y = ay1 + 0.5 * anchor_height + deltas[..., 0] * anchor_height
    centre_x = ax1 + 0.5 * anchor_width + deltas[..., 1] * anchor_width
    height = anchor_height * ops.exp(deltas[..., 2])
    width = anchor_width * ops.exp(deltas[..., 3])
    y1 = centre_y - 0.5 * height
    x1 = centre_x - 0.5 * width
    return ops.stack([y1, x1, y1 + height, x1 + width], axis=-1)


def clip_boxes(boxes, window: Sequence[float] = (0.0, 0.0, 1.0, 1.0)):
    """Clips ``(..., 4)`` boxes to ``window`` ``(y1, x1, y2, x2)``, the image [0, 1] by default."""
    boxes = ops.cast(boxes, "float32")
    low = ops.convert_to_tensor(np.asarray([window[0], window[1]] * 2, np.float32))
    high = ops.convert_to_tensor(np.asarray([window[2], window[3]] * 2, np.float32))
    return ops.minimum(ops.maximum(boxes, low), high)


def box_iou(boxes_a, boxes_b):
    """Pairwise intersection over union of ``(..., N, 4)`` and ``(..., M, 4)`` boxes.

    Boxes are ``(y1, x1, y2, x2)`` with ``y1 <= y2`` and ``x1 <= x2``. A pair whose union is
    empty has IoU 0.

    Returns:
        ``(..., N, M)`` float32.
    """
    a = ops.expand_dims(ops.cast(boxes_a, "float32"), -2)
    b = ops.expand_dims(ops.cast(boxes_b, "float32"), -3)
    ay1, ax1, ay2, ax2 = _corners(a)
    by1, bx1, by2, bx2 = _corners(b)
    inter_h = ops.maximum(ops.minimum(ay2, by2) - ops.maximum(ay1, by1), 0.0)
    inter_w = ops.maximum(ops.minimum(ax2, bx2) - ops.maximum(ax1, bx1), 0.0)
    intersection = inter_h * inter_w
    union = (ay2 - ay1) * (ax2 - ax1) + (by2 - by1) * (bx2 - bx1) - intersection
    positive = union > 0
    return ops.where(positive, intersection / ops.where(positive, union, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------
# ROIAlign


def roi_levels(boxes, image_size):
    """The FPN level (2-5) that ROIAlign reads for each normalised box.

    FPN equation 1 (Lin et al. 2017): ``k = floor(4 + log2(sqrt(w h) / 224))`` with w, h in
    pixels, here ``sqrt(w h)`` of the normalised box over ``224 / sqrt(image area)``, clipped
    to [2, 5]. Matterport rounds instead of flooring; the floor is the paper's.

    Returns:
        int32 of the boxes' shape without the last axis.
    """
    height, width = _pair(image_size, "image_size")
    y1, x1, y2, x2 = _corners(ops.cast(boxes, "float32"))
    area = ops.maximum((y2 - y1) * (x2 - x1), 0.0)
    relative = ops.sqrt(area) / (CANONICAL_SIZE / math.sqrt(height * width))
    # The floor of log2(0) is -inf; the clip to 1e-12 keeps the cast defined (level 2 anyway).
    level = ops.cast(ops.floor(CANONICAL_LEVEL + ops.log2(ops.maximum(relative, 1e-12))), "int32")
    # Clipped as integers: an int8 export keeps integer ops exact (a float clip to [2, 5] would
    # share one int8 scale with its input, and 4.99 casts to 4).
    return ops.clip(level, ROI_LEVELS[0], ROI_LEVELS[-1])


def _static_feature_shape(feature_map, index: int) -> tuple[int, int, int]:
    shape = tuple(feature_map.shape)
    if len(shape) != 4 or any(dim is None for dim in shape[1:]):
        raise ValueError(
            f"roi_align needs feature maps (batch, H, W, C) with static H, W and C; "
            f"P{ROI_LEVELS[index]} has shape {shape}"
        )
    return int(shape[1]), int(shape[2]), int(shape[3])


def _sample_positions(start, end, size_minus_one, samples: int):
    """crop_and_resize's sample coordinates along one axis: (batch, boxes, samples) float32."""
    if samples > 1:
        step = (end - start) * size_minus_one / float(samples - 1)
        grid = ops.convert_to_tensor(np.arange(samples, dtype=np.float32))
        return ops.expand_dims(start * size_minus_one, -1) + grid * ops.expand_dims(step, -1)
    return ops.expand_dims(0.5 * (start + end) * size_minus_one, -1)


def roi_align(feature_maps, boxes, pool_size, image_size):
    """ROIAlign over FPN levels P2-P5 by bilinear sampling, with gathers and arithmetic only.

    Each box reads the level of ``roi_levels`` (FPN equation 1), as matterport's
    ``PyramidROIAlign``; the output keeps the boxes' order. The sampling is that of
    ``tf.image.crop_and_resize(method="bilinear", extrapolation_value=0)``, which matterport
    uses: one sample per output cell on a grid that includes the box edges, sample i of n at
    ``y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (n - 1)`` (the box centre when n = 1), bilinear
    between the four neighbouring cells, and 0 for samples outside the map. One difference:
    a sample less than ``BORDER_MARGIN`` cells outside the map (float32 rounding of a box that
    ends on the image border) reads the border, where crop_and_resize returns 0. It is not the
    2 x 2 bin-centre average of the Mask R-CNN paper (section 3).

    Args:
        feature_maps: [P2, P3, P4, P5], each (batch, H_k, W_k, C) with static H_k, W_k, C.
        boxes: (batch, num_boxes, 4) normalised ``(y1, x1, y2, x2)``, static num_boxes.
        pool_size: an int or (height, width) of the output cells.
        image_size: the network input, an int or (height, width), for the level choice.

    Returns:
        (batch, num_boxes, pool_h, pool_w, C), the feature maps' dtype.
    """
    if len(feature_maps) != len(ROI_LEVELS):
        raise ValueError(
            f"roi_align takes the {len(ROI_LEVELS)} feature maps P2-P5, got {len(feature_maps)}"
        )
    pool_h, pool_w = _pair(pool_size, "pool_size")
    shapes = [_static_feature_shape(f, i) for i, f in enumerate(feature_maps)]
    channels = {c for _, _, c in shapes}
    if len(channels) != 1:
        raise ValueError(f"P2-P5 must have the same channels, got {[c for _, _, c in shapes]}")
    (channels,) = channels
    if len(boxes.shape) != 3 or boxes.shape[-1] != 4 or boxes.shape[1] is None:
        raise ValueError(
            f"boxes must be (batch, num_boxes, 4) with a static num_boxes, got {tuple(boxes.shape)}"
        )

    # All levels in one (batch * sum(H_k W_k), C) table, so that one set of gathers serves
    # every box whatever its level.
    sizes = [h * w for h, w, _ in shapes]
    table = ops.concatenate(
        [ops.reshape(f, (-1, size, channels)) for f, size in zip(feature_maps, sizes, strict=True)],
        axis=1,
    )
    table = ops.reshape(table, (-1, channels))
    offsets = np.cumsum([0, *sizes[:-1]]).astype(np.int32)

    boxes = ops.cast(boxes, "float32")
    level = roi_levels(boxes, image_size) - ROI_LEVELS[0]
    heights = np.asarray([h for h, _, _ in shapes], np.int32)
    widths = np.asarray([w for _, w, _ in shapes], np.int32)
    # The last row / column of each box's level as integers for the clipping of the gather
    # positions, as floats for the sampling: integer ops have no int8 version to slip into.
    last_row_index = ops.take(ops.convert_to_tensor(heights - 1), level)
    last_column_index = ops.take(ops.convert_to_tensor(widths - 1), level)
    last_row = ops.cast(last_row_index, "float32")
    last_column = ops.cast(last_column_index, "float32")
    width = ops.take(ops.convert_to_tensor(widths), level)
    batch_index = ops.arange(ops.shape(boxes)[0], dtype="int32")[:, None]
    base = batch_index * int(sum(sizes)) + ops.take(ops.convert_to_tensor(offsets), level)

    y1, x1, y2, x2 = _corners(boxes)
    in_y = _sample_positions(y1, y2, last_row, pool_h)  # (batch, boxes, pool_h)
    in_x = _sample_positions(x1, x2, last_column, pool_w)  # (batch, boxes, pool_w)
    last_row, last_column = ops.expand_dims(last_row, -1), ops.expand_dims(last_column, -1)
    # crop_and_resize's kernel tests 0 <= in_y <= h - 1 exactly, and float32 rounding puts the
    # last sample of ~9% of the boxes that end on the border (y2 = 1, pool 7) just past h - 1:
    # it returns a row of zeros there. A margin of BORDER_MARGIN pixels reads the border instead.
    inside_y = ops.logical_and(in_y >= -BORDER_MARGIN, in_y <= last_row + BORDER_MARGIN)
    inside_x = ops.logical_and(in_x >= -BORDER_MARGIN, in_x <= last_column + BORDER_MARGIN)
    top, left = ops.floor(in_y), ops.floor(in_x)
    y_lerp, x_lerp = in_y - top, in_x - left

    def clipped(position, last):  # position: whole numbers as float32; last: int32
        return ops.minimum(ops.maximum(ops.cast(position, "int32"), 0), last)

    row_base = ops.expand_dims(base, -1)
    width = ops.expand_dims(width, -1)
    last_row_index = ops.expand_dims(last_row_index, -1)
    last_column_index = ops.expand_dims(last_column_index, -1)
    rows = [row_base + clipped(r, last_row_index) * width for r in (top, ops.ceil(in_y))]
    columns = [clipped(c, last_column_index) for c in (left, ops.ceil(in_x))]

    def gather(row, column):  # (batch, boxes, pool_h, pool_w, C)
        return ops.take(table, ops.expand_dims(row, -1) + ops.expand_dims(column, -2), axis=0)

    dtype = table.dtype
    x_lerp = ops.cast(x_lerp[:, :, None, :, None], dtype)
    y_lerp = ops.cast(y_lerp[:, :, :, None, None], dtype)
    top_left, top_right = gather(rows[0], columns[0]), gather(rows[0], columns[1])
    bottom_left, bottom_right = gather(rows[1], columns[0]), gather(rows[1], columns[1])
    upper = top_left + (top_right - top_left) * x_lerp
    lower = bottom_left + (bottom_right - bottom_left) * x_lerp
    crops = upper + (lower - upper) * y_lerp
    # A product of 0 / 1 masks rather than a 5-D broadcasting select: TFLite's calibrator
    # (full-int8 conversion) aborts on SELECT_V2 / LOGICAL_AND broadcast over five dimensions.
    inside = (ops.cast(inside_y, dtype)[:, :, :, None, None]
              * ops.cast(inside_x, dtype)[:, :, None, :, None])
    return crops * inside


@keras.saving.register_keras_serializable(package=PACKAGE)
class ROIAlign(keras.layers.Layer):
    """``roi_align`` as a layer: call with ``[boxes, P2, P3, P4, P5]``.

    Args:
        image_size: the network input, an int or (height, width), for the level choice.
        pool_size: the output cells, an int or (height, width); 7 for the box head, 14 for the
            mask head in Mask R-CNN.

    Returns:
        (batch, num_boxes, pool_h, pool_w, C).
    """

    def __init__(self, image_size, pool_size=7, **kwargs):
        super().__init__(**kwargs)
        self.image_size = _pair(image_size, "image_size")
        self.pool_size = _pair(pool_size, "pool_size")

    def call(self, inputs):
        boxes, *feature_maps = inputs
        return roi_align(feature_maps, boxes, self.pool_size, self.image_size)

    def compute_output_shape(self, input_shape):
        boxes_shape, p2_shape = input_shape[0], input_shape[1]
        return (boxes_shape[0], boxes_shape[1], *self.pool_size, p2_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": list(self.image_size),
            "pool_size": list(self.pool_size),
        }


# ---------------------------------------------------------------------------------------------
# Non-maximum suppression


def _check_nms_inputs(boxes, scores, max_output: int) -> int:
    if len(boxes.shape) != 2 or boxes.shape[-1] != 4 or boxes.shape[0] is None:
        raise ValueError(
            f"boxes must be (num_boxes, 4) with a static num_boxes (one image), "
            f"got {tuple(boxes.shape)}"
        )
    if tuple(scores.shape) != (boxes.shape[0],):
        raise ValueError(
            f"scores must be (num_boxes,) = ({boxes.shape[0]},), got {tuple(scores.shape)}"
        )
    if int(max_output) < 1:
        raise ValueError(f"max_output must be a positive integer, got {max_output!r}")
    return int(boxes.shape[0])


def nms_padded(
    boxes,
    scores,
    max_output: int,
    iou_threshold: float = 0.5,
    score_threshold: float = float("-inf"),
):
    """Greedy non-maximum suppression of one image with fixed-size outputs.

    Boxes are visited from the highest score down; a box is kept unless its IoU with a kept box
    is above ``iou_threshold``; boxes whose score is not above ``score_threshold`` are dropped
    (Faster R-CNN section 3.3; matterport's ``tf.image.non_max_suppression``). Corners may come
    in either order (each box is canonicalised) and a box of zero area overlaps nothing.

    Under the TensorFlow backend this is ``NonMaxSuppressionV4`` with
    ``pad_to_max_output_size=True``, which the TFLite converter turns into its builtin
    ``NON_MAX_SUPPRESSION_V4`` (``tf.image.non_max_suppression_padded`` instead becomes a
    ``WHILE`` loop of ~20 operators); other backends run ``greedy_nms_padded``, which keeps the
    same boxes.

    Args:
        boxes: (num_boxes, 4) ``(y1, x1, y2, x2)``, static num_boxes.
        scores: (num_boxes,).
        max_output: the length of the padded output.

    Returns:
        ``(indices, count)``: (max_output,) int32 indices into ``boxes`` of the kept boxes in
        descending score order, padded with 0 after the first ``count``; count an int32 scalar.
    """
    boxes = ops.convert_to_tensor(boxes)
    scores = ops.convert_to_tensor(scores)
    _check_nms_inputs(boxes, scores, max_output)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # pad_to_max_output_size makes the shapes static; TF and TFLite pad with 0 as well.
        return tf.raw_ops.NonMaxSuppressionV4(
            boxes=tf.cast(boxes, tf.float32),
            scores=tf.cast(scores, tf.float32),
            max_output_size=int(max_output),
            iou_threshold=float(iou_threshold),
            score_threshold=float(score_threshold),
            pad_to_max_output_size=True,
        )
    return greedy_nms_padded(boxes, scores, max_output, iou_threshold, score_threshold)


def greedy_nms_padded(
    boxes,
    scores,
    max_output: int,
    iou_threshold: float = 0.5,
    score_threshold: float = float("-inf"),
):
    """``nms_padded`` in ``keras.ops``: ``max_output`` rounds of "keep the best, drop overlaps".

    Any backend; ``nms_padded`` uses it outside TensorFlow. Equal scores go to the lower index,
    as TensorFlow's kernel does. Same arguments and outputs as ``nms_padded``.
    """
    boxes = ops.cast(ops.convert_to_tensor(boxes), "float32")
    scores = ops.cast(ops.convert_to_tensor(scores), "float32")
    num_boxes = _check_nms_inputs(boxes, scores, max_output)
    y1, x1, y2, x2 = _corners(boxes)
    canonical = ops.stack(
        [ops.minimum(y1, y2), ops.minimum(x1, x2), ops.maximum(y1, y2), ops.maximum(x1, x2)],
        axis=-1,
    )
    overlaps = box_iou(canonical, canonical) > float(iou_threshold)  # (num_boxes, num_boxes)
    box_ids = ops.arange(num_boxes, dtype="int32")
    slots = ops.arange(int(max_output), dtype="int32")
    lowest = ops.full_like(scores, -np.inf)

    def keep_best(_, state):
        alive, indices, count = state
        best = ops.cast(ops.argmax(ops.where(alive, scores, lowest)), "int32")
        found = ops.take(alive, best)
        indices = ops.where(ops.logical_and(found, ops.equal(slots, count)), best, indices)
        count = count + ops.cast(found, "int32")
        dropped = ops.logical_or(ops.take(overlaps, best, axis=0), ops.equal(box_ids, best))
        return ops.logical_and(alive, ops.logical_not(dropped)), indices, count

    state = (
        scores > float(score_threshold),
        ops.zeros((int(max_output),), "int32"),
        ops.convert_to_tensor(0, "int32"),
    )
    _, indices, count = ops.fori_loop(0, int(max_output), keep_best, state)
    return indices, count
