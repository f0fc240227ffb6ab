"""FCN-8s (Long, Shelhamer, Darrell; CVPR 2015, arXiv 1411.4038).

VGG16's convolutional layers, its fully connected layers as convolutions (fc6: 7x7, fc7: 1x1,
with dropout), class scores at stride 32, then two 2x upsamplings fused with 1x1 class scores
from pool4 and pool3, and an 8x upsampling to the input (section 4.2, Fig. 3). The upsamplings
are transposed convolutions initialised to bilinear interpolation (section 3.3) and learned.

The original pads the input by 100 pixels and crops; here the input is padded to a multiple of
32 in the graph and the scores cropped back, which keeps every map aligned without offsets.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from edgeseg.models.layers import PACKAGE, CropTo, PadToMultiple, segmentation_output

OUTPUT_STRIDE = 32
VGG16 = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def bilinear_kernel(size: int, channels_out: int, channels_in: int) -> np.ndarray:
    """A (size, size, out, in) transposed-convolution kernel doing bilinear upsampling.

    Channel i maps to channel i only (the FCN reference code's ``upsample_filt``).
    """
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    grid = np.arange(size)
    filt_1d = 1 - np.abs(grid - centre) / factor
    filt = np.outer(filt_1d, filt_1d).astype("float32")
    kernel = np.zeros((size, size, channels_out, channels_in), dtype="float32")
    for i in range(min(channels_out, channels_in)):
        kernel[:, :, i, i] = filt
    return kernel


@keras.saving.register_keras_serializable(package=PACKAGE)
class BilinearUpsampleInitializer(keras.initializers.Initializer):
    """Initialises a Conv2DTranspose kernel to bilinear interpolation (FCN section 3.3)."""

    def __call__(self, shape, dtype=None):
        size, size_w, channels_out, channels_in = shape
        if size != size_w:
            raise ValueError(f"bilinear kernels must be square, got {shape}")
        return keras.ops.convert_to_tensor(
            bilinear_kernel(size, channels_out, channels_in), dtype=dtype or "float32"
        )

    def get_config(self):
        return {}


def upsample(x, num_classes: int, factor: int, name: str):
    return layers.Conv2DTranspose(
        num_classes,
        2 * factor,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearUpsampleInitializer(),
        name=name,
    )(x)


def build_fcn8s(
    num_classes: int,
    input_shape: tuple[int, int, int] = (512, 512, 3),
    width: float = 1.0,
    fc_channels: int = 4096,
    output: str = "logits",
    name: str = "fcn8s",
) -> keras.Model:
    """Builds FCN-8s.

    Args:
        width: channel multiplier for the VGG16 convolutions (1.0 = the paper).
        fc_channels: channels of fc6 / fc7 (4096 in the paper; fc6 alone then holds 103M weights).
    """
    if width <= 0 or fc_channels < 1:
        raise ValueError(f"width must be > 0 and fc_channels >= 1, got {width!r}, {fc_channels!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = PadToMultiple(OUTPUT_STRIDE, name="pad_input")(inputs)

    pools = []
    for stage, (convs, filters) in enumerate(VGG16, start=1):
        for i in range(1, convs + 1):
            x = layers.Conv2D(
                max(1, int(round(filters * width))), 3, padding="same", activation="relu",
                name=f"conv{stage}_{i}",
            )(x)
        x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        pools.append(x)
    pool3, pool4 = pools[2], pools[3]

    x = layers.Conv2D(fc_channels, 7, padding="same", activation="relu", name="fc6")(x)
    x = layers.Dropout(0.5, name="drop6")(x)
    x = layers.Conv2D(fc_channels, 1, activation="relu", name="fc7")(x)
    x = layers.Dropout(0.5, name="drop7")(x)
    x = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_fr")(x)

    x = upsample(x, num_classes, 2, "upscore2")
    score_pool4 = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_pool4")(pool4)
    x = layers.Add(name="fuse_pool4")([x, score_pool4])
    x = upsample(x, num_classes, 2, "upscore_pool4")
    score_pool3 = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_pool3")(pool3)
    x = layers.Add(name="fuse_pool3")([x, score_pool3])
    x = upsample(x, num_classes, 8, "upscore8")

    logits = CropTo(input_shape[:2], name="crop_output")(x)
    return keras.Model(inputs, segmentation_output(logits, output), name=name)
