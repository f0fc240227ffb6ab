"""``edgeseg export``: a trained .keras model to a deployable artifact, checked against itself.

One skeleton for every model, semantic or instance:

1. ask ``edgeseg.artifacts.open_artifact`` what the source is (its task, read from the model's
   outputs; classes, palette, normalisation, input size; the run record naming its training
   data) and check the options against the formats table and the task;
2. the destination (``--out`` or a name beside the source, with the format's suffix);
3. calibration images, for int8 and QAT, as the model takes them;
4. the conversion, through the converter that the formats table's row names (or the task's own,
   see :class:`TaskExport`), into a temporary name beside the destination that is renamed onto
   it only when the artifact is whole and passed the row's check (TFLite: builtin ops only);
5. the sidecar ``<artifact>.json`` (``edgeseg.artifacts.write_sidecar``, one schema) and, where
   the format and task allow, the same metadata embedded in the file;
6. validation: the artifact and the Keras model it came from run on held-out images. Semantic
   models report pixel agreement, the mIoU of each against the labels and the drop; instance
   models the detections matched and the COCO mask AP drop. ``max_miou_drop`` (points) turns a
   larger drop into a failed export;
7. the report ``<artifact>.report.json``.

The task decides only what differs (allowed options, the model at the export size, calibration
images, a converter override, validation): :data:`EXPORT_TASKS`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg import __version__
from edgeseg.artifacts import SIDECAR_VERSION, Artifact, open_artifact, write_sidecar
from edgeseg.converters.calibration import prepare_images
from edgeseg.converters.formats import (
    EXPORT_FORMATS,
    ConversionJob,
    ExportFormat,
    check_export_options,
    resolve,
)
from edgeseg.data import IGNORE_INDEX, open_dataset
from edgeseg.io import atomic_path, write_bytes_atomic, write_json_atomic
from edgeseg.metrics import ConfusionMatrix
from edgeseg.models.loading import load_keras_model

__all__ = ["EXPORT_TASKS", "ExportRequest", "ExportValidationError", "TaskExport", "export",
           "prepare_images", "validate_export"]


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
    max_miou_drop: float | None = None  # in mIoU points (mask AP points for instance models)
    qat_epochs: int = 2
    runtime: str | None = None  # a .tflite's target runtime, "tflite-runtime==2.14.0"


# --- what differs between tasks ------------------------------------------------------------------


class TaskExport:
    """The parts of an export that depend on the task; the skeleton (:func:`export`) does the
    rest. One instance per task in :data:`EXPORT_TASKS`."""

    task: str
    data_example: str  # a data spec for the error that asks for calibration images
    drop_key: str  # the validation field that ``max_miou_drop`` bounds
    metric: str  # what that drop is of, for the error
    converters: Mapping[str, str] = {}  # format -> "module:function" in place of the table's
    metadata_note: str | None = None  # why the format's embedded metadata is not written

    def check_options(self, request: ExportRequest) -> ExportFormat:
        raise NotImplementedError

    def model_at_size(self, source, artifact: Artifact, request: ExportRequest):
        """(the model to convert, its input size (W, H))."""
        raise NotImplementedError

    def output_fields(self, request: ExportRequest) -> dict[str, Any]:
        """The sidecar fields that say what the artifact takes and returns."""
        raise NotImplementedError

    def calibration(self, spec: str, size: tuple[int, int], count: int,
                    normalisation: Mapping) -> np.ndarray:
        raise NotImplementedError

    def validate(self, model, artifact: Path, spec: str, size: tuple[int, int], count: int,
                 normalisation: Mapping, num_classes: int) -> dict:
        raise NotImplementedError


class SemanticExport(TaskExport):
    """A per-pixel classifier: any format; validated by pixel agreement and mIoU."""

    task = "semantic"
    data_example = "synthetic or camvid:/data/CamVid"
    drop_key, metric = "miou_drop_points", "mIoU"

    def check_options(self, request):
        return check_export_options(request.format, request.quant, request.io, request.output)

    def model_at_size(self, source, artifact, request):
        size = tuple(request.size or artifact.input_size or ())
        if len(size) != 2 or None in size:
            raise ValueError(f"{artifact.path} takes any input size: pass --size WxH")
        return export_model_for(source, artifact, size, request.output), size

    def output_fields(self, request):
        return {"io": request.io, "output": request.output, "ignore_index": IGNORE_INDEX}

    def calibration(self, spec, size, count, normalisation):
        return prepare_images(open_dataset(spec, "train"), count, size,
                              normalisation=normalisation)[0]

    def validate(self, model, artifact, spec, size, count, normalisation, num_classes):
        images, labels = prepare_images(open_dataset(spec, "val"), count, size, seed=1,
                                        normalisation=normalisation)
        return validate_export(model, artifact, images, labels, num_classes)


class InstanceExport(TaskExport):
    """A detector with masks (Mask R-CNN): the whole graph, image to padded detections, in
    TFLite (int8 where it holds, ``edgeseg.converters.maskrcnn_export``) or ONNX; validated on
    matched detections and the COCO mask AP."""

    task = "instance"
    data_example = "synthetic or coco:/data/coco"
    drop_key, metric = "mask_ap_drop_points", "mask AP"
    converters = {"tflite": "edgeseg.converters.maskrcnn_export:write_instance_tflite"}
    metadata_note = "not embedded: MediaPipe's ImageSegmenter reads semantic models"

    def check_options(self, request):
        from edgeseg.converters.maskrcnn_export import check_instance_options

        check_instance_options(request.format, request.quant, request.io, request.output)
        return EXPORT_FORMATS[request.format]

    def model_at_size(self, source, artifact, request):
        height, width = (int(v) for v in source.inputs[0].shape[1:3])
        if request.size and tuple(request.size) != (width, height):
            raise ValueError(
                f"{artifact.path.name} has a fixed {width}x{height} input (its anchors are "
                f"constants); --size {request.size[0]}x{request.size[1]} would need another model"
            )
        return source, (width, height)

    def output_fields(self, request):
        return {"io": "float32", "output": "detections"}

    def calibration(self, spec, size, count, normalisation):
        from edgeseg.converters.maskrcnn_export import calibration_images
        from edgeseg.data import open_instances

        return calibration_images(open_instances(spec, "train"), size[0], count,
                                  normalisation=normalisation)

    def validate(self, model, artifact, spec, size, count, normalisation, num_classes):
        from edgeseg.converters.maskrcnn_export import validate_instance_export
        from edgeseg.data import open_instances

        return validate_instance_export(model, artifact, open_instances(spec, "val"), size[0],
                                        count, normalisation=normalisation)


EXPORT_TASKS: dict[str, TaskExport] = {t.task: t for t in (SemanticExport(), InstanceExport())}
"""The task (``Artifact.task``, read from the model's outputs) -> what its export does."""


# --- semantic parts ------------------------------------------------------------------------------


def export_model_for(source, artifact: Artifact, size: tuple[int, int], output: str):
    """The model to convert: the source itself, or the same weights rebuilt by the registry at
    another size / with another output head (fully convolutional models take any size)."""
    from edgeseg.models import build

    height, width = source.inputs[0].shape[1:3]
    if (width, height) == tuple(size) and output == "logits":
        return source
    options = _run_config(artifact).get("model_options") or {}
    num_classes = source.outputs[0].shape[-1]
    try:
        model = build(artifact.family, num_classes, (size[1], size[0], 3), output=output,
                      **options)
    except ValueError as error:
        raise ValueError(
            f"--size / --output rebuild the model by its registry name, and {artifact.path.name} "
            f"is {artifact.family!r}: {error}. Export it at its own size with --output logits, "
            "or save it with its registry name (a run.json beside it that names the model)"
        ) from None
    weights = source.get_weights()
    if [w.shape for w in model.weights] != [w.shape for w in weights]:
        raise ValueError(
            f"--size / --output rebuild {artifact.path.name} as {artifact.family!r} with the "
            f"options {options or '(defaults)'} from its run.json, and that model has other "
            "weights than the file: export it at its own size with --output logits, or put the "
            "run.json of its training (config.model_options) beside it"
        )
    model.set_weights(weights)
    return model


def _label_maps(output: np.ndarray) -> np.ndarray:
    return output if output.ndim == 3 else np.asarray(output).argmax(-1)


def validate_export(reference_model, artifact: Path, images, labels, num_classes: int) -> dict:
    """Pixel agreement and mIoU of the artifact against the Keras model it came from."""
    from keras import ops

    from edgeseg.runtime import load_predictor

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


# --- the skeleton --------------------------------------------------------------------------------


def export(request: ExportRequest) -> dict:
    """Exports, validates and writes the sidecar and the report; returns the report."""
    if request.runtime:  # a runtime that cannot be checked fails before anything is read
        from edgeseg.runtimes import runtime_support

        fmt = EXPORT_FORMATS.get(request.format)
        if fmt is not None and fmt.artifact != "tflite":
            raise ValueError(f"--runtime names a TFLite runtime; --format {fmt.name} writes "
                             f"{fmt.artifact or 'a folder'}")
        runtime_support(request.runtime)
    source_path = Path(request.model).expanduser()
    artifact = open_artifact(source_path)
    if artifact.format != "keras":
        raise ValueError(f"edgeseg export converts a .keras model; {source_path} is a "
                         f"{artifact.format} file")
    task = EXPORT_TASKS[artifact.task]
    row = task.check_options(request)
    out = _destination(request, row, source_path)
    source = load_keras_model(source_path)
    model, size = task.model_at_size(source, artifact, request)
    num_classes = artifact.num_classes or int(source.outputs[0].shape[-1])
    classes = artifact.classes or [f"class_{i}" for i in range(num_classes)]

    train_spec = request.calib or _run_config(artifact).get("data")
    val_spec = request.val_data or train_spec
    calibration = None
    if request.quant in ("int8", "qat"):
        if not train_spec:
            raise ValueError(
                f"--quant {request.quant} needs calibration images: pass --calib SPEC (such as "
                f"{task.data_example}), or export a model trained by edgeseg (its run.json "
                "names the data)"
            )
        calibration = task.calibration(train_spec, size, request.num_calib,
                                       artifact.normalisation)

    job = ConversionJob(model=model, quant=request.quant, io=request.io, calibration=calibration,
                        train_spec=train_spec, qat_epochs=request.qat_epochs, destination=out)
    started = time.time()
    quant_mode, runtimes = _convert(task, row, job, out, request.runtime)
    seconds = time.time() - started

    sidecar = {
        "model": artifact.family,
        "task": task.task,
        "source": str(source_path),
        "format": row.name,
        "quant": request.quant,
        "quant_mode": quant_mode,
        **task.output_fields(request),
        "classes": classes,
        "palette": artifact.palette,
        "size": list(size),
        "input_size": list(size),
        "normalisation": artifact.normalisation,
    }
    if runtimes is not None:
        sidecar["runtimes"] = runtimes
    if row.metadata:
        sidecar["embedded_metadata"] = _embed_metadata(task, row, out, sidecar)
    write_sidecar(out, sidecar)

    report = {
        "request": {**asdict(request), "size": list(size)},
        "task": task.task,
        "artifact": str(out),
        "artifact_bytes": _size_of(out),
        "convert_seconds": seconds,
        "quant_mode": quant_mode,
        "runtimes": runtimes,
        "validation": None,
        "passed": True,
    }
    if row.validated and val_spec:
        report["validation"] = task.validate(model, out, val_spec, size, request.num_val,
                                             artifact.normalisation, num_classes)
        report["validation"]["data"] = val_spec
    return _write_report(report, out, request.max_miou_drop, task.drop_key, task.metric)


def _run_config(artifact: Artifact) -> dict:
    """The training configuration in the run record beside the model (data spec, options)."""
    return ((artifact.run or {}).get("config")) or {}


def _destination(request: ExportRequest, row: ExportFormat, source: Path) -> Path:
    """``--out``, or ``<source stem>_<quant><suffix>`` beside the source; the suffix checked."""
    out = Path(request.out).expanduser() if request.out else source.with_name(
        f"{source.stem}_{request.quant}{row.suffix or '_saved_model'}")
    if row.suffix and out.suffix != row.suffix:
        raise ValueError(f"--format {row.name} writes {row.suffix} files; got --out {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _convert(task: TaskExport, row: ExportFormat, job: ConversionJob, out: Path,
             runtime: str | None = None) -> tuple[str, dict | None]:
    """Runs the converter into a temporary beside ``out``, then the row's check and, for a
    .tflite, the runtime check (:func:`edgeseg.converters.tflite.check_runtimes`); renames it
    onto ``out`` only when all pass. With a target ``runtime`` that cannot load the file, the
    conversion is made again in the forms older runtimes have
    (:data:`edgeseg.converters.tflite.RUNTIME_FORMS`) before the export fails.

    Returns the quantisation mode the converter applied and the runtimes the file was checked
    against (None for other formats).
    """
    import dataclasses

    converter = resolve(task.converters.get(row.name, row.converter))
    runtimes = None
    with atomic_path(out, folder=row.folder) as temporary:
        if row.artifact != "tflite":
            quant_mode = converter(job, temporary)
            if row.check:
                resolve(row.check)(temporary)
            return quant_mode, None
        from edgeseg.converters.tflite import RUNTIME_FORMS, RuntimeTargetError, check_runtimes

        for attempt, forms in enumerate(RUNTIME_FORMS if runtime else RUNTIME_FORMS[:1]):
            quant_mode = converter(dataclasses.replace(job, forms=forms), temporary)
            if row.check:
                resolve(row.check)(temporary)
            try:
                runtimes = check_runtimes(temporary, runtime)
                break
            except RuntimeTargetError:
                if attempt == len(RUNTIME_FORMS) - 1:
                    raise
    return quant_mode, runtimes


def _embed_metadata(task: TaskExport, row: ExportFormat, out: Path, fields: dict) -> bool | str:
    """Embeds the sidecar's fields in the artifact (the row's ``metadata`` function), where the
    task allows; True, or why not."""
    if task.metadata_note:
        return task.metadata_note
    from edgeseg.converters.tflite_metadata import MediaPipeIncompatibleError

    try:
        blob = resolve(row.metadata)(out.read_bytes(), {
            **fields, "sidecar_version": SIDECAR_VERSION, "edgeseg_version": __version__})
    except MediaPipeIncompatibleError as error:
        # int8 input or a mask output: LiteRT runs it, MediaPipe's segmenter cannot.
        return f"not embedded: {error}"
    write_bytes_atomic(out, blob)
    return True


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
