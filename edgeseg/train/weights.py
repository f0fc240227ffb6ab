"""Class-balancing weights and the U-Net border weight map (NumPy and OpenCV only).

The weights feed :class:`edgeseg.train.losses.WeightedSparseCrossEntropy`: per-class weights as
``class_weights``, a per-pixel map as ``sample_weight``.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

__all__ = [
    "count_class_pixels",
    "enet_class_weights",
    "median_frequency_weights",
    "unet_weight_map",
]


def _counts(name: str, values) -> np.ndarray:
    counts = np.asarray(values, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(
            f"{name} must be a 1-D sequence with one count per class, got shape {counts.shape}"
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"{name} must be finite and non-negative, got {counts.tolist()}")
    return counts


def count_class_pixels(
    label_maps: Iterable, num_classes: int, ignore_index: int | None = 255
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel statistics of a dataset for the class weights below.

    Args:
        label_maps: iterable of integer label maps (H, W), or batches (N, H, W) counted as one
            image each per leading index.
        num_classes: K.
        ignore_index: label value not counted (void).

    Returns:
        ``(pixel_counts, image_counts)``, both (K,) int64: the pixels of each class, and for each
        class the labelled (non-ignored) pixels of the images in which that class appears, the
        denominator of SegNet's median frequency balancing.

    Raises:
        ValueError: on a label outside ``0..K-1`` that is not ``ignore_index``.
    """
    pixel_counts = np.zeros(num_classes, dtype=np.int64)
    image_counts = np.zeros(num_classes, dtype=np.int64)
    for index, item in enumerate(label_maps):
        array = np.asarray(item)
        images = array.reshape(-1, *array.shape[-2:]) if array.ndim > 2 else array[np.newaxis]
        for image in images:
            labels = image.ravel().astype(np.int64)
            if ignore_index is not None:
                labels = labels[labels != ignore_index]
            bad = (labels < 0) | (labels >= num_classes)
            if bad.any():
                void = "" if ignore_index is None else f", void {ignore_index}"
                raise ValueError(
                    f"label map {index} has label {int(labels[bad][0])} but there are "
                    f"{num_classes} classes (0-{num_classes - 1}{void})"
                )
            counts = np.bincount(labels, minlength=num_classes)
            pixel_counts += counts
            image_counts[counts > 0] += labels.size
    return pixel_counts, image_counts


def enet_class_weights(pixel_counts, c: float = 1.02) -> np.ndarray:
    """ENet's class weights ``w = 1 / ln(c + p)`` (Paszke et al. 2016, section 5.2).

    ``p`` is each class's share of all counted pixels. The weights are bounded by
    ``1 / ln(c)`` (about 50.5 for c = 1.02) for rare classes and fall to about 1.4 for a class
    covering everything. Count void pixels nowhere: the loss gives the ignore label weight 0.

    Args:
        pixel_counts: (K,) pixels of each class, e.g. from :func:`count_class_pixels`.
        c: the paper's 1.02; must exceed 1 so that every weight is positive and finite.

    Returns:
        (K,) float64 weights.
    """
    counts = _counts("pixel_counts", pixel_counts)
    if not c > 1.0:
        raise ValueError(f"c must be greater than 1 (the paper uses 1.02), got {c!r}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("pixel_counts are all zero: no pixels were counted")
    return 1.0 / np.log(c + counts / total)


def median_frequency_weights(pixel_counts, image_counts=None) -> np.ndarray:
    """SegNet's median frequency balancing ``w_c = median(freq) / freq_c``.

    As defined by Eigen & Fergus (2015) and used by SegNet (Badrinarayanan et al., section 3.4):
    ``freq_c`` is the number of pixels of class c divided by the total number of pixels in the
    images where c is present, and the median is taken over the classes that are present.

    Args:
        pixel_counts: (K,) pixels of each class.
        image_counts: (K,) total (labelled) pixels of the images containing each class, as
            returned by :func:`count_class_pixels`. When omitted, ``freq_c`` falls back to the
            share of class c among all counted pixels, which is what many reimplementations do;
            the weights then equal ``median(pixel_counts) / pixel_counts``.

    Returns:
        (K,) float64 weights; a class that never occurs gets weight 0 (it has no frequency, and
        any weight would be irrelevant to the loss on this data).
    """
    counts = _counts("pixel_counts", pixel_counts)
    if image_counts is None:
        totals = np.full_like(counts, counts.sum())
    else:
        totals = _counts("image_counts", image_counts)
        if totals.shape != counts.shape:
            raise ValueError(
                f"image_counts has {totals.size} entries but pixel_counts has {counts.size}"
            )
        if np.any(totals < counts):
            raise ValueError(
                "image_counts must be at least pixel_counts for every class (a class's pixels "
                f"lie in the images that contain it); got {totals.tolist()} < {counts.tolist()}"
            )
    present = counts > 0
    if not present.any():
        raise ValueError("pixel_counts are all zero: no pixels were counted")
    freq = np.zeros_like(counts)
    freq[present] = counts[present] / totals[present]
    weights = np.zeros_like(counts)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights


def unet_weight_map(
    instance_labels,
    class_weights_map=None,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> np.ndarray:
    """U-Net's weight map ``w(x) = w_c(x) + w0 exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``.

    Ronneberger et al. 2015, equation 2: ``d1`` and ``d2`` are the distances to the border of
    the nearest and the second-nearest cell, so background pixels in the narrow gaps between
    touching cells get a large weight and the network learns to separate them.

    Distance convention: ``d_i(x)`` is the Euclidean distance from the centre of pixel x to the
    nearest pixel centre of cell i (``cv2.distanceTransform``, exact L2) minus 0.5, i.e. to the
    pixel edge that bounds the cell. A pixel next to a cell is 0.5 from its border, and every
    background pixel on the straight line across a gap of g pixels between two cells has
    ``d1 + d2 = g``.

    Args:
        instance_labels: (H, W) integer map, 0 for background and one positive id per cell.
        class_weights_map: ``w_c(x)``, an (H, W) map (or anything that broadcasts to it, e.g. a
            scalar) that balances the class frequencies; 1 when omitted.
        w0, sigma: the paper's 10 and about 5 pixels.

    Returns:
        (H, W) float32. The border term is added on background pixels only, and is 0 where the
        image has fewer than two cells.
    """
    instances = np.asarray(instance_labels)
    if instances.ndim != 2:
        raise ValueError(f"instance_labels must be a 2-D (H, W) map, got shape {instances.shape}")
    if instances.dtype.kind not in "iub":
        raise ValueError(f"instance_labels must hold integer ids, got dtype {instances.dtype}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    if class_weights_map is None:
        weights = np.ones(instances.shape, dtype=np.float64)
    else:
        weights = np.broadcast_to(
            np.asarray(class_weights_map, dtype=np.float64), instances.shape
        ).copy()

    ids = np.unique(instances)
    ids = ids[ids > 0]
    if ids.size < 2:
        return weights.astype(np.float32)

    nearest = np.full(instances.shape, np.inf)
    second = np.full(instances.shape, np.inf)
    for cell in ids:
        # distanceTransform measures the distance to the nearest zero pixel: the cell's pixels.
        outside = (instances != cell).astype(np.uint8)
        distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        # Exact distances are square roots of integers. OpenCV's float32 ones carry a last-bit
        # error that varies from call to call; snapping makes the map repeat exactly (a
        # resumed run draws what an uninterrupted one did). The border term is 0 long before
        # the float32 error could reach half a squared pixel.
        distance = np.sqrt(np.round(distance.astype(np.float64) ** 2))
        second = np.minimum(second, np.maximum(nearest, distance))
        nearest = np.minimum(nearest, distance)
    border = np.maximum(nearest - 0.5, 0.0) + np.maximum(second - 0.5, 0.0)
    background = instances == 0
    weights[background] += w0 * np.exp(-(border[background] ** 2) / (2.0 * sigma**2))
    return weights.astype(np.float32)
