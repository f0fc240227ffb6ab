"""Panoptic quality (PQ), segmentation quality (SQ) and recognition quality (RQ), in NumPy.

Kirillov et al. 2019, "Panoptic Segmentation", section 4, as the reference implementation
(cocodataset/panopticapi ``pq_compute``) computes it:

- a segment is a class and, for a thing class, an instance id: every distinct
  ``(class, instance)`` pair of a thing class is one segment; all pixels of a stuff class are
  one segment whatever their instance id;
- ground-truth pixels labelled ``void_label`` are left out of the IoU: the union of a
  ground-truth and a predicted segment does not count the predicted pixels that fall on void;
- a predicted and a ground-truth segment of the same class match when their IoU is above 0.5
  (unique, since segments do not overlap): a true positive (TP) with that IoU; an unmatched
  ground-truth segment is a false negative (FN); an unmatched predicted segment is a false
  positive (FP) unless more than half of its pixels lie on void;
- per class, ``PQ = sum of TP IoUs / (TP + FP / 2 + FN / 2)``, ``SQ = sum of TP IoUs / TP``
  (0 without TPs), ``RQ = TP / (TP + FP / 2 + FN / 2)``, so ``PQ = SQ * RQ``;
- PQ, SQ and RQ are the means over the classes with ``TP + FP + FN > 0``, for all classes, the
  thing classes and the stuff classes; a mean over no classes is NaN.

Segments and counts are per image and the counts add up over images (the dataset's PQ is not
the mean of per-image PQs). Crowd regions (COCO ``iscrowd``) are not modelled: mark them void.
Predicted pixels labelled ``void_label`` belong to no predicted segment.

Everything here is NumPy, so that predictions can be scored on a device without TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from edgeseg.metrics import as_integer_map

__all__ = ["PanopticQuality", "panoptic_counts", "panoptic_quality", "scores_from_counts"]

MATCH_IOU = 0.5
VOID_FRACTION = 0.5


def _segments(semantic: np.ndarray, instance: np.ndarray, is_thing: np.ndarray, labelled):
    """Per-pixel segment index (-1 where not ``labelled``) and each segment's class."""
    classes = semantic[labelled]
    instances = np.where(is_thing[classes], instance[labelled], 0)
    span = int(instances.max() - instances.min()) + 1 if instances.size else 1
    keys = classes * span + (instances - (instances.min() if instances.size else 0))
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    ids = np.full(semantic.shape, -1, np.int64)
    ids[labelled] = inverse.ravel()
    return ids, unique_keys // span


def panoptic_counts(
    gt_semantic,
    gt_instance,
    pred_semantic,
    pred_instance,
    num_classes: int,
    thing_classes: Iterable[int],
    void_label: int = 255,
) -> dict[str, np.ndarray]:
    """Per-class TP, FP, FN and the sum of the TP IoUs of one image.

    Args:
        gt_semantic, gt_instance: (H, W) integer class ids (``void_label`` for void) and
            instance ids of the ground truth.
        pred_semantic, pred_instance: the same for the prediction.
        num_classes: K; classes are ``0..K-1``.
        thing_classes: the classes with instances; the others are stuff.
        void_label: the void / ignore class id.

    Returns:
        ``{"tp", "fp", "fn"}`` (K,) int64 and ``"iou_sum"`` (K,) float64.
    """
    is_thing = _thing_mask(num_classes, thing_classes)
    maps = {
        "gt_semantic": gt_semantic,
        "gt_instance": gt_instance,
        "pred_semantic": pred_semantic,
        "pred_instance": pred_instance,
    }
    maps = {name: as_integer_map(name, value) for name, value in maps.items()}
    shapes = {name: value.shape for name, value in maps.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"the four maps must have the same shape, got {shapes}")
    for name in ("gt_semantic", "pred_semantic"):
        values = maps[name]
        bad = (values != void_label) & ((values < 0) | (values >= num_classes))
        if bad.any():
            raise ValueError(
                f"{name} holds class {int(values[bad][0])} but there are {num_classes} classes "
                f"(0-{num_classes - 1}, void {void_label})"
            )
    gt_void = maps["gt_semantic"] == void_label
    pred_labelled = maps["pred_semantic"] != void_label
    gt_ids, gt_classes = _segments(maps["gt_semantic"], maps["gt_instance"], is_thing, ~gt_void)
    pred_ids, pred_classes = _segments(
        maps["pred_semantic"], maps["pred_instance"], is_thing, pred_labelled
    )
    num_gt, num_pred = len(gt_classes), len(pred_classes)
    gt_area = np.bincount(gt_ids[~gt_void], minlength=num_gt)
    pred_area = np.bincount(pred_ids[pred_labelled], minlength=num_pred)
    pred_on_void = np.bincount(pred_ids[pred_labelled & gt_void], minlength=num_pred)
    both = pred_labelled & ~gt_void
    intersection = np.bincount(
        gt_ids[both] * num_pred + pred_ids[both], minlength=num_gt * num_pred
    ).reshape(num_gt, num_pred)

    union = gt_area[:, None] + (pred_area - pred_on_void)[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / np.maximum(union, 1), 0.0)
    same_class = gt_classes[:, None] == pred_classes[None, :]
    matched = same_class & (iou > MATCH_IOU)
    gt_matched = matched.any(axis=1)
    pred_matched = matched.any(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mostly_void = pred_on_void / np.maximum(pred_area, 1) > VOID_FRACTION

    def per_class(classes, selected, weights=None):
        return np.bincount(classes[selected], weights=weights, minlength=num_classes)

    gt_index, _ = np.nonzero(matched)
    return {
        "tp": per_class(gt_classes, gt_index).astype(np.int64),
        "fp": per_class(pred_classes, ~pred_matched & ~mostly_void).astype(np.int64),
        "fn": per_class(gt_classes, ~gt_matched).astype(np.int64),
        "iou_sum": per_class(gt_classes, gt_index, iou[matched]).astype(np.float64),
    }


def _thing_mask(num_classes: int, thing_classes: Iterable[int]) -> np.ndarray:
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    things = sorted({int(c) for c in thing_classes})
    outside = [c for c in things if not 0 <= c < num_classes]
    if outside:
        raise ValueError(
            f"thing_classes {outside} are not classes 0-{num_classes - 1} of {num_classes}"
        )
    is_thing = np.zeros(num_classes, bool)
    is_thing[things] = True
    return is_thing


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def scores_from_counts(
    tp, fp, fn, iou_sum, thing_classes: Iterable[int] = ()
) -> dict:
    """PQ, SQ, RQ overall, for things and for stuff, and per class, from per-class counts.

    Returns:
        ``{"pq", "sq", "rq", "n"}`` over the classes with TP + FP + FN > 0 (n of them),
        ``"things"`` and ``"stuff"``: the same over those classes, and ``"per_class"``:
        ``{"pq", "sq", "rq"}`` lists (NaN for a class without TP, FP or FN) and the counts.
    """
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    iou_sum = np.asarray(iou_sum, np.float64)
    is_thing = _thing_mask(len(tp), thing_classes)
    present = tp + fp + fn > 0
    denominator = tp + 0.5 * fp + 0.5 * fn
    with np.errstate(divide="ignore", invalid="ignore"):
        pq = np.where(present, iou_sum / denominator, np.nan)
        sq = np.where(present, np.where(tp > 0, iou_sum / np.maximum(tp, 1), 0.0), np.nan)
        rq = np.where(present, tp / denominator, np.nan)

    def summary(selected):
        chosen = present & selected
        return {
            "pq": _mean(pq[chosen]),
            "sq": _mean(sq[chosen]),
            "rq": _mean(rq[chosen]),
            "n": int(chosen.sum()),
        }

    return {
        **summary(np.ones_like(present)),
        "things": summary(is_thing),
        "stuff": summary(~is_thing),
        "per_class": {
            "pq": pq.tolist(),
            "sq": sq.tolist(),
            "rq": rq.tolist(),
            "tp": tp.astype(np.int64).tolist(),
            "fp": fp.astype(np.int64).tolist(),
            "fn": fn.astype(np.int64).tolist(),
            "iou_sum": iou_sum.tolist(),
        },
    }


class PanopticQuality:
    """Streaming PQ / SQ / RQ: ``update`` per image or batch, ``result`` at the end.

    Example::

        pq = PanopticQuality(num_classes=19, thing_classes=range(11, 19))
        for gt_sem, gt_inst, pred_sem, pred_inst in images:
            pq.update(gt_sem, gt_inst, pred_sem, pred_inst)
        scores = pq.result()  # scores["pq"], scores["things"]["pq"], scores["stuff"]["sq"], ...
    """

    def __init__(self, num_classes: int, thing_classes: Iterable[int], void_label: int = 255):
        self.thing_classes = tuple(int(c) for c in np.flatnonzero(
            _thing_mask(num_classes, thing_classes)
        ))
        self.num_classes = int(num_classes)
        self.void_label = int(void_label)
        self.reset()

    def update(self, gt_semantic, gt_instance, pred_semantic, pred_instance) -> None:
        """Adds one image (H, W) or a batch (N, H, W) of the four maps."""
        arrays = [np.asarray(a) for a in (gt_semantic, gt_instance, pred_semantic, pred_instance)]
        if arrays[0].ndim == 2:
            arrays = [a[None] for a in arrays]
        for maps in zip(*arrays, strict=True):
            counts = panoptic_counts(
                *maps, self.num_classes, self.thing_classes, self.void_label
            )
            for name, value in counts.items():
                self.counts[name] += value

    def reset(self) -> None:
        """Forgets everything counted so far."""
        self.counts = {
            "tp": np.zeros(self.num_classes, np.int64),
            "fp": np.zeros(self.num_classes, np.int64),
            "fn": np.zeros(self.num_classes, np.int64),
            "iou_sum": np.zeros(self.num_classes, np.float64),
        }

    def result(self) -> dict:
        """Scores of everything counted so far; see :func:`scores_from_counts`."""
        return scores_from_counts(**self.counts, thing_classes=self.thing_classes)


def panoptic_quality(
    gt_semantic,
    gt_instance,
    pred_semantic,
    pred_instance,
    num_classes: int,
    thing_classes: Iterable[int],
    void_label: int = 255,
) -> dict:
    """PQ / SQ / RQ of one image (H, W) or a batch (N, H, W); see :class:`PanopticQuality`."""
    metric = PanopticQuality(num_classes, thing_classes, void_label)
    metric.update(gt_semantic, gt_instance, pred_semantic, pred_instance)
    return metric.result()
