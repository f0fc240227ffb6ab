"""Where does int8 cost the trained Mask R-CNN its accuracy? Parts kept in float, measured.

Usage:
    python benchmarks/maskrcnn_int8_probe.py --run runs/bench_maskrcnn \
        --out benchmarks/results/maskrcnn_cpu/int8_probe.json

Converts best.keras with int8 kernels everywhere except the ops whose tensors belong to the
named parts (``tf.lite.experimental.QuantizationDebugger``'s denylist), then validates each
artifact against the Keras model as ``edgeseg export`` does (matched detections, mask AP).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FLOAT_PARTS = {
    "heads in float (backbone, FPN, RPN int8)": ("box_head", "mask_head", "roi_align",
                                                 "detections", "masks", "proposals"),
    "only the backbone int8": ("box_head", "mask_head", "roi_align", "detections", "masks",
                               "proposals", "rpn", "fpn"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench_maskrcnn")
    parser.add_argument("--out", default="benchmarks/results/maskrcnn_cpu/int8_probe.json")
    parser.add_argument("--num-calib", type=int, default=30)
    parser.add_argument("--num-val", type=int, default=30)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from edgeseg.converters.maskrcnn_export import calibration_images, validate_instance_export
    from edgeseg.evaluate import load_keras_model
    from edgeseg.models.maskrcnn.dataset import open_instances
    from edgeseg.runtime_tflite import load_interpreter

    model = load_keras_model(Path(args.run) / "best.keras")
    size = int(model.inputs[0].shape[1])
    calibration = calibration_images(open_instances("synthetic", "train"), size, args.num_calib)
    val = open_instances("synthetic", "val")
    saved = tempfile.mkdtemp(prefix="edgeseg-probe-")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", functools.partial(model.__call__, training=False),
                         input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32)])
    archive.write_out(saved, verbose=False)

    def converter():
        c = tf.lite.TFLiteConverter.from_saved_model(saved)
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return c

    names = [t["name"] for t in
             load_interpreter(model_content=converter().convert()).get_tensor_details()]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="edgeseg-probe-out-"))
    for label, parts in FLOAT_PARTS.items():
        deny = [n for n in names if any(p in n for p in parts)]
        c = converter()
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([x] for x in calibration)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=c, debug_dataset=lambda: ([x] for x in calibration),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=deny))
        path = work / f"{len(rows)}.tflite"
        path.write_bytes(debugger.get_nondebug_quantized_model())
        v = validate_instance_export(model, path, val, size, args.num_val)
        row = {"float_parts": label, "bytes": path.stat().st_size, "float_tensors": len(deny),
               **{k: v[k] for k in v if k not in ("keras", "export")},
               "keras_mask_AP": v["keras"]["mask_AP"], "export_mask_AP": v["export"]["mask_AP"],
               "export_mask_AP50": v["export"]["mask_AP50"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(args.out).write_text(json.dumps({"command": "python benchmarks/maskrcnn_int8_probe.py",
                                          "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
