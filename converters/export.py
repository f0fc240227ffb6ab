"""``edgeseg export``: a trained .keras model to a deployable artifact, checked against itself.

Every export is written atomically (a temporary file in the destination's folder, then a rename)
and then validated: the artifact and the Keras model it came from run on held-out images, and
the report beside the artifact gives their pixel agreement, the mIoU of each against the labels
and the mIoU drop. ``max_miou_drop`` turns a larger drop into a failed export.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg import __version__
from edgeseg.converters.formats import check_export_options
from edgeseg.data import IGNORE_INDEX, open_dataset
from edgeseg.evaluate import load_keras_model, write_json_atomic
from edgeseg.metrics import ConfusionMatrix
from edgeseg.runtime import load_predictor, read_metadata


class ExportValidationError(RuntimeError):
    """The exported artifact lost more accuracy than allowed."""


@dataclass
class ExportRequest:
    model: str
    format: str = "tflite"
    quant: str = "none"
    out: str | None = None
    calib: str | None = None  # data spec for int8 calibration (default: the training data)
    num_calib: int = 100
    io: str = "float32"
    output: str = "logits"
    size: tuple[int, int] | None = None  # (width, height); default: the training size
    val_data: str | None = None  # data spec for validation (default: calib / training data)
    num_val: int = 20
    max_miou_drop: float | None = None  # in mIoU points (percent)
    qat_epochs: int = 2


# --- inputs -------------------------------------------------------------------------------------


def prepare_images(dataset, count: int, size: tuple[int, int], seed: int = 0):
    """Up to ``count`` (image float32 [0,1], label) pairs resized to ``size`` (W, H)."""
    order = np.random.default_rng(seed).permutation(len(dataset))[:count]
    images, labels = [], []
    for index in order:
        image, label = dataset[int(index)]
        images.append(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255)
        labels.append(cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))
    return np.stack(images), np.stack(labels)


def export_model_for(source, metadata: dict, size: tuple[int, int], output: str):
    """The model to convert: the source itself, or the same weights rebuilt at another size /
    with another output head (fully convolutional models take any size)."""
    from edgeseg.models import build

    height, width = source.inputs[0].shape[1:3]
    if (width, height) == tuple(size) and output == "logits":
        return source
    architecture = metadata.get("model") or source.name
    options = (metadata.get("config") or {}).get("model_options") or {}
    num_classes = source.outputs[0].shape[-1]
    model = build(architecture, num_classes, (size[1], size[0], 3), output=output, **options)
    model.set_weights(source.get_weights())
    return model


def atomic_destination(out: Path):
    """A temporary path next to ``out`` with the same suffix; rename it onto ``out`` when done."""
    handle, tmp = tempfile.mkstemp(prefix=f".{out.stem}-", suffix=out.suffix or ".tmp", dir=out.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would otherwise survive the rename
    return Path(tmp)


# --- conversion ---------------------------------------------------------------------------------


def _convert(request: ExportRequest, model, calibration, train_spec: str, tmp: Path) -> None:
    if request.format == "tflite":
        from edgeseg.converters.tflite import convert_keras_to_tflite, non_builtin_ops

        if request.quant == "qat":
            from edgeseg.converters.qat import qat_export_tflite

            blob = qat_export_tflite(model, train_spec, calibration, request.io,
                                     epochs=request.qat_epochs)
        else:
            blob = convert_keras_to_tflite(
                model, request.quant,
                (lambda: iter(calibration)) if request.quant == "int8" else None,
                io_type=request.io,
            )
        bad = non_builtin_ops(blob)
        if bad:
            raise RuntimeError(f"the TFLite graph needs non-builtin ops {bad}; refusing to write it")
        tmp.write_bytes(blob)
    elif request.format == "onnx":
        from edgeseg.converters.onnx_export import convert_keras_to_onnx

        tmp.write_bytes(convert_keras_to_onnx(model).SerializeToString())
    elif request.format == "tensorrt":
        from edgeseg.converters.onnx_export import convert_keras_to_onnx
        from edgeseg.converters.tensorrt_export import (
            EntropyCalibrator,
            build_engine,
            trtexec_command,
        )

        onnx_path = tmp.with_suffix(".onnx")
        onnx_path.write_bytes(convert_keras_to_onnx(model).SerializeToString())
        print("for images with only trtexec:\n  "
              + trtexec_command(onnx_path, tmp, request.quant))
        calibrator = EntropyCalibrator(calibration, batch_size=1,
                                       cache_path=str(tmp) + ".calib") if request.quant == "int8" else None
        build_engine(onnx_path, tmp, request.quant, calibrator)
    elif request.format == "saved_model":
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.unlink(missing_ok=True)
        model.export(str(tmp), format="tf_saved_model", verbose=False)


# --- validation ---------------------------------------------------------------------------------


def _label_maps(output: np.ndarray) -> np.ndarray:
    return output if output.ndim == 3 else np.asarray(output).argmax(-1)


def validate_export(reference_model, artifact: Path, images, labels, num_classes: int) -> dict:
    """Pixel agreement and mIoU of the artifact against the Keras model it came from."""
    from keras import ops

    predictor = load_predictor(artifact)
    agree = total = 0
    confusion_ref = ConfusionMatrix(num_classes, IGNORE_INDEX)
    confusion_art = ConfusionMatrix(num_classes, IGNORE_INDEX)
    timings = []
    for image, label in zip(images, labels, strict=True):
        ref = _label_maps(ops.convert_to_numpy(reference_model(image[None], training=False)))[0]
        start = time.perf_counter()
        art = _label_maps(predictor(image[None]))[0]
        timings.append(time.perf_counter() - start)
        agree += int((ref == art).sum())
        total += ref.size
        confusion_ref.update(label, ref)
        confusion_art.update(label, art)
    miou_ref = confusion_ref.result()["miou"]
    miou_art = confusion_art.result()["miou"]
    return {
        "num_images": len(images),
        "pixel_agreement": agree / total,
        "miou_keras": miou_ref,
        "miou_export": miou_art,
        "miou_drop_points": 100 * (miou_ref - miou_art),
        "export_ms_per_image": 1e3 * float(np.median(timings)),
    }


# --- the export ---------------------------------------------------------------------------------


def export(request: ExportRequest) -> dict:
    """Exports, validates and writes the report; returns the report."""
    source_path = Path(request.model)
    metadata = read_metadata(source_path) or {}
    if metadata.get("model") == "mobile_mask_rcnn":
        return export_instances(request, source_path, metadata)
    row = check_export_options(request.format, request.quant, request.io, request.output)
    source = load_keras_model(source_path)
    height, width = source.inputs[0].shape[1:3]
    size = tuple(request.size or metadata.get("size") or (width, height))
    train_spec = request.calib or (metadata.get("config") or {}).get("data")
    val_spec = request.val_data or train_spec
    if request.quant in ("int8", "qat") and not train_spec:
        raise ValueError(
            f"--quant {request.quant} needs calibration images: pass --calib SPEC (such as "
            "synthetic or camvid:/data/CamVid), or export a model trained by edgeseg (its run.json "
            "names the data)"
        )
    out = Path(request.out or source_path.with_name(
        f"{source_path.stem}_{request.quant}{row.suffix or '_saved_model'}"))
    if row.suffix and out.suffix != row.suffix:
        raise ValueError(f"--format {row.name} writes {row.suffix} files; got --out {out}")
    out.parent.mkdir(parents=True, exist_ok=True)

    model = export_model_for(source, metadata, size, request.output)
    calibration = None
    if train_spec and request.quant in ("int8", "qat") or request.format == "tensorrt":
        spec = train_spec or val_spec
        if spec:
            calibration, _ = prepare_images(open_dataset(spec, "train"), request.num_calib, size)

    tmp = atomic_destination(out)
    started = time.time()
    try:
        _convert(request, model, calibration, train_spec, tmp)
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    seconds = time.time() - started

    classes = metadata.get("classes") or [f"class_{i}" for i in range(source.outputs[0].shape[-1])]
    sidecar = {
        "model": metadata.get("model") or source.name,
        "source": str(source_path),
        "format": request.format,
        "quant": request.quant,
        "io": request.io,
        "output": request.output,
        "classes": classes,
        "palette": metadata.get("palette"),
        "size": list(size),
        "input_size": list(size),
        "normalisation": metadata.get("normalisation") or {"scale": 1 / 255, "offset": 0.0},
        "ignore_index": IGNORE_INDEX,
        "edgeseg_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if request.format == "tflite":
        from edgeseg.converters.tflite_metadata import MediaPipeIncompatibleError, embed_metadata

        try:
            blob = embed_metadata(out.read_bytes(), sidecar)
            tmp = atomic_destination(out)
            tmp.write_bytes(blob)
            os.replace(tmp, out)
            sidecar["embedded_metadata"] = True
        except MediaPipeIncompatibleError as error:
            # int8 input or a mask output: LiteRT runs it, MediaPipe's segmenter cannot.
            sidecar["embedded_metadata"] = f"not embedded: {error}"
    sidecar_path = out.with_name(out.name + ".json")
    write_json_atomic(sidecar_path, sidecar)

    report = {
        "request": {**asdict(request), "size": list(size)},
        "artifact": str(out),
        "artifact_bytes": _size_of(out),
        "convert_seconds": seconds,
        "validation": None,
        "passed": True,
    }
    if request.format != "tensorrt" and val_spec:
        images, labels = prepare_images(open_dataset(val_spec, "val"), request.num_val, size, seed=1)
        report["validation"] = validate_export(model, out, images, labels, len(classes))
        report["validation"]["data"] = val_spec
    return _write_report(report, out, request.max_miou_drop, "miou_drop_points", "mIoU")


def _write_report(report: dict, out: Path, max_drop: float | None, drop_key: str,
                  metric: str) -> dict:
    """Writes ``<out>.report.json``; fails the export when the drop passes ``max_drop``."""
    drop = (report["validation"] or {}).get(drop_key)
    report["passed"] = not (max_drop is not None and drop is not None and drop > max_drop)
    write_json_atomic(out.with_name(out.name + ".report.json"), report)
    if not report["passed"]:
        raise ExportValidationError(
            f"{out}: {metric} dropped {drop:.2f} points (> --max-miou-drop {max_drop}); see "
            f"{out.name}.report.json"
        )
    return report


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def export_instances(request: ExportRequest, source_path: Path, metadata: dict) -> dict:
    """A Mask R-CNN export (``edgeseg.converters.maskrcnn_export``), validated on detections.

    ``max_miou_drop`` bounds the drop of the COCO mask AP (points) for these models.
    """
    from edgeseg.converters.maskrcnn_export import (
        calibration_images,
        check_instance_options,
        convert_instance_tflite,
        validate_instance_export,
    )
    from edgeseg.models.maskrcnn.dataset import open_instances

    check_instance_options(request.format, request.quant, request.io, request.output)
    suffix = {"tflite": ".tflite", "onnx": ".onnx"}[request.format]
    out = Path(request.out or source_path.with_name(f"{source_path.stem}_{request.quant}{suffix}"))
    if out.suffix != suffix:
        raise ValueError(f"--format {request.format} writes {suffix} files; got --out {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_keras_model(source_path, compile=False)
    size = int(model.inputs[0].shape[1])
    if request.size and tuple(request.size) != (size, size):
        raise ValueError(
            f"mobile_mask_rcnn has a fixed {size}x{size} input (its anchors are constants); "
            f"--size {request.size[0]}x{request.size[1]} would need another model"
        )
    train_spec = request.calib or (metadata.get("config") or {}).get("data")
    val_spec = request.val_data or train_spec
    if request.quant == "int8" and not train_spec:
        raise ValueError("--quant int8 needs calibration images: pass --calib SPEC (coco:PATH "
                         "or synthetic), or export a model trained by edgeseg")
    calibration = None
    if request.quant == "int8":
        calibration = calibration_images(open_instances(train_spec, "train"), size,
                                         request.num_calib)

    tmp = atomic_destination(out)
    started = time.time()
    quant_mode = request.quant
    try:
        if request.format == "tflite":
            from edgeseg.converters.tflite import non_builtin_ops

            blob, quant_mode = convert_instance_tflite(model, request.quant, calibration)
            bad = non_builtin_ops(blob)
            if bad:
                raise RuntimeError(f"the TFLite graph needs non-builtin ops {bad}; refusing to "
                                   "write it")
            tmp.write_bytes(blob)
        else:
            from edgeseg.converters.onnx_export import convert_keras_to_onnx

            tmp.write_bytes(convert_keras_to_onnx(model).SerializeToString())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    seconds = time.time() - started

    sidecar = {
        "model": "mobile_mask_rcnn",
        "task": "instance",
        "source": str(source_path),
        "format": request.format,
        "quant": request.quant,
        "quant_mode": quant_mode,
        "io": "float32",
        "output": "detections",
        "classes": metadata.get("classes"),
        "palette": metadata.get("palette"),
        "size": [size, size],
        "input_size": [size, size],
        "normalisation": metadata.get("normalisation") or {"scale": 1 / 255, "offset": 0.0},
        "embedded_metadata": "not embedded: MediaPipe's ImageSegmenter reads semantic models",
        "edgeseg_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out.with_name(out.name + ".json"), sidecar)
    report = {
        "request": {**asdict(request), "size": [size, size]},
        "artifact": str(out),
        "artifact_bytes": _size_of(out),
        "convert_seconds": seconds,
        "quant_mode": quant_mode,
        "validation": None,
        "passed": True,
    }
    if val_spec:
        report["validation"] = validate_instance_export(
            model, out, open_instances(val_spec, "val"), size, request.num_val)
        report["validation"]["data"] = val_spec
    return _write_report(report, out, request.max_miou_drop, "mask_ap_drop_points", "mask AP")

