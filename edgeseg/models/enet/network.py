"""ENet (Paszke et al. 2016, arXiv 1606.02147), as in the authors' Torch code.

Table 1 of the paper: an initial block, five stages of bottlenecks, and a 2x2 transposed
convolution to the classes. Downsampling bottlenecks keep their max-pooling indices; the decoder's
upsampling bottlenecks unpool with them. The encoder uses PReLU with one slope per channel, the
decoder ReLU (section 4).
"""

from __future__ import annotations

import keras
from keras import layers

from edgeseg.models.layers import (
    CropTo,
    MaxPoolWithIndices,
    PadChannels,
    PadToMultiple,
    UnpoolWithIndices,
    segmentation_output,
)

BN_EPSILON = 1e-3  # the Torch code's value (ANCHORS.md)
BN_MOMENTUM = 0.9  # Torch's default momentum 0.1 in Keras' convention (1 - 0.1)
OUTPUT_STRIDE = 8

# Stage 2 (and stage 3 without its first, downsampling, bottleneck): (kind, dilation or kernel).
STAGE_2_3 = (
    ("regular", 1),
    ("dilated", 2),
    ("asymmetric", 5),
    ("dilated", 4),
    ("regular", 1),
    ("dilated", 8),
    ("asymmetric", 5),
    ("dilated", 16),
)


# --- layers -------------------------------------------------------------------------------------


def _activation(encoder: bool, name: str):
    # PReLU slopes shared over height and width: one per channel, as in the paper.
    if encoder:
        return layers.PReLU(shared_axes=[1, 2], name=name)
    return layers.ReLU(name=name)


def _bn(name: str):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def initial_block(x, filters: int = 16):
    """3x3 stride-2 conv with (filters - 3) maps, concatenated with a 2x2 max-pool of the input."""
    conv = layers.Conv2D(filters - x.shape[-1], 3, strides=2, padding="same", name="initial_conv")(x)
    pool = layers.MaxPooling2D(2, name="initial_pool")(x)
    x = layers.Concatenate(name="initial_concat")([conv, pool])
    x = _bn("initial_bn")(x)
    return _activation(True, "initial_prelu")(x)


def bottleneck(
    x,
    filters: int,
    name: str,
    kind: str = "regular",
    value: int = 1,
    dropout: float = 0.1,
    encoder: bool = True,
):
    """A regular, dilated or asymmetric bottleneck that keeps the resolution (Fig. 2b)."""
    internal = filters // 4
    y = layers.Conv2D(internal, 1, use_bias=False, name=f"{name}_project")(x)
    y = _bn(f"{name}_project_bn")(y)
    y = _activation(encoder, f"{name}_project_act")(y)
    if kind == "regular":
        y = layers.Conv2D(internal, 3, padding="same", name=f"{name}_conv")(y)
    elif kind == "dilated":
        y = layers.Conv2D(internal, 3, padding="same", dilation_rate=value, name=f"{name}_conv")(y)
    elif kind == "asymmetric":
        y = layers.Conv2D(internal, (value, 1), padding="same", use_bias=False, name=f"{name}_conv_a")(y)
        y = layers.Conv2D(internal, (1, value), padding="same", name=f"{name}_conv_b")(y)
    else:
        raise ValueError(f"bottleneck kind must be regular, dilated or asymmetric; got {kind!r}")
    y = _bn(f"{name}_conv_bn")(y)
    y = _activation(encoder, f"{name}_conv_act")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_expand")(y)
    y = _bn(f"{name}_expand_bn")(y)
    y = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(y)
    y = layers.Add(name=f"{name}_add")([x, y])
    return _activation(encoder, f"{name}_out_act")(y)


def downsampling_bottleneck(x, filters: int, name: str, dropout: float):
    """Halves the resolution; the shortcut is a max-pool with indices, zero-padded in channels."""
    internal = filters // 4
    shortcut, indices = MaxPoolWithIndices(2, name=f"{name}_pool")(x)
    shortcut = PadChannels(filters, name=f"{name}_pad")(shortcut)

    y = layers.Conv2D(internal, 2, strides=2, use_bias=False, name=f"{name}_project")(x)
    y = _bn(f"{name}_project_bn")(y)
    y = _activation(True, f"{name}_project_act")(y)
    y = layers.Conv2D(internal, 3, padding="same", name=f"{name}_conv")(y)
    y = _bn(f"{name}_conv_bn")(y)
    y = _activation(True, f"{name}_conv_act")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_expand")(y)
    y = _bn(f"{name}_expand_bn")(y)
    y = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return _activation(True, f"{name}_out_act")(y), indices


def upsampling_bottleneck(x, indices, output_size, filters: int, name: str, dropout: float):
    """Doubles the resolution; the shortcut is a 1x1 conv then max-unpooling with ``indices``."""
    internal = filters // 4
    shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_shortcut_conv")(x)
    shortcut = _bn(f"{name}_shortcut_bn")(shortcut)
    shortcut = UnpoolWithIndices(output_size, 2, name=f"{name}_unpool")([shortcut, indices])

    y = layers.Conv2D(internal, 1, use_bias=False, name=f"{name}_project")(x)
    y = _bn(f"{name}_project_bn")(y)
    y = _activation(False, f"{name}_project_act")(y)
    y = layers.Conv2DTranspose(internal, 3, strides=2, padding="same", name=f"{name}_deconv")(y)
    y = CropTo(output_size, name=f"{name}_deconv_crop")(y)
    y = _bn(f"{name}_conv_bn")(y)
    y = _activation(False, f"{name}_conv_act")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_expand")(y)
    y = _bn(f"{name}_expand_bn")(y)
    y = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return _activation(False, f"{name}_out_act")(y)


# --- graph --------------------------------------------------------------------------------------


def build_enet(
    num_classes: int,
    input_shape: tuple[int, int, int] = (360, 480, 3),
    output: str = "logits",
    name: str = "enet",
) -> keras.Model:
    """Builds ENet for ``num_classes`` classes at a fixed ``input_shape`` (H, W, C).

    Any height and width work: the input is zero-padded to a multiple of 8 in the graph and the
    logits are cropped back, so the output has the input's height and width.

    Args:
        output: "logits" (default, for training), "probs" (softmax) or "mask" (uint8 argmax).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    height, width = input_shape[:2]
    x = PadToMultiple(OUTPUT_STRIDE, name="pad_input")(inputs)
    size_1 = (x.shape[1] // 2, x.shape[2] // 2)  # after the initial block
    size_2 = (size_1[0] // 2, size_1[1] // 2)  # after stage 1

    x = initial_block(x)
    # Stage 1: dropout 0.01.
    x, indices_1 = downsampling_bottleneck(x, 64, "b1_0", dropout=0.01)
    for i in range(1, 5):
        x = bottleneck(x, 64, f"b1_{i}", dropout=0.01)
    # Stages 2 and 3: dropout 0.1.
    x, indices_2 = downsampling_bottleneck(x, 128, "b2_0", dropout=0.1)
    for stage in (2, 3):
        for i, (kind, value) in enumerate(STAGE_2_3, start=1):
            x = bottleneck(x, 128, f"b{stage}_{i}", kind, value, dropout=0.1)
    # Stages 4 and 5: the decoder, ReLU.
    x = upsampling_bottleneck(x, indices_2, size_2, 64, "b4_0", dropout=0.1)
    for i in (1, 2):
        x = bottleneck(x, 64, f"b4_{i}", dropout=0.1, encoder=False)
    x = upsampling_bottleneck(x, indices_1, size_1, 16, "b5_0", dropout=0.1)
    x = bottleneck(x, 16, "b5_1", dropout=0.1, encoder=False)

    logits = layers.Conv2DTranspose(num_classes, 2, strides=2, name="fullconv")(x)
    logits = CropTo((height, width), name="crop_output")(logits)
    return keras.Model(inputs, segmentation_output(logits, output), name=name)
