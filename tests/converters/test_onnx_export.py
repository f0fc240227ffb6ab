"""Keras -> ONNX export of every registered model, checked against Keras with onnxruntime."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from edgeseg.converters.onnx_export import (  # noqa: E402
    INPUT_NAME,
    OUTPUT_NAME,
    convert_keras_to_onnx,
    default_opset,
    onnx_op_types,
    preferred_providers,
    run_onnx,
)
from edgeseg.converters.tensorrt_export import (  # noqa: E402
    check_tensorrt_compatibility,
    unsupported_tensorrt_ops,
)
from edgeseg.io import write_bytes_atomic  # noqa: E402
from edgeseg.models import build, list_models  # noqa: E402
from tests.helpers import SMALL_MODELS, keras_predict, random_images  # noqa: E402

NUM_CLASSES = 5
HEIGHT, WIDTH = 45, 61  # not a multiple of any network's stride


def small_model(name: str, **options):
    keras.utils.set_random_seed(0)
    model = build(name, NUM_CLASSES, (HEIGHT, WIDTH, 3), **SMALL_MODELS[name], **options)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # FCN's score layers start at zero: give every model signal
        if layer.name.startswith("score"):
            layer.set_weights(
                [rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()]
            )
    return model


@pytest.fixture(scope="module", params=list_models("semantic"))
def exported(request):
    """(name, Keras model, ONNX proto) for every registered model, converted once per module."""
    model = small_model(request.param)
    return request.param, model, convert_keras_to_onnx(model)


@pytest.mark.slow
def test_export_matches_keras(exported):
    name, model, proto = exported
    onnx.checker.check_model(proto, full_check=True)
    assert default_opset(proto) >= 17
    assert [value.name for value in proto.graph.input] == [INPUT_NAME]
    assert [value.name for value in proto.graph.output] == [OUTPUT_NAME]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, HEIGHT, WIDTH, 3]  # NHWC, as the Keras model

    x = random_images(2, HEIGHT, WIDTH, seed=7)
    want = keras_predict(model, x)
    assert want.std() > 0, f"{name} gives a constant output: the comparison would prove nothing"
    got = run_onnx(proto, x, providers=["CPUExecutionProvider"])
    assert got.shape == want.shape == (2, HEIGHT, WIDTH, NUM_CLASSES)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_export_uses_only_tensorrt_operators_and_types(exported):
    name, _, proto = exported
    print(name, sorted(onnx_op_types(proto)))
    assert unsupported_tensorrt_ops(proto) == []
    check = check_tensorrt_compatibility(proto)
    assert check.ok, check
    assert check.warnings == []


@pytest.mark.slow
def test_mask_output_model_exports_a_uint8_argmax():
    logits_model = small_model("unet")
    mask_model = small_model("unet", output="mask")
    mask_model.set_weights(logits_model.get_weights())
    x = random_images(2, HEIGHT, WIDTH, seed=8)
    logits = keras_predict(logits_model, x)
    want = keras_predict(mask_model, x)
    assert len(np.unique(want)) > 1

    proto = convert_keras_to_onnx(mask_model)
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert check_tensorrt_compatibility(proto).ok
    got = run_onnx(proto, x, providers=["CPUExecutionProvider"])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, logits.argmax(-1))


@pytest.mark.slow
def test_opset_18_is_recorded_and_saved_model_runs(tmp_path):
    model = small_model("unet")
    proto = convert_keras_to_onnx(model, opset=18)
    assert default_opset(proto) == 18
    path = write_bytes_atomic(tmp_path / "unet.onnx", proto.SerializeToString())
    assert onnx.load(path) == proto
    x = random_images(1, HEIGHT, WIDTH, seed=9)
    got = run_onnx(path, x[0], providers=["CPUExecutionProvider"])  # one (H, W, C) image
    np.testing.assert_allclose(got, keras_predict(model, x)[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("opset", [13, 16, "17", 17.0])
def test_opset_below_17_or_not_an_integer_is_rejected(opset):
    with pytest.raises(ValueError, match=r"opset must be an integer >= 17"):
        convert_keras_to_onnx(object(), opset=opset)


def test_missing_tf2onnx_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    monkeypatch.setitem(sys.modules, "tf2onnx.constants", None)
    with pytest.raises(ImportError, match=r'pip install "edgeseg\[onnx\]"'):
        convert_keras_to_onnx(object())


def tiny_graph_with_a_subgraph():
    """Relu at the top level, and an If whose branches hold Neg and a com.microsoft op."""
    from onnx import TensorProto, helper

    def branch(name, node):
        out = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [2])
        return helper.make_graph([node], name, [], [out])

    then_graph = branch("then", helper.make_node("Neg", ["r"], ["a"]))
    else_graph = branch("else", helper.make_node("Gelu", ["r"], ["b"], domain="com.microsoft"))
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )


def test_op_types_include_subgraphs_and_qualify_other_domains():
    proto = tiny_graph_with_a_subgraph()
    assert onnx_op_types(proto) == {"Relu", "If", "Neg", "com.microsoft:Gelu"}
    assert default_opset(proto) == 17


def test_preferred_providers_order_fastest_first():
    available = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert preferred_providers(available) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert preferred_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    assert "CPUExecutionProvider" in preferred_providers()


def test_atomic_save_round_trips(tmp_path):
    proto = tiny_graph_with_a_subgraph()
    path = write_bytes_atomic(tmp_path / "tiny.onnx", proto.SerializeToString())
    assert onnx.load(path) == proto
    assert os.listdir(tmp_path) == ["tiny.onnx"]


def test_failed_save_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    proto = tiny_graph_with_a_subgraph()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_bytes_atomic(tmp_path / "new.onnx", proto.SerializeToString())
    assert os.listdir(tmp_path) == []  # neither the model nor a temporary file

    old = tmp_path / "old.onnx"
    old.write_bytes(b"previous model")
    monkeypatch.undo()  # fsync works again; fail at the rename instead
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_bytes_atomic(old, proto.SerializeToString())
    assert old.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["old.onnx"]
