"""Instance segmentation outputs: masks pasted into the image, COCO results and COCO evaluation.

Post-processing and scoring for Mask R-CNN detections (boxes, classes, scores and small
per-detection masks), with NumPy and OpenCV only, so that it runs on a device without
TensorFlow; pycocotools (``pip install "edgeseg[coco]"``) is imported when a function needs it.

Boxes are normalised ``(y1, x1, y2, x2)`` as in ``edgeseg.models.maskrcnn.ops``
(matterport's ``norm_boxes``: a coordinate c is pixel ``c * (size - 1)``; the pixel box of a
normalised box is ``(y1 (H-1), x1 (W-1), y2 (H-1) + 1, x2 (W-1) + 1)``, y2 and x2 exclusive).
Class ids are contiguous, 1..K with 0 background, as ``edgeseg.data.coco`` numbers COCO's
categories (sorted by category id); ``coco_category_ids`` gives the way back.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "DETECTION_KEYS",
    "coco_category_ids",
    "coco_instance_eval",
    "detections_to_coco",
    "evaluate_instances",
    "instances_to_panoptic",
    "detection_roles",
    "paste_masks",
    "pixel_boxes",
]

DETECTION_KEYS = ("boxes", "classes", "scores", "masks", "count")
"""The five outputs of an instance model: boxes (1, D, 4) float, classes (1, D) int, scores
(1, D) float, masks (1, D, h, w) float and count (1,) int."""

PASTE_MODES = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
# COCOeval.stats indices of AP, AP50 and AP75 (IoU 0.5:0.95, 0.5, 0.75; all areas; 100 dets).
_STATS = {"AP": 0, "AP50": 1, "AP75": 2}
_IOU_TYPES = {"box": "bbox", "mask": "segm"}


def _detection_role(shape: Sequence, is_float: bool) -> str | None:
    """Which detection output a tensor of this shape and type is (None: none of them)."""
    rank = len(shape)
    if rank == 4 and is_float:
        return "masks"
    if rank == 3 and shape[-1] == 4 and is_float:
        return "boxes"
    if rank == 2:
        return "scores" if is_float else "classes"
    if rank == 1 and not is_float:
        return "count"
    return None


def detection_roles(specs: Sequence[tuple[Sequence, bool]]) -> list[str] | None:
    """The role of each output given as (shape, is_float), or None unless the outputs are
    exactly the five :data:`DETECTION_KEYS`: what makes a model an instance model, whatever
    its outputs are called (a .tflite file's names are the converter's)."""
    roles = [_detection_role(shape, is_float) for shape, is_float in specs]
    return roles if sorted(map(str, roles)) == sorted(DETECTION_KEYS) else None


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError:
        raise ImportError(
            'COCO results and evaluation need pycocotools: pip install "edgeseg[coco]"'
        ) from None
    return mask_api


def _image_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    height, width = (int(v) for v in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be a positive (height, width), got {image_size!r}")
    return height, width


def pixel_boxes(boxes, image_size) -> np.ndarray:
    """Normalised boxes -> pixel boxes ``(y1, x1, y2, x2)``, y2 and x2 exclusive, float64.

    The inverse of ``ops.normalize_boxes`` (matterport's ``denorm_boxes`` before rounding).
    """
    height, width = _image_size(image_size)
    scale = np.array([height - 1, width - 1, height - 1, width - 1], np.float64)
    return np.asarray(boxes, np.float64).reshape(-1, 4) * scale + np.array([0, 0, 1, 1])


def _select_masks(masks: np.ndarray, classes, count: int) -> np.ndarray:
    """(n, h, w) masks: as given, or the given class's channel of (n, h, w, C) masks."""
    if masks.ndim == 3:
        return masks[:count]
    if masks.ndim == 4:
        if classes is None:
            raise ValueError(
                f"masks of shape {masks.shape} hold one mask per class; pass classes to choose"
            )
        classes = np.asarray(classes, np.intp).reshape(-1)[:count]
        bad = (classes < 0) | (classes >= masks.shape[-1])
        if bad.any():
            raise ValueError(
                f"class {int(classes[bad][0])} has no mask: masks have {masks.shape[-1]} classes"
            )
        return masks[np.arange(count), :, :, classes]
    raise ValueError(f"masks must be (n, h, w) or (n, h, w, num_classes), got shape {masks.shape}")


def paste_masks(
    masks,
    boxes,
    image_size,
    classes=None,
    mode: str = "bilinear",
    threshold: float = 0.5,
) -> np.ndarray:
    """Small per-detection masks resized to their boxes in the image, as ``unmold_mask``.

    Each mask is resized to its pixel box (rounded, as matterport's ``denorm_boxes``) with
    OpenCV, bilinear (half-pixel centres, as matterport's ``skimage.transform.resize``) or
    nearest neighbour, and is 1 where the result is at least ``threshold``. Pixels outside the
    box, or outside the image for a box that sticks out, are 0.

    Args:
        masks: (n, h, w) mask probabilities per detection (e.g. 28 x 28), or (n, h, w, C)
            masks per class, of which ``classes`` chooses one each.
        boxes: (n, 4) normalised ``(y1, x1, y2, x2)``.
        image_size: (height, width) of the image.
        classes: (n,) class ids, needed for per-class masks.
        mode: ``"bilinear"`` or ``"nearest"``.
        threshold: the value from which a pixel belongs to the object.

    Returns:
        (n, H, W) bool.
    """
    if mode not in PASTE_MODES:
        raise ValueError(f"mode must be one of {', '.join(PASTE_MODES)}, got {mode!r}")
    height, width = _image_size(image_size)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    masks = _select_masks(np.asarray(masks, np.float32), classes, len(boxes))
    if len(masks) != len(boxes):
        raise ValueError(f"got {len(masks)} masks for {len(boxes)} boxes")
    pasted = np.zeros((len(boxes), height, width), bool)
    corners = np.round(pixel_boxes(boxes, (height, width))).astype(np.int64)
    for i, ((y1, x1, y2, x2), mask) in enumerate(zip(corners, masks, strict=True)):
        if y2 <= y1 or x2 <= x1:
            continue
        resized = cv2.resize(mask, (int(x2 - x1), int(y2 - y1)), interpolation=PASTE_MODES[mode])
        top, left = max(y1, 0), max(x1, 0)
        bottom, right = min(y2, height), min(x2, width)
        if bottom <= top or right <= left:
            continue
        pasted[i, top:bottom, left:right] = (
            resized[top - y1 : bottom - y1, left - x1 : right - x1] >= threshold
        )
    return pasted


def coco_category_ids(gt) -> list[int]:
    """The COCO category id of each class 1..K (at position class - 1), as ``read_coco`` numbers them."""
    return sorted(int(c["id"]) for c in _load_json(gt)["categories"])


def _category_of(category_ids, class_id: int) -> int:
    if isinstance(category_ids, Mapping):
        if class_id not in category_ids:
            raise ValueError(
                f"class {class_id} has no COCO category; category_ids maps {sorted(category_ids)}"
            )
        return int(category_ids[class_id])
    if not 1 <= class_id <= len(category_ids):
        raise ValueError(
            f"class {class_id} has no COCO category: category_ids lists {len(category_ids)} "
            f"categories, for classes 1-{len(category_ids)} (0 is background)"
        )
    return int(category_ids[class_id - 1])


def encode_mask(mask) -> dict:
    """An (H, W) mask as a COCO RLE with a str ``counts`` (JSON-ready)."""
    rle = _mask_api().encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def detections_to_coco(
    image_id: int,
    boxes,
    classes,
    scores,
    masks,
    count: int | None,
    image_size,
    category_ids: Sequence[int] | Mapping[int, int],
    mode: str = "bilinear",
    threshold: float = 0.5,
) -> list[dict]:
    """One image's detections as COCO result dicts (``loadRes`` format), with RLE masks.

    Args:
        image_id: the COCO id of the image.
        boxes: (max_detections, 4) normalised boxes (padded network outputs are fine).
        classes: (max_detections,) class ids 1..K.
        scores: (max_detections,) confidences.
        masks: (max_detections, h, w) masks per detection, (max_detections, h, w, C) masks
            per class, or full-image (max_detections, H, W) masks already pasted (bool);
            ``masks=None`` writes boxes only.
        count: the number of valid detections, the first ``count`` rows (None: all rows).
        image_size: (height, width) of the image the boxes and results refer to.
        category_ids: the COCO category id of each class, as ``coco_category_ids`` gives
            (class k at position k - 1), or a mapping from class id to category id.
        mode, threshold: how small masks are pasted (``paste_masks``).

    Returns:
        Dicts with ``image_id``, ``category_id``, ``bbox`` ``[x, y, width, height]`` in pixels,
        ``score`` and, with masks, ``segmentation`` (RLE).
    """
    height, width = _image_size(image_size)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    count = len(boxes) if count is None else int(count)
    if not 0 <= count <= len(boxes):
        raise ValueError(f"count must be between 0 and the {len(boxes)} boxes, got {count}")
    boxes = boxes[:count]
    classes = np.asarray(classes).reshape(-1)[:count].astype(np.int64)
    scores = np.asarray(scores, np.float64).reshape(-1)[:count]
    full = None
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim == 3 and masks.shape[1:] == (height, width) and masks.dtype == bool:
            full = masks[:count]
        else:
            full = paste_masks(masks, boxes, (height, width), classes, mode, threshold)
    corners = pixel_boxes(boxes, (height, width))
    corners = np.clip(corners, 0, [height, width, height, width])
    results = []
    for i in range(count):
        y1, x1, y2, x2 = (float(v) for v in corners[i])
        result = {
            "image_id": int(image_id),
            "category_id": _category_of(category_ids, int(classes[i])),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(scores[i]),
        }
        if full is not None:
            result["segmentation"] = encode_mask(full[i])
        results.append(result)
    return results


def _load_json(gt) -> dict:
    if isinstance(gt, Mapping):
        return dict(gt)
    return json.loads(Path(gt).read_text())


def _coco(dataset: dict):
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise ImportError(
            'COCO evaluation needs pycocotools: pip install "edgeseg[coco]"'
        ) from None
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_instance_eval(
    gt: str | os.PathLike | Mapping,
    results: Iterable[Mapping],
    iou_types: Sequence[str] = ("box", "mask"),
) -> dict[str, float]:
    """Box and mask AP of COCO results with pycocotools' ``COCOeval``, without its printout.

    Args:
        gt: an ``instances_*.json`` file or its content.
        results: result dicts (``detections_to_coco``) for the images of ``gt``; mask AP needs
            a ``segmentation`` in each.
        iou_types: ``"box"`` and / or ``"mask"``.

    Returns:
        ``{"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"}`` (for the
        iou_types asked), COCO's AP at IoU 0.5:0.95, 0.5 and 0.75, over all areas, at most 100
        detections per image. No results gives 0; ground truth without objects gives NaN
        (COCOeval's -1).
    """
    for iou_type in iou_types:
        if iou_type not in _IOU_TYPES:
            raise ValueError(f"iou_types must be among {', '.join(_IOU_TYPES)}, got {iou_type!r}")
    from pycocotools.cocoeval import COCOeval

    dataset = _load_json(gt)
    dataset.setdefault("info", {})
    dataset.setdefault("licenses", [])
    coco_gt = _coco(dataset)
    results = [dict(r) for r in results]
    has_gt = bool(dataset.get("annotations"))
    scores: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type == "mask":
            missing = [r for r in results if "segmentation" not in r]
            if missing:
                raise ValueError(
                    f"mask AP needs a segmentation in every result; {len(missing)} of "
                    f"{len(results)} have none (pass masks to detections_to_coco)"
                )
            # Without a bbox, loadRes takes the area from the mask, as mask AP by area needs.
            chosen = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        else:
            chosen = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        if not has_gt or not chosen:
            value = float("nan") if not has_gt else 0.0
            scores.update({f"{iou_type}_{name}": value for name in _STATS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(chosen)
            evaluator = COCOeval(coco_gt, coco_dt, _IOU_TYPES[iou_type])
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, index in _STATS.items():
            value = float(evaluator.stats[index])
            scores[f"{iou_type}_{name}"] = float("nan") if value < 0 else value
    return scores


def instances_to_panoptic(
    semantic,
    masks,
    classes,
    scores,
    thing_classes: Iterable[int],
    overlap_threshold: float = 0.5,
    score_threshold: float = 0.5,
    void_label: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """A semantic map and instance masks merged into (semantic, instance) maps for PQ.

    The heuristic of Panoptic FPN (Kirillov et al. 2019, "Panoptic Feature Pyramid Networks",
    section 4): instances above ``score_threshold`` are placed from the highest score down on
    the pixels still free; an instance that keeps less than ``overlap_threshold`` of its mask
    is dropped. The remaining pixels take the semantic map's class when it is a stuff class;
    thing-class pixels that no instance covers become void (they form no segment).

    Args:
        semantic: (H, W) int class map (``void_label`` for void).
        masks: (n, H, W) bool full-image instance masks (``paste_masks``).
        classes: (n,) their class ids, in the semantic map's class numbering.
        scores: (n,) their confidences.
        thing_classes: the classes with instances.
        overlap_threshold: the smallest visible fraction for an instance to be kept.
        score_threshold: the lowest score of an instance placed.
        void_label: the void class id.

    Returns:
        ``(semantic, instance)`` (H, W) int32 maps for ``edgeseg.panoptic``: instance ids
        1, 2, ... for the instances kept, 0 for stuff and void.
    """
    semantic = np.asarray(semantic)
    masks = np.asarray(masks, bool).reshape(-1, *semantic.shape)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not len(masks) == len(classes) == len(scores):
        raise ValueError(
            f"masks, classes and scores must have one entry per instance, got {len(masks)}, "
            f"{len(classes)} and {len(scores)}"
        )
    things = np.asarray(sorted(set(int(c) for c in thing_classes)), np.int64)
    out_semantic = np.where(np.isin(semantic, things), void_label, semantic).astype(np.int32)
    out_instance = np.zeros(semantic.shape, np.int32)
    taken = np.zeros(semantic.shape, bool)
    next_id = 1
    for i in np.argsort(-scores, kind="stable"):
        area = int(masks[i].sum())
        if scores[i] < score_threshold or area == 0:
            continue
        visible = masks[i] & ~taken
        if visible.sum() < overlap_threshold * area:
            continue
        out_semantic[visible] = classes[i]
        out_instance[visible] = next_id
        taken |= visible
        next_id += 1
    return out_semantic, out_instance


# --- the model input and the frame -------------------------------------------------------------


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) pixel boxes (y1, x1, y2, x2), y2 / x2 exclusive, around each non-empty mask."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size:
            boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return boxes


def resize_square(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """The image scaled so its longer side is ``size``, padded to (size, size) with zeros."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    out = np.zeros((size, size, *image.shape[2:]), image.dtype)
    out[:new_h, :new_w] = resized
    return out, scale, (new_h, new_w)


def frame_boxes(boxes: np.ndarray, sample_scale: float, input_size: int,
                frame_size: tuple[int, int]) -> np.ndarray:
    """Normalised boxes of the padded model input -> pixel boxes (x0, y0, x1, y1) of the frame.

    ``frame_size`` is (height, width). Boxes are clipped to the frame.
    """
    height, width = frame_size
    pixels = np.asarray(boxes, np.float64) * (input_size - 1)  # normalised -> model pixels
    y1, x1, y2, x2 = (pixels[..., i] / sample_scale for i in range(4))
    # The normalised y2 / x2 are the last pixel inside (exclusive end - 1).
    y2, x2 = y2 + 1 / sample_scale, x2 + 1 / sample_scale
    out = np.stack([np.clip(x1, 0, width), np.clip(y1, 0, height),
                    np.clip(x2, 0, width), np.clip(y2, 0, height)], axis=-1)
    return out.astype(np.float32)


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


def evaluate_instances(predict, instances, input_size: int,
                       limit: int | None = None, mode: str = "bilinear") -> dict:
    """COCO box / mask AP, AP50, AP75 of ``predict`` on (the first ``limit``) images.

    ``predict`` takes a (S, S, 3) uint8 model input and returns the detection dict of
    ``build_mobile_mask_rcnn`` (NumPy arrays, batch 1): the Keras model, its TFLite or ONNX
    export; ``instances`` is an ``edgeseg.data.CocoInstances``. Detections are mapped back to
    each frame and scored by pycocotools against the dataset's own annotations.

    Returns:
        ``{"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75",
        "num_images", "num_detections"}``.
    """
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
