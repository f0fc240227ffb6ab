"""``edgeseg check`` and the runtime support tables, against the real runtimes.

The flatbuffer reader (``edgeseg.tflite_file``) is checked against LiteRT's own parsing and the
schema's generated reader; the tables' predictions (``edgeseg.runtimes``) against what
ai-edge-litert (this environment) and tflite-runtime 2.14.0 (``.side-envs/tflite-runtime``,
NumPy < 2, no TensorFlow) really do with the zoo's fp32 and int8 exports and the Mask R-CNN's:
whether the file loads, and which convolutions XNNPACK takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtimes import (
    check_graph,
    known_runtimes,
    runtime_support,
    signatures,
)
from edgeseg.tflite_file import TfliteFileError, read_tflite, read_tflite_bytes
from tests.side_envs import side_python

ROOT = Path(__file__).resolve().parents[1]
CONVOLUTIONS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")
REAL_PLAN = """
import json, sys
from edgeseg.runtime_tflite import delegation, interpreter_identity, load_interpreter
identity = interpreter_identity()
for path in sys.argv[1:]:
    row = {"path": path, "runtime": identity["name"] + "==" + identity["version"]}
    try:
        plan = delegation(load_interpreter(path, num_threads=1))
        row.update(loads=True, outside=plan["outside"], partitions=plan["partitions"])
    except (RuntimeError, ValueError) as e:
        row.update(loads=False, error=str(e))
    print(json.dumps(row))
print(json.dumps({"tensorflow": "tensorflow" in sys.modules}))
"""


def real_plans(python, paths) -> tuple[dict[str, dict], bool]:
    """What the runtime of ``python`` does with each file: loads, partitions, ops outside."""
    done = subprocess.run([str(python), "-c", REAL_PLAN, *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["path"]: row for row in lines[:-1]}, lines[-1]["tensorflow"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """fp32 and int8 (uint8 I/O) exports of every zoo model, small, and of the Mask R-CNN:
    ``{name: path}`` and the Keras models' MACs."""
    pytest.importorskip("tensorflow")
    import keras

    from edgeseg.converters.maskrcnn_export import convert_instance_tflite
    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.models import build, list_models
    from edgeseg.models.maskrcnn.network import build_mobile_mask_rcnn
    from tests.helpers import SMALL_MODELS, random_images

    folder = tmp_path_factory.mktemp("runtimes")
    height, width = 48, 64
    calibration = random_images(4, height, width, seed=3)
    rng = np.random.default_rng(0)
    files = {}
    for name in list_models("semantic"):
        model = build(name, 5, (height, width, 3), **SMALL_MODELS[name])
        for weight in model.weights:  # trained-like PReLU slopes (untrained 0s export as ReLU)
            if "alpha" in weight.path:
                weight.assign(rng.uniform(0.05, 0.5, weight.shape).astype(np.float32))
        for quant in ("none", "int8"):
            blob = convert_keras_to_tflite(
                model, quant, (lambda: iter(calibration)) if quant == "int8" else None,
                io_type="uint8" if quant == "int8" else "float32")
            files[f"{name}_{quant}"] = folder / f"{name}_{quant}.tflite"
            files[f"{name}_{quant}"].write_bytes(blob)
        keras.backend.clear_session()
    model = build_mobile_mask_rcnn(
        5, (64, 64, 3), alpha=0.35, fpn_channels=32, rpn_channels=32, box_fc=64,
        mask_channels=16, proposals=20, max_detections=20, anchor_scales=(16, 24, 32, 40, 48))
    detector_calibration = random_images(4, 64, 64, seed=4)
    for quant in ("none", "int8"):
        blob, _ = convert_instance_tflite(model, quant, detector_calibration)
        files[f"mobile_mask_rcnn_{quant}"] = folder / f"mobile_mask_rcnn_{quant}.tflite"
        files[f"mobile_mask_rcnn_{quant}"].write_bytes(blob)
    keras.backend.clear_session()
    return files


# --- the reader ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_reader_agrees_with_litert_and_the_schema(exports):
    from ai_edge_litert import schema_py_generated as schema

    from edgeseg.runtime_tflite import interpreter_class

    for name, path in exports.items():
        graph = read_tflite(path)
        interpreter = interpreter_class()(model_path=str(path))
        ops = interpreter._get_ops_details()
        assert [op["op_name"] for op in ops] == [op.name for op in graph.operators], name
        assert [list(op["inputs"]) for op in ops] == [list(op.inputs) for op in graph.operators]
        assert [list(op["outputs"]) for op in ops] == [list(op.outputs) for op in graph.operators]
        for detail in interpreter.get_tensor_details():
            tensor = graph.tensors[detail["index"]]
            assert (tensor.name, tensor.shape) == (detail["name"], tuple(detail["shape"]))
            assert np.dtype(tensor.type.lower()) == np.dtype(detail["dtype"]), tensor.name
            assert tensor.scale == pytest.approx(detail["quantization_parameters"]["scales"])
        # the versions, from the schema's generated reader
        model = schema.Model.GetRootAs(path.read_bytes(), 0)
        codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
        subgraph = model.Subgraphs(0)
        versions = [codes[subgraph.Operators(i).OpcodeIndex()].Version()
                    for i in range(subgraph.OperatorsLength())]
        assert versions == [op.version for op in graph.operators], name


@pytest.mark.slow
def test_reader_counts_the_macs_of_the_convolutions(exports):
    """The fp32 graphs' MACs against a NumPy count from the definition over LiteRT's own
    tensor shapes: a convolution's output elements times its kernel's taps and input depth."""
    from edgeseg.runtime_tflite import interpreter_class

    for name in ("enet_none", "unet_none", "fcn8s_none", "segnet_none"):
        interpreter = interpreter_class()(model_path=str(exports[name]))
        shapes = {t["index"]: tuple(t["shape"]) for t in interpreter.get_tensor_details()}
        want = 0
        for op in interpreter._get_ops_details():
            out = shapes[op["outputs"][0]]
            if op["op_name"] == "CONV_2D":
                want += np.prod(out) * np.prod(shapes[op["inputs"][1]][1:])
            elif op["op_name"] == "DEPTHWISE_CONV_2D":
                want += np.prod(out) * np.prod(shapes[op["inputs"][1]][1:3])
            elif op["op_name"] == "TRANSPOSE_CONV":
                want += np.prod(shapes[op["inputs"][2]]) * np.prod(shapes[op["inputs"][1]][:3])
            elif op["op_name"] == "FULLY_CONNECTED":
                want += np.prod(out) * shapes[op["inputs"][1]][-1]
        assert want > 0
        assert read_tflite(exports[name]).macs == want, name


def test_reader_names_a_file_that_is_not_a_tflite(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"PK\x03\x04 not a flatbuffer at all")
    with pytest.raises(TfliteFileError, match=r"model\.tflite.*not a TFLite flatbuffer"):
        read_tflite(bad)
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        read_tflite(tmp_path / "missing.tflite")
    with pytest.raises(TfliteFileError, match="truncated or corrupt"):
        read_tflite_bytes(b"\x10\x00\x00\x00TFL3" + b"\xff" * 8)


# --- the tables against the runtimes -------------------------------------------------------------


def test_the_shipped_tables_are_the_probes_of_both_runtimes():
    tables = {t.name: t for t in known_runtimes()}
    assert set(tables) >= {"ai-edge-litert", "tflite-runtime"}
    assert tables["tflite-runtime"].version == "2.14.0"
    for table in tables.values():
        assert table.signatures, table.requirement
        for key, entry in table.signatures.items():
            assert entry["probes"] > 0 and entry["loaded"] <= entry["probes"], key
    # 2.14's XNNPACK takes no int8 operator, ai-edge-litert's takes its int8 convolutions
    int8_conv = "CONV_2D/v3/INT8,INT8c,INT32c"
    assert tables["tflite-runtime"].delegated(int8_conv) is False
    assert tables["ai-edge-litert"].delegated(int8_conv) is True


@pytest.mark.slow
def test_every_operator_of_the_exports_was_probed(exports):
    """The tables cover what edgeseg's exports emit (at a size the probe script did not use):
    ``edgeseg check`` never answers 'unknown' for them."""
    for table in known_runtimes():
        for name, path in exports.items():
            report = check_graph(read_tflite(path), table)
            assert report.unknown == [], (table.requirement, name)


def _predicted_convolutions_outside(report) -> dict[str, int]:
    return {op: n for op, n in report.outside.items() if op in CONVOLUTIONS}


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["ai-edge-litert", "tflite-runtime"])
def test_check_agrees_with_what_the_runtime_does(exports, runtime):
    """Loads or not, and which convolutions run outside XNNPACK, as the real runtime says."""
    python = (sys.executable if runtime == "ai-edge-litert"
              else side_python("tflite-runtime", "tflite_runtime.interpreter"))
    real, tensorflow_loaded = real_plans(python, exports.values())
    table = None
    for path in exports.values():
        row = real[str(path)]
        table = runtime_support(row["runtime"])
        report = check_graph(read_tflite(path), table)
        assert report.loads is row["loads"], path.name
        real_outside = {op: n for op, n in row["outside"].items() if op in CONVOLUTIONS}
        assert _predicted_convolutions_outside(report) == real_outside, path.name
        if path.stem.endswith("int8") and "mask_rcnn" not in path.stem:
            assert report.int8_without_xnnpack is (runtime == "tflite-runtime"), path.name
    assert table.name == runtime
    if runtime == "tflite-runtime":
        assert not tensorflow_loaded


@pytest.fixture(scope="module")
def sqrt_int8(tmp_path_factory):
    """An int8 model with SQRT version 2, which tflite-runtime 2.14 has no kernel for, and the
    tables of both runtimes probed for it by the probe script's own functions."""
    pytest.importorskip("tensorflow")
    import keras

    from edgeseg.converters.probe_runtimes import (
        collect_probes,
        identity,
        run_probes,
        support_table,
    )
    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.io import write_json_atomic

    folder = tmp_path_factory.mktemp("sqrt")
    inputs = keras.Input((8, 8, 3), batch_size=1)
    features = keras.layers.Conv2D(4, 1)(inputs)
    outputs = keras.layers.Lambda(lambda x: keras.ops.sqrt(keras.ops.abs(x)))(features)
    calibration = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
    blob = convert_keras_to_tflite(keras.Model(inputs, outputs), "int8",
                                   lambda: iter(calibration))
    path = folder / "sqrt_int8.tflite"
    path.write_bytes(blob)
    exports = [{"path": str(path), "model": "sqrt", "mode": "int8"}]
    probes = collect_probes(exports, folder, per_signature=1)
    tables = folder / "tables"
    for python in (sys.executable, side_python("tflite-runtime", "tflite_runtime.interpreter")):
        runtime = identity(str(python))
        results = run_probes(str(python), probes, folder)
        write_json_atomic(tables / f"{runtime['name']}-{runtime['version']}.json",
                          support_table(runtime, probes, results, exports))
    return path, tables


@pytest.mark.slow
def test_a_missing_operator_version_is_found_and_refused(sqrt_int8):
    path, tables = sqrt_int8
    graph = read_tflite(path)
    assert ("SQRT", 2) in [(op.name, op.version) for op in graph.operators]
    old = check_graph(graph, runtime_support("tflite-runtime==2.14.0", tables))
    new = check_graph(graph, runtime_support("ai-edge-litert", tables))
    assert old.loads is False and [k.split("/")[0] for k in old.missing] == ["SQRT"]
    assert new.loads is True and new.missing == []
    # the real 2.14 refuses it, with the message the table recorded
    real, _ = real_plans(side_python("tflite-runtime", "tflite_runtime.interpreter"), [path])
    assert real[str(path)]["loads"] is False
    assert "SQRT" in real[str(path)]["error"]

    env = {**os.environ, "EDGESEG_RUNTIME_SUPPORT": str(tables)}
    refused = subprocess.run([sys.executable, "-m", "edgeseg.cli", "check", str(path),
                              "--runtime", "tflite-runtime==2.14.0"],
                             capture_output=True, text=True, env=env, cwd=ROOT)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "cannot load it: no kernel for SQRT version 2 (INT8)" in refused.stdout

    from edgeseg.converters.tflite import RuntimeTargetError, check_runtimes

    os.environ["EDGESEG_RUNTIME_SUPPORT"] = str(tables)
    try:
        with pytest.raises(RuntimeTargetError, match=r"SQRT version 2 \(INT8\).*nothing was"):
            check_runtimes(path, "tflite-runtime==2.14.0")
        fits = check_runtimes(path, "ai-edge-litert")
    finally:
        del os.environ["EDGESEG_RUNTIME_SUPPORT"]
    assert fits["tflite-runtime==2.14.0"]["loads"] is False
    assert next(v for k, v in fits.items() if k.startswith("ai-edge-litert"))["loads"] is True


# --- edgeseg check, as a user runs it -------------------------------------------------------------


@pytest.mark.slow
def test_check_runs_on_a_board_with_only_tflite_runtime(exports):
    """On the side environment (tflite-runtime 2.14, NumPy < 2, no TensorFlow, no
    ai-edge-litert): the table for every runtime, the model loaded by the runtime there, and
    ``--runtime`` as a gate: an int8 export fails it for 2.14, passes it for ai-edge-litert."""
    python = side_python("tflite-runtime", "tflite_runtime.interpreter")
    script = ("import sys\nfrom edgeseg.cli import main\ncode = main(sys.argv[1:])\n"
              "assert 'tensorflow' not in sys.modules and 'ai_edge_litert' not in sys.modules\n"
              "sys.exit(code)")
    int8 = str(exports["enet_int8"])

    def check(*args):
        return subprocess.run([str(python), "-c", script, "check", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    table = check(int8)
    assert table.returncode == 0, table.stderr
    assert "tflite-runtime==2.14.0" in table.stdout and "ai-edge-litert==" in table.stdout
    assert "loaded here by tflite-runtime==2.14.0" in table.stdout
    assert "CONV_2D v3 x" in table.stdout
    gate = check(int8, "--runtime", "tflite-runtime==2.14.0")
    assert gate.returncode == 1
    assert "runs this int8 model without XNNPACK (0% of its MACs" in gate.stdout
    assert check(str(exports["enet_none"]), "--runtime", "tflite-runtime==2.14.0").returncode == 0
    assert check(int8, "--runtime", "ai-edge-litert").returncode == 0
    as_json = json.loads(check(int8, "--json", "--no-load").stdout)
    assert as_json["int8"] is True and "measured" not in as_json
    assert {r["runtime"].split("==")[0] for r in as_json["runtimes"]} >= {
        "tflite-runtime", "ai-edge-litert"}


def test_check_says_which_runtimes_it_knows(tmp_path):
    with pytest.raises(ValueError, match=r"tflite-runtime==2\.13\.0.*knows ai-edge-litert==.*tflite-runtime==2\.14\.0"):
        runtime_support("tflite-runtime==2.13.0")
    with pytest.raises(ValueError, match="like 'tflite-runtime==2.14.0'"):
        runtime_support("tflite-runtime>=2")
    assert runtime_support("tflite_runtime").version == "2.14.0"
    bad = tmp_path / "x.tflite"
    bad.write_text("hello")
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "check", str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "x.tflite" in done.stderr and "TFL3" in done.stderr


def test_signatures_fold_fp16_weights_into_their_operator(tmp_path):
    """A DEQUANTIZE of a constant (fp16 weights) makes its consumer's input constant, as XNNPACK
    treats it; and the check counts the DEQUANTIZE with the operator it feeds."""
    from edgeseg.tflite_file import Operator, Tensor, TfliteGraph

    tensors = [Tensor(0, "x", "FLOAT32", (1, 4, 4, 3), False),
               Tensor(1, "w16", "FLOAT16", (8, 1, 1, 3), True),
               Tensor(2, "w", "FLOAT32", (8, 1, 1, 3), False),
               Tensor(3, "b", "FLOAT32", (8,), True),
               Tensor(4, "y", "FLOAT32", (1, 4, 4, 8), False)]
    operators = [Operator(0, "DEQUANTIZE", 3, (1,), (2,)),
                 Operator(1, "CONV_2D", 1, (0, 2, 3), (4,), macs=4 * 4 * 8 * 3)]
    graph = TfliteGraph("g", tensors, operators, [0], [4], 3, 1)
    assert signatures(graph) == ["DEQUANTIZE/v3/FLOAT16c", "CONV_2D/v1/FLOAT32,FLOAT32c,FLOAT32c"]
    from edgeseg.runtimes import RuntimeSupport

    entry = {"probes": 1, "loaded": 1, "ran": 1}
    support = RuntimeSupport("rt", "1", {
        "DEQUANTIZE/v3/FLOAT16c": {**entry, "delegated": 0},
        "CONV_2D/v1/FLOAT32,FLOAT32c,FLOAT32c": {**entry, "delegated": 1}})
    report = check_graph(graph, support)
    assert (report.xnnpack_nodes, report.xnnpack_macs, report.outside) == (2, 384, {})
    assert report.loads is True
