"""The mobile Mask R-CNN's hyperparameters, its backbones' feature layers and its training recipe.

``MaskRCNNConfig`` holds everything the graph depends on, so that the inference model
(``network.build_mobile_mask_rcnn``) and a training graph built from the same parts
(``network.build_trunk``, ``build_box_head``, ``build_mask_head``) agree on anchors, channels and
head sizes. Defaults are matterport/Mask_RCNN's (ANCHORS.md) except where a mobile budget
changes them; each such default says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeseg.models.maskrcnn.ops import (
    ANCHOR_RATIOS,
    FPN_STRIDES,
    generate_anchors,
    mobile_anchor_scales,
)

# ---------------------------------------------------------------------------------------------
# Backbones


@dataclass(frozen=True)
class BackboneSpec:
    """A keras.applications backbone: where C2-C5 are and where each stage begins.

    ``feature_layers`` are the layers whose outputs are C2-C5 (strides 4, 8, 16, 32: the last
    layer before each stride-2 step, and the network's output for C5). ``stage_starts`` maps a
    stage number (2-5, matterport's ResNet stages) to the first layer of that stage, the one
    that halves the resolution; ``freeze_backbone`` freezes every layer before it.
    """

    application: str  # attribute of keras.applications
    feature_layers: tuple[str, str, str, str]
    stage_starts: dict[int, str]


BACKBONES: dict[str, BackboneSpec] = {
    # MobileNet V1 (Howard et al. 2017, table 1): depthwise convs 2, 4, 6 and 12 have stride 2;
    # Keras pads before them with conv_pad_<n>.
    "mobilenet": BackboneSpec(
        application="MobileNet",
        feature_layers=("conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_13_relu"),
        stage_starts={2: "conv_pad_2", 3: "conv_pad_4", 4: "conv_pad_6", 5: "conv_pad_12"},
    ),
    # MobileNet V2 (Sandler et al. 2018, table 2): blocks 1, 3, 6 and 13 have stride 2; C5 is the
    # final 1x1 conv's output (out_relu), the application's output without its classifier.
    "mobilenet_v2": BackboneSpec(
        application="MobileNetV2",
        feature_layers=("block_2_add", "block_5_add", "block_12_add", "out_relu"),
        stage_starts={2: "block_1_expand", 3: "block_3_expand", 4: "block_6_expand",
                      5: "block_13_expand"},
    ),
}
BACKBONE_ALIASES = {"mobilenet_v1": "mobilenet", "v1": "mobilenet", "v2": "mobilenet_v2"}

# The input is divided by 32 (C5) and FPN adds its levels by exact 2x upsampling.
INPUT_MULTIPLE = 32


def backbone_spec(name: str) -> BackboneSpec:
    """The ``BACKBONES`` entry for ``name`` (aliases: ``mobilenet_v1``, ``v1``, ``v2``)."""
    key = BACKBONE_ALIASES.get(name, name)
    if key not in BACKBONES:
        valid = ", ".join(sorted({*BACKBONES, *BACKBONE_ALIASES}))
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {valid}")
    return BACKBONES[key]


# ---------------------------------------------------------------------------------------------
# Graph hyperparameters


@dataclass(frozen=True)
class MaskRCNNConfig:
    """What the mobile Mask R-CNN graph depends on.

    Args:
        num_classes: classes including the background (class 0), as matterport's
            ``NUM_CLASSES``: 81 for COCO's 80.
        image_size: the fixed network input (height, width), multiples of 32.
        channels: input channels (3).
        backbone: "mobilenet" (V1) or "mobilenet_v2" (see ``BACKBONES``).
        alpha: the MobileNet width multiplier.
        backbone_weights: a local .h5 / .weights.h5 file of the keras.applications backbone
            (``include_top=False``) or None for a random initialisation; nothing is downloaded.
        fpn_channels: channels of P2-P6; matterport has 256, the mobile default 128.
        rpn_channels: the RPN's shared 3x3 conv; matterport has 512, the mobile default 256.
        box_fc: width of the box head's two fully connected layers; matterport (and the FPN
            paper's "2fc" head) have 1024, the mobile default 512.
        mask_channels: channels of the mask head's four 3x3 convs and its transposed conv;
            matterport has 256, the mobile default 128.
        anchor_scales: one per level P2-P6, in pixels; None: ``mobile_anchor_scales`` of the
            input, (16, ..., 256) at 512 x 512 as GustavZ/Mobile_Mask_RCNN.
        anchor_ratios: width / height ratios of the anchors, (0.5, 1, 2).
        pre_nms: anchors kept by objectness before the RPN's NMS (matterport: 6000; the mobile
            default 1000).
        rpn_nms: IoU threshold of the RPN's NMS (0.7).
        proposals: ROIs after the RPN's NMS at inference (matterport: 1000; GustavZ: 100).
        max_detections: detections per image (100).
        min_confidence: detections need at least this class probability (0.7).
        detection_nms: IoU threshold of the per-class NMS of the detections (0.3).
        box_pool, mask_pool: ROIAlign output sizes of the box (7) and mask (14) heads.
    """

    num_classes: int
    image_size: tuple[int, int] = (512, 512)
    channels: int = 3
    backbone: str = "mobilenet_v2"
    alpha: float = 1.0
    backbone_weights: str | None = None
    fpn_channels: int = 128
    rpn_channels: int = 256
    box_fc: int = 512
    mask_channels: int = 128
    anchor_scales: tuple[float, ...] | None = None
    anchor_ratios: tuple[float, ...] = field(default=ANCHOR_RATIOS)
    pre_nms: int = 1000
    rpn_nms: float = 0.7
    proposals: int = 100
    max_detections: int = 100
    min_confidence: float = 0.7
    detection_nms: float = 0.3
    box_pool: int = 7
    mask_pool: int = 14

    def __post_init__(self):
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or (
            self.num_classes < 2
        ):
            raise ValueError(
                f"num_classes counts the background (class 0) and at least one object class, "
                f"so it must be an integer >= 2 (81 for COCO); got {self.num_classes!r}"
            )
        height, width = (int(v) for v in self.image_size)
        object.__setattr__(self, "image_size", (height, width))
        if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE or min(height, width) < 64:
            raise ValueError(
                f"image_size must be multiples of {INPUT_MULTIPLE}, at least 64 (C5 has stride "
                f"32, P6 64), e.g. (512, 512); got {self.image_size}"
            )
        object.__setattr__(self, "backbone", self._canonical_backbone())
        scales = self.anchor_scales
        scales = mobile_anchor_scales(self.image_size) if scales is None else scales
        object.__setattr__(self, "anchor_scales", tuple(float(s) for s in scales))
        object.__setattr__(self, "anchor_ratios", tuple(float(r) for r in self.anchor_ratios))
        if len(self.anchor_scales) != len(FPN_STRIDES):
            raise ValueError(
                f"anchor_scales needs one scale per level P2-P6 ({len(FPN_STRIDES)}), got "
                f"{self.anchor_scales}"
            )
        for name in ("channels", "fpn_channels", "rpn_channels", "box_fc", "mask_channels",
                     "pre_nms", "proposals", "max_detections", "box_pool", "mask_pool"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("rpn_nms", "detection_nms", "min_confidence"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha (the width multiplier) must be positive, got {self.alpha!r}")

    def _canonical_backbone(self) -> str:
        backbone_spec(self.backbone)  # raises with the valid names
        return BACKBONE_ALIASES.get(self.backbone, self.backbone)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    @property
    def anchors_per_location(self) -> int:
        return len(self.anchor_ratios)

    def anchors(self) -> np.ndarray:
        """The (N, 4) normalised anchors of P2-P6 in the RPN's output order."""
        return generate_anchors(self.image_size, self.anchor_scales, self.anchor_ratios,
                                FPN_STRIDES)

    @property
    def num_anchors(self) -> int:
        height, width = self.image_size
        cells = sum(-(-height // s) * -(-width // s) for s in FPN_STRIDES)
        return cells * self.anchors_per_location


# ---------------------------------------------------------------------------------------------
# Training recipe (matterport/Mask_RCNN's defaults, ANCHORS.md)

RECIPE = {
    "optimizer": "sgd",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "rpn_train_anchors": 256,  # RPN_TRAIN_ANCHORS_PER_IMAGE
    "train_rois": 200,  # TRAIN_ROIS_PER_IMAGE
    "roi_positive_ratio": 0.33,
    "post_nms_rois_training": 2000,
    "pre_nms_training": 6000,
    "mask_shape": (28, 28),
    "train_bn": False,  # matterport freezes batch norm (small batches)
}
