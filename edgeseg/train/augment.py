"""Data augmentation for segmentation, with NumPy and OpenCV: the one implementation that both
input pipelines run (tf.data on the TensorFlow backend, ``keras.utils.PyDataset`` on the others;
see :mod:`edgeseg.train.pipeline`).

Every function takes one example, an image (H, W, C) and its label map (H, W), and keeps the
image's dtype (a uint8 image stays uint8, rounded). Geometric transforms move image and label
together: the image is interpolated bilinearly, the label by nearest neighbour, so a label only
ever takes values it already had, or ``ignore_index`` where a pixel has no source.

Randomness comes from a ``numpy.random.Generator`` (``rng``): the pipelines give every example
its own, seeded from the run's seed and the example's place in the stream, so a run repeats.
No TensorFlow: OpenCV's resize and remap release the GIL, so the pipelines' threads run them in
parallel.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "color_jitter",
    "elastic_deform",
    "elastic_displacement",
    "random_flip",
    "random_scale_crop",
    "warp_image_and_label",
]

_IMAGE_FILLS = ("reflect", "zero")


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return np.random.default_rng() if rng is None else rng


def _check_pair(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image, label = np.asarray(image), np.asarray(label)
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must be an integer map, got dtype {label.dtype}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label must be (H, W) = {image.shape[:2]}, got shape {label.shape}")
    return image, label


def _to_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float pixel values back to ``dtype`` (integers rounded and saturated)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(image), info.min, info.max).astype(dtype)
    return image.astype(dtype, copy=False)


def _resize(planes: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """cv2.resize to (height, width) of any channel count (OpenCV caps it at 512)."""
    height, width = size
    out = cv2.resize(planes, (width, height), interpolation=interpolation)
    return out.reshape(height, width, *planes.shape[2:])


def _label_plane(label: np.ndarray) -> np.ndarray:
    """A label map in a dtype cv2.remap / resize take with exact values (float32 holds every id)."""
    return label.astype(np.float32)


# --- scale, crop, flip -----------------------------------------------------------------------


def random_scale_crop(
    image: np.ndarray,
    label: np.ndarray,
    out_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    ignore_index: int = 255,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rescales by a random factor, pads if needed and crops a random ``out_size`` window.

    The scale is drawn uniformly from ``scale_range`` and applied to both sides (bilinear for
    the image, nearest with half-pixel centres for the label, so both are sampled at the same
    points). Where the scaled example is smaller than ``out_size`` (height, width) it is padded
    at the bottom and right, with zeros in the image and ``ignore_index`` in the label, so
    padding never counts in the loss.
    """
    image, label = _check_pair(image, label)
    out_h, out_w = (int(v) for v in out_size)
    low, high = (float(v) for v in scale_range)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"out_size must be positive (height, width), got {tuple(out_size)}")
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
    rng = _rng(rng)
    scale = rng.uniform(low, high)
    height, width = label.shape
    new_h, new_w = max(round(height * scale), 1), max(round(width * scale), 1)
    scaled = _resize(image.astype(np.float32), (new_h, new_w), cv2.INTER_LINEAR)
    scaled_label = _resize(_label_plane(label), (new_h, new_w), cv2.INTER_NEAREST_EXACT)

    pad_h, pad_w = max(out_h - new_h, 0), max(out_w - new_w, 0)
    if pad_h or pad_w:
        scaled = np.pad(scaled, [(0, pad_h), (0, pad_w), (0, 0)])
        scaled_label = np.pad(scaled_label, [(0, pad_h), (0, pad_w)],
                              constant_values=ignore_index)
    top = int(rng.integers(0, scaled.shape[0] - out_h + 1))
    left = int(rng.integers(0, scaled.shape[1] - out_w + 1))
    window = (slice(top, top + out_h), slice(left, left + out_w))
    return (_to_dtype(scaled[window], image.dtype),
            scaled_label[window].astype(label.dtype))


def random_flip(image: np.ndarray, label: np.ndarray,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flips image and label left-right together with probability 0.5."""
    image, label = _check_pair(image, label)
    if _rng(rng).uniform() < 0.5:
        return image[:, ::-1].copy(), label[:, ::-1].copy()
    return image, label


# --- colour ----------------------------------------------------------------------------------


def color_jitter(
    image: np.ndarray,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Random brightness, contrast, saturation and hue, with torchvision's ColorJitter ranges.

    Factors are drawn uniformly from ``[max(0, 1 - b), 1 + b]``: brightness multiplies the
    pixels, contrast scales each channel's distance from that channel's mean, saturation scales
    S in HSV; the hue shift is drawn from ``[-hue, hue]`` turns of the colour wheel
    (``hue <= 0.5``). They are applied in that order; 0 turns one off.

    Integer images are taken as [0, 255] and float images as [0, 1]; the result is clipped to
    that range and has the input's dtype. Saturation and hue need RGB.
    """
    for name, value in (("brightness", brightness), ("contrast", contrast),
                        ("saturation", saturation), ("hue", hue)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if hue > 0.5:
        raise ValueError(f"hue must be at most 0.5 (a half turn of the colour wheel), got {hue!r}")
    image = np.asarray(image)
    if (saturation or hue) and image.shape[-1] != 3:
        raise ValueError(
            f"saturation and hue jitter need an RGB image (..., 3), got shape {image.shape}"
        )
    rng = _rng(rng)
    integer = np.issubdtype(image.dtype, np.integer)
    x = image.astype(np.float32) / (255.0 if integer else 1.0)
    if brightness:
        x = x * rng.uniform(max(0.0, 1.0 - brightness), 1.0 + brightness)
    if contrast:
        mean = x.mean(axis=(0, 1), keepdims=True)
        x = (x - mean) * rng.uniform(max(0.0, 1.0 - contrast), 1.0 + contrast) + mean
    if saturation or hue:
        hsv = cv2.cvtColor(np.clip(x, 0.0, 1.0).astype(np.float32), cv2.COLOR_RGB2HSV)
        if saturation:
            factor = rng.uniform(max(0.0, 1.0 - saturation), 1.0 + saturation)
            hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0.0, 1.0)
        if hue:  # OpenCV's float hue is in degrees
            hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * rng.uniform(-hue, hue), 360.0)
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    x = np.clip(x, 0.0, 1.0)
    return _to_dtype(x * 255.0, image.dtype) if integer else x.astype(image.dtype)


# --- elastic deformation (U-Net) ----------------------------------------------------------------


def elastic_displacement(height: int, width: int, grid: int = 3, sigma: float = 10.0,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """A smooth random displacement field, U-Net style (Ronneberger et al. 2015, section 3.1).

    Displacement vectors on a coarse ``grid x grid`` grid are drawn from N(0, sigma) pixels and
    interpolated to every pixel bicubically (cv2.resize, whose half-pixel convention places the
    grid points at the centres of a grid x grid tiling of the image).

    Returns:
        (height, width, 2) float32: ``[..., 0]`` the x (column) and ``[..., 1]`` the y (row)
        displacement, in pixels.
    """
    if int(grid) < 1:
        raise ValueError(f"grid must be a positive integer, got {grid!r}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma!r}")
    coarse = _rng(rng).normal(0.0, float(sigma), (int(grid), int(grid), 2)).astype(np.float32)
    return _resize(coarse, (int(height), int(width)), cv2.INTER_CUBIC)


def warp_image_and_label(
    image: np.ndarray,
    label: np.ndarray,
    displacement: np.ndarray,
    ignore_index: int = 255,
    image_fill: str = "reflect",
) -> tuple[np.ndarray, np.ndarray]:
    """Resamples image and label at ``(y + dy, x + dx)`` for every output pixel (y, x).

    The image is sampled bilinearly (cv2.remap, which places sampling points on a 1/32 pixel
    grid), the label by the nearest pixel.

    Args:
        image: (H, W, C).
        label: (H, W) integer map.
        displacement: (H, W, 2) float, ``[..., 0]`` = dx (columns), ``[..., 1]`` = dy (rows),
            as from :func:`elastic_displacement`.
        ignore_index: the label of pixels whose source lies outside the image.
        image_fill: how the image is continued outside its borders: ``"reflect"`` mirrors it
            without repeating the edge (cv2.BORDER_REFLECT_101; U-Net mirrors missing context
            too) and ``"zero"`` uses black. Either way the label there is ``ignore_index``, so
            the loss never trains on invented pixels.
    """
    if image_fill not in _IMAGE_FILLS:
        raise ValueError(f"image_fill must be one of {_IMAGE_FILLS}, got {image_fill!r}")
    image, label = _check_pair(image, label)
    displacement = np.asarray(displacement, dtype=np.float32)
    height, width = label.shape
    if displacement.shape != (height, width, 2):
        raise ValueError(f"displacement must be (H, W, 2) = {(height, width, 2)}, "
                         f"got {displacement.shape}")
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float32),
                             np.arange(height, dtype=np.float32))
    map_x = cols + displacement[..., 0]
    map_y = rows + displacement[..., 1]
    border = cv2.BORDER_REFLECT_101 if image_fill == "reflect" else cv2.BORDER_CONSTANT
    planes = image.astype(np.float32)
    warped = np.stack(
        [cv2.remap(planes[..., c], map_x, map_y, cv2.INTER_LINEAR, borderMode=border,
                   borderValue=0) for c in range(planes.shape[-1])],
        axis=-1,
    )
    warped_label = cv2.remap(_label_plane(label), map_x, map_y, cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=float(ignore_index))
    return _to_dtype(warped, image.dtype), warped_label.astype(label.dtype)


def elastic_deform(
    image: np.ndarray,
    label: np.ndarray,
    grid: int = 3,
    sigma: float = 10.0,
    rng: np.random.Generator | None = None,
    ignore_index: int = 255,
    image_fill: str = "reflect",
) -> tuple[np.ndarray, np.ndarray]:
    """U-Net's random elastic deformation of an image and its label map, alike.

    A displacement field from :func:`elastic_displacement` (``grid`` x ``grid`` vectors from
    N(0, ``sigma`` px), bicubic upsampling) applied with :func:`warp_image_and_label`.
    ``sigma=0`` returns the input unchanged.
    """
    image, label = _check_pair(image, label)
    if sigma == 0:
        return image, label
    field = elastic_displacement(*label.shape, grid=grid, sigma=sigma, rng=rng)
    return warp_image_and_label(image, label, field, ignore_index, image_fill)
