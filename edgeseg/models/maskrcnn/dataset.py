"""Instance samples for Mask R-CNN: COCO-format data (or the synthetic scenes) at the model's size.

Images are resized as matterport's ``resize_image(mode="square")`` does: the longer side is
scaled to the model's input size, keeping the aspect ratio, and the rest is zero padding (here
at the bottom and right, so that normalised coordinates of the padded image map back to the
frame by one scale). Masks are resized with nearest neighbour and the boxes taken from the
resized masks (matterport's ``extract_bboxes``), so boxes and masks always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeseg.instances import mask_boxes, resize_square
from edgeseg.models.maskrcnn.ops import normalize_boxes

__all__ = ["InstanceSample", "prepare_instances"]

@dataclass
class InstanceSample:
    """One image at the model's input size and its instances.

    ``image`` (S, S, 3) uint8 RGB; ``boxes`` (N, 4) float32 normalised (y1, x1, y2, x2) in the
    padded image (:func:`edgeseg.models.maskrcnn.ops.normalize_boxes`); ``class_ids`` (N,)
    int32 in 1..K; ``masks`` (N, S, S) uint8 0/1; ``scale`` the resize factor and ``window``
    the (height, width) of the image inside the padding, in model pixels.
    """

    image: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    masks: np.ndarray
    scale: float
    window: tuple[int, int]
    image_id: int | None = None


def prepare_instances(sample: dict, size: int, min_pixels: int = 4) -> InstanceSample:
    """A :class:`CocoInstances` sample at the model's (size, size) input.

    Instances whose mask keeps fewer than ``min_pixels`` pixels after resizing are dropped.
    """
    image, scale, window = resize_square(sample["image"], size)
    masks = np.zeros((0, size, size), np.uint8)
    if len(sample["masks"]):
        # cv2.resize takes at most 512 channels: resize masks one by one.
        masks = np.stack([resize_square(m, size)[0] if m.ndim == 2 else m
                          for m in sample["masks"].astype(np.uint8)])
        masks = (masks > 0).astype(np.uint8)
    keep = masks.reshape(len(masks), -1).sum(axis=1) >= min_pixels
    masks = masks[keep]
    boxes = normalize_boxes(mask_boxes(masks), size) if len(masks) else np.zeros((0, 4), np.float32)
    return InstanceSample(
        image=image, boxes=boxes.astype(np.float32),
        class_ids=np.asarray(sample["class_ids"], np.int32)[keep], masks=masks,
        scale=float(scale), window=window, image_id=sample.get("image_id"),
    )
