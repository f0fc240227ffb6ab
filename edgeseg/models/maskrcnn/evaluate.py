"""COCO box and mask AP of a Mask R-CNN predictor on a dataset, in the frames' own pixels.

The predictor is any callable from a (S, S, 3) uint8 model input to the detection dict of
``build_mobile_mask_rcnn`` (NumPy arrays, batch 1): the Keras model, its TFLite or ONNX export.
Detections are mapped back from the padded square input to each original frame (masks pasted
at the model's size, cropped to the image's window, resized with nearest neighbour), then
scored by pycocotools against the dataset's own annotations.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from edgeseg.data import CocoInstances
from edgeseg.instances import coco_category_ids, coco_instance_eval, encode_mask, paste_masks
from edgeseg.models.maskrcnn.dataset import frame_boxes, resize_square

Predictor = Callable[[np.ndarray], dict]


def frame_detections(outputs: dict, input_size: int, scale: float, window: tuple[int, int],
                     frame_size: tuple[int, int], mode: str = "bilinear",
                     threshold: float = 0.5) -> dict:
    """Padded detections of the model input -> the frame's boxes (x0, y0, x1, y1) and masks.

    Returns:
        ``{"boxes": (n, 4) float32 pixels, "classes": (n,), "scores": (n,), "masks": (n, H, W)
        bool}``, n the valid count.
    """
    count = int(np.asarray(outputs["count"]).reshape(-1)[0])
    boxes = np.asarray(outputs["boxes"]).reshape(-1, 4)[:count]
    classes = np.asarray(outputs["classes"]).reshape(-1)[:count].astype(np.int32)
    scores = np.asarray(outputs["scores"]).reshape(-1)[:count].astype(np.float32)
    small = np.asarray(outputs["masks"]).reshape(-1, *np.shape(outputs["masks"])[-2:])[:count]
    height, width = frame_size
    masks = np.zeros((count, height, width), bool)
    if count:
        pasted = paste_masks(small, boxes, (input_size, input_size), mode=mode,
                             threshold=threshold)
        for i, mask in enumerate(pasted):
            inside = mask[: window[0], : window[1]].astype(np.uint8)
            masks[i] = cv2.resize(inside, (width, height), interpolation=cv2.INTER_NEAREST) > 0
    return {"boxes": frame_boxes(boxes, scale, input_size, frame_size), "classes": classes,
            "scores": scores, "masks": masks}


def evaluate_instances(predict: Predictor, instances: CocoInstances, input_size: int,
                       limit: int | None = None, mode: str = "bilinear") -> dict:
    """COCO box / mask AP, AP50, AP75 of ``predict`` on (the first ``limit``) images.

    Returns:
        ``{"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75",
        "num_images", "num_detections"}``.
    """
    import json

    gt = json.loads(instances.index.annotation_file.read_text())
    categories = coco_category_ids(gt)
    count = len(instances) if limit is None else min(limit, len(instances))
    results, image_ids = [], []
    for i in range(count):
        sample = instances[i]
        frame = sample["image"]
        image, scale, window = resize_square(frame, input_size)
        found = frame_detections(predict(image), input_size, scale, window, frame.shape[:2],
                                 mode=mode)
        image_ids.append(int(sample["image_id"]))
        for box, class_id, score, mask in zip(found["boxes"], found["classes"], found["scores"],
                                              found["masks"], strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append({"image_id": int(sample["image_id"]),
                            "category_id": int(categories[class_id - 1]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score),
                            "segmentation": encode_mask(mask)})
    gt["images"] = [im for im in gt["images"] if int(im["id"]) in set(image_ids)]
    gt["annotations"] = [a for a in gt["annotations"] if int(a["image_id"]) in set(image_ids)]
    scores = coco_instance_eval(gt, results)
    return {**{k: float(v) for k, v in scores.items()}, "num_images": count,
            "num_detections": len(results)}


def keras_predictor(model) -> Predictor:
    """A compiled predictor over a Keras Mask R-CNN inference model (uint8 image in)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def run(x):
        return model(x, training=False)

    def predict(image: np.ndarray) -> dict:
        x = tf.convert_to_tensor(image[None].astype(np.float32) / 255.0)
        return {k: np.asarray(v) for k, v in run(x).items()}

    return predict
