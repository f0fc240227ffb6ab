"""Export of a trained mobile Mask R-CNN: the whole graph, image to padded detections.

TFLite fp32 / fp16 / dynamic / int8 and ONNX. The int8 export runs the networks (backbone,
FPN, RPN, box and mask heads) in int8 and the box geometry (proposal decoding, NMS, ROIAlign's
sampling, the detection layer) in float, with the ops whose int8 error is far above rounding
also in float; the report names them. (A full-int8 graph, geometry included, converts but loses
nearly all its mask AP: benchmarks/results/maskrcnn_cpu.)
Every export is validated like the semantic ones: on held-out images the artifact's detections
are matched with the Keras model's (same class, greatest box IoU), and the COCO mask AP of both
against the labels gives the drop.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgeseg.converters.calibration import normalise

INSTANCE_QUANT = ("none", "fp16", "dynamic", "int8")
INSTANCE_FORMATS = ("tflite", "onnx")
# Ops whose int8 output is further than this from the float op on the same input, in
# quantisation steps (RMSE / scale; rounding alone gives 0.29), run in float.
MAX_LAYER_ERROR = 1.0


def check_instance_options(fmt: str, quant: str, io: str, output: str) -> None:
    """A ValueError saying what an instance (Mask R-CNN) export accepts."""
    if fmt not in INSTANCE_FORMATS:
        raise ValueError(
            f"an instance model (Mask R-CNN) exports to --format {' / '.join(INSTANCE_FORMATS)}; "
            f"got {fmt!r}"
        )
    allowed = INSTANCE_QUANT if fmt == "tflite" else ("none",)
    if quant not in allowed:
        raise ValueError(
            f"an instance model --format {fmt} accepts --quant {' / '.join(allowed)}; "
            f"got {quant!r}"
        )
    if io != "float32":
        raise ValueError(
            f"an instance model takes and returns float tensors (a normalised image; boxes, "
            f"scores, masks): use --io float32, got --io {io}"
        )
    if output not in ("logits", "detections"):
        raise ValueError(
            f"an instance model outputs its padded detections; --output {output} does not apply"
        )


def calibration_images(instances, size: int, count: int, seed: int = 0,
                       normalisation: Mapping | None = None) -> np.ndarray:
    """Up to ``count`` training images as the model sees them: (n, 1, S, S, 3) float32, square
    padded and normalised (default ``edgeseg.artifacts.DEFAULT_NORMALISATION``, [0, 1])."""
    from edgeseg.instances import resize_square

    order = np.random.default_rng(seed).permutation(len(instances))[:count]
    squares = np.stack([resize_square(instances[int(i)]["image"], size)[0][None] for i in order])
    return normalise(squares, normalisation)


def geometry_layers(model) -> list[str]:
    """Names of the layers that compute on box coordinates rather than on features.

    The proposal decoding and its NMS, the two ROIAligns (sampling positions, pyramid level
    choice), the detection layer and the mask selection: int8 has 256 steps, a box coordinate
    in a 512-pixel image needs more, and a sampling position quantised to steps of several
    pixels samples the wrong features.
    """
    from edgeseg.models.maskrcnn.network import DetectionLayer, DetectionMasks, ProposalLayer
    from edgeseg.models.maskrcnn.ops import ROIAlign

    kinds = (ProposalLayer, ROIAlign, DetectionLayer, DetectionMasks)
    return [layer.name for layer in model.layers if isinstance(layer, kinds)]


def in_layers(layers: list[str]):
    """A test of TFLite tensor names: does the tensor belong to one of these (nested) layers?

    The converter names tensors by the path of layer calls, each layer name with a call suffix:
    ``mobile_mask_rcnn_1/roi_align_masks_1/GatherV2``; fused ops join such names with ';'.
    """
    pattern = re.compile(r"(^|/)(" + "|".join(map(re.escape, layers)) + r")(_\d+)?/")
    return lambda name: pattern.search(name) is not None


def convert_instance_tflite(model, quant: str, calibration,
                            max_layer_error: float = MAX_LAYER_ERROR,
                            per_tensor_dense: bool = False) -> tuple[bytes, str]:
    """(flatbuffer, quantisation mode): int8 kernels for the networks, float for the geometry.

    With ``quant`` int8, the backbone, FPN, RPN and heads run int8 kernels; the geometry
    (``geometry_layers``), the prediction layers (the logits and box deltas,
    ``PREDICTION_LAYERS``: cheap 1x1 convolutions and dense layers whose outputs rank, threshold
    and move boxes) and the ops whose int8 error exceeds ``max_layer_error`` quantisation steps
    on the calibration images run in float (``convert_selective_int8``).
    """
    from edgeseg.converters.tflite import convert_keras_to_tflite, convert_selective_int8
    from edgeseg.models.maskrcnn.network import PREDICTION_LAYERS

    if quant != "int8":
        blob = convert_keras_to_tflite(model, quant, per_tensor_dense=per_tensor_dense)
        return blob, quant + (" (dense weights per tensor)" if per_tensor_dense else "")
    geometry = geometry_layers(model)
    blob, _, noisy = convert_selective_int8(
        model, lambda: iter(calibration), keep_float=in_layers([*geometry, *PREDICTION_LAYERS]),
        max_layer_error=max_layer_error, float_outputs=True)
    mode = ("int8 backbone, FPN, RPN and heads; float geometry (" + ", ".join(geometry)
            + ") and prediction layers (logits, box deltas)")
    if noisy:
        mode += (f" and {len(noisy)} op(s) whose int8 error exceeds {max_layer_error:g} "
                 f"steps: {', '.join(name.split(';')[0] for name in noisy)}")
    return blob, mode


def write_instance_tflite(job, path) -> str:
    """The instance task's TFLite converter (in place of the formats table's): the whole graph,
    int8 where it holds (:func:`convert_instance_tflite`). Returns the quantisation mode."""
    blob, mode = convert_instance_tflite(job.model, job.quant, job.calibration, **job.forms)
    Path(path).write_bytes(blob)
    return mode


def match_detections(reference: dict, other: dict, iou_threshold: float = 0.5) -> dict:
    """Greedy matching of two detection sets in the same frame (same class, box IoU).

    Both are ``edgeseg.instances.frame_detections`` dicts. Returns the counts, the matched
    pairs' box and mask IoUs.
    """
    from edgeseg.models.maskrcnn.targets import box_iou_numpy

    def yxyx(boxes):
        return np.asarray(boxes, np.float64)[:, [1, 0, 3, 2]].reshape(-1, 4)

    n_ref, n_other = len(reference["classes"]), len(other["classes"])
    box_ious, mask_ious = [], []
    if n_ref and n_other:
        iou = box_iou_numpy(yxyx(reference["boxes"]), yxyx(other["boxes"]))
        iou[reference["classes"][:, None] != other["classes"][None, :]] = 0
        taken = np.zeros(n_other, bool)
        for i in np.argsort(-reference["scores"], kind="stable"):
            candidates = np.where(taken, -1, iou[i])
            j = int(candidates.argmax())
            if candidates[j] < iou_threshold:
                continue
            taken[j] = True
            box_ious.append(float(iou[i, j]))
            a, b = reference["masks"][i], other["masks"][j]
            union = np.logical_or(a, b).sum()
            mask_ious.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
    return {"reference": n_ref, "other": n_other, "matched": len(box_ious),
            "box_ious": box_ious, "mask_ious": mask_ious}


def validate_instance_export(keras_model, artifact, instances, size: int, num_images: int,
                             normalisation: Mapping | None = None) -> dict:
    """Detections of the artifact against the Keras model's, and the COCO AP of both.

    Both take the images normalised by ``normalisation`` (default
    ``edgeseg.artifacts.DEFAULT_NORMALISATION``).
    """
    from edgeseg.instances import evaluate_instances, frame_detections, resize_square
    from edgeseg.models.maskrcnn.evaluate import keras_predictor
    from edgeseg.runtime import load_predictor
    from edgeseg.runtime.instances import detect

    reference = keras_predictor(keras_model, normalisation)
    predictor = load_predictor(artifact)

    def exported(image: np.ndarray) -> dict:
        return detect(predictor, normalise(image[None], normalisation))

    count = min(num_images, len(instances))
    totals = {"reference": 0, "other": 0, "matched": 0, "box_ious": [], "mask_ious": []}
    timings = []
    for i in range(count):
        frame = instances[i]["image"]
        image, scale, window = resize_square(frame, size)
        ref = frame_detections(reference(image), size, scale, window, frame.shape[:2])
        started = time.perf_counter()
        raw = exported(image)
        timings.append(time.perf_counter() - started)
        got = frame_detections(raw, size, scale, window, frame.shape[:2])
        match = match_detections(ref, got)
        for key in ("reference", "other", "matched"):
            totals[key] += match[key]
        totals["box_ious"] += match["box_ious"]
        totals["mask_ious"] += match["mask_ious"]
    keras_ap = evaluate_instances(reference, instances, size, limit=count)
    export_ap = evaluate_instances(exported, instances, size, limit=count)
    matched = totals["matched"]
    return {
        "num_images": count,
        "keras_detections": totals["reference"],
        "export_detections": totals["other"],
        "matched": matched,
        "matched_fraction": matched / totals["reference"] if totals["reference"] else 1.0,
        "box_iou_mean": float(np.mean(totals["box_ious"])) if matched else None,
        "box_iou_min": float(np.min(totals["box_ious"])) if matched else None,
        "mask_iou_mean": float(np.mean(totals["mask_ious"])) if matched else None,
        "mask_iou_min": float(np.min(totals["mask_ious"])) if matched else None,
        "keras": keras_ap,
        "export": export_ap,
        "mask_ap_drop_points": 100 * (keras_ap["mask_AP"] - export_ap["mask_AP"]),
        "mask_ap50_drop_points": 100 * (keras_ap["mask_AP50"] - export_ap["mask_AP50"]),
        "export_ms_per_image": 1e3 * float(np.median(timings)) if timings else None,
    }
