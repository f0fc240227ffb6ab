"""Mobile Mask R-CNN (He et al. 2017) on a MobileNet backbone, as one static-shape graph.

The design of matterport/Mask_RCNN with GustavZ/Mobile_Mask_RCNN's MobileNet backbones and
512 x 512 input (ANCHORS.md): backbone C2-C5, FPN P2-P6 (Lin et al. 2017), a region proposal
network shared over the levels (Faster R-CNN, Ren et al. 2015), ROIAlign (Mask R-CNN section 3)
into a box head and a mask head. Every tensor has a static shape and the graph converts to TFLite
with builtin operators only: ROIAlign samples with gathers (``ops.roi_align``), both NMS steps
are TFLite's builtin ``NON_MAX_SUPPRESSION_V4`` (``ops.nms_padded``), and the per-class NMS of the
detections is one NMS call on boxes shifted by their class.

The model is built from four parts that a training graph reuses (same weights):

- ``build_trunk(config)``: image in [0, 1] -> ``{"rpn_logits", "rpn_deltas", "p2".."p5"}``;
- ``ProposalLayer``: RPN outputs -> fixed-size ROIs (inference only; training samples ROIs);
- ``build_box_head(config)``: ROIAlign 7x7 crops -> class logits and per-class box deltas;
- ``build_mask_head(config)``: ROIAlign 14x14 crops -> 28x28 per-class mask logits.

``assemble_mask_rcnn(config, trunk, box_head, mask_head)`` joins them into the inference model;
``build_mobile_mask_rcnn`` builds the parts and joins them.

Conventions: channels-last; boxes ``(y1, x1, y2, x2)`` normalised as in ``ops``; class 0 is the
background; deltas are divided by ``ops.BBOX_STD_DEV`` as matterport's.
"""

from __future__ import annotations

import os

import keras
from keras import layers, ops

from edgeseg.models.layers import PACKAGE, first_argmax
from edgeseg.models.maskrcnn.config import (
    BACKBONES,
    RECIPE,
    MaskRCNNConfig,
    backbone_spec,
)
from edgeseg.models.maskrcnn.ops import (
    ANCHOR_RATIOS,
    BBOX_STD_DEV,
    FPN_STRIDES,
    ROIAlign,
    clip_boxes,
    decode_boxes,
    generate_anchors,
    mobile_anchor_scales,
    nms_padded,
)

OUTPUTS = ("detections", "all")
DETECTION_KEYS = ("boxes", "classes", "scores", "masks", "count")
TRUNK_KEYS = ("rpn_logits", "rpn_deltas", "p2", "p3", "p4", "p5")
FREEZE_STAGES = ("heads", "5+", "4+", "3+", "2+", "all")

# The per-class NMS shifts the boxes of class c by c * CLASS_OFFSET: boxes lie in [0, 1], so
# boxes of different classes never overlap and one NMS call suppresses within classes only.
CLASS_OFFSET = 2.0
# The proposal layer ranks anchors by int32(logit * RANK_SCALE): |logits| < 2^15 fit in int32.
RANK_SCALE = 65536.0
# The layers that write the logits and box deltas, and the reshapes / concatenations after
# them: an int8 export keeps them float (edgeseg.converters.maskrcnn_export).
PREDICTION_LAYERS = ("rpn_class_raw", "rpn_bbox_pred", "rpn_class_logits", "rpn_bbox",
                     "rpn_logits", "rpn_deltas", "box_class_logits", "box_deltas_raw",
                     "box_deltas", "mask_logits_conv", "mask_logits")


# --- layers -------------------------------------------------------------------------------------


def _per_image(function, tensors, layer_name: str):
    """Applies ``function`` to each image of a static batch and stacks the results.

    TFLite's NMS (and ``ops.nms_padded``) handles one image; the batch is unrolled, so it must
    be static: the inference model has batch size 1.
    """
    batch = tensors[0].shape[0]
    if batch is None:
        raise ValueError(
            f"{layer_name} runs NMS image by image and needs a static batch size; build the "
            f"model on keras.Input(..., batch_size=1), got shape {tuple(tensors[0].shape)}"
        )
    results = [function(*(t[i] for t in tensors)) for i in range(int(batch))]
    return tuple(ops.stack(parts, axis=0) for parts in zip(*results, strict=True))


def ranking_keys(logits):
    """int32(logit * RANK_SCALE): the logits' order to 2^-16, as integers, which TFLite's int8
    quantiser leaves exact (it runs top-k, max and equality of floats in int8)."""
    return ops.cast(ops.cast(logits, "float32") * RANK_SCALE, "int32")


def _zero_past(values, count, length: int):
    """``values`` (length, ...) with the entries from ``count`` on set to zero."""
    valid = ops.arange(length, dtype="int32") < count
    valid = ops.reshape(valid, (length,) + (1,) * (len(values.shape) - 1))
    return ops.where(valid, values, ops.zeros_like(values))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProposalLayer(keras.layers.Layer):
    """The RPN's proposals: top ``pre_nms`` anchors by objectness, decoded, clipped, NMS.

    Matterport's ``ProposalLayer`` (Faster R-CNN section 3.3) with static shapes: the anchors are
    constants of the input size, and the NMS output is padded with zero boxes to ``proposals``.

    Call with ``[rpn_logits (B, N), rpn_deltas (B, N, 4)]``, N the number of anchors; B static.

    Returns:
        ``(rois, count)``: rois (B, proposals, 4) normalised boxes in descending objectness,
        zero from ``count`` on; count (B,) int32.
    """

    def __init__(self, image_size, anchor_scales=None, anchor_ratios=ANCHOR_RATIOS,
                 pre_nms: int = 1000, proposals: int = 100, nms_threshold: float = 0.7,
                 **kwargs):
        super().__init__(**kwargs)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if anchor_scales is None:
            anchor_scales = mobile_anchor_scales(self.image_size)
        self.anchor_scales = tuple(float(s) for s in anchor_scales)
        self.anchor_ratios = tuple(float(r) for r in anchor_ratios)
        self.pre_nms = int(pre_nms)
        self.proposals = int(proposals)
        self.nms_threshold = float(nms_threshold)
        self.anchors = generate_anchors(self.image_size, self.anchor_scales, self.anchor_ratios,
                                        FPN_STRIDES)

    def _propose(self, logits, deltas):
        num_anchors = self.anchors.shape[0]
        if logits.shape[0] != num_anchors:
            raise ValueError(
                f"{self.name}: the RPN has {logits.shape[0]} outputs per image but the "
                f"{self.image_size} input has {num_anchors} anchors"
            )
        # Ranked by logit (the order of the sigmoid) on a 2^-16 grid, as int32 keys: the
        # float order to 1.5e-5, and integers keep an int8 export's top-k exact (TFLite's
        # quantiser runs a top-k of floats in int8, whose ties reorder the anchors).
        _, top = ops.top_k(ranking_keys(logits), min(self.pre_nms, num_anchors))
        top = ops.cast(top, "int32")
        scores = ops.take(logits, top, axis=0)
        anchors = ops.take(ops.convert_to_tensor(self.anchors), top, axis=0)
        boxes = clip_boxes(decode_boxes(ops.take(deltas, top, axis=0), anchors, BBOX_STD_DEV))
        keep, count = nms_padded(boxes, scores, self.proposals, self.nms_threshold)
        rois = _zero_past(ops.take(boxes, keep, axis=0), count, self.proposals)
        return rois, ops.cast(count, "int32")

    def call(self, inputs):
        logits, deltas = inputs
        return _per_image(self._propose, [logits, deltas], self.name)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        return (batch, self.proposals, 4), (batch,)

    def compute_output_spec(self, inputs):
        rois, count = self.compute_output_shape([tuple(x.shape) for x in inputs])
        return keras.KerasTensor(rois, dtype="float32"), keras.KerasTensor(count, dtype="int32")

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": list(self.image_size),
            "anchor_scales": list(self.anchor_scales),
            "anchor_ratios": list(self.anchor_ratios),
            "pre_nms": self.pre_nms,
            "proposals": self.proposals,
            "nms_threshold": self.nms_threshold,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class DetectionLayer(keras.layers.Layer):
    """Final detections from the box head: refine, filter, per-class NMS, top ``max_detections``.

    Matterport's ``refine_detections_graph``: each ROI takes its most probable class (background
    ROIs are dropped), that class's deltas refine the ROI (clipped to the image), ROIs below
    ``min_confidence`` are dropped, NMS with ``nms_threshold`` runs per class and the best
    ``max_detections`` remain. The per-class NMS is one NMS call on boxes shifted by
    ``class * CLASS_OFFSET``; its output in descending score order is what per-class NMS then a
    global top-k gives.

    Call with ``[rois (B, R, 4), roi_count (B,), class_logits (B, R, K), box_deltas (B, R, K,
    4)]``; ROIs from ``roi_count`` on are padding and ignored. B static.

    Returns:
        ``(boxes, classes, scores, count)``: (B, D, 4) float32, (B, D) int32, (B, D) float32,
        (B,) int32 with D = max_detections, in descending score order, zero from count on.
    """

    def __init__(self, max_detections: int = 100, min_confidence: float = 0.7,
                 nms_threshold: float = 0.3, **kwargs):
        super().__init__(**kwargs)
        self.max_detections = int(max_detections)
        self.min_confidence = float(min_confidence)
        self.nms_threshold = float(nms_threshold)

    def _detect(self, rois, roi_count, class_logits, box_deltas):
        num_rois, num_classes = int(class_logits.shape[0]), int(class_logits.shape[1])
        logits = ops.cast(class_logits, "float32")
        # The class by int32 keys of the logits, the score by arithmetic: comparisons, maxima
        # and SOFTMAX of floats share one int8 scale in TFLite's quantiser even where the ops
        # are kept float, and scores near 1 would tie at 255/256 (see RANK_SCALE).
        class_ids = first_argmax(ranking_keys(logits), axis=-1)
        exp = ops.exp(logits - ops.max(logits, axis=-1, keepdims=True))
        probs = exp / ops.sum(exp, axis=-1, keepdims=True)
        scores = ops.sum(probs * ops.one_hot(class_ids, num_classes), axis=-1)
        flat = ops.arange(num_rois, dtype="int32") * num_classes + class_ids
        deltas = ops.take(ops.reshape(box_deltas, (num_rois * num_classes, 4)), flat, axis=0)
        boxes = clip_boxes(decode_boxes(deltas, rois, BBOX_STD_DEV))
        valid = ops.logical_and(ops.arange(num_rois, dtype="int32") < roi_count, class_ids > 0)
        valid = ops.logical_and(valid, scores >= self.min_confidence)
        # Scores are probabilities; dropped ROIs get -1, below NMS's score threshold -0.5 (by
        # arithmetic: a select of floats would share one int8 scale, as above).
        kept = ops.cast(valid, "float32")
        nms_scores = scores * kept + (kept - 1.0)
        shifted = boxes + ops.expand_dims(ops.cast(class_ids, "float32") * CLASS_OFFSET, -1)
        keep, count = nms_padded(shifted, nms_scores, self.max_detections, self.nms_threshold,
                                 score_threshold=-0.5)
        count = ops.cast(count, "int32")
        size = self.max_detections
        return (
            _zero_past(ops.take(boxes, keep, axis=0), count, size),
            _zero_past(ops.take(class_ids, keep, axis=0), count, size),
            _zero_past(ops.take(scores, keep, axis=0), count, size),
            count,
        )

    def call(self, inputs):
        return _per_image(self._detect, list(inputs), self.name)

    def compute_output_shape(self, input_shape):
        batch, size = input_shape[0][0], self.max_detections
        return (batch, size, 4), (batch, size), (batch, size), (batch,)

    def compute_output_spec(self, inputs):
        shapes = self.compute_output_shape([tuple(x.shape) for x in inputs])
        return tuple(keras.KerasTensor(shape, dtype=dtype) for shape, dtype in
                     zip(shapes, ("float32", "int32", "float32", "int32"), strict=True))

    def get_config(self):
        return {
            **super().get_config(),
            "max_detections": self.max_detections,
            "min_confidence": self.min_confidence,
            "nms_threshold": self.nms_threshold,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class DetectionMasks(keras.layers.Layer):
    """The mask of each detection's class, as probabilities, zero for padding detections.

    Call with ``[mask_logits (B, D, h, w, K), classes (B, D) int32, count (B,) int32]``.

    Returns:
        (B, D, h, w) float32 sigmoid probabilities (Mask R-CNN section 3: one binary mask per
        class, the detected class's is used).
    """

    def call(self, inputs):
        mask_logits, classes, count = inputs
        _, detections, height, width, num_classes = (int(d) if d is not None else d
                                                     for d in mask_logits.shape)
        # (B, D, K, h, w): one gather picks the detected class's map of every detection.
        per_class = ops.reshape(ops.transpose(mask_logits, (0, 1, 4, 2, 3)),
                                (-1, height, width))
        batch = ops.shape(classes)[0]
        slots = ops.reshape(ops.arange(batch * detections, dtype="int32"), (-1, detections))
        index = slots * num_classes + ops.cast(classes, "int32")
        masks = ops.take(per_class, ops.reshape(index, (-1,)), axis=0)
        masks = ops.sigmoid(ops.reshape(masks, (-1, detections, height, width)))
        valid = ops.arange(detections, dtype="int32")[None, :] < ops.reshape(count, (-1, 1))
        return ops.where(valid[:, :, None, None], masks, ops.zeros_like(masks))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:4])


@keras.saving.register_keras_serializable(package=PACKAGE)
class NearestUpsampling(keras.layers.Layer):
    """Nearest-neighbour upsampling by an integer factor, as one image resize.

    ``keras.layers.UpSampling2D`` repeats with ``ops.repeat``, which TFLite gets as TILE and
    RESHAPE; a resize to the exact multiple is TFLite's builtin RESIZE_NEAREST_NEIGHBOR, which
    XNNPACK runs, and picks the same pixels (source ``floor((i + 0.5) / f) = i // f``).
    """

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            raise ValueError(f"{self.name} needs a static height and width, got {inputs.shape}")
        size = (int(height) * self.factor, int(width) * self.factor)
        return ops.cast(ops.image.resize(inputs, size, interpolation="nearest"), inputs.dtype)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        scaled = (None if d is None else d * self.factor for d in (h, w))
        return (n, *scaled, c)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MergeRoiAxis(keras.layers.Layer):
    """(B, R, ...) -> (B * R, ...), so that 2-D layers see each ROI as an image."""

    def call(self, inputs):
        return ops.reshape(inputs, (-1, *inputs.shape[2:]))

    def compute_output_shape(self, input_shape):
        batch, rois = input_shape[0], input_shape[1]
        merged = None if batch is None or rois is None else batch * rois
        return (merged, *input_shape[2:])


@keras.saving.register_keras_serializable(package=PACKAGE)
class SplitRoiAxis(keras.layers.Layer):
    """(B * R, ...) -> (B, R, ...), with B and R from a reference tensor (B, R, ...)."""

    def call(self, inputs):
        values, reference = inputs
        shape = ops.shape(reference)
        return ops.reshape(values, (shape[0], shape[1], *values.shape[1:]))

    def compute_output_shape(self, input_shape):
        values_shape, reference_shape = input_shape
        return (*reference_shape[:2], *values_shape[1:])


# --- graph --------------------------------------------------------------------------------------


def build_backbone(config: MaskRCNNConfig) -> keras.Model:
    """The keras.applications MobileNet / MobileNetV2 (no top) with outputs [C2, C3, C4, C5].

    The input is in MobileNet's range [-1, 1]. ``config.backbone_weights`` is a local file
    (Keras 3 ``.weights.h5`` or a legacy ``.h5`` such as keras-applications' ImageNet
    ``*_no_top.h5``), loaded into the application; nothing is downloaded.
    """
    spec = backbone_spec(config.backbone)
    weights = config.backbone_weights
    if weights is not None:
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"backbone_weights {weights!r} is not a file; give a local .h5 / .weights.h5 "
                f"of keras.applications.{spec.application}(include_top=False) or None"
            )
    application = getattr(keras.applications, spec.application)(
        input_shape=config.input_shape, alpha=config.alpha, include_top=False, weights=weights
    )
    features = [application.get_layer(name).output for name in spec.feature_layers]
    return keras.Model(application.inputs, features, name="backbone")


def _find_backbone(model: keras.Model) -> keras.Model:
    if model.name == "backbone":
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            try:
                return _find_backbone(layer)
            except ValueError:
                continue
    raise ValueError(f"model {model.name!r} has no nested model named 'backbone'")


def freeze_backbone(model: keras.Model, stage: str, train_bn: bool = RECIPE["train_bn"]) -> None:
    """Sets which backbone layers train, as matterport's ``train(layers=...)``.

    Args:
        model: the backbone, or a model that contains it (the trunk, the inference model or a
            training model) as a nested model named "backbone".
        stage: "heads" (the backbone is frozen; FPN, RPN and heads train), "5+", "4+", "3+",
            "2+" (the backbone trains from that stage up, ``BackboneSpec.stage_starts``) or "all".
        train_bn: whether the trainable stages' batch norms train too; matterport freezes them
            (``TRAIN_BN = False``), as small batches make poor statistics.
    """
    if stage not in FREEZE_STAGES:
        raise ValueError(f"stage must be one of {', '.join(FREEZE_STAGES)}; got {stage!r}")
    backbone = _find_backbone(model)
    names = [layer.name for layer in backbone.layers]
    spec = next((s for s in BACKBONES.values() if set(s.feature_layers) <= set(names)), None)
    if spec is None:
        raise ValueError(f"backbone {backbone.name!r} is none of {', '.join(BACKBONES)}")
    if stage == "heads":
        first = len(names)
    elif stage == "all":
        first = 0
    else:
        first = names.index(spec.stage_starts[int(stage[0])])
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        trainable = i >= first
        if isinstance(layer, layers.BatchNormalization) and not train_bn:
            trainable = False
        layer.trainable = trainable


def feature_pyramid(features, channels: int):
    """FPN (Lin et al. 2017, section 3) on [C2, C3, C4, C5]: [P2, P3, P4, P5, P6].

    1x1 lateral convs, top-down nearest-neighbour 2x upsampling and addition, a 3x3 conv per
    level; P6 is P5 subsampled by 2 (matterport's 1x1 max-pool of stride 2), for the RPN only.
    """
    c2, c3, c4, c5 = features
    top = layers.Conv2D(channels, 1, name="fpn_c5p5")(c5)
    merged = [top]
    for level, lateral in ((4, c4), (3, c3), (2, c2)):
        up = NearestUpsampling(2, name=f"fpn_p{level + 1}upsampled")(merged[-1])
        side = layers.Conv2D(channels, 1, name=f"fpn_c{level}p{level}")(lateral)
        merged.append(layers.Add(name=f"fpn_p{level}add")([up, side]))
    p5, p4, p3, p2 = (
        layers.Conv2D(channels, 3, padding="same", name=f"fpn_p{level}")(x)
        for level, x in zip((5, 4, 3, 2), merged, strict=True)
    )
    p6 = layers.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6]


def build_rpn_head(channels: int, rpn_channels: int, anchors_per_location: int) -> keras.Model:
    """The RPN head shared by the levels (Faster R-CNN section 3.1; FPN section 4.1).

    A 3x3 conv with ReLU, then per anchor one objectness logit (sigmoid; matterport has a
    two-way softmax, the same function with one output fewer) and 4 box deltas.

    Returns:
        A model (B, h, w, channels) -> [(B, h * w * A) logits, (B, h * w * A, 4) deltas] in
        row, column, ratio order, that of ``generate_anchors``.
    """
    feature_map = keras.Input((None, None, channels), name="feature_map")
    shared = layers.Conv2D(rpn_channels, 3, padding="same", activation="relu",
                           name="rpn_conv_shared")(feature_map)
    logits = layers.Conv2D(anchors_per_location, 1, name="rpn_class_raw")(shared)
    deltas = layers.Conv2D(4 * anchors_per_location, 1, name="rpn_bbox_pred")(shared)
    logits = layers.Reshape((-1,), name="rpn_class_logits")(logits)
    deltas = layers.Reshape((-1, 4), name="rpn_bbox")(deltas)
    return keras.Model(feature_map, [logits, deltas], name="rpn")


def build_trunk(config: MaskRCNNConfig) -> keras.Model:
    """Backbone, FPN and RPN: what runs once per image, in training and at inference.

    Input: ``image`` (B, H, W, C) float32 in [0, 1] (the house normalisation, 1 / 255); it is
    mapped to MobileNet's [-1, 1] in the graph.

    Returns:
        A model with the dict output ``{"rpn_logits": (B, N), "rpn_deltas": (B, N, 4), "p2":
        (B, H/4, W/4, F), ..., "p5": (B, H/32, W/32, F)}``, N = ``config.num_anchors`` in the
        order of ``config.anchors()``, F = ``config.fpn_channels``.
    """
    image = keras.Input(config.input_shape, name="image")
    x = layers.Rescaling(2.0, offset=-1.0, name="mobilenet_range")(image)
    pyramid = feature_pyramid(build_backbone(config)(x), config.fpn_channels)
    rpn = build_rpn_head(config.fpn_channels, config.rpn_channels, config.anchors_per_location)
    per_level = [rpn(p) for p in pyramid]
    logits = layers.Concatenate(axis=1, name="rpn_logits")([lv[0] for lv in per_level])
    deltas = layers.Concatenate(axis=1, name="rpn_deltas")([lv[1] for lv in per_level])
    if logits.shape[1] != config.num_anchors:
        raise AssertionError(f"RPN outputs {logits.shape[1]} != {config.num_anchors} anchors")
    outputs = {"rpn_logits": logits, "rpn_deltas": deltas}
    outputs.update({f"p{level}": p for level, p in zip((2, 3, 4, 5), pyramid, strict=False)})
    return keras.Model(image, outputs, name="trunk")


def build_box_head(config: MaskRCNNConfig) -> keras.Model:
    """The box head on 7x7 ROIAlign crops: two FC layers, class logits, per-class deltas.

    The FPN paper's "2fc" head (section 4.2) with ``config.box_fc`` units (1024 there and in
    matterport, whose two 1024 layers are a 7x7 valid conv and a 1x1 conv with batch norm; the
    mobile default is 512, without batch norm).

    Returns:
        A model (B, R, pool, pool, F) -> [class_logits (B, R, K), box_deltas (B, R, K, 4)], R any.
    """
    pool, channels, num_classes = config.box_pool, config.fpn_channels, config.num_classes
    crops = keras.Input((None, pool, pool, channels), name="box_crops")
    x = layers.Reshape((-1, pool * pool * channels), name="box_flatten")(crops)
    x = layers.Dense(config.box_fc, activation="relu", name="box_fc1")(x)
    x = layers.Dense(config.box_fc, activation="relu", name="box_fc2")(x)
    class_logits = layers.Dense(num_classes, name="box_class_logits")(x)
    deltas = layers.Dense(4 * num_classes, name="box_deltas_raw")(x)
    deltas = layers.Reshape((-1, num_classes, 4), name="box_deltas")(deltas)
    return keras.Model(crops, [class_logits, deltas], name="box_head")


def build_mask_head(config: MaskRCNNConfig) -> keras.Model:
    """The mask head on 14x14 ROIAlign crops (Mask R-CNN figure 4, right).

    Four 3x3 convs with batch norm and ReLU, a 2x2 stride-2 transposed conv with ReLU to 28x28,
    a 1x1 conv to one mask logit per class (sigmoid: Mask R-CNN's per-class binary masks).
    ``config.mask_channels`` is 256 in the paper, 128 by default here.

    Returns:
        A model (B, R, pool, pool, F) -> mask_logits (B, R, 2 pool, 2 pool, K), R any.
    """
    pool, width = config.mask_pool, config.mask_channels
    crops = keras.Input((None, pool, pool, config.fpn_channels), name="mask_crops")
    x = MergeRoiAxis(name="mask_rois_as_batch")(crops)
    for i in range(1, 5):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"mask_conv{i}")(x)
        x = layers.BatchNormalization(name=f"mask_bn{i}")(x)
        x = layers.ReLU(name=f"mask_relu{i}")(x)
    x = layers.Conv2DTranspose(width, 2, strides=2, name="mask_deconv")(x)
    x = layers.ReLU(name="mask_deconv_relu")(x)
    x = layers.Conv2D(config.num_classes, 1, name="mask_logits_conv")(x)
    return keras.Model(crops, SplitRoiAxis(name="mask_logits")([x, crops]), name="mask_head")


def assemble_mask_rcnn(
    config: MaskRCNNConfig,
    trunk: keras.Model,
    box_head: keras.Model,
    mask_head: keras.Model,
    output: str = "detections",
    name: str = "mobile_mask_rcnn",
) -> keras.Model:
    """The inference model over given parts (e.g. those a training graph trained).

    Args:
        output: "detections" (the dict of ``build_mobile_mask_rcnn``) or "all" (also "rois"
            (1, proposals, 4), "roi_count" (1,), "class_logits" and "box_deltas" of the ROIs and
            "mask_logits" of the detections, for inspection).
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
    image = keras.Input(config.input_shape, batch_size=1, name="image")
    features = trunk(image)
    pyramid = [features[f"p{level}"] for level in (2, 3, 4, 5)]
    rois, roi_count = ProposalLayer(
        config.image_size, config.anchor_scales, config.anchor_ratios, pre_nms=config.pre_nms,
        proposals=config.proposals, nms_threshold=config.rpn_nms, name="proposals",
    )([features["rpn_logits"], features["rpn_deltas"]])
    box_crops = ROIAlign(config.image_size, config.box_pool, name="roi_align_boxes")(
        [rois, *pyramid]
    )
    class_logits, box_deltas = box_head(box_crops)
    boxes, classes, scores, count = DetectionLayer(
        config.max_detections, config.min_confidence, config.detection_nms, name="detections"
    )([rois, roi_count, class_logits, box_deltas])
    mask_crops = ROIAlign(config.image_size, config.mask_pool, name="roi_align_masks")(
        [boxes, *pyramid]
    )
    mask_logits = mask_head(mask_crops)
    masks = DetectionMasks(name="masks")([mask_logits, classes, count])
    outputs = {"boxes": boxes, "classes": classes, "scores": scores, "masks": masks,
               "count": count}
    if output == "all":
        outputs.update(rois=rois, roi_count=roi_count, class_logits=class_logits,
                       box_deltas=box_deltas, mask_logits=mask_logits)
    return keras.Model(image, outputs, name=name)


def build_mobile_mask_rcnn(
    num_classes: int,
    input_shape: tuple[int, int, int] = (512, 512, 3),
    backbone: str = "mobilenet_v2",
    alpha: float = 1.0,
    backbone_weights: str | os.PathLike | None = None,
    proposals: int = 100,
    max_detections: int = 100,
    min_confidence: float = 0.7,
    detection_nms: float = 0.3,
    rpn_nms: float = 0.7,
    pre_nms: int = 1000,
    output: str = "detections",
    name: str = "mobile_mask_rcnn",
    **options,
) -> keras.Model:
    """Builds the mobile Mask R-CNN inference model for one image at a fixed size.

    Args:
        num_classes: classes including the background (class 0): 81 for COCO.
        input_shape: (H, W, C), H and W multiples of 32; 512 x 512 as GustavZ/Mobile_Mask_RCNN.
        backbone: "mobilenet" (V1) or "mobilenet_v2".
        alpha: the MobileNet width multiplier.
        backbone_weights: a local backbone weights file (see ``build_backbone``) or None.
        proposals: ROIs after the RPN's NMS (GustavZ: 100 at inference; matterport 1000).
        max_detections, min_confidence, detection_nms: the detection layer's settings.
        rpn_nms, pre_nms: the proposal layer's NMS threshold and its input size.
        output: "detections" or "all" (see ``assemble_mask_rcnn``).
        **options: the other fields of ``MaskRCNNConfig``: ``fpn_channels`` (128 by default
            for mobile; matterport 256), ``rpn_channels`` (256; 512), ``box_fc`` (512; 1024),
            ``mask_channels`` (128; 256), ``anchor_scales``, ``anchor_ratios``.

    Returns:
        A keras.Model from ``image`` (1, H, W, C) float32 in [0, 1] to the dict
        ``{"boxes": (1, D, 4) float32 normalised (y1, x1, y2, x2), "classes": (1, D) int32
        (1..K-1), "scores": (1, D) float32, "masks": (1, D, 28, 28) float32 probabilities of
        the detected class inside its box (resize to the box to paste), "count": (1,) int32}``,
        D = max_detections, sorted by score, zero from count on. The batch is 1: TFLite's NMS
        works on one image.
    """
    height, width, channels = (int(d) for d in input_shape)
    config = MaskRCNNConfig(
        num_classes=num_classes, image_size=(height, width), channels=channels,
        backbone=backbone, alpha=alpha,
        backbone_weights=None if backbone_weights is None else os.fspath(backbone_weights),
        proposals=proposals, max_detections=max_detections, min_confidence=min_confidence,
        detection_nms=detection_nms, rpn_nms=rpn_nms, pre_nms=pre_nms, **options,
    )
    return assemble_mask_rcnn(config, build_trunk(config), build_box_head(config),
                              build_mask_head(config), output=output, name=name)

