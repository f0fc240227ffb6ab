"""Which TFLite runtimes a .tflite file runs on, and how much of it XNNPACK takes there.

The answers come from support tables (``edgeseg/runtime_support/<runtime>-<version>.json``)
that ``python -m edgeseg.converters.probe_runtimes`` writes by running every operator signature
edgeseg's exports emit, alone, on each real runtime: whether it loaded, ran, and went to the
XNNPACK delegate. A model's operators are looked up there by their signature (operator, version,
input types, which inputs are constants); nothing here imports TensorFlow or a runtime.

    graph = read_tflite("enet_int8.tflite")
    report = check_graph(graph, runtime_support("tflite-runtime==2.14.0"))
    report.loads, report.xnnpack_nodes, report.xnnpack_macs
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.tflite_file import Operator, TfliteGraph

__all__ = ["SUPPORT_DIR", "RuntimeReport", "RuntimeSupport", "check_graph", "known_runtimes",
           "readable_signature", "runtime_support", "signatures", "static_weight_producers"]

SUPPORT_DIR = Path(__file__).resolve().parent / "runtime_support"
"""The tables shipped with edgeseg; ``EDGESEG_RUNTIME_SUPPORT`` names another folder (tables
probed on a board's own runtime build)."""


def static_weight_producers(graph: TfliteGraph) -> dict[int, list[int]]:
    """``{operator: [its DEQUANTIZE operators of constants]}``: the fp16 weights that XNNPACK
    reads as static weights of the operator (the two are probed, and delegated, together)."""
    producer = {t: op.index for op in graph.operators for t in op.outputs}
    folded: dict[int, list[int]] = {}
    for op in graph.operators:
        for t in op.inputs:
            p = producer.get(t)
            if p is not None and _is_constant_dequantize(graph, graph.operators[p]):
                folded.setdefault(op.index, []).append(p)
    return folded


def _is_constant_dequantize(graph: TfliteGraph, op: Operator) -> bool:
    return (op.name == "DEQUANTIZE" and len(op.inputs) == 1
            and graph.tensors[op.inputs[0]].constant)


def signatures(graph: TfliteGraph) -> list[str]:
    """Every operator's signature, in graph order: ``CONV_2D/v3/INT8,INT8c,INT32c``, the
    operator, its version and its inputs' types, with a trailing ``c`` for a constant input (or
    one dequantised from a constant) and ``-`` for an omitted optional input."""
    producer = {t: p for p in graph.operators for t in p.outputs}
    keys = []
    for op in graph.operators:
        inputs = []
        for i in op.inputs:
            if i < 0:
                inputs.append("-")
                continue
            tensor = graph.tensors[i]
            constant = tensor.constant or (
                i in producer and _is_constant_dequantize(graph, producer[i]))
            inputs.append(tensor.type + ("c" if constant else ""))
        keys.append(f"{op.name}/v{op.version}/{','.join(inputs)}")
    return keys


def _parts(key: str) -> tuple[str, int, str]:
    """A signature's operator, version and inputs."""
    op, version, inputs = key.split("/")
    return op, int(version[1:]), inputs


def readable_signature(key: str) -> str:
    """``CONV_2D/v3/INT8,INT8c`` -> ``CONV_2D version 3 (INT8, INT8 const)``, for messages."""
    op, version, inputs = _parts(key)
    return f"{op} version {version} ({inputs.replace('c', ' const') or 'no inputs'})"


@dataclass(frozen=True)
class RuntimeSupport:
    """One runtime's support table."""

    name: str  # as pip names it: "tflite-runtime", "ai-edge-litert"
    version: str
    signatures: dict[str, dict]
    probed_on: dict = field(default_factory=dict)

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    def loads(self, key: str) -> bool | None:
        """Whether an operator of this signature loads: True / False from its probes, else from
        the operator's probed versions (a runtime registers versions 1 to N), else None."""
        entry = self.signatures.get(key)
        if entry:
            return entry["loaded"] == entry["probes"]
        op, version, _ = _parts(key)
        same_op = [(v, e) for k, e in self.signatures.items()
                   for o, v, _ in [_parts(k)] if o == op]
        if any(v >= version and e["loaded"] for v, e in same_op):
            return True
        if any(v <= version and e["loaded"] == 0 and "find op" in e.get("error", "")
               for v, e in same_op):
            return False
        return None

    def delegated(self, key: str) -> bool | None:
        """Whether XNNPACK takes an operator of this signature (all its probes), None when it
        was not probed."""
        entry = self.signatures.get(key)
        if entry:
            return entry["delegated"] == entry["probes"]
        # not probed: the same operator and types with other inputs constant, when they agree
        loose = key.replace("c,", ",").rstrip("c")
        alike = [e for k, e in self.signatures.items()
                 if k.replace("c,", ",").rstrip("c") == loose]
        if alike and all(e["delegated"] == e["probes"] for e in alike):
            return True
        if alike and not any(e["delegated"] for e in alike):
            return False
        return None


def support_dir() -> Path:
    return Path(os.environ.get("EDGESEG_RUNTIME_SUPPORT") or SUPPORT_DIR)


def known_runtimes(folder: str | Path | None = None) -> list[RuntimeSupport]:
    """Every support table in ``folder`` (default :func:`support_dir`), sorted by runtime and
    version."""
    tables = []
    for path in sorted(Path(folder or support_dir()).glob("*.json")):
        data = json.loads(path.read_text())
        tables.append(RuntimeSupport(data["runtime"], data["version"], data["signatures"],
                                     data.get("probed_on", {})))
    return sorted(tables, key=lambda t: (t.name, _version_key(t.version)))


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.+-]", version))


def runtime_support(requirement: str, folder: str | Path | None = None) -> RuntimeSupport:
    """The table of a runtime written like a pip requirement: ``tflite-runtime==2.14.0``,
    ``ai-edge-litert==2.3.0``, or a bare name for its newest probed version."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:==\s*([A-Za-z0-9_.+-]+))?\s*", requirement)
    tables = known_runtimes(folder)
    known = ", ".join(t.requirement for t in tables) or "none (run python -m " \
        "edgeseg.converters.probe_runtimes)"
    if not match:
        raise ValueError(f"--runtime {requirement!r} is not a runtime requirement like "
                         f"'tflite-runtime==2.14.0'; known: {known}")
    name = match.group(1).lower().replace("_", "-")
    version = match.group(2)
    candidates = [t for t in tables if t.name == name and version in (None, t.version)]
    if not candidates:
        raise ValueError(f"--runtime {requirement!r}: no support table for it; edgeseg knows "
                         f"{known}")
    return candidates[-1]


@dataclass
class RuntimeReport:
    """What one runtime makes of one graph."""

    runtime: str  # "tflite-runtime==2.14.0"
    loads: bool | None  # None: an operator signature that was never probed there
    missing: list[str]  # signatures that do not load there
    unknown: list[str]  # signatures never probed there
    nodes: int
    xnnpack_nodes: int
    macs: int
    xnnpack_macs: int
    int8: bool
    outside: dict[str, int]  # operator -> nodes left to the runtime's own kernels

    @property
    def int8_without_xnnpack(self) -> bool:
        """An int8 model whose convolutions XNNPACK does not run (most of its MACs outside)."""
        return self.int8 and self.macs > 0 and self.xnnpack_macs < 0.5 * self.macs

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "loads": self.loads, "missing": self.missing,
                "unknown": self.unknown, "nodes": self.nodes, "xnnpack_nodes": self.xnnpack_nodes,
                "macs": self.macs, "xnnpack_macs": self.xnnpack_macs, "int8": self.int8,
                "int8_without_xnnpack": self.int8_without_xnnpack, "outside": self.outside}


def check_graph(graph: TfliteGraph, support: RuntimeSupport) -> RuntimeReport:
    """Whether ``graph`` loads on the runtime of ``support`` and how much XNNPACK takes there.

    A DEQUANTIZE of a constant (fp16 weights) goes with the operator it feeds: XNNPACK folds it
    into that operator's static weights when it takes the operator.
    """
    keys = signatures(graph)
    missing, unknown = [], []
    for key in dict.fromkeys(keys):
        loads = support.loads(key)
        if loads is False:
            missing.append(key)
        elif loads is None:
            unknown.append(key)
    delegated = [bool(support.delegated(key)) for key in keys]
    consumers: dict[int, list[int]] = {}
    for consumer, producers in static_weight_producers(graph).items():
        for p in producers:
            consumers.setdefault(p, []).append(consumer)
    for p, users in consumers.items():
        delegated[p] = all(delegated[u] for u in users)
    outside: dict[str, int] = {}
    for op, taken in zip(graph.operators, delegated, strict=True):
        if not taken:
            outside[op.name] = outside.get(op.name, 0) + 1
    return RuntimeReport(
        runtime=support.requirement,
        loads=False if missing else (None if unknown else True),
        missing=missing, unknown=unknown,
        nodes=len(graph.operators), xnnpack_nodes=sum(delegated),
        macs=graph.macs,
        xnnpack_macs=sum(op.macs for op, taken in zip(graph.operators, delegated, strict=True)
                         if taken),
        int8=graph.is_int8(), outside=dict(sorted(outside.items())))


# --- edgeseg check -------------------------------------------------------------------------------


def check_model(path, runtime: str | None = None, measure: bool = True,
                folder: str | Path | None = None) -> dict:
    """What ``edgeseg check`` prints, as a dict: the file's operators with their versions, and
    for each known runtime (or only ``runtime``, a requirement like ``tflite-runtime==2.14.0``)
    whether it loads and how much XNNPACK takes there, by nodes and by MACs. With ``measure``,
    the runtime installed here also loads the model and its real delegation is added."""
    from edgeseg.tflite_file import read_tflite

    graph = read_tflite(path)
    operators = Counter(f"{op.name} v{op.version}" for op in graph.operators)
    tables = [runtime_support(runtime, folder)] if runtime else known_runtimes(folder)
    result = {
        "path": str(path), "nodes": len(graph.operators), "macs": graph.macs,
        "int8": graph.is_int8(), "subgraphs": graph.subgraphs,
        "operators": dict(sorted(operators.items())),
        "runtimes": [check_graph(graph, table).as_dict() for table in tables],
    }
    if measure:
        result["measured"] = measure_here(path)
    return result


def measure_here(path) -> dict | None:
    """The runtime of this environment loading the file: ``{"runtime", "loads", "error",
    "partitions", "outside"}``, or None when no runtime is installed here."""
    from edgeseg.runtime_tflite import delegation, interpreter_identity, load_interpreter

    try:
        identity = interpreter_identity()
    except ImportError:
        return None
    runtime = f"{identity['name']}=={identity['version']}"
    try:
        plan = delegation(load_interpreter(path, num_threads=1))
    except (RuntimeError, ValueError) as e:
        return {"runtime": runtime, "loads": False, "error": str(e).strip().splitlines()[0]}
    return {"runtime": runtime, "loads": True, "partitions": plan["partitions"],
            "nodes": plan["nodes"], "outside": plan["outside"]}


def check_failures(result: dict) -> list[str]:
    """Why ``edgeseg check --runtime`` fails: the model does not load there (or uses operator
    signatures never probed there), or its int8 graph would run without XNNPACK."""
    from edgeseg.runtime_tflite import INT8_WITHOUT_XNNPACK_COST

    failures = []
    for report in result["runtimes"]:
        name = report["runtime"]
        if report["missing"]:
            failures.append(f"{name} cannot load it: no kernel for "
                            + ", ".join(readable_signature(k) for k in report["missing"]))
        if report["unknown"]:
            failures.append(f"{name}: never probed there, so not vouched for: "
                            + ", ".join(readable_signature(k) for k in report["unknown"])
                            + " (python -m edgeseg.converters.probe_runtimes probes them)")
        if report["int8_without_xnnpack"]:
            failures.append(
                f"{name} runs this int8 model without XNNPACK ({_share(report, 'macs')} of its "
                "MACs delegated): on TFLite's reference int8 kernels it is slower than the fp32 "
                f"export there ({INT8_WITHOUT_XNNPACK_COST}); deploy the fp32 / fp16 export on "
                "it, or a runtime with int8 XNNPACK (ai-edge-litert)")
    return failures


def _share(report: dict, what: str) -> str:
    total, part = report[what], report[f"xnnpack_{what}"]
    return f"{100 * part / total:.0f}%" if total else "n/a"


def format_check(result: dict) -> str:
    """The result of :func:`check_model` as text."""
    kind = "int8" if result["int8"] else "float"
    lines = [f"{result['path']}: {result['nodes']} operators, {result['macs'] / 1e9:.3g} GMACs, "
             f"{kind} convolutions",
             "operators: " + ", ".join(f"{name} x{count}"
                                       for name, count in result["operators"].items()),
             "",
             f"{'runtime':26s} {'loads':7s} {'XNNPACK nodes':18s} {'XNNPACK MACs':12s}"]
    for report in result["runtimes"]:
        loads = {True: "yes", False: "NO", None: "unknown"}[report["loads"]]
        nodes = f"{report['xnnpack_nodes']}/{report['nodes']} ({_share(report, 'nodes')})"
        lines.append(f"{report['runtime']:26s} {loads:7s} {nodes:18s} {_share(report, 'macs'):12s}")
    measured = result.get("measured")
    if measured:
        if measured["loads"]:
            from edgeseg.runtime_tflite import delegation_summary

            lines.append(f"\nloaded here by {measured['runtime']}: "
                         + delegation_summary(measured["partitions"], measured["outside"]))
        else:
            lines.append(f"\nloading here with {measured['runtime']} failed: {measured['error']}")
    failures = check_failures(result)
    if failures:
        lines.append("")
        lines.extend(f"warning: {f}" for f in failures)
    return "\n".join(lines)
