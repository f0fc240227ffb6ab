"""COCO box and mask AP of a Mask R-CNN predictor on a dataset, in the frames' own pixels.

The predictor is any callable from a (S, S, 3) uint8 model input to the detection dict of
``build_mobile_mask_rcnn`` (NumPy arrays, batch 1): the Keras model, its TFLite or ONNX export.
Detections are mapped back from the padded square input to each original frame (masks pasted
at the model's size, cropped to the image's window, resized with nearest neighbour), then
scored by pycocotools against the dataset's own annotations.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeseg.data import CocoInstances
from edgeseg.instances import (
    coco_category_ids,
    coco_instance_eval,
    encode_mask,
    frame_detections,
    resize_square,
)

Predictor = Callable[[np.ndarray], dict]


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
