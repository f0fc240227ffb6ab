"""End-to-end demo fps against inference-only fps on a synthetic live source (issue 6).

Usage:
    python benchmarks/demo_fps.py runs/quickstart/enet_fp32.tflite runs/quickstart/enet_int8.tflite \
        --sizes 480x320,640x360 --out benchmarks/results/demo_fps_cpu

The live synthetic source is paced faster than any model here runs (``--source-fps``), so the
loop, not the camera, sets the frame rate; frames it cannot keep up with are dropped, as from a
camera. ``inference_fps`` is 1000 / median inference ms; ``fps`` counts every displayed frame
over the wall time, capture, preprocessing, postprocessing and drawing included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    from edgeseg.bench.fingerprint import device_fingerprint
    from edgeseg.demos.segment_live import run_demo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--sizes", default="480x320,640x360")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--source-fps", type=float, default=240.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/demo_fps_cpu")
    args = parser.parse_args()

    rows = []
    for artifact in args.artifacts:
        for size in args.sizes.split(","):
            source = f"synthetic?size={size}&fps={args.source_fps:g}&frames={args.frames}&live=1"
            summary = run_demo(artifact, source, output="none", threads=args.threads,
                               print_summary=False)
            stages = {k: v["median"] for k, v in summary["stages_ms"].items()}
            rows.append({"artifact": artifact, "frame_size": size, "frames": summary["frames"],
                         "dropped": summary["dropped"], "fps": summary["fps"],
                         "inference_fps": summary["inference_fps"],
                         "ratio": summary["fps"] / summary["inference_fps"],
                         "stages_ms_median": stages})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = device_fingerprint()
    out.with_suffix(".json").write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    stage_names = list(rows[0]["stages_ms_median"])
    lines = [
        "# Demo loop: end-to-end fps against inference-only fps (synthetic live source)\n",
        f"Device: {device.get('cpu_model') or platform.processor()}, "
        f"{os.cpu_count()} cores. `python benchmarks/demo_fps.py {' '.join(args.artifacts)} "
        f"--sizes {args.sizes}`; source paced at {args.source_fps:g} fps, {args.frames} frames, "
        "output none.\n",
        "| model | frame | frames | dropped | end-to-end fps | inference fps | ratio | "
        + " | ".join(f"{s} ms" for s in stage_names) + " |",
        "|---" * (7 + len(stage_names)) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {Path(r['artifact']).name} | {r['frame_size']} | {r['frames']} | {r['dropped']} | "
            f"{r['fps']:.1f} | {r['inference_fps']:.1f} | {r['ratio']:.2f} | "
            + " | ".join(f"{r['stages_ms_median'][s]:.1f}" for s in stage_names) + " |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
