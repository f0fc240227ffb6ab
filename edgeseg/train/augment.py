"""Data augmentation for segmentation with TensorFlow ops, for ``tf.data`` input pipelines.

Every function takes one example, an image (H, W, C) and its label map (H, W) or (H, W, 1), runs
in graph mode inside ``tf.data.Dataset.map`` and keeps the dtypes (a uint8 image stays uint8,
rounded) and the static shapes it can know. Geometric transforms move image and label together:
the image is interpolated bilinearly, the label by nearest neighbour, so a label only ever takes
values it already had, or ``ignore_index`` where a pixel has no source.

Randomness: ``seed=None`` draws from TensorFlow's global generator (``tf.random.set_seed`` makes
a pipeline repeatable). An int or a shape-[2] integer tensor selects stateless random ops, which
return the same result for the same seed: give every example its own seed, e.g.::

    seeds = tf.data.Dataset.random(seed=0).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(
        lambda example, seed: random_scale_crop(*example, out_size=(360, 480), seed=seed))

This module imports TensorFlow; ``import edgeseg`` does not import it. Its NumPy / OpenCV
reference, :func:`elastic_deform_reference`, exists to test the TensorFlow warp.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import tensorflow as tf

__all__ = [
    "color_jitter",
    "elastic_deform",
    "elastic_deform_reference",
    "elastic_displacement",
    "random_flip",
    "random_scale_crop",
    "warp_image_and_label",
]

_IMAGE_FILLS = ("reflect", "zero")


# --- seeds and random draws -------------------------------------------------------------------


def _split_seed(seed, num: int) -> list:
    """``num`` independent stateless seeds from one, or ``num`` Nones for the global generator."""
    if seed is None:
        return [None] * num
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise ValueError(f"seed must be an int or a shape-[2] integer tensor, got {seed!r}")
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.constant(0, tf.int64)])
    if seed.shape.as_list() != [2]:
        raise ValueError(f"seed must be an int or have shape [2], got shape {seed.shape}")
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def _uniform(shape, seed, minval, maxval, dtype=tf.float32):
    if seed is None:
        return tf.random.uniform(shape, minval=minval, maxval=maxval, dtype=dtype)
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval, dtype=dtype)


def _normal(shape, seed, stddev):
    if seed is None:
        return tf.random.normal(shape, stddev=stddev)
    return tf.random.stateless_normal(shape, seed=seed, stddev=stddev)


# --- shapes and dtypes -----------------------------------------------------------------------


def _check_pair(image, label):
    """Tensors: image (H, W, C), label as (H, W, 1), and whether the label came as (H, W)."""
    image = tf.convert_to_tensor(image)
    label = tf.convert_to_tensor(label)
    if image.shape.rank != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    if not label.dtype.is_integer:
        raise ValueError(f"label must be an integer map, got dtype {label.dtype.name}")
    if label.shape.rank == 2:
        return image, label[..., tf.newaxis], True
    if label.shape.rank == 3 and label.shape[-1] == 1:
        return image, label, False
    raise ValueError(f"label must be (H, W) or (H, W, 1), got shape {label.shape}")


def _restore_label(label, squeeze: bool):
    return label[..., 0] if squeeze else label


def _to_dtype(image, dtype):
    """Float32 pixel values back to the input dtype (integers rounded and saturated)."""
    if dtype.is_integer:
        return tf.saturate_cast(tf.round(image), dtype)
    return tf.cast(image, dtype)


# --- scale, crop, flip -----------------------------------------------------------------------


def random_scale_crop(
    image,
    label,
    out_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    ignore_index: int = 255,
    seed=None,
):
    """Rescales by a random factor, pads if needed and crops a random ``out_size`` window.

    The scale is drawn uniformly from ``scale_range`` and applied to both sides (bilinear for
    the image, nearest for the label). Where the scaled example is smaller than ``out_size`` it
    is padded at the bottom and right, with zeros in the image and ``ignore_index`` in the label,
    so padding never counts in the loss.

    Returns:
        ``(image, label)`` of static size ``out_size``.
    """
    image, label, squeeze = _check_pair(image, label)
    out_h, out_w = (int(v) for v in out_size)
    low, high = (float(v) for v in scale_range)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"out_size must be positive (height, width), got {tuple(out_size)}")
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
    scale_seed, y_seed, x_seed = _split_seed(seed, 3)

    scale = _uniform([], scale_seed, low, high)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
    scaled = tf.image.resize(tf.cast(image, tf.float32), new_size, method="bilinear")
    scaled_label = tf.image.resize(label, new_size, method="nearest")

    pad_h = tf.maximum(out_h - new_size[0], 0)
    pad_w = tf.maximum(out_w - new_size[1], 0)
    paddings = [[0, pad_h], [0, pad_w], [0, 0]]
    scaled = tf.pad(scaled, paddings)
    scaled_label = tf.pad(
        scaled_label, paddings, constant_values=tf.cast(ignore_index, scaled_label.dtype)
    )

    top = _uniform([], y_seed, 0, tf.shape(scaled)[0] - out_h + 1, tf.int32)
    left = _uniform([], x_seed, 0, tf.shape(scaled)[1] - out_w + 1, tf.int32)
    image_out = _to_dtype(scaled[top : top + out_h, left : left + out_w], image.dtype)
    label_out = scaled_label[top : top + out_h, left : left + out_w]
    image_out.set_shape([out_h, out_w, image.shape[-1]])
    label_out.set_shape([out_h, out_w, 1])
    return image_out, _restore_label(label_out, squeeze)


def random_flip(image, label, seed=None):
    """Flips image and label left-right together with probability 0.5."""
    image, label, squeeze = _check_pair(image, label)
    flip = _uniform([], _split_seed(seed, 1)[0], 0.0, 1.0) < 0.5
    image_out = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    label_out = tf.cond(flip, lambda: tf.reverse(label, axis=[1]), lambda: label)
    image_out.set_shape(image.shape)
    label_out.set_shape(label.shape)
    return image_out, _restore_label(label_out, squeeze)


# --- colour ----------------------------------------------------------------------------------


def color_jitter(
    image,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    seed=None,
):
    """Random brightness, contrast, saturation and hue, with torchvision's ColorJitter ranges.

    Factors are drawn uniformly from ``[max(0, 1 - b), 1 + b]`` for brightness (multiplies the
    pixels), contrast (``tf.image.adjust_contrast``) and saturation
    (``tf.image.adjust_saturation``), and a hue shift from ``[-hue, hue]`` (``hue <= 0.5``,
    ``tf.image.adjust_hue``). They are applied in that fixed order; 0 turns one off.

    Integer images are converted to [0, 1] and back; float images are taken to be in [0, 1]
    (TensorFlow's convention) and the result is clipped to it. Saturation and hue need RGB.
    """
    for name, value in (("brightness", brightness), ("contrast", contrast),
                        ("saturation", saturation), ("hue", hue)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if hue > 0.5:
        raise ValueError(f"hue must be at most 0.5 (a half turn of the colour wheel), got {hue!r}")
    image = tf.convert_to_tensor(image)
    if (saturation or hue) and image.shape[-1] != 3:
        raise ValueError(
            f"saturation and hue jitter need an RGB image (..., 3), got shape {image.shape}"
        )
    dtype = image.dtype
    x = tf.image.convert_image_dtype(image, tf.float32)
    brightness_seed, contrast_seed, saturation_seed, hue_seed = _split_seed(seed, 4)
    if brightness:
        x = x * _uniform([], brightness_seed, max(0.0, 1.0 - brightness), 1.0 + brightness)
    if contrast:
        x = tf.image.adjust_contrast(
            x, _uniform([], contrast_seed, max(0.0, 1.0 - contrast), 1.0 + contrast)
        )
    if saturation:
        x = tf.image.adjust_saturation(
            x, _uniform([], saturation_seed, max(0.0, 1.0 - saturation), 1.0 + saturation)
        )
    if hue:
        x = tf.image.adjust_hue(x, _uniform([], hue_seed, -hue, hue))
    x = tf.clip_by_value(x, 0.0, 1.0)
    out = tf.image.convert_image_dtype(x, dtype, saturate=True)
    out.set_shape(image.shape)
    return out


# --- elastic deformation (U-Net) ----------------------------------------------------------------


def elastic_displacement(height, width, grid: int = 3, sigma: float = 10.0, seed=None):
    """A smooth random displacement field, U-Net style (Ronneberger et al. 2015, section 3.1).

    Displacement vectors on a coarse ``grid x grid`` grid are drawn from N(0, sigma) pixels and
    interpolated to every pixel bicubically (``tf.image.resize(method="bicubic")``, whose
    half-pixel convention places the grid points at the centres of a grid x grid tiling of the
    image).

    Returns:
        (height, width, 2) float32: ``[..., 0]`` the x (column) and ``[..., 1]`` the y (row)
        displacement, in pixels.
    """
    if int(grid) < 1:
        raise ValueError(f"grid must be a positive integer, got {grid!r}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma!r}")
    coarse = _normal([1, int(grid), int(grid), 2], _split_seed(seed, 1)[0], float(sigma))
    field = tf.image.resize(coarse, tf.stack([height, width]), method="bicubic")[0]
    return tf.cast(field, tf.float32)


def _reflect_101(index, size):
    """Mirrors indices into 0..size-1 without repeating the edge (cv2.BORDER_REFLECT_101)."""
    period = tf.maximum(2 * (size - 1), 1)
    folded = tf.math.floormod(index, period)
    return tf.where(folded >= size, period - folded, folded)


def warp_image_and_label(
    image, label, displacement, ignore_index: int = 255, image_fill: str = "reflect"
):
    """Resamples image and label at ``(y + dy, x + dx)`` for every output pixel (y, x).

    The image is sampled bilinearly, the label by the nearest pixel (rounding half up). The
    sampling is a set of gathers, so it runs anywhere TensorFlow runs, with no
    tensorflow-addons.

    Args:
        image: (H, W, C).
        label: (H, W) or (H, W, 1) integer map.
        displacement: (H, W, 2) float, ``[..., 0]`` = dx (columns), ``[..., 1]`` = dy (rows),
            as from :func:`elastic_displacement`.
        ignore_index: the label of pixels whose source lies outside the image.
        image_fill: how the image is continued outside its borders: ``"reflect"`` mirrors it
            (cv2.BORDER_REFLECT_101, NumPy's ``pad(mode="reflect")``; U-Net mirrors missing
            context too) and ``"zero"`` uses black (cv2.BORDER_CONSTANT with 0). Either way the
            label there is ``ignore_index``, so the loss never trains on invented pixels.
    """
    if image_fill not in _IMAGE_FILLS:
        raise ValueError(f"image_fill must be one of {_IMAGE_FILLS}, got {image_fill!r}")
    image, label, squeeze = _check_pair(image, label)
    displacement = tf.convert_to_tensor(displacement, tf.float32)
    shape = tf.shape(image)
    height, width, channels = shape[0], shape[1], shape[2]
    rows, cols = tf.meshgrid(
        tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij"
    )
    source_x = cols + displacement[..., 0]
    source_y = rows + displacement[..., 1]

    flat_image = tf.reshape(tf.cast(image, tf.float32), [-1, channels])

    def pixels(y, x):
        if image_fill == "reflect":
            return tf.gather(flat_image, _reflect_101(y, height) * width + _reflect_101(x, width))
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        index = tf.clip_by_value(y, 0, height - 1) * width + tf.clip_by_value(x, 0, width - 1)
        return tf.gather(flat_image, index) * tf.cast(inside, tf.float32)[..., tf.newaxis]

    x0f = tf.floor(source_x)
    y0f = tf.floor(source_y)
    fx = (source_x - x0f)[..., tf.newaxis]
    fy = (source_y - y0f)[..., tf.newaxis]
    x0 = tf.cast(x0f, tf.int32)
    y0 = tf.cast(y0f, tf.int32)
    top = (1.0 - fx) * pixels(y0, x0) + fx * pixels(y0, x0 + 1)
    bottom = (1.0 - fx) * pixels(y0 + 1, x0) + fx * pixels(y0 + 1, x0 + 1)
    image_out = _to_dtype((1.0 - fy) * top + fy * bottom, image.dtype)

    nearest_x = tf.cast(tf.floor(source_x + 0.5), tf.int32)
    nearest_y = tf.cast(tf.floor(source_y + 0.5), tf.int32)
    inside = (nearest_y >= 0) & (nearest_y < height) & (nearest_x >= 0) & (nearest_x < width)
    index = (tf.clip_by_value(nearest_y, 0, height - 1) * width
             + tf.clip_by_value(nearest_x, 0, width - 1))
    label_out = tf.gather(tf.reshape(label, [-1]), index)
    label_out = tf.where(inside, label_out, tf.cast(ignore_index, label.dtype))[..., tf.newaxis]

    image_out.set_shape(image.shape)
    label_out.set_shape(label.shape)
    return image_out, _restore_label(label_out, squeeze)


def elastic_deform(
    image,
    label,
    grid: int = 3,
    sigma: float = 10.0,
    seed=None,
    ignore_index: int = 255,
    image_fill: str = "reflect",
):
    """U-Net's random elastic deformation of an image and its label map, alike.

    A displacement field from :func:`elastic_displacement` (``grid`` x ``grid`` vectors from
    N(0, ``sigma`` px), bicubic upsampling) applied with :func:`warp_image_and_label`
    (bilinear image, nearest label, ``ignore_index`` outside the image, image continued by
    ``image_fill``). ``sigma=0`` returns the input unchanged.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    field = elastic_displacement(shape[0], shape[1], grid=grid, sigma=sigma, seed=seed)
    return warp_image_and_label(image, label, field, ignore_index, image_fill)


def elastic_deform_reference(
    image: np.ndarray,
    label: np.ndarray,
    displacement: np.ndarray,
    ignore_index: int = 255,
    image_fill: str = "reflect",
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy / OpenCV version of :func:`warp_image_and_label`, with ``cv2.remap``.

    The same conventions: output (y, x) samples the input at ``(y + dy, x + dx)``; bilinear image
    continued by reflection (cv2.BORDER_REFLECT_101) or zeros, nearest label with
    ``ignore_index`` outside. OpenCV quantises bilinear sampling positions to 1/32 pixel, so the
    two agree within that interpolation tolerance, not bit for bit.
    """
    if image_fill not in _IMAGE_FILLS:
        raise ValueError(f"image_fill must be one of {_IMAGE_FILLS}, got {image_fill!r}")
    image = np.asarray(image)
    label = np.asarray(label)
    displacement = np.asarray(displacement, dtype=np.float32)
    height, width = label.shape[:2]
    cols, rows = np.meshgrid(
        np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    )
    map_x = cols + displacement[..., 0]
    map_y = rows + displacement[..., 1]
    border = cv2.BORDER_REFLECT_101 if image_fill == "reflect" else cv2.BORDER_CONSTANT
    planes = image.reshape(height, width, -1).astype(np.float32)
    warped = np.stack(
        [
            cv2.remap(planes[..., c], map_x, map_y, cv2.INTER_LINEAR,
                      borderMode=border, borderValue=0)
            for c in range(planes.shape[-1])
        ],
        axis=-1,
    ).reshape(image.shape)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        warped = np.clip(np.round(warped), info.min, info.max)
    # float32 holds every label id exactly, and remap supports it (not int32).
    warped_label = cv2.remap(
        label.astype(np.float32), map_x, map_y, cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT, borderValue=float(ignore_index),
    ).reshape(label.shape)
    return warped.astype(image.dtype), warped_label.astype(label.dtype)
