"""End-to-end demo fps against inference-only fps on a synthetic live source (issues 6, 14).

Usage:
    python benchmarks/demo_fps.py enet_fp32_480x320.tflite enet_int8_480x320.tflite \
        --sizes 480x320,640x360 --out benchmarks/results/demo_fps_cpu

An artifact containing ``{size}`` is a pattern: the file made for each frame size is used
(``enet_fp32_{size}.tflite``), so that the model runs at the frame's own size.

The live synthetic source is paced faster than any model here runs (``--source-fps``), so the
loop, not the camera, sets the frame rate; frames it cannot keep up with are dropped, as from a
camera. Two inference-only rates are reported: ``inference_fps``, 1000 / the median inference
ms measured inside the demo run (what the demo's summary reports; it shares the CPU with the
stages around it), and ``alone_fps``, the same segmenter's inference timed on its own for
``--alone-seconds`` just before and just after the run (the mean), with the same thread count
(what the model gives with the whole CPU). ``fps`` counts every displayed frame over the wall time, capture,
preprocessing, postprocessing and drawing included; the ratios are ``fps`` over each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def cpu_flags() -> dict:
    """The CPU's int8 dot-product extensions (VNNI), from /proc/cpuinfo where there is one."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return {}
    return {name: name in flags for name in ("avx512_vnni", "avx_vnni", "avx2")}


def inference_alone_fps(segmenter, size: tuple[int, int], seconds: float) -> float:
    """1000 / median ms of ``segmenter.infer`` alone on one prepared synthetic frame."""
    from edgeseg.data.synthetic import SceneSequence

    batch, _ = segmenter.preprocess(SceneSequence(seed=0, size=size).frame(0)[0])
    for _ in range(3):
        segmenter.infer(batch)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 10:
        start = time.perf_counter()
        segmenter.infer(batch)
        times.append(time.perf_counter() - start)
    return 1.0 / float(np.median(times))


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces the table (without --out, --before and --note)."""
    return (f"python benchmarks/demo_fps.py {' '.join(args.artifacts)} --sizes {args.sizes} "
            f"--seconds {args.seconds:g} --source-fps {args.source_fps:g} "
            f"--alone-seconds {args.alone_seconds:g}"
            + (f" --threads {args.threads}" if args.threads else ""))


def compare(rows: list[dict], before: list[dict], label: str) -> list[str]:
    """Markdown lines: each row's fps and ratios beside the same model and frame's earlier."""
    earlier = {(Path(r["artifact"]).name, r["frame_size"]): r for r in before}
    lines = [
        f"\n## Against {label}\n",
        "| model | frame | end-to-end fps | ratio (in run) | ratio to alone | "
        "end-to-end fps, now | ratio (in run), now | ratio to alone, now |",
        "|---" * 8 + "|",
    ]
    for r in rows:
        b = earlier.get((Path(r["artifact"]).name, r["frame_size"]))
        if b is None:
            continue
        lines.append(
            f"| {Path(r['artifact']).name} | {r['frame_size']} | {b['fps']:.1f} | "
            f"{b['ratio']:.2f} | {b['ratio_alone']:.2f} | {r['fps']:.1f} | {r['ratio']:.2f} | "
            f"{r['ratio_alone']:.2f} |"
        )
    return lines


def main() -> None:
    from edgeseg.bench.fingerprint import device_fingerprint
    from edgeseg.demos.segment_live import run_demo
    from edgeseg.io import parse_size
    from edgeseg.runtime import open_segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", help="model files, or patterns with {size}")
    parser.add_argument("--sizes", default="480x320,640x360")
    parser.add_argument("--seconds", type=float, default=10.0, help="source length per run")
    parser.add_argument("--source-fps", type=float, default=240.0)
    parser.add_argument("--alone-seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/demo_fps_cpu")
    parser.add_argument("--before", default=None, metavar="FILE.json",
                        help="an earlier run's JSON (e.g. of the code before a change) to "
                        "compare with, row by row")
    parser.add_argument("--before-label", default="before")
    parser.add_argument("--note", default="", help="a paragraph for the .md (the models used)")
    args = parser.parse_args()

    frames = int(args.seconds * args.source_fps)
    rows = []
    for artifact in args.artifacts:
        for size in args.sizes.split(","):
            path = artifact.format(size=size)
            segmenter = open_segmenter(path, threads=args.threads)
            alone = inference_alone_fps(segmenter, parse_size(size), args.alone_seconds)
            source = f"synthetic?size={size}&fps={args.source_fps:g}&frames={frames}&live=1"
            summary = run_demo(segmenter, source, output="none", print_summary=False)
            # Timed again after the run: other load on the machine shifts both alike.
            alone = (alone + inference_alone_fps(segmenter, parse_size(size),
                                                 args.alone_seconds)) / 2
            stages = {k: v["median"] for k, v in summary["stages_ms"].items()}
            rows.append({"artifact": path, "frame_size": size,
                         "model_input": "x".join(map(str, summary["model_input"])),
                         "frames": summary["frames"], "dropped": summary["dropped"],
                         "fps": summary["fps"], "inference_fps": summary["inference_fps"],
                         "ratio": summary["fps"] / summary["inference_fps"], "alone_fps": alone,
                         "ratio_alone": summary["fps"] / alone, "stages_ms_median": stages})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = {**device_fingerprint(), "cpu_flags": cpu_flags()}
    before = json.loads(Path(args.before).read_text())["rows"] if args.before else []
    out.with_suffix(".json").write_text(json.dumps(
        {"device": device, "command": command_line(args), "rows": rows,
         "before": {"label": args.before_label, "rows": before} if before else None}, indent=2))
    stage_names = list(rows[0]["stages_ms_median"])
    flags = device["cpu_flags"]
    vnni = ", ".join(f for f in ("avx512_vnni", "avx_vnni") if flags.get(f)) or "no VNNI"
    lines = [
        "# Demo loop: end-to-end fps against inference-only fps (synthetic live source)\n",
        f"Device: {device.get('cpu_model') or platform.processor()} ({vnni}), "
        f"{os.cpu_count()} cores; LiteRT threads: {args.threads or 'default'}.\n",
        *([args.note + "\n"] if args.note else []),
        f"Command: `{command_line(args)}`; the source is paced at {args.source_fps:g} fps for "
        f"{frames} frames, output none. inference fps: 1000 / median inference ms inside the "
        "run; alone fps: the same model's inference timed alone just before and after it.\n",
        "| model | frame | model input | frames | dropped | end-to-end fps | inference fps | "
        "ratio | alone fps | ratio to alone | "
        + " | ".join(f"{s} ms" for s in stage_names) + " |",
        "|---" * (10 + len(stage_names)) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {Path(r['artifact']).name} | {r['frame_size']} | {r['model_input']} | "
            f"{r['frames']} | {r['dropped']} | {r['fps']:.1f} | {r['inference_fps']:.1f} | "
            f"{r['ratio']:.2f} | {r['alone_fps']:.1f} | {r['ratio_alone']:.2f} | "
            + " | ".join(f"{r['stages_ms_median'][s]:.1f}" for s in stage_names) + " |"
        )
    if before:
        lines += compare(rows, before, args.before_label)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
