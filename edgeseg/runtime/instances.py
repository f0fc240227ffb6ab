"""Frames in, instances out: the runtime around a mobile Mask R-CNN (.tflite, .onnx or .keras).

``InstanceSegmenter(load_predictor("mask_rcnn.tflite"))(frame)`` scales the frame so that its
longer side is the model's square input and zero-pads it (``edgeseg.instances.resize_square``),
runs the model, maps the padded detections back to the frame (``frame_detections``) and keeps
those scoring at least ``min_score``. Each stage's time is kept in ``last_timings`` (ms), as
:class:`edgeseg.runtime.Segmenter` does.

The model has one input, ``image`` (1, S, S, 3), and five outputs (``DETECTION_KEYS``):
``boxes`` (1, D, 4) normalised (y1, x1, y2, x2), ``classes`` (1, D) int, ``scores`` (1, D),
``masks`` (1, D, 28, 28) probabilities and ``count`` (1,) int. A .tflite file's output names
are those of the converter's graph, so outputs are told apart by shape and type, which the five
do unambiguously. Nothing here imports TensorFlow: the .tflite path needs NumPy, OpenCV and
LiteRT only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.instances import (
    DETECTION_KEYS,
    PASTE_MODES,
    detection_roles,
    frame_detections,
    resize_square,
)
from edgeseg.runtime.predictor import Predictor
from edgeseg.runtime.segmenter import TimedStages
from edgeseg.runtime_tflite import read_output, set_input

_DTYPES = {"boxes": np.float32, "classes": np.int32, "scores": np.float32, "masks": np.float32,
           "count": np.int32}
# Class colours where the metadata has no palette: matplotlib's "tab10", bright on most scenes.
INSTANCE_COLOURS = np.array(
    [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
     (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)],
    np.uint8,
)


# ----------------------------------------------------------------------------------- outputs


def _describe_specs(specs) -> str:
    return ", ".join(f"{tuple(shape)} {'float' if f else 'int'}" for shape, f in specs)


def _tflite_output_specs(interpreter) -> list[tuple[tuple, bool]]:
    specs = []
    for detail in interpreter.get_output_details():
        dtype = np.dtype(detail["dtype"])
        quantised = dtype in (np.int8, np.uint8) and bool(detail["quantization"][0])
        specs.append((tuple(int(v) for v in detail["shape"]), dtype.kind == "f" or quantised))
    return specs


def _onnx_output_roles(session) -> list[str] | None:
    """By name when the outputs are called boxes, classes, ...; otherwise by shape and type."""
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    if sorted(names) == sorted(DETECTION_KEYS):
        return names
    return detection_roles([(o.shape, "float" in o.type) for o in outputs])


def _keras_is_detector(model) -> bool:
    output = getattr(model, "output", None)
    return isinstance(output, dict) and set(DETECTION_KEYS) <= set(output)


def is_instance_model(predictor_or_metadata: Predictor | dict | None) -> bool:
    """Whether a predictor (or a model's metadata) is an instance model with the five outputs.

    A predictor from :func:`load_predictor` knows its task (``edgeseg.artifacts``: from the
    model's outputs). Otherwise the model itself decides: a LiteRT interpreter's outputs by
    shape and type, an onnxruntime session's by name or by shape and type, a Keras model's by
    its output dict; a predictor with a ``detect`` method counts too. Metadata counts when it
    says ``"task": "instance"``; a model's name never does.
    """
    if predictor_or_metadata is None:
        return False
    if isinstance(predictor_or_metadata, dict):
        return predictor_or_metadata.get("task") == "instance"
    predictor = predictor_or_metadata
    artifact = getattr(predictor, "artifact", None)
    if artifact is not None:
        return artifact.task == "instance"
    if callable(getattr(predictor, "detect", None)):
        return True
    if getattr(predictor, "interpreter", None) is not None:
        return detection_roles(_tflite_output_specs(predictor.interpreter)) is not None
    if getattr(predictor, "session", None) is not None:
        return _onnx_output_roles(predictor.session) is not None
    if getattr(predictor, "model", None) is not None:
        return _keras_is_detector(predictor.model)
    return False


def _typed(outputs: dict) -> dict[str, np.ndarray]:
    return {key: np.asarray(outputs[key]).astype(_DTYPES[key], copy=False) for key in DETECTION_KEYS}


def _detect_tflite(interpreter, image: np.ndarray) -> dict[str, np.ndarray]:
    """All the interpreter's outputs for one image, dequantised, by role."""
    specs = _tflite_output_specs(interpreter)
    roles = detection_roles(specs)
    if roles is None:
        raise ValueError(
            "the .tflite model's outputs are not the five Mask R-CNN outputs (boxes (1, D, 4) "
            "float, classes (1, D) int, scores (1, D) float, masks (1, D, h, w) float, count "
            f"(1,) int); it has {_describe_specs(specs)}"
        )
    set_input(interpreter, image)
    interpreter.invoke()
    return {role: read_output(interpreter, detail)
            for role, detail in zip(roles, interpreter.get_output_details(), strict=True)}


def _detect_onnx(session, input_name: str, image: np.ndarray) -> dict[str, np.ndarray]:
    roles = _onnx_output_roles(session)
    arrays = session.run(None, {input_name: image})
    if roles is None:  # symbolic dimensions: the arrays themselves have the shapes
        roles = detection_roles([(a.shape, a.dtype.kind == "f") for a in arrays])
    if roles is None:
        specs = [(a.shape, a.dtype.kind == "f") for a in arrays]
        raise ValueError(
            "the .onnx model's outputs are not the five Mask R-CNN outputs (boxes, classes, "
            f"scores, masks, count); it has {_describe_specs(specs)}"
        )
    return dict(zip(roles, arrays, strict=True))


def _detect_keras(predictor, image: np.ndarray) -> dict[str, np.ndarray]:
    from keras import ops

    # KerasPredictor's compiled forward pass: one graph call rather than per-layer eager calls.
    forward = getattr(predictor, "_forward", None) or predictor.model
    outputs = forward(image)
    if not isinstance(outputs, dict):
        raise ValueError(
            f"{predictor.path}: the Keras model returns {type(outputs).__name__}, not the dict "
            "of Mask R-CNN outputs (boxes, classes, scores, masks, count)"
        )
    # Under a mixed dtype policy (precision bf16 / fp16) float outputs such as the masks come
    # out in 16 bits, and NumPy has no bfloat16 arithmetic: cast to the roles' own types here.
    return {key: np.asarray(ops.convert_to_numpy(outputs[key])).astype(_DTYPES[key], copy=False)
            for key in DETECTION_KEYS}


def detect(predictor: Predictor, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The five detection outputs of a predictor's Mask R-CNN, as NumPy arrays.

    Args:
        predictor: a .tflite, .onnx or .keras predictor from ``load_predictor``, or any object
            with a ``detect(batch)`` method returning the dict.
        batch: float32 (N, S, S, 3), normalised as the model expects; the model runs once per
            image (its batch size is 1) and the results are stacked along the first axis.

    Returns:
        ``{"boxes": (N, D, 4) float32, "classes": (N, D) int32, "scores": (N, D) float32,
        "masks": (N, D, h, w) float32, "count": (N,) int32}``.
    """
    batch = np.asarray(batch, np.float32)
    if batch.ndim != 4:
        raise ValueError(f"detect needs a (N, H, W, 3) batch, got shape {batch.shape}")
    if callable(getattr(predictor, "detect", None)):
        return _typed(predictor.detect(batch))
    if getattr(predictor, "interpreter", None) is not None:
        def run_one(x):
            return _detect_tflite(predictor.interpreter, x)
    elif getattr(predictor, "session", None) is not None:
        def run_one(x):
            return _detect_onnx(predictor.session, predictor.input.name, x)
    elif getattr(predictor, "model", None) is not None:
        def run_one(x):
            return _detect_keras(predictor, x)
    else:
        raise TypeError(
            f"cannot run detections on {type(predictor).__name__}: expected a predictor from "
            "load_predictor (.tflite, .onnx, .keras) or an object with a detect method"
        )
    results = [run_one(x[None]) for x in batch]
    return {key: np.concatenate([_typed(r)[key] for r in results]) for key in DETECTION_KEYS}


# ----------------------------------------------------------------------------------- segmenter


@dataclass
class SquareGeometry:
    """Where the frame went inside the square model input (``resize_square``)."""

    frame_size: tuple[int, int]  # (H, W)
    scale: float  # model pixels per frame pixel
    window: tuple[int, int]  # (h, w) of the frame inside the model input, from the top left


class InstanceSegmenter(TimedStages):
    """Runs a Mask R-CNN predictor on RGB frames of any size; called on a frame, returns its
    instances in the frame (boxes, classes, scores, masks).

    Args:
        predictor: from :func:`edgeseg.runtime.load_predictor`, with a square input (S, S).
        mask_mode: how the 28 x 28 masks are pasted into their boxes, "bilinear" (as Mask R-CNN)
            or "nearest" (cheaper).
        threshold: the mask probability from which a pixel belongs to the instance.
        min_score: the lowest score of an instance kept.
    """

    def __init__(self, predictor: Predictor, mask_mode: str = "bilinear", threshold: float = 0.5,
                 min_score: float = 0.5):
        if mask_mode not in PASTE_MODES:
            raise ValueError(f"mask_mode must be one of {', '.join(PASTE_MODES)}; got {mask_mode!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be between 0 and 1, got {min_score}")
        size = predictor.input_size
        if size is None or size[0] != size[1]:
            raise ValueError(
                f"{predictor.path}: a Mask R-CNN needs a fixed square input (S, S), got {size}"
            )
        self.predictor = predictor
        self.mask_mode = mask_mode
        self.threshold = float(threshold)
        self.min_score = float(min_score)
        self.input_size = tuple(size)
        norm = predictor.normalisation
        self.scale = float(norm["scale"])
        self.offset = float(norm["offset"])
        classes = predictor.classes
        self._classes = list(classes) if classes else None
        palette = predictor.palette
        self._palette = None if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)
        self.palette = np.stack([self.colour(i) for i in range(len(classes) if classes else 256)])
        self.last_timings: dict[str, float] = {}

    @property
    def classes(self) -> list[str] | None:
        """Class names, index 0 the background (from the model's metadata)."""
        return self._classes

    def colour(self, class_id: int) -> np.ndarray:
        """A class's RGB colour: the metadata's palette, else a fixed table (background black)."""
        if self._palette is not None and 0 <= class_id < len(self._palette):
            return self._palette[class_id]
        if class_id <= 0:
            return np.zeros(3, np.uint8)
        return INSTANCE_COLOURS[(class_id - 1) % len(INSTANCE_COLOURS)]

    def name(self, class_id: int) -> str:
        if self._classes and 0 <= class_id < len(self._classes):
            return str(self._classes[class_id])
        return f"class {class_id}"

    # --- stages ---------------------------------------------------------------------------------

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, SquareGeometry]:
        """uint8 RGB (H, W, 3) -> normalised float32 (1, S, S, 3), scaled and padded."""
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
            raise ValueError(f"a frame must be an (H, W, 3) image, got {getattr(frame, 'shape', None)}")
        padded, scale, window = resize_square(frame, self.input_size[0])
        batch = padded.astype(np.float32) * self.scale + self.offset
        return batch[None], SquareGeometry(frame.shape[:2], scale, window)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return detect(self.predictor, batch)

    def postprocess(self, outputs: dict, geometry: SquareGeometry) -> dict[str, np.ndarray]:
        """Model outputs -> the frame's instances scoring at least ``min_score``.

        Returns:
            ``{"boxes": (n, 4) float32 (x0, y0, x1, y1) frame pixels, x1 / y1 exclusive,
            "classes": (n,) int32, "scores": (n,) float32, "masks": (n, H, W) bool}``.
        """
        first = {key: np.asarray(outputs[key])[:1] for key in DETECTION_KEYS}
        found = frame_detections(first, self.input_size[0], geometry.scale, geometry.window,
                                 geometry.frame_size, mode=self.mask_mode,
                                 threshold=self.threshold)
        keep = found["scores"] >= self.min_score
        return {key: found[key][keep] for key in ("boxes", "classes", "scores", "masks")}

    # --- drawing --------------------------------------------------------------------------------

    def _order(self, detections: dict) -> np.ndarray:
        """Lowest score first, so that the best instance is drawn on top."""
        return np.argsort(np.asarray(detections["scores"]), kind="stable")

    def colourise(self, detections: dict, frame_size: tuple[int, int]) -> np.ndarray:
        """The instance masks in their class colours on black, uint8 RGB (H, W, 3)."""
        image = np.zeros((*frame_size, 3), np.uint8)
        for i in self._order(detections):
            image[detections["masks"][i]] = self.colour(int(detections["classes"][i]))
        return image

    def overlay(self, frame: np.ndarray, detections: dict, alpha: float = 0.5) -> np.ndarray:
        """The frame with each instance's mask blended in its class colour, its box and label.

        The label ("class score") is written inside the top of the box, so nothing outside the
        masks and boxes changes.
        """
        canvas = frame.copy()
        order = self._order(detections)
        for i in order:
            mask = detections["masks"][i]
            colour = self.colour(int(detections["classes"][i])).astype(np.float32)
            blended = canvas[mask].astype(np.float32) * (1 - alpha) + colour * alpha
            canvas[mask] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
        height, width = frame.shape[:2]
        font = cv2.FONT_HERSHEY_SIMPLEX
        scale = float(np.clip(height / 960, 0.3, 0.8))
        (_, text_h), _ = cv2.getTextSize("Ag", font, scale, 1)
        for i in order:
            x0, y0, x1, y1 = (float(v) for v in detections["boxes"][i])
            left, top = int(np.clip(np.floor(x0), 0, width)), int(np.clip(np.floor(y0), 0, height))
            right = int(np.clip(np.ceil(x1), 0, width))
            bottom = int(np.clip(np.ceil(y1), 0, height))
            if right <= left or bottom <= top:
                continue
            class_id = int(detections["classes"][i])
            colour = tuple(int(c) for c in self.colour(class_id))
            # Drawing on the box's own view clips the outline and the label to the box.
            box = canvas[top:bottom, left:right]
            cv2.rectangle(box, (0, 0), (right - left - 1, bottom - top - 1), colour, 1)
            label = f"{self.name(class_id)} {float(detections['scores'][i]):.2f}"
            origin = (3, 2 + text_h)
            cv2.putText(box, label, origin, font, scale, (0, 0, 0), 2, cv2.LINE_AA)
            cv2.putText(box, label, origin, font, scale, (255, 255, 255), 1, cv2.LINE_AA)
        return canvas
