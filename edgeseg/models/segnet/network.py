"""SegNet (Badrinarayanan, Kendall, Cipolla; TPAMI 2017, arXiv 1511.00561).

The encoder is the 13 convolutional layers of VGG16, each followed by batch normalisation and
ReLU, with 2x2 max-pooling that stores its indices (section 3). The decoder mirrors it: each stage
max-unpools with the indices of the matching encoder stage, then convolves (no ReLU-free skip
features are stored, only the indices). The last decoder convolution outputs the class scores.
About 29.45M parameters at width 1.
"""

from __future__ import annotations

import keras
from keras import layers

from edgeseg.models.layers import (
    CropTo,
    MaxPoolWithIndices,
    PadToMultiple,
    UnpoolWithIndices,
    segmentation_output,
)

OUTPUT_STRIDE = 32

# VGG16's convolutional stages: (number of 3x3 convs, filters).
ENCODER = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
# The decoder, deepest stage first; each stage's last conv maps to the next stage's width, the
# last one (None) to the classes (SegNet's Caffe model: conv*_D layers).
DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, None))


# --- layers -------------------------------------------------------------------------------------


def conv_bn_relu(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _scaled(filters: int, width: float) -> int:
    return max(1, int(round(filters * width)))


# --- graph --------------------------------------------------------------------------------------


def build_segnet(
    num_classes: int,
    input_shape: tuple[int, int, int] = (360, 480, 3),
    width: float = 1.0,
    output: str = "logits",
    name: str = "segnet",
) -> keras.Model:
    """Builds SegNet at a fixed input size; any height and width work (padded to 32 in-graph).

    Args:
        width: channel multiplier (1.0 is the paper's VGG16; smaller values give edge variants).
        output: "logits", "probs" or "mask".
    """
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = PadToMultiple(OUTPUT_STRIDE, name="pad_input")(inputs)

    pooled = []  # (indices, size before pooling), shallowest first
    for stage, (convs, filters) in enumerate(ENCODER, start=1):
        for i in range(1, convs + 1):
            x = conv_bn_relu(x, _scaled(filters, width), f"enc{stage}_{i}")
        size = (x.shape[1], x.shape[2])
        x, indices = MaxPoolWithIndices(2, name=f"enc{stage}_pool")(x)
        pooled.append((indices, size))

    for stage, filters_list in zip(range(len(DECODER), 0, -1), DECODER, strict=True):
        indices, size = pooled[stage - 1]
        x = UnpoolWithIndices(size, 2, name=f"dec{stage}_unpool")([x, indices])
        for i, filters in enumerate(filters_list, start=1):
            if filters is None:
                x = layers.Conv2D(num_classes, 3, padding="same", name="classifier")(x)
            else:
                x = conv_bn_relu(x, _scaled(filters, width), f"dec{stage}_{i}")

    logits = CropTo(input_shape[:2], name="crop_output")(x)
    return keras.Model(inputs, segmentation_output(logits, output), name=name)
