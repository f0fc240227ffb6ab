"""U-Net (Ronneberger, Fischer, Brox; MICCAI 2015, arXiv 1505.04597).

Section 2 and Fig. 1: a contracting path of ``depth`` steps (two 3x3 convolutions + ReLU, then
2x2 max-pooling; the filters double at each step from ``filters``), an expanding path of 2x2
up-convolutions that halve the filters, concatenation with the correspondingly cropped encoder
map, two 3x3 convolutions + ReLU, and a final 1x1 convolution to the classes. Dropout at the end
of the contracting path (section 3.1).

``padding="valid"`` is the paper's network: the output is smaller than the input (572 -> 388),
and large images are segmented with the overlap-tile strategy. ``padding="same"`` keeps the size
(any input size works: it is padded to a multiple of 2**depth in the graph and cropped back).
"""

from __future__ import annotations

import keras
from keras import layers

from edgeseg.models.layers import CropTo, PadToMultiple, segmentation_output

PADDINGS = ("same", "valid")


# --- layers -------------------------------------------------------------------------------------


def double_conv(x, filters: int, padding: str, name: str):
    for i in (1, 2):
        x = layers.Conv2D(
            filters, 3, padding=padding, kernel_initializer="he_normal", name=f"{name}_conv{i}"
        )(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def valid_output_size(size: int, depth: int) -> int | None:
    """Output size of the valid-padding U-Net for an input ``size``, or None if it is invalid.

    Every map entering a 2x2 pooling must have an even size (section 2: "it is important to
    select the input tile size such that all 2x2 max-pooling operations are applied to a layer
    with an even x- and y-size").
    """
    for _ in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4
    for _ in range(depth):
        size = size * 2 - 4
    return size if size > 0 else None


def nearest_valid_sizes(size: int, depth: int) -> tuple[int | None, int | None]:
    below = next((s for s in range(size, 0, -1) if valid_output_size(s, depth)), None)
    above = next((s for s in range(size, size + 2**depth * 2 + 1) if valid_output_size(s, depth)), None)
    return below, above


# --- graph --------------------------------------------------------------------------------------


def build_unet(
    num_classes: int,
    input_shape: tuple[int, int, int] = (256, 256, 3),
    filters: int = 64,
    depth: int = 4,
    padding: str = "same",
    dropout: float = 0.5,
    output: str = "logits",
    name: str = "unet",
) -> keras.Model:
    """Builds U-Net.

    Args:
        filters: filters of the first level (64 in the paper); edge variants use 8-32.
        depth: number of down / up steps (4 in the paper).
        padding: "valid" (the paper; output smaller than input) or "same".
        dropout: dropout rate at the end of the contracting path.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")
    if int(depth) < 1 or int(filters) < 1:
        raise ValueError(f"depth and filters must be >= 1, got depth={depth!r}, filters={filters!r}")
    height, width = input_shape[:2]
    if padding == "valid":
        for label, size in (("height", height), ("width", width)):
            if valid_output_size(size, depth) is None:
                below, above = nearest_valid_sizes(size, depth)
                raise ValueError(
                    f"valid-padding U-Net of depth {depth} cannot take input {label} {size}: every "
                    f"map entering a 2x2 pooling must be even; nearest valid sizes: {below}, {above} "
                    "(or use padding='same')"
                )

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs if padding == "valid" else PadToMultiple(2**depth, name="pad_input")(inputs)

    skips = []
    for level in range(depth):
        x = double_conv(x, filters * 2**level, padding, f"down{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level + 1}_pool")(x)
    x = double_conv(x, filters * 2**depth, padding, "bottom")
    if dropout:
        x = layers.Dropout(dropout, name="bottom_dropout")(x)

    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(
            filters * 2**level, 2, strides=2, name=f"up{level + 1}_upconv"
        )(x)
        skip = skips[level]
        if padding == "valid":
            skip = CropTo((x.shape[1], x.shape[2]), centre=True, name=f"up{level + 1}_crop")(skip)
        x = layers.Concatenate(name=f"up{level + 1}_concat")([skip, x])
        x = double_conv(x, filters * 2**level, padding, f"up{level + 1}")

    logits = layers.Conv2D(num_classes, 1, name="classifier")(x)
    if padding == "same":
        logits = CropTo((height, width), name="crop_output")(logits)
    return keras.Model(inputs, segmentation_output(logits, output), name=name)
