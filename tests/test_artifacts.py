"""edgeseg.artifacts: what a model file is, read from the file itself and its metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.artifacts import (
    DEFAULT_NORMALISATION,
    SIDECAR_VERSION,
    ArtifactError,
    open_artifact,
    read_sidecar,
    write_sidecar,
)
from tests.helpers import BLOCK_TENSORFLOW

MASK_RCNN_SMALL = {"alpha": 0.35, "fpn_channels": 16, "rpn_channels": 16, "box_fc": 32,
                   "mask_channels": 8, "proposals": 10, "max_detections": 5}


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    pytest.importorskip("keras")
    from edgeseg.models import build

    folder = tmp_path_factory.mktemp("artifacts")
    semantic = build("unet", 5, (48, 64, 3), filters=4, depth=2)
    semantic.save(folder / "unet.keras")
    # Built through the API under another name: still an instance model (the outputs say so).
    from edgeseg.models.maskrcnn.network import build_mobile_mask_rcnn

    detector = build_mobile_mask_rcnn(4, (64, 64, 3), name="my_detector", **MASK_RCNN_SMALL)
    detector.save(folder / "detector.keras")
    mask = build("enet", 3, (32, 48, 3), output="mask")
    mask.save(folder / "enet_mask.keras")
    return {"semantic": folder / "unet.keras", "instance": folder / "detector.keras",
            "mask": folder / "enet_mask.keras", "semantic_model": semantic}


def test_keras_files_are_read_without_keras(keras_files):
    # In a fresh interpreter with TensorFlow and Keras blocked: open_artifact reads the archive.
    script = BLOCK_TENSORFLOW + """
from edgeseg.artifacts import open_artifact
out = {}
for path in sys.argv[1:]:
    a = open_artifact(path)
    out[a.path.name] = [a.format, a.task, a.family, a.num_classes, list(a.input_size), a.quant,
                        a.output]
out["imported"] = [m for m in ("tensorflow", "keras") if m in sys.modules]
print(json.dumps(out))
"""
    paths = [str(keras_files[k]) for k in ("semantic", "instance", "mask")]
    result = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["unet.keras"] == ["keras", "semantic", "unet", 5, [64, 48], "none", "logits"]
    assert seen["detector.keras"] == ["keras", "instance", "my_detector", 4, [64, 64], "none",
                                      "detections"]
    assert seen["enet_mask.keras"][:2] == ["keras", "semantic"]
    assert seen["enet_mask.keras"][3:5] == [3, [48, 32]]
    assert seen["imported"] == []


def test_metadata_precedence_sidecar_then_run_json_then_the_file(keras_files, tmp_path):
    model = tmp_path / "best.keras"
    model.write_bytes(keras_files["semantic"].read_bytes())
    plain = open_artifact(model)
    assert plain.classes == [f"class_{i}" for i in range(5)]  # the file: five outputs
    assert plain.normalisation == DEFAULT_NORMALISATION and plain.run is None
    run = {"model": "unet", "classes": list("abcde"), "palette": [[1, 2, 3]] * 5,
           "normalisation": {"scale": 0.5, "offset": -1.0}, "config": {"data": "synthetic"}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    from_run = open_artifact(model)
    assert from_run.classes == list("abcde") and from_run.normalisation["scale"] == 0.5
    assert from_run.run["config"]["data"] == "synthetic"
    write_sidecar(model, {"classes": list("vwxyz"), "quant": "none"})
    both = open_artifact(model)
    assert both.classes == list("vwxyz")  # the sidecar wins ...
    assert both.palette == [[1, 2, 3]] * 5  # ... field by field: run.json fills the rest
    assert read_sidecar(model)["sidecar_version"] == SIDECAR_VERSION
    (tmp_path / "run.json").write_text(json.dumps({**run, "classes": ["only", "two"]}))
    (tmp_path / "best.keras.json").unlink()
    with pytest.raises(ValueError, match=r"has 5 classes but its metadata names 2"):
        open_artifact(model)


def test_a_newer_sidecar_or_a_broken_one_is_refused_by_name(keras_files, tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(keras_files["semantic"].read_bytes())
    (tmp_path / "m.keras.json").write_text(json.dumps({"sidecar_version": SIDECAR_VERSION + 1}))
    with pytest.raises(ValueError, match=r"m.keras.json has sidecar_version 2.*upgrade"):
        open_artifact(model)
    (tmp_path / "m.keras.json").write_text("{")
    with pytest.raises(ValueError, match=r"m.keras.json is not valid JSON"):
        open_artifact(model)
    with pytest.raises(ValueError, match=r"not in schema"):
        write_sidecar(model, {"colour": "red"})


JUNK = {
    "empty": b"",
    "junk": bytes(range(256)) * 4,
    "text": b"hello, I am not a model\n",
}


@pytest.mark.parametrize("suffix", [".keras", ".tflite", ".onnx"])
@pytest.mark.parametrize("kind", sorted(JUNK))
def test_junk_files_get_one_line_naming_the_file(tmp_path, suffix, kind):
    path = tmp_path / f"{kind}{suffix}"
    path.write_bytes(JUNK[kind])
    with pytest.raises(ArtifactError) as error:
        open_artifact(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    assert ("empty" in message) if kind == "empty" else ("not a" in message)


def test_truncated_keras_and_tflite_files_are_named(keras_files, tmp_path):
    data = keras_files["semantic"].read_bytes()
    truncated = tmp_path / "cut.keras"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"cut.keras is not a Keras model .*not a zip"):
        open_artifact(truncated)
    assert not (tmp_path / "missing.tflite").exists()
    with pytest.raises(FileNotFoundError, match="missing.tflite does not exist"):
        open_artifact(tmp_path / "missing.tflite")
    with pytest.raises(ArtifactError, match=r"unknown model format '.pt'; accepted: .keras"):
        open_artifact(tmp_path / "model.pt")
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(ArtifactError, match="folder.onnx is a folder"):
        open_artifact(tmp_path / "folder.onnx")


@pytest.mark.slow
def test_tflite_and_onnx_exports_are_read_from_the_graph(keras_files, tmp_path):
    pytest.importorskip("tensorflow")
    from edgeseg.converters.tflite import convert_keras_to_tflite

    model = keras_files["semantic_model"]
    tflite = tmp_path / "unet.tflite"
    tflite.write_bytes(convert_keras_to_tflite(model))
    artifact = open_artifact(tflite)
    assert (artifact.format, artifact.task, artifact.num_classes) == ("tflite", "semantic", 5)
    assert artifact.input_size == (64, 48) and artifact.quant == "unknown"
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(tflite.read_bytes()[:2000])
    with pytest.raises(ArtifactError, match="cut.tflite is not a TFLite model"):
        open_artifact(truncated)
    pytest.importorskip("onnxruntime")
    from edgeseg.converters.onnx_export import convert_keras_to_onnx

    onnx_path = tmp_path / "unet.onnx"
    onnx_path.write_bytes(convert_keras_to_onnx(model).SerializeToString())
    artifact = open_artifact(onnx_path)
    assert (artifact.format, artifact.task, artifact.num_classes) == ("onnx", "semantic", 5)
    assert artifact.input_size == (64, 48)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_path.read_bytes()[:3000])
    with pytest.raises(ArtifactError, match="cut.onnx is not an ONNX model"):
        open_artifact(cut)


@pytest.mark.parametrize("command", ["eval", "bench", "demo", "export"])
def test_cli_names_a_junk_model_file(tmp_path, command, capsys):
    from edgeseg.cli import main

    junk = tmp_path / "junk.keras"
    junk.write_bytes(bytes(range(256)) * 8)
    args = {
        "eval": ["eval", str(junk), "--data", "synthetic"],
        "bench": ["bench", str(junk), "--sizes", "64x48", "--out", str(tmp_path / "r.jsonl")],
        "demo": ["demo", "--model", str(junk), "--source", "synthetic", "--output", "none"],
        "export": ["export", str(junk), "--format", "onnx"],
    }[command]
    code = main(args)
    out, err = capsys.readouterr()
    said = f"{junk} is not a Keras model (.keras archive): it is not a zip archive"
    if command == "bench":  # a model that fails is a row with its error, not a crash
        row = json.loads(Path(tmp_path / "r.jsonl").read_text().splitlines()[0])
        assert said in row["error"] and "1 rows failed" in out
        return
    assert code == 2
    assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
