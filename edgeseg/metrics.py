"""Segmentation metrics: the confusion matrix and the scores of the ENet paper's tables.

Everything at module level is NumPy, so that the runtime on a device (LiteRT, OpenCV, NumPy) can
score predictions without TensorFlow or Keras. The streaming Keras metric for ``model.fit`` /
``model.evaluate`` lives in :mod:`edgeseg.train.keras_metrics`; ``edgeseg.metrics.MeanIoUMetric``
is a lazy alias that imports Keras only when it is looked up.

Conventions: labels and predictions are integer maps of class ids ``0..K-1``; pixels whose label
is ``ignore_index`` (255 by default, the "void" of CamVid and Cityscapes) are not counted. Rows of
the confusion matrix are the ground truth, columns the prediction.

The scores are the columns of the ENet paper's tables (Paszke et al. 2016, Tables 3-5):
per-class accuracy (recall), class average accuracy, global (pixel) accuracy, per-class IoU and
class IoU (mIoU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgeseg.train.keras_metrics import MeanIoUMetric

__all__ = [
    "ConfusionMatrix",
    "MeanIoUMetric",
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


def __getattr__(name: str):
    # Lazy alias: importing edgeseg.metrics must not import Keras or TensorFlow.
    if name == "MeanIoUMetric":
        from edgeseg.train.keras_metrics import MeanIoUMetric

        return MeanIoUMetric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
