"""Counts a built model's parameters and multiply-accumulates from its layers.

MACs are counted for the layers that hold nearly all the arithmetic (convolutions, transposed
convolutions, depthwise convolutions, dense layers); normalisation, activations and elementwise
layers are left out, as in the usual counts (the ENet paper's GFLOPs, fvcore, ptflops).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelProfile:
    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int | None, ...]
    params: int
    trainable_params: int
    macs: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def fp32_megabytes(self) -> float:
        """Weights stored as float32 (the .keras / fp32 .tflite size, near enough)."""
        return self.params * 4 / 1e6

    @property
    def int8_megabytes(self) -> float:
        """Weights stored as int8 (full-integer .tflite: biases are int32, a small excess)."""
        return self.params / 1e6

    def as_dict(self) -> dict:
        return {**asdict(self), "gmacs": self.gmacs, "fp32_mb": self.fp32_megabytes,
                "int8_mb": self.int8_megabytes}


def _hw(shape) -> int:
    # An unknown axis (the ROIs of a Mask R-CNN head) counts once; profile_model multiplies.
    return math.prod(int(d) for d in shape[1:-1] if d is not None)


def layer_macs(layer) -> int:
    """Multiply-accumulates of one layer for one image (batch 1)."""
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return _hw(layer.output.shape) * kh * kw * layer.input.shape[-1] * layer.depth_multiplier
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        # Every input pixel scatters a kh x kw x C_out patch.
        return _hw(layer.input.shape) * kh * kw * layer.input.shape[-1] * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        c_in = layer.input.shape[-1] // layer.groups
        return _hw(layer.output.shape) * kh * kw * c_in * layer.filters
    if isinstance(layer, keras.layers.Dense):
        leading = _hw(layer.input.shape) or 1
        return leading * layer.input.shape[-1] * layer.units
    return 0


def _roi_count(nested) -> int:
    """How many ROIs a nested per-ROI model (input (B, None, ...)) is called on, else 1."""
    shape = nested.inputs[0].shape
    if len(shape) < 3 or shape[1] is not None or not nested._inbound_nodes:
        return 1
    called = nested._inbound_nodes[0].input_tensors[0].shape
    return int(called[1]) if called[1] is not None else 1


def profile_model(model) -> ModelProfile:
    """Parameters and MACs of a built functional model."""
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            macs += profile_model(layer).macs * _roi_count(layer)
        else:
            macs += layer_macs(layer)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return ModelProfile(
        name=model.name,
        input_shape=tuple(model.inputs[0].shape[1:]),
        output_shape=tuple(model.outputs[0].shape[1:]),
        params=int(model.count_params()),
        trainable_params=int(trainable),
        macs=int(macs),
    )
