"""Mobile Mask R-CNN (He et al. 2017; GustavZ/Mobile_Mask_RCNN) that converts to builtin TFLite.

This folder holds the family's parts; ``ops`` has the anchors, box arithmetic, ROIAlign and
non-maximum suppression, all with static shapes and TFLite builtin operators only; ``config``
the hyperparameters, backbones and training recipe; ``network`` the graph (trunk, heads,
proposal and detection layers) and ``build_mobile_mask_rcnn``.
"""

from edgeseg.models.maskrcnn.config import BACKBONES, RECIPE, MaskRCNNConfig
from edgeseg.models.maskrcnn.network import (
    DetectionLayer,
    DetectionMasks,
    ProposalLayer,
    assemble_mask_rcnn,
    build_box_head,
    build_mask_head,
    build_mobile_mask_rcnn,
    build_trunk,
    freeze_backbone,
)
from edgeseg.models.maskrcnn.ops import (
    ANCHOR_RATIOS,
    ANCHOR_SCALES,
    BBOX_STD_DEV,
    FPN_STRIDES,
    ROIAlign,
    box_iou,
    clip_boxes,
    decode_boxes,
    denormalize_boxes,
    encode_boxes,
    generate_anchors,
    greedy_nms_padded,
    mobile_anchor_scales,
    nms_padded,
    normalize_boxes,
    roi_align,
    roi_levels,
)

__all__ = [
    "ANCHOR_RATIOS",
    "ANCHOR_SCALES",
    "BACKBONES",
    "BBOX_STD_DEV",
    "FPN_STRIDES",
    "RECIPE",
    "DetectionLayer",
    "DetectionMasks",
    "MaskRCNNConfig",
    "ProposalLayer",
    "ROIAlign",
    "assemble_mask_rcnn",
    "build_box_head",
    "build_mask_head",
    "build_mobile_mask_rcnn",
    "build_trunk",
    "freeze_backbone",
    "box_iou",
    "clip_boxes",
    "decode_boxes",
    "denormalize_boxes",
    "encode_boxes",
    "generate_anchors",
    "greedy_nms_padded",
    "mobile_anchor_scales",
    "nms_padded",
    "normalize_boxes",
    "roi_align",
    "roi_levels",
]
