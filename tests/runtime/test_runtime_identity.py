"""Which LiteRT runtime runs a .tflite, whether XNNPACK runs its convolutions, and the warning for
an int8 model that runs on the runtime's own int8 kernels: here (ai-edge-litert) and in the side
environment with tflite-runtime 2.14.0, whose default XNNPACK delegate takes no int8 operator
(a small int8 convolution graph there has no XNNPACK partition at all)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from edgeseg.runtime import Segmenter, load_predictor
from edgeseg.runtime.live import LiveRun, format_summary
from edgeseg.runtime_tflite import (
    INT8_WITHOUT_XNNPACK_COST,
    Int8WithoutXNNPACKWarning,
    interpreter_identity,
)
from tests.bench.small_models import conv_stack, write_tflite
from tests.side_envs import side_python

CONVOLUTIONS = 4  # in conv_stack: Conv2D x3, DepthwiseConv2D


@pytest.fixture(scope="module")
def conv_models(tmp_path_factory) -> dict[str, Path]:
    """conv_stack in full int8 (int8 input and output, calibrated) and in float."""
    folder = tmp_path_factory.mktemp("conv_stack")
    model = conv_stack()
    kinds = {type(layer).__name__ for layer in model.layers}
    assert sum(type(layer).__name__ in ("Conv2D", "DepthwiseConv2D")
               for layer in model.layers) == CONVOLUTIONS, kinds
    return {"int8": write_tflite(model, folder / "conv_int8.tflite", "int8"),
            "fp32": write_tflite(model, folder / "conv_fp32.tflite")}


def test_ai_edge_litert_names_itself_and_runs_int8_convolutions_in_xnnpack(conv_models):
    version = importlib.metadata.version("ai-edge-litert")
    assert interpreter_identity() == {"name": "ai-edge-litert", "version": version}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8 = load_predictor(conv_models["int8"])
        fp32 = load_predictor(conv_models["fp32"])
    assert not [w for w in caught if issubclass(w.category, Int8WithoutXNNPACKWarning)]
    for predictor in (int8, fp32):
        assert predictor.runtime == f"ai-edge-litert {version}"
        assert predictor.xnnpack == {"partitions": 1, "nodes_outside": 0, "ran_graph": True}
    # The weights' types, read from the graph: int8 in the int8 export, float in the other.
    assert int8.graph["int8_convolutions"] == CONVOLUTIONS
    assert int8.graph["int8_convolutions_outside"] == 0
    assert fp32.graph["int8_convolutions"] == 0

    run = LiveRun()
    with run:
        pass
    summary = run.summary(conv_models["int8"], "s", "o", Segmenter(int8))
    assert (summary["runtime"], summary["xnnpack"]) == (f"ai-edge-litert {version}", True)
    assert summary["graph"] == "1 XNNPACK partition"
    assert (f"runtime: ai-edge-litert {version}; XNNPACK ran the convolutions "
            "(1 XNNPACK partition)") in format_summary(summary).splitlines()


SIDE_SCRIPT = """
import importlib.metadata, json, sys
from edgeseg.runtime import Segmenter, load_predictor
from edgeseg.runtime.live import LiveRun, format_summary
int8, copy, fp32 = sys.argv[1:]
seen, predictors = {}, {}
for name, path in (("int8", int8), ("int8 again", int8), ("copy", copy), ("fp32", fp32)):
    predictor = predictors[name] = load_predictor(path)
    seen[name] = {"runtime": predictor.runtime, "xnnpack": predictor.xnnpack,
                  "graph": predictor.graph}
run = LiveRun()
with run:
    pass
seen["summary"] = format_summary(run.summary(int8, "s", "o", Segmenter(predictors["int8"])))
seen["version"] = importlib.metadata.version("tflite-runtime")
print(json.dumps(seen))
"""


def test_tflite_runtime_2_14_leaves_int8_convolutions_outside_xnnpack_and_warns_once(
        conv_models, tmp_path):
    python = side_python("tflite-runtime", "tflite_runtime.interpreter")
    copy = tmp_path / "conv_int8_copy.tflite"
    shutil.copy(conv_models["int8"], copy)
    # -W always: the once-per-file rule is edgeseg's own, not Python's per-location filter.
    done = subprocess.run(
        [str(python), "-W", "always", "-c", SIDE_SCRIPT, str(conv_models["int8"]), str(copy),
         str(conv_models["fp32"])],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["version"] == "2.14.0"
    for name in ("int8", "int8 again", "copy", "fp32"):
        assert seen[name]["runtime"] == "tflite-runtime 2.14.0"
    # The int8 graph is not delegated at all; the float graph is one partition.
    int8 = seen["int8"]
    assert int8["xnnpack"] == {"partitions": 0, "nodes_outside": CONVOLUTIONS + 1,
                               "ran_graph": False}
    assert int8["graph"]["outside"] == {"ADD": 1, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 1}
    assert int8["graph"]["int8_convolutions_outside"] == CONVOLUTIONS
    assert seen["fp32"]["xnnpack"] == {"partitions": 1, "nodes_outside": 0, "ran_graph": True}
    # One warning per int8 file, though conv_int8.tflite was loaded twice; none for fp32.
    said = [line for line in done.stderr.splitlines() if "Int8WithoutXNNPACKWarning:" in line]
    assert len(said) == 2, done.stderr
    assert [line.split("Int8WithoutXNNPACKWarning: ")[1].split(":")[0] for line in said] == [
        "conv_int8.tflite", "conv_int8_copy.tflite"]
    for line in said:
        assert (f"tflite-runtime 2.14.0 runs {CONVOLUTIONS} of its {CONVOLUTIONS} int8 "
                "convolutions on TFLite's own int8 kernels, not XNNPACK") in line
        assert INT8_WITHOUT_XNNPACK_COST in line
        assert "Use the fp32 or fp16 export on this runtime, or install ai-edge-litert" in line
    assert ("runtime: tflite-runtime 2.14.0; XNNPACK did not run the convolutions (0 XNNPACK "
            "partitions, outside: ADD x1, CONV_2D x3, DEPTHWISE_CONV_2D x1)"
            ) in seen["summary"].splitlines()

