"""Segmentation metrics: the confusion matrix and the scores of the ENet paper's tables.

Everything here is NumPy (the Cityscapes label table comes from :mod:`edgeseg.data.cityscapes`),
so that the runtime on a device (LiteRT, OpenCV, NumPy) can score predictions without TensorFlow
or Keras. The streaming Keras metric for ``model.fit`` /
``model.evaluate`` lives in :mod:`edgeseg.train.keras_metrics` (the training layer; this module
is below it and never imports it).

Conventions: labels and predictions are integer maps of class ids ``0..K-1``; pixels whose label
is ``ignore_index`` (255 by default, the "void" of CamVid and Cityscapes) are not counted. Rows of
the confusion matrix are the ground truth, columns the prediction.

The scores are the columns of the ENet paper's tables (Paszke et al. 2016, Tables 3-5):
per-class accuracy (recall), class average accuracy, global (pixel) accuracy, per-class IoU and
class IoU (mIoU); :class:`CityscapesScores` adds the Cityscapes benchmark's class iIoU, category
IoU and category iIoU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgeseg.data.base import IGNORE_INDEX
from edgeseg.data.cityscapes import (
    CITYSCAPES_CATEGORIES,
    CITYSCAPES_CLASS_CATEGORY,
    CITYSCAPES_CLASSES,
    CITYSCAPES_INSTANCE_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN,
)

__all__ = [
    "CITYSCAPES_AVERAGE_INSTANCE_SIZE",
    "CityscapesScores",
    "ConfusionMatrix",
    "confusion_matrix",
    "scores_from_confusion",
]


def as_integer_map(name: str, values) -> np.ndarray:
    """``values`` as int64 (whole-valued floats accepted); a ValueError naming ``name`` else."""
    array = np.asarray(values)
    if array.dtype.kind not in "iub":
        if array.dtype.kind == "f" and np.all(np.equal(np.mod(array, 1), 0)):
            return array.astype(np.int64)
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def confusion_matrix(
    labels, preds, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """Counts ``(ground truth, prediction)`` pairs over all pixels whose label is not ignored.

    Args:
        labels: integer class ids of any shape, e.g. (N, H, W); ``ignore_index`` marks pixels
            that are not scored.
        preds: predicted class ids, the same shape as ``labels``.
        num_classes: K, the number of classes (the ignore value not included).
        ignore_index: label value to skip, or None to score every pixel.

    Returns:
        (K, K) int64 array; entry ``[i, j]`` counts pixels of true class i predicted as j.

    Raises:
        ValueError: if the shapes differ, a prediction is outside ``0..K-1``, or a label is
            outside ``0..K-1`` and is not ``ignore_index``.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    labels = as_integer_map("labels", labels)
    preds = as_integer_map("preds", preds)
    if labels.shape != preds.shape:
        raise ValueError(
            f"labels and preds must have the same shape, got {labels.shape} and {preds.shape}"
        )
    labels = labels.ravel()
    preds = preds.ravel()
    if ignore_index is not None:
        valid = labels != ignore_index
        labels = labels[valid]
        preds = preds[valid]
    void = "" if ignore_index is None else f", ignore {ignore_index}"
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"labels hold value {int(labels[bad][0])} but there are {num_classes} classes "
            f"(0-{num_classes - 1}{void})"
        )
    bad = (preds < 0) | (preds >= num_classes)
    if bad.any():
        raise ValueError(
            f"preds hold class {int(preds[bad][0])} but there are {num_classes} classes "
            f"(0-{num_classes - 1}); pass class ids (argmax of the logits), not scores"
        )
    counts = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def scores_from_confusion(confusion) -> dict:
    """The ENet paper's scores from a (K, K) confusion matrix (rows ground truth).

    Returns:
        A dict with
        ``per_class_iou``: TP / (TP + FP + FN) per class, NaN for a class absent from both the
        ground truth and the predictions;
        ``miou``: the mean of the per-class IoUs that are not NaN ("class IoU");
        ``per_class_acc``: TP / (TP + FN) per class (recall), NaN for classes absent from the
        ground truth;
        ``class_avg_acc``: the mean of the per-class accuracies that are not NaN;
        ``global_acc``: correctly labelled pixels / scored pixels;
        ``num_pixels``: scored pixels;
        ``confusion``: the matrix as nested lists of ints.
        Means over no classes and accuracies over no pixels are NaN.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {confusion.shape}")
    counts = confusion.astype(np.float64)
    true_positives = np.diag(counts)
    gt_pixels = counts.sum(axis=1)
    pred_pixels = counts.sum(axis=0)
    union = gt_pixels + pred_pixels - true_positives
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class_iou = np.where(union > 0, true_positives / union, np.nan)
        per_class_acc = np.where(gt_pixels > 0, true_positives / gt_pixels, np.nan)
    total = counts.sum()
    return {
        "per_class_iou": per_class_iou.tolist(),
        "miou": _nanmean(per_class_iou),
        "per_class_acc": per_class_acc.tolist(),
        "class_avg_acc": _nanmean(per_class_acc),
        "global_acc": float(true_positives.sum() / total) if total > 0 else math.nan,
        "num_pixels": int(total),
        "confusion": confusion.astype(np.int64).tolist(),
    }


class ConfusionMatrix:
    """Streaming confusion matrix: ``update`` per batch, ``result`` at the end.

    Example::

        cm = ConfusionMatrix(num_classes=12)
        for labels, logits in batches:
            cm.update(labels, logits.argmax(-1))
        print(cm.format_table(CAMVID_CLASSES))
        scores = cm.result()  # scores["miou"], scores["class_avg_acc"], ...
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, labels, preds) -> None:
        """Adds a batch of label maps and predicted class-id maps (same shape)."""
        self.confusion += confusion_matrix(labels, preds, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        """Forgets everything counted so far."""
        self.confusion[...] = 0

    def result(self) -> dict:
        """Scores of everything counted so far; see :func:`scores_from_confusion`."""
        return scores_from_confusion(self.confusion)

    def format_table(self, class_names: Sequence[str] | None = None, digits: int = 1) -> str:
        """A per-class text table (percentages) with the means below, as in the ENet paper.

        Args:
            class_names: one name per class; "class 0", "class 1", ... when omitted.
            digits: decimals of the percentages.
        """
        if class_names is None:
            class_names = [f"class {i}" for i in range(self.num_classes)]
        class_names = [str(name) for name in class_names]
        if len(class_names) != self.num_classes:
            raise ValueError(
                f"got {len(class_names)} class names for {self.num_classes} classes"
            )
        scores = self.result()

        def percent(value: float) -> str:
            return "-" if math.isnan(value) else f"{100.0 * value:.{digits}f}"

        gt_pixels = self.confusion.sum(axis=1)
        header = ("class", "IoU", "accuracy", "pixels")
        rows = [
            (name, percent(iou), percent(acc), str(int(pixels)))
            for name, iou, acc, pixels in zip(
                class_names, scores["per_class_iou"], scores["per_class_acc"], gt_pixels,
                strict=True,
            )
        ]
        summary = [
            ("mean", percent(scores["miou"]),
             percent(scores["class_avg_acc"]), str(scores["num_pixels"])),
            ("global accuracy", "", percent(scores["global_acc"]), ""),
        ]
        widths = [max(len(row[i]) for row in [header, *rows, *summary]) for i in range(4)]

        def line(row) -> str:
            first = row[0].ljust(widths[0])
            rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
            return "  ".join([first, *rest]).rstrip()

        rule = "-" * len(line(tuple("x" * w for w in widths)))
        return "\n".join([line(header), rule, *map(line, rows), rule, *map(line, summary)])

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self.confusion.sum())})"
        )



# --- the Cityscapes benchmark's scores ---------------------------------------------------------

# The mean instance size in pixels of each class over the Cityscapes training set, copied from
# cityscapesScripts (evaluation/evalPixelLevelSemanticLabeling.py, ``args.avgClassSize``). The
# benchmark fixes these numbers; iIoU weighs each instance by this size over its own size.
# Caravan and trailer are listed there too but are not scored.
CITYSCAPES_AVERAGE_INSTANCE_SIZE = {
    "person": 3462.4756337644,
    "rider": 3930.4788056518,
    "car": 12794.0202738185,
    "truck": 27855.1264367816,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "motorcycle": 6298.7200839748,
    "bicycle": 4672.3249222261,
}

# labelId -> trainId (-1: no such labelId); trainId -> category index; trainId -> average
# instance size (NaN: the class is not annotated per instance).
_LABEL_TO_TRAIN = np.full(256, -1, dtype=np.int64)
for _label_id, _train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
    _LABEL_TO_TRAIN[_label_id] = _train_id
_TRAIN_CATEGORY = np.array([CITYSCAPES_CATEGORIES.index(c) for c in CITYSCAPES_CLASS_CATEGORY])
_TRAIN_INSTANCE_SIZE = np.array(
    [CITYSCAPES_AVERAGE_INSTANCE_SIZE.get(name, math.nan) for name in CITYSCAPES_CLASSES]
)


class CityscapesScores:
    """The four scores of the Cityscapes pixel-level benchmark, accumulated image by image.

    The definitions are those of the benchmark's own evaluation (cityscapesScripts,
    ``evaluation/evalPixelLevelSemanticLabeling.py``; Cordts et al. 2016), on the
    19 train classes, with predictions and labels given as trainIds (255: not scored):

    - class IoU: TP / (TP + FP + FN) per class, averaged over the classes (NaN left out);
    - class iIoU: the same for the 8 classes annotated per instance, with TP and FN of every
      ground-truth instance weighted by the class's average instance size
      (:data:`CITYSCAPES_AVERAGE_INSTANCE_SIZE`) over the instance's size; FP is not weighted;
    - category IoU and iIoU: the same over the 7 categories (flat ... vehicle), where predicting
      any class of the pixel's category counts as a TP; iIoU for human and vehicle only.

    Example::

        scores = CityscapesScores()
        for index in range(len(dataset)):
            image, label = dataset[index]
            scores.update(label, predict(image), dataset.read_instance_ids(index))
        scores.result()["class_iiou"]
    """

    def __init__(self) -> None:
        self.confusion = ConfusionMatrix(len(CITYSCAPES_CLASSES))
        self.num_images = 0
        self.images_without_instances = 0
        # Weighted TP and FN of the instances, per train class and per category.
        self.instance_tp = np.zeros(len(CITYSCAPES_CLASSES))
        self.instance_fn = np.zeros(len(CITYSCAPES_CLASSES))
        self.category_instance_tp = np.zeros(len(CITYSCAPES_CATEGORIES))
        self.category_instance_fn = np.zeros(len(CITYSCAPES_CATEGORIES))

    def update(self, labels, preds, instance_ids=None) -> None:
        """Adds one image (instance ids are told apart within an image only).

        Args:
            labels: the ground truth as trainIds 0-18, 255 where not scored.
            preds: the predicted trainIds 0-18.
            instance_ids: the image's ``*_instanceIds.png`` as stored: ``labelId * 1000 + k``
                for instance k, the labelId elsewhere. None when the image has none: class and
                category iIoU are then NaN (no longer defined) for the whole evaluation.
        """
        confusion = confusion_matrix(labels, preds, len(CITYSCAPES_CLASSES), IGNORE_INDEX)
        if instance_ids is None:
            self.images_without_instances += 1
        else:
            self._add_instances(preds, instance_ids)
        self.confusion.confusion += confusion
        self.num_images += 1

    def _add_instances(self, preds, instance_ids) -> None:
        """Adds the weighted TP and FN of every ground-truth instance of one image."""
        instance_ids = as_integer_map("instance_ids", instance_ids)
        preds = as_integer_map("preds", preds)
        if instance_ids.shape != preds.shape:
            raise ValueError(
                f"instance_ids and preds must have the same shape, got {instance_ids.shape} "
                f"and {preds.shape}"
            )
        instance_ids, preds = instance_ids.ravel(), preds.ravel()
        if preds.size and (preds.min() < 0 or preds.max() >= len(CITYSCAPES_CLASSES)):
            bad = int(preds[(preds < 0) | (preds >= len(CITYSCAPES_CLASSES))][0])
            raise ValueError(
                f"preds hold class {bad} but Cityscapes has {len(CITYSCAPES_CLASSES)} train "
                f"classes (0-{len(CITYSCAPES_CLASSES) - 1})"
            )
        is_instance = instance_ids > 1000  # the benchmark's test; smaller values are labelIds
        ids, instance_of_pixel = np.unique(instance_ids[is_instance], return_inverse=True)
        label_ids = ids // 1000
        unknown = (label_ids > 255) | (_LABEL_TO_TRAIN[np.minimum(label_ids, 255)] < 0)
        if unknown.any():
            bad = int(ids[unknown][0])
            raise ValueError(
                f"instance id {bad} names labelId {bad // 1000}, which Cityscapes does not "
                "have (labelIds 0-33)"
            )
        classes = _LABEL_TO_TRAIN[label_ids]
        # Instances of labels that are not scored (caravan, trailer) are skipped, as there.
        scored = classes != IGNORE_INDEX
        stuff = scored & np.isnan(_TRAIN_INSTANCE_SIZE[np.where(scored, classes, 0)])
        if stuff.any():
            raise ValueError(
                f"instance id {int(ids[stuff][0])} is an instance of "
                f"{CITYSCAPES_CLASSES[classes[stuff][0]]!r}, a class Cityscapes does not annotate "
                f"per instance (only {', '.join(CITYSCAPES_INSTANCE_CLASSES)})"
            )
        keep = scored[instance_of_pixel]
        instance_of_pixel = instance_of_pixel[keep]
        pixel_class = classes[instance_of_pixel]
        pixel_pred = preds[is_instance][keep]
        sizes = np.bincount(instance_of_pixel, minlength=ids.size)
        hits = np.bincount(instance_of_pixel, weights=pixel_pred == pixel_class,
                           minlength=ids.size)
        category_hits = np.bincount(
            instance_of_pixel,
            weights=_TRAIN_CATEGORY[pixel_pred] == _TRAIN_CATEGORY[pixel_class],
            minlength=ids.size,
        )
        for index in np.flatnonzero(scored):
            cls, size = classes[index], float(sizes[index])
            weight = _TRAIN_INSTANCE_SIZE[cls] / size
            category = _TRAIN_CATEGORY[cls]
            self.instance_tp[cls] += hits[index] * weight
            self.instance_fn[cls] += (size - hits[index]) * weight
            self.category_instance_tp[category] += category_hits[index] * weight
            self.category_instance_fn[category] += (size - category_hits[index]) * weight

    def result(self) -> dict:
        """The four scores and their parts (fractions; NaN where undefined).

        Returns:
            ``class_iou``, ``class_iiou``, ``category_iou``, ``category_iiou`` (the means), and
            ``per_class_iou`` (19 classes), ``per_class_iiou`` (the 8 classes annotated per
            instance), ``per_category_iou`` (7 categories), ``per_category_iiou`` (human,
            vehicle): dicts keyed by the benchmark's class and category names.
        """
        counts = self.confusion.confusion.astype(np.float64)
        true_positives = np.diag(counts)
        false_positives = counts.sum(axis=0) - true_positives
        false_negatives = counts.sum(axis=1) - true_positives
        members = np.eye(len(CITYSCAPES_CATEGORIES))[_TRAIN_CATEGORY]  # (classes, categories)
        category_counts = members.T @ counts @ members
        category_tp = np.diag(category_counts)
        category_fp = category_counts.sum(axis=0) - category_tp
        category_fn = category_counts.sum(axis=1) - category_tp

        instance_classes = [CITYSCAPES_CLASSES.index(n) for n in CITYSCAPES_INSTANCE_CLASSES]
        instance_categories = sorted({int(_TRAIN_CATEGORY[c]) for c in instance_classes})
        with_instances = self.images_without_instances == 0

        def ratio(tp, fp, fn) -> float:
            denominator = tp + fp + fn
            return float(tp / denominator) if denominator > 0 else math.nan

        per_class_iou = {
            name: ratio(true_positives[c], false_positives[c], false_negatives[c])
            for c, name in enumerate(CITYSCAPES_CLASSES)
        }
        per_class_iiou = {
            CITYSCAPES_CLASSES[c]: ratio(self.instance_tp[c], false_positives[c],
                                         self.instance_fn[c]) if with_instances else math.nan
            for c in instance_classes
        }
        per_category_iou = {
            name: ratio(category_tp[k], category_fp[k], category_fn[k])
            for k, name in enumerate(CITYSCAPES_CATEGORIES)
        }
        per_category_iiou = {
            CITYSCAPES_CATEGORIES[k]: ratio(self.category_instance_tp[k], category_fp[k],
                                            self.category_instance_fn[k])
            if with_instances else math.nan
            for k in instance_categories
        }

        def mean(scores: dict) -> float:
            return _nanmean(np.array(list(scores.values()), dtype=np.float64))

        return {
            "class_iou": mean(per_class_iou),
            "class_iiou": mean(per_class_iiou),
            "category_iou": mean(per_category_iou),
            "category_iiou": mean(per_category_iiou),
            "per_class_iou": per_class_iou,
            "per_class_iiou": per_class_iiou,
            "per_category_iou": per_category_iou,
            "per_category_iiou": per_category_iiou,
        }

    def __repr__(self) -> str:
        return (f"CityscapesScores(images={self.num_images}, "
                f"pixels={int(self.confusion.confusion.sum())})")
