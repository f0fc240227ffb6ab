"""Mobile Mask R-CNN (He et al. 2017; GustavZ/Mobile_Mask_RCNN) that converts to builtin TFLite.

This folder holds the family's parts; ``ops`` has the anchors, box arithmetic, ROIAlign and
non-maximum suppression, all with static shapes and TFLite builtin operators only.
"""

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
    "BBOX_STD_DEV",
    "FPN_STRIDES",
    "ROIAlign",
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
