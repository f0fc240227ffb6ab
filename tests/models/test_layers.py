"""The pooling-with-indices and unpooling layers against a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgeseg.models.layers import (  # noqa: E402
    ClassMask,
    CropTo,
    LeakyDecomposedPReLU,
    MaxPoolWithIndices,
    PadToMultiple,
    SubpixelConvTranspose,
    SwitchMaxPool,
    SwitchUnpool,
    UnpoolWithIndices,
    deployable,
    flat_indices,
)
from tests.helpers import keras_predict  # noqa: E402


def numpy_max_pool_with_argmax(x: np.ndarray, k: int):
    """Ceil-mode k x k max pooling; flat indices (y * W + x) * C + c of the first maximum."""
    n, height, width, channels = x.shape
    h, w = -(-height // k), -(-width // k)
    pooled = np.zeros((n, h, w, channels), x.dtype)
    indices = np.zeros((n, h, w, channels), np.int64)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for c in range(channels):
                    best, best_index = None, None
                    for y in range(i * k, min(i * k + k, height)):
                        for xx in range(j * k, min(j * k + k, width)):
                            value = x[b, y, xx, c]
                            if best is None or value > best:  # strict: the first maximum wins
                                best, best_index = value, (y * width + xx) * channels + c
                    pooled[b, i, j, c] = best
                    indices[b, i, j, c] = best_index
    return pooled, indices


def numpy_unpool(values: np.ndarray, flat: np.ndarray, out_shape):
    n = values.shape[0]
    out = np.zeros((n, int(np.prod(out_shape))), values.dtype)
    for b in range(n):
        out[b, flat[b].ravel()] = values[b].ravel()
    return out.reshape((n, *out_shape))


CASES = [  # (height, width, channels, pool size, integer values -> many ties)
    (8, 8, 3, 2, False),
    (7, 9, 2, 2, False),
    (5, 5, 4, 2, True),
    (9, 7, 2, 3, True),
    (1, 3, 1, 2, True),
]


@pytest.mark.parametrize(("height", "width", "channels", "k", "ties"), CASES)
def test_pool_and_unpool_match_numpy(height, width, channels, k, ties):
    rng = np.random.default_rng(height * 100 + width)
    if ties:
        x = rng.integers(0, 3, (2, height, width, channels)).astype(np.float32)
    else:
        x = rng.normal(size=(2, height, width, channels)).astype(np.float32)
    inputs = keras.Input((height, width, channels))
    pooled, indices = MaxPoolWithIndices(k)(inputs)
    unpooled = UnpoolWithIndices((height, width), k)([pooled, indices])
    model = keras.Model(inputs, [pooled, indices, unpooled])
    got_pooled, got_indices, got_unpooled = (
        keras.ops.convert_to_numpy(t) for t in model(x)
    )

    want_pooled, want_flat = numpy_max_pool_with_argmax(x, k)
    np.testing.assert_array_equal(got_pooled, want_pooled)
    np.testing.assert_array_equal(flat_indices(got_indices, x.shape[1:], k), want_flat)
    np.testing.assert_array_equal(got_unpooled, numpy_unpool(want_pooled, want_flat, x.shape[1:]))


@pytest.mark.parametrize(("height", "width", "channels", "k", "ties"), CASES)
def test_switch_form_is_the_index_form(height, width, channels, k, ties):
    """The export form: the same maxima, the switches one-hot at the reference's index (laid
    out window position-major), the same unpooled map."""
    rng = np.random.default_rng(height * 10 + width)
    if ties:
        x = rng.integers(0, 3, (2, height, width, channels)).astype(np.float32)
    else:
        x = rng.normal(size=(2, height, width, channels)).astype(np.float32)
    inputs = keras.Input((height, width, channels))
    pooled, switches = SwitchMaxPool(k)(inputs)
    unpooled = SwitchUnpool((height, width), k)([pooled, switches])
    model = keras.Model(inputs, [pooled, switches, unpooled])
    got_pooled, got_switches, got_unpooled = (keras.ops.convert_to_numpy(t) for t in model(x))

    want_pooled, want_flat = numpy_max_pool_with_argmax(x, k)
    np.testing.assert_array_equal(got_pooled, want_pooled)
    # flat (y * W + x) * C + c back to the window position (y % k) * k + x % k
    position = (want_flat // channels // width % k) * k + (want_flat // channels % width) % k
    one_hot = np.concatenate([(position == p) for p in range(k * k)], axis=-1)
    np.testing.assert_array_equal(got_switches, one_hot.astype(np.float32))
    np.testing.assert_array_equal(got_unpooled, numpy_unpool(want_pooled, want_flat, x.shape[1:]))


def test_ties_go_to_the_first_position_in_the_window():
    x = np.ones((1, 2, 2, 1), np.float32)
    _, indices = MaxPoolWithIndices(2)(x)
    assert int(keras.ops.convert_to_numpy(indices)[0, 0, 0, 0]) == 0
    x = np.array([[0, 5], [5, 1]], np.float32).reshape(1, 2, 2, 1)
    _, indices = MaxPoolWithIndices(2)(x)
    assert int(keras.ops.convert_to_numpy(indices)[0, 0, 0, 0]) == 1


def test_pad_crop_and_mask_layers():
    x = np.arange(2 * 5 * 7 * 3, dtype=np.float32).reshape(2, 5, 7, 3)
    padded = keras.ops.convert_to_numpy(PadToMultiple(4)(x))
    assert padded.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(padded[:, :5, :7], x)
    assert not padded[:, 5:].any() and not padded[:, :, 7:].any()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(CropTo((5, 7))(padded)), x)
    centre = keras.ops.convert_to_numpy(CropTo((3, 3), centre=True)(x))
    np.testing.assert_array_equal(centre, x[:, 1:4, 2:5])
    logits = np.random.default_rng(0).normal(size=(2, 4, 5, 6)).astype(np.float32)
    mask = keras.ops.convert_to_numpy(ClassMask()(logits))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, logits.argmax(-1))


def test_unpool_config_round_trip():
    layer = UnpoolWithIndices((7, 9), 3, name="u")
    clone = UnpoolWithIndices.from_config(layer.get_config())
    assert clone.output_size == (7, 9) and clone.pool_size == 3


def test_pool_size_below_two_is_rejected():
    with pytest.raises(ValueError, match="pool_size"):
        MaxPoolWithIndices(1)


@pytest.mark.slow
def test_pool_unpool_convert_to_one_xnnpack_partition_and_stay_exact_in_int8():
    from edgeseg.converters.tflite import convert_keras_to_tflite, non_builtin_ops
    from edgeseg.runtime_tflite import delegation, load_interpreter

    inputs = keras.Input((9, 7, 4))
    features = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    pooled, indices = MaxPoolWithIndices(2)(features)
    outputs = UnpoolWithIndices((9, 7), 2)([pooled, indices])
    model = keras.Model(inputs, [features, outputs])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 9, 7, 4)).astype(np.float32)
    want_features, want = keras_predict(model, x)

    def run(blob):
        interpreter = load_interpreter(model_content=blob)
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
        outputs = {d["index"]: interpreter.get_tensor(d["index"])
                   for d in interpreter.get_output_details()}
        # The unpooled map is the output with zeros at three positions of every window.
        unpooled, features = sorted(outputs, key=lambda i: np.count_nonzero(outputs[i]))
        return interpreter, outputs[features], outputs[unpooled], (features, unpooled)

    fp32 = convert_keras_to_tflite(model)
    assert non_builtin_ops(fp32) == []
    interpreter, got_features, got_unpooled, _ = run(fp32)
    plan = delegation(interpreter)
    # One XNNPACK partition, nothing left to the reference kernels (no EQUAL / SELECT_V2).
    assert plan["partitions"] == 1 and plan["outside"] == {}, plan
    np.testing.assert_allclose(got_features, want_features, atol=1e-5)
    np.testing.assert_allclose(got_unpooled, want, atol=1e-5)

    int8 = convert_keras_to_tflite(
        model, "int8", lambda: (rng.normal(size=(9, 7, 4)).astype(np.float32) for _ in range(20))
    )
    assert non_builtin_ops(int8) == []
    interpreter, features8, unpooled8, indices = run(int8)
    plan = delegation(interpreter)
    assert plan["partitions"] == 1 and plan["outside"] == {}, plan
    # The int8 graph's own (dequantised) features, pooled and unpooled by the NumPy
    # definition, ties included (int8 values tie often): the maxima land where the reference
    # puts them, none elsewhere, each within one step of the unpooled output's own scale (the
    # int8 tensor its DEQUANTIZE reads) and one of the features'.
    step = max(_dequantised_scale(interpreter, index) for index in indices)
    pooled_ref, flat = numpy_max_pool_with_argmax(features8, 2)
    ref = numpy_unpool(pooled_ref, flat, features8.shape[1:])
    clear = np.abs(ref) > 2 * step
    np.testing.assert_array_equal(unpooled8[clear] != 0, True)
    np.testing.assert_array_equal(unpooled8[ref == 0], 0)
    np.testing.assert_allclose(unpooled8, ref, atol=2 * step)


def _dequantised_scale(interpreter, output_index) -> float:
    """The quantisation scale of the int8 tensor that the DEQUANTIZE writing a float output
    reads."""
    for op in interpreter._get_ops_details():
        if op["op_name"] == "DEQUANTIZE" and output_index in list(op["outputs"]):
            source = interpreter._get_tensor_details(int(op["inputs"][0]), 0)
            return float(source["quantization"][0])
    raise AssertionError(f"no DEQUANTIZE writes tensor {output_index}")


def numpy_transposed_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int):
    """The definition: every input pixel adds ``x[i, j] @ K[r, c]`` at ``(s*i + r, s*j + c)``.
    ``kernel`` is laid out as Keras keeps it, (kh, kw, out, in)."""
    n, height, width, _ = x.shape
    kh, kw, out, _ = kernel.shape
    y = np.zeros((n, (height - 1) * stride + kh, (width - 1) * stride + kw, out), np.float64)
    for i in range(height):
        for j in range(width):
            for r in range(kh):
                for c in range(kw):
                    y[:, stride * i + r, stride * j + c] += x[:, i, j] @ kernel[r, c].T
    return y + bias


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [(2, 2, "valid", (5, 7)), (3, 3, "valid", (4, 6)), (2, 3, "valid", (3, 5)),
     (3, 2, "same", (5, 7)), (3, 2, "same", (6, 4)), (4, 2, "same", (5, 5)),
     (5, 3, "same", (4, 3))],
)
def test_subpixel_transposed_conv_is_the_transposed_conv(kernel, stride, padding, size):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = rng.normal(size=(2, *size, 3)).astype(np.float32)
    weights = [rng.normal(size=(kernel, kernel, 4, 3)).astype(np.float32),
               rng.normal(size=4).astype(np.float32)]
    reference = keras.layers.Conv2DTranspose(4, kernel, strides=stride, padding=padding)
    reference.build(x.shape)
    reference.set_weights(weights)
    want = keras.ops.convert_to_numpy(reference(x))
    if kernel == stride:  # Keras against the definition too
        np.testing.assert_allclose(
            want, numpy_transposed_conv(x.astype(np.float64), *weights, stride), atol=1e-4)
    layer = SubpixelConvTranspose(4, kernel, stride, padding)
    layer.build(x.shape)
    layer.set_weights(weights)
    got = keras.ops.convert_to_numpy(layer(x))
    assert got.shape == want.shape == (2, *layer.compute_output_shape(x.shape)[1:])
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_subpixel_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="kernel_size <= stride"):
        SubpixelConvTranspose(4, 3, 2, "valid")


def test_leaky_decomposed_prelu_is_prelu():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
    alpha = rng.uniform(-0.5, 1.5, size=(1, 1, 6)).astype(np.float32)
    layer = LeakyDecomposedPReLU(shared_axes=[1, 2])
    layer.build(x.shape)
    layer.set_weights([alpha])
    want = np.where(x > 0, x, alpha * x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), want, atol=1e-6)
    with pytest.raises(ValueError, match="slope"):
        LeakyDecomposedPReLU(slope=0.0)


def test_deployable_picks_the_prelu_form_its_slopes_allow():
    inputs = keras.Input((4, 4, 2))
    prelu = keras.layers.PReLU(shared_axes=[1, 2], name="act")
    model = keras.Model(inputs, prelu(inputs))
    x = np.random.default_rng(5).normal(size=(1, 4, 4, 2)).astype(np.float32)
    for slopes, form in (([0.2, 1.0], LeakyDecomposedPReLU), ([0.2, 1.5], LeakyDecomposedPReLU),
                         ([0.0, -0.3], LeakyDecomposedPReLU)):
        prelu.set_weights([np.array(slopes, np.float32).reshape(1, 1, 2)])
        fast = deployable(model, integer=True)
        assert type(fast.get_layer("act")) is form
        np.testing.assert_allclose(keras_predict(fast, x), keras_predict(model, x), atol=1e-6)
    # Slopes all under NEGLIGIBLE_SLOPE: a ReLU in int8, off by at most |alpha * x|, which is
    # under half an int8 step of the layer's range; fp32 keeps the PReLU.
    prelu.set_weights([np.array([0.0, -0.0015], np.float32).reshape(1, 1, 2)])
    fast = deployable(model, integer=True)
    assert type(fast.get_layer("act")) is keras.layers.ReLU
    got, want = keras_predict(fast, x), keras_predict(model, x)
    np.testing.assert_array_equal(got, np.maximum(x, 0))
    assert np.abs(got - want).max() < 0.5 * (x.max() - x.min()) / 255
    assert deployable(model, integer=False) is model


@pytest.mark.slow
def test_deployable_enet_computes_the_same_and_runs_int8_in_one_xnnpack_partition():
    from edgeseg.converters.tflite import convert_keras_to_tflite, tflite_op_names
    from edgeseg.models import build
    from edgeseg.runtime_tflite import delegation, load_interpreter

    model = build("enet", 5, (48, 64, 3))
    rng = np.random.default_rng(0)
    # Untrained, its slopes are all 0: ReLUs in int8, which stay in the one partition too.
    untrained = convert_keras_to_tflite(
        model, "int8", lambda: (rng.random((48, 64, 3), dtype=np.float32) for _ in range(4))
    )
    assert "PRELU" not in tflite_op_names(untrained)
    plan = delegation(load_interpreter(model_content=untrained))
    assert plan["partitions"] == 1 and plan["outside"] == {}, plan
    for weight in model.weights:
        if "alpha" in weight.path:  # trained slopes, as ENet learns them
            weight.assign(rng.uniform(0, 0.6, weight.shape).astype(np.float32))
    x = rng.random((1, 48, 64, 3), dtype=np.float32)
    for integer in (False, True):
        fast = deployable(model, integer=integer)
        kinds = {type(layer).__name__ for layer in fast.layers}
        assert {"SubpixelConvTranspose", "SwitchMaxPool", "SwitchUnpool"} <= kinds
        assert ("LeakyDecomposedPReLU" in kinds) == integer
        np.testing.assert_allclose(keras_predict(fast, x), keras_predict(model, x), atol=1e-4)
    int8 = convert_keras_to_tflite(
        model, "int8", lambda: (rng.random((48, 64, 3), dtype=np.float32) for _ in range(8))
    )
    ops = tflite_op_names(int8)
    # PReLU as LEAKY_RELU, SUB, MUL, ADD (XNNPACK has no int8 PRELU).
    assert "PRELU" not in ops and "LEAKY_RELU" in ops
    # Every transposed convolution became a convolution and a depth-to-space TRANSPOSE.
    assert "TRANSPOSE" in ops and "TRANSPOSE_CONV" not in ops
    # The whole int8 graph is one XNNPACK partition: nothing runs in the reference kernels.
    plan = delegation(load_interpreter(model_content=int8))
    assert plan["partitions"] == 1 and plan["outside"] == {}, plan
