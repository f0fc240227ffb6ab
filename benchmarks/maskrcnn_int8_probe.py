"""Which parts of the trained Mask R-CNN can run int8? Selective int8 variants, measured.

Usage:
    python benchmarks/maskrcnn_int8_probe.py --run runs/bench_maskrcnn \
        --out benchmarks/results/maskrcnn_cpu/int8_probe.json

Converts best.keras with ``edgeseg.converters.tflite.convert_selective_int8``: int8 kernels
except on the ops of the named layers and, with an error bound, on the ops whose int8 output is
further than that from the float op on the same input (quantisation steps, over the calibration
images). Each artifact is validated against the Keras model as ``edgeseg export`` does (matched
detections, mask AP).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edgeseg.models.maskrcnn.network import PREDICTION_LAYERS  # noqa: E402

HEADS = ("box_head", "mask_head")
# label: (layers kept float besides the geometry, error bound in quantisation steps or None)
VARIANTS = {
    "geometry and prediction layers float, ops above 1 step float (edgeseg export's int8)": (
        PREDICTION_LAYERS, 1.0),
    "geometry float (prediction layers int8)": ((), None),
    "geometry, prediction layers and heads float (backbone, FPN, RPN int8)": (
        (*PREDICTION_LAYERS, *HEADS), None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench_maskrcnn")
    parser.add_argument("--out", default="benchmarks/results/maskrcnn_cpu/int8_probe.json")
    parser.add_argument("--num-calib", type=int, default=50)
    parser.add_argument("--num-val", type=int, default=30)
    args = parser.parse_args()

    from edgeseg.converters.maskrcnn_export import (
        calibration_images,
        geometry_layers,
        in_layers,
        validate_instance_export,
    )
    from edgeseg.converters.tflite import convert_selective_int8
    from edgeseg.data import open_instances
    from edgeseg.models.loading import load_keras_model

    model = load_keras_model(Path(args.run) / "best.keras")
    size = int(model.inputs[0].shape[1])
    calibration = calibration_images(open_instances("synthetic", "train"), size, args.num_calib)
    val = open_instances("synthetic", "val")
    work = Path(tempfile.mkdtemp(prefix="edgeseg-probe-"))
    rows = []
    for label, (extra, bound) in VARIANTS.items():
        names = [*geometry_layers(model), *extra]
        started = time.time()
        blob, floats, noisy = convert_selective_int8(
            model, lambda: iter(calibration), keep_float=in_layers(names),
            max_layer_error=bound, float_outputs=True)
        seconds = time.time() - started
        path = work / f"{len(rows)}.tflite"
        path.write_bytes(blob)
        v = validate_instance_export(model, path, val, size, args.num_val)
        noisy = [n.split(";")[0] for n in noisy]
        row = {"variant": label, "bytes": len(blob), "float_tensors": len(floats),
               "float_for_error": noisy, "convert_seconds": seconds,
               **{k: v[k] for k in v if k not in ("keras", "export")},
               "keras_mask_AP": v["keras"]["mask_AP"], "export_mask_AP": v["export"]["mask_AP"],
               "keras_mask_AP50": v["keras"]["mask_AP50"],
               "export_mask_AP50": v["export"]["mask_AP50"],
               "keras_box_AP": v["keras"]["box_AP"], "export_box_AP": v["export"]["box_AP"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/maskrcnn_int8_probe.py", "run": args.run,
        "num_calib": args.num_calib, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
