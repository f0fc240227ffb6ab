"""What each TFLite runtime can run, probed operator by operator on the real runtimes.

``edgeseg check`` answers "will this model load on tflite-runtime 2.14, and how much of it does
XNNPACK take there?" from tables this script writes (``edgeseg/runtime_support/*.json``), never
from a hand-typed list:

1. every zoo model is exported in every mode edgeseg writes (fp32, fp16, dynamic, int8 with
   float32 / uint8 / int8 I/O, the logits / probs / mask heads; the Mask R-CNN with both
   backbones, fp32 to int8), small, with the same converter ``edgeseg export`` uses;
2. each operator of those graphs becomes a model of its own: the operator, its tensors and its
   constant buffers, with every other input a graph input (:func:`single_operator_models`);
   one probe per distinct (operator, version, input types, constant inputs) signature, up to
   ``--per-signature`` examples of each;
3. every runtime given (``--python``: an interpreter in whose environment ``ai_edge_litert`` or
   ``tflite_runtime`` imports; by default this one and ``.side-envs/tflite-runtime``) loads each
   probe in a worker process, runs it on zeros and reports whether it loaded, whether it ran,
   and whether the XNNPACK delegate took the operator (``edgeseg.runtime_tflite.delegation``).

    python -m edgeseg.converters.probe_runtimes            # rewrites edgeseg/runtime_support/

Needs TensorFlow and ai-edge-litert (its flatbuffer schema) in this environment; the workers
need only their runtime and NumPy.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPPORT_DIR = ROOT / "edgeseg" / "runtime_support"
DEFAULT_PYTHONS = (sys.executable, str(ROOT / ".side-envs" / "tflite-runtime" / "bin" / "python"))
SIZES = ((64, 64), (80, 60))  # width, height: a multiple of 32, and one that is not (padding)
SEMANTIC_MODES = (  # (quant, io, output): every operator form the semantic exports can take
    ("none", "float32", "logits"), ("none", "float32", "probs"), ("none", "float32", "mask"),
    ("fp16", "float32", "logits"), ("dynamic", "float32", "logits"),
    ("int8", "uint8", "logits"), ("int8", "float32", "probs"), ("int8", "int8", "mask"),
)
SMALL_OPTIONS = {"unet": {"filters": 8}, "fcn8s": {"width": 0.125, "fc_channels": 32},
                 "segnet": {}, "enet": {}}
INSTANCE_MODES = ("none", "fp16", "dynamic", "int8")


# --- 1. the exports ------------------------------------------------------------------------------


def export_zoo(folder: Path, models: list[str] | None = None) -> list[dict]:
    """Every zoo model in every export mode, small: ``[{"path", "model", "mode"}]``."""
    import keras
    import numpy as np

    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.models import build, list_models

    rng = np.random.default_rng(0)
    exports = []
    for name in models or list_models("semantic"):
        for (width, height), (quant, io, output) in itertools.product(SIZES, SEMANTIC_MODES):
            if (width, height) != SIZES[0] and output != "logits":
                continue  # the heads add the same operators at any size
            model = build(name, 5, (height, width, 3), output=output,
                          **SMALL_OPTIONS.get(name, {}))
            for weight in model.weights:  # trained-like PReLU slopes (untrained 0s become ReLU)
                if "alpha" in weight.path:
                    weight.assign(rng.uniform(0.05, 0.5, weight.shape).astype(np.float32))
            calibration = rng.random((4, height, width, 3), dtype=np.float32)
            blob = convert_keras_to_tflite(
                model, quant, (lambda c=calibration: iter(c)) if quant == "int8" else None,
                io_type=io)
            path = folder / f"{name}_{width}x{height}_{quant}_{io}_{output}.tflite"
            path.write_bytes(blob)
            exports.append({"path": str(path), "model": name,
                            "mode": f"{width}x{height} quant={quant} io={io} output={output}"})
            print(f"exported {path.name}", flush=True)
            keras.backend.clear_session()
    if models is None or "mobile_mask_rcnn" in models:
        exports += _export_instance(folder)
    return exports


def _export_instance(folder: Path) -> list[dict]:
    import keras
    import numpy as np

    from edgeseg.converters.maskrcnn_export import convert_instance_tflite
    from edgeseg.models.maskrcnn.network import build_mobile_mask_rcnn

    calibration = np.random.default_rng(1).random((4, 64, 64, 3), dtype=np.float32)
    exports = []
    for backbone in ("mobilenet", "mobilenet_v2"):
        model = build_mobile_mask_rcnn(
            5, (64, 64, 3), backbone=backbone, alpha=0.35, fpn_channels=32, rpn_channels=32,
            box_fc=64, mask_channels=16, proposals=20, max_detections=20,
            anchor_scales=(16, 24, 32, 40, 48))
        for quant in INSTANCE_MODES:
            blob, _ = convert_instance_tflite(model, quant, calibration)
            path = folder / f"mobile_mask_rcnn_{backbone}_{quant}.tflite"
            path.write_bytes(blob)
            exports.append({"path": str(path), "model": f"mobile_mask_rcnn ({backbone})",
                            "mode": f"quant={quant}"})
            print(f"exported {path.name}", flush=True)
        keras.backend.clear_session()
    return exports


# --- 2. one model per operator -------------------------------------------------------------------


def single_operator_models(blob: bytes) -> Iterator[tuple[int, bytes]]:
    """``(operator index, model)`` for each operator of the main subgraph: the operator alone,
    its constant inputs kept, its other inputs made the model's inputs."""
    from ai_edge_litert import schema_py_generated as schema

    from edgeseg.converters.tflite_metadata import _pack_model
    from edgeseg.runtimes import static_weight_producers
    from edgeseg.tflite_file import read_tflite_bytes

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(blob, 0))
    graph = model.subgraphs[0]
    # fp16 weights reach their operator through a DEQUANTIZE of a constant, which XNNPACK
    # folds into the operator: such an operator is probed with its DEQUANTIZEs.
    folded = static_weight_producers(read_tflite_bytes(blob))
    for index, op in enumerate(graph.operators):
        ops = [graph.operators[p] for p in folded.get(index, [])] + [op]
        used = []
        for member in ops:
            for t in [*member.inputs, *member.outputs,
                      *(member.intermediates if member.intermediates is not None else [])]:
                if t >= 0 and t not in used:
                    used.append(int(t))
        produced = {int(t) for member in ops for t in member.outputs}
        remap = {t: i for i, t in enumerate(used)}
        probe = schema.ModelT()
        probe.version = model.version
        probe.description = "edgeseg runtime probe"
        probe.operatorCodes = []
        probe.buffers = [schema.BufferT()]
        tensors, inputs = [], []
        for t in used:
            tensor = copy.deepcopy(graph.tensors[t])
            data = model.buffers[tensor.buffer].data if tensor.buffer else None
            if data is not None and len(data):
                probe.buffers.append(copy.deepcopy(model.buffers[tensor.buffer]))
            else:
                probe.buffers.append(schema.BufferT())
                if t not in produced:
                    inputs.append(remap[t])
            tensor.buffer = len(probe.buffers) - 1
            tensors.append(tensor)
        singles = []
        for member in ops:
            single = copy.deepcopy(member)
            code = model.operatorCodes[member.opcodeIndex]
            if code not in probe.operatorCodes:
                probe.operatorCodes.append(code)
            single.opcodeIndex = probe.operatorCodes.index(code)
            single.inputs = [remap[t] if t >= 0 else -1 for t in member.inputs]
            single.outputs = [remap[t] for t in member.outputs]
            if member.intermediates is not None:
                single.intermediates = [remap[t] for t in member.intermediates]
            singles.append(single)
        subgraph = schema.SubGraphT()
        subgraph.tensors, subgraph.operators = tensors, singles
        subgraph.inputs, subgraph.outputs = inputs, [remap[t] for t in op.outputs]
        subgraph.name = "probe"
        probe.subgraphs = [subgraph]
        yield index, _pack_model(probe, schema)


def collect_probes(exports: list[dict], folder: Path, per_signature: int) -> list[dict]:
    """The probe models on disk: ``[{"path", "signature", "source"}]``."""
    from edgeseg.runtimes import signatures
    from edgeseg.tflite_file import read_tflite

    seen: dict[str, int] = {}
    probes = []
    for export in exports:
        blob = Path(export["path"]).read_bytes()
        graph = read_tflite(export["path"])
        wanted = {}
        for op, key in zip(graph.operators, signatures(graph), strict=True):
            if seen.get(key, 0) < per_signature:
                seen[key] = seen.get(key, 0) + 1
                wanted[op.index] = key
        if not wanted:
            continue
        for index, probe in single_operator_models(blob):
            if index in wanted:
                path = folder / f"probe_{len(probes):04d}.tflite"
                path.write_bytes(probe)
                probes.append({"path": str(path), "signature": wanted[index],
                               "source": f"{Path(export['path']).name} op {index}"})
    return probes


# --- 3. the runtimes -----------------------------------------------------------------------------


def worker(listing: str, out: str) -> None:
    """In the runtime's environment: load and run each probe of ``listing`` (one path a line),
    appending one JSON line per probe to ``out``, from the first probe without one (a crash
    loses only the probe it happened on: the one after the last line)."""
    import numpy as np

    from edgeseg.runtime_tflite import delegation, interpreter_class

    interpreter_class_ = interpreter_class()
    done = 0
    if os.path.exists(out):
        done = len(Path(out).read_text().splitlines())
    paths = Path(listing).read_text().split("\n")
    with open(out, "a") as log:
        for path in paths[done:]:
            if not path:
                continue
            result = {"path": path, "loaded": False, "ran": False, "delegated": False}
            try:
                interpreter = interpreter_class_(model_path=path, num_threads=1)
                interpreter.allocate_tensors()
                result["loaded"] = True
                plan = delegation(interpreter)
                result["delegated"] = plan["partitions"] > 0 and not plan["outside"]
                for detail in interpreter.get_input_details():
                    interpreter.set_tensor(detail["index"],
                                           np.zeros(detail["shape"], detail["dtype"]))
                interpreter.invoke()
                result["ran"] = True
            except Exception as e:  # what the runtime says is the finding
                result["error"] = str(e).strip().splitlines()[0][:300] if str(e) else repr(e)
            log.write(json.dumps(result) + "\n")
            log.flush()


def identity(python: str) -> dict:
    """The runtime ``python``'s environment has: ``{"name", "version"}`` as pip names them."""
    code = ("import json\nfrom edgeseg.runtime_tflite import interpreter_identity\n"
            "print(json.dumps(interpreter_identity()))")
    done = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True,
                          cwd=ROOT)
    return json.loads(done.stdout.splitlines()[-1])


def run_probes(python: str, probes: list[dict], folder: Path) -> list[dict]:
    """Each probe's result on the runtime of ``python``; a probe that crashes the process is
    recorded as such and the worker goes on after it."""
    listing = folder / "listing.txt"
    listing.write_text("\n".join(p["path"] for p in probes))
    out = folder / f"results_{abs(hash(python))}.jsonl"
    out.unlink(missing_ok=True)
    for _ in range(len(probes) + 1):
        done = subprocess.run([python, "-m", "edgeseg.converters.probe_runtimes", "--worker",
                               str(listing), str(out)], cwd=ROOT, capture_output=True, text=True)
        results = ([json.loads(line) for line in out.read_text().splitlines()]
                   if out.exists() else [])
        if done.returncode == 0 and len(results) == len(probes):
            return results
        # the process died on the probe it had started: record it and go on after it
        crashed = {"path": probes[len(results)]["path"], "loaded": False, "ran": False,
                   "delegated": False,
                   "error": f"the runtime crashed (exit code {done.returncode})"}
        out.write_text("".join(json.dumps(r) + "\n" for r in [*results, crashed]))
    raise RuntimeError(f"the probes of {python} did not finish")


def support_table(runtime: dict, probes: list[dict], results: list[dict],
                  exports: list[dict]) -> dict:
    """The table ``edgeseg check`` reads: per signature, probes / loaded / ran / delegated."""
    from edgeseg.bench.fingerprint import device_fingerprint

    entries: dict[str, dict] = {}
    for probe, result in zip(probes, results, strict=True):
        entry = entries.setdefault(probe["signature"], {"probes": 0, "loaded": 0, "ran": 0,
                                                        "delegated": 0})
        entry["probes"] += 1
        entry["loaded"] += result["loaded"]
        entry["ran"] += result["ran"]
        entry["delegated"] += result["delegated"]
        if "error" in result and "error" not in entry:
            entry["error"] = result["error"]
            entry["example"] = probe["source"]
    return {
        "runtime": runtime["name"],
        "version": runtime["version"],
        "probed_on": {"machine": platform.machine(), "cpu": device_fingerprint()["cpu_model"],
                      "date": time.strftime("%Y-%m-%d")},
        "script": "python -m edgeseg.converters.probe_runtimes",
        "exports": [{"model": e["model"], "mode": e["mode"]} for e in exports],
        "signatures": dict(sorted(entries.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("LISTING", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--python", action="append",
                        help="an interpreter whose environment has the runtime to probe "
                             "(repeatable; default: this one and .side-envs/tflite-runtime)")
    parser.add_argument("--models", help="comma-separated zoo models (default: all)")
    parser.add_argument("--per-signature", type=int, default=3)
    parser.add_argument("--out", default=str(SUPPORT_DIR))
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    pythons = args.python or list(DEFAULT_PYTHONS)
    for python in pythons:
        if not os.path.exists(python):
            parser.error(f"--python {python} does not exist (bash tests/side_envs.sh creates "
                         ".side-envs/tflite-runtime)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeseg-probe-") as tmp:
        folder = Path(tmp)
        exports = export_zoo(folder, args.models.split(",") if args.models else None)
        probes = collect_probes(exports, folder, args.per_signature)
        print(f"{len(probes)} probes of {len({p['signature'] for p in probes})} signatures "
              f"from {len(exports)} exports", flush=True)
        for python in pythons:
            runtime = identity(python)
            results = run_probes(python, probes, folder)
            table = support_table(runtime, probes, results, exports)
            path = out / f"{runtime['name']}-{runtime['version']}.json"
            from edgeseg.io import write_json_atomic

            write_json_atomic(path, table)
            failed = [k for k, v in table["signatures"].items() if v["loaded"] < v["probes"]]
            print(f"{runtime['name']} {runtime['version']}: {len(table['signatures'])} "
                  f"signatures, {len(failed)} not loading -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
