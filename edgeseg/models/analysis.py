"""Counts a built model's parameters and arithmetic from its layers, for one image (batch 1).

Three figures, each in its own unit:

- ``macs``: the multiply-accumulates of the convolutions (regular, dilated, asymmetric, grouped,
  depthwise, transposed) and dense layers: kernel height x kernel width x input channels (per
  group) x output channels at every output position. A transposed convolution counts at its
  *input* positions (each scatters one kernel into the output), the multiplies it does rather
  than those of a convolution over its zero-upsampled input. Bias adds are not in it.
- ``flops``: 2 x ``macs``, a multiply and an add each. Papers and tools disagree on the name:
  fvcore and ptflops print MACs, others call them FLOPs, so compare units before figures.
- ``elementwise_ops``: what the two leave out, one operation per output element of a bias add,
  an activation (ReLU, PReLU, Softmax, ...) or an element-wise merge (an Add of n inputs counts
  n - 1); two for batch normalisation (scale and shift: an export folds them into the convolution
  before it, so a deployed graph does not run them); k*k - 1 comparisons (max) or adds (average)
  per output of a k x k pooling, ``MaxPoolWithIndices`` included (its index bookkeeping is not).
  Max-unpooling, padding, cropping, concatenation and reshapes move data and count zero, as do
  dropout (the identity at inference) and the custom layers of Mask R-CNN (proposal decoding,
  NMS, ROIAlign).
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
    elementwise_ops: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def flops(self) -> int:
        """Floating-point operations of the multiply-accumulates: 2 x ``macs``."""
        return 2 * self.macs

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def fp32_megabytes(self) -> float:
        """Weights stored as float32 (the .keras / fp32 .tflite size, near enough)."""
        return self.params * 4 / 1e6

    @property
    def int8_megabytes(self) -> float:
        """Weights stored as int8 (full-integer .tflite: biases are int32, a small excess)."""
        return self.params / 1e6

    def as_dict(self) -> dict:
        return {**asdict(self), "gmacs": self.gmacs, "flops": self.flops, "gflops": self.gflops,
                "fp32_mb": self.fp32_megabytes, "int8_mb": self.int8_megabytes}


def _hw(shape) -> int:
    # An unknown axis (the ROIs of a Mask R-CNN head) counts once; profile_model multiplies.
    return math.prod(int(d) for d in shape[1:-1] if d is not None)


def _elements(tensor) -> int:
    """Elements of one image's tensor; an unknown axis counts once, as in ``_hw``."""
    return math.prod(int(d) for d in tensor.shape[1:] if d is not None)


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


def layer_elementwise_ops(layer) -> int:
    """Operations of one layer outside its multiply-accumulates, for one image (module doc)."""
    import keras

    from edgeseg.models.layers import MaxPoolWithIndices

    kinds = keras.layers
    if isinstance(layer, (kinds.Conv2D, kinds.Conv2DTranspose, kinds.DepthwiseConv2D,
                          kinds.Dense)):
        return _elements(layer.output) if layer.use_bias else 0
    if isinstance(layer, kinds.BatchNormalization):
        return 2 * _elements(layer.output)
    if isinstance(layer, (kinds.ReLU, kinds.PReLU, kinds.LeakyReLU, kinds.ELU, kinds.Softmax,
                          kinds.Activation)):
        return _elements(layer.output)
    if isinstance(layer, (kinds.Add, kinds.Subtract, kinds.Multiply, kinds.Average,
                          kinds.Maximum, kinds.Minimum)):
        return (len(layer.input) - 1) * _elements(layer.output)
    if isinstance(layer, (kinds.MaxPooling2D, kinds.AveragePooling2D)):
        kh, kw = layer.pool_size
        return (kh * kw - 1) * _elements(layer.output)
    if isinstance(layer, MaxPoolWithIndices):
        return (layer.pool_size**2 - 1) * _elements(layer.output[0])
    if isinstance(layer, (kinds.GlobalAveragePooling2D, kinds.GlobalMaxPooling2D)):
        return _elements(layer.input)
    return 0


def _roi_count(nested) -> int:
    """How many ROIs a nested per-ROI model (input (B, None, ...)) is called on, else 1."""
    shape = nested.inputs[0].shape
    if len(shape) < 3 or shape[1] is not None or not nested._inbound_nodes:
        return 1
    called = nested._inbound_nodes[0].input_tensors[0].shape
    return int(called[1]) if called[1] is not None else 1


def profile_model(model) -> ModelProfile:
    """Parameters, multiply-accumulates and element-wise operations of a built functional model."""
    import keras

    macs = elementwise = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            nested, calls = profile_model(layer), _roi_count(layer)
            macs += nested.macs * calls
            elementwise += nested.elementwise_ops * calls
        else:
            macs += layer_macs(layer)
            elementwise += layer_elementwise_ops(layer)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return ModelProfile(
        name=model.name,
        input_shape=tuple(model.inputs[0].shape[1:]),
        output_shape=tuple(model.outputs[0].shape[1:]),
        params=int(model.count_params()),
        trainable_params=int(trainable),
        macs=int(macs),
        elementwise_ops=int(elementwise),
    )
