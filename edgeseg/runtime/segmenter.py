"""Frames in, label maps out: the pre- and post-processing around a predictor.

``Segmenter(load_predictor("enet_int8.tflite"))(frame)`` resizes (or letterboxes) the frame to
the model's input, normalises it as the model's metadata says, runs the model, takes the argmax
unless the model already outputs a mask, and resizes the label map back to the frame with
nearest-neighbour interpolation. Each stage's time is kept in ``last_timings`` (ms).

The stages around the model are kept cheap, as a live loop needs them on a busy CPU:
normalising is one 256-entry table lookup per pixel (:func:`input_lookup`); a LiteRT model with
an integer input is fed the quantised pixels directly, from the same kind of table, and its
integer logits go to the argmax as they are (dequantising, ``(q - zero_point) * scale`` with a
positive scale, keeps their order); the argmax over channels runs plane by plane
(:func:`channel_argmax`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.palette import colour_lookup, colourise, voc_palette
from edgeseg.runtime.predictor import Predictor

RESIZE_MODES = ("resize", "letterbox")
_LOOKUP_DTYPES = (np.uint8, np.int8, np.float32)  # what cv2.LUT and cv2.compare take here


def input_lookup(scale: float, offset: float, quantisation: tuple[float, int] | None = None,
                 dtype: type = np.float32) -> np.ndarray:
    """The model input for each uint8 pixel value: a (256,) table for ``cv2.LUT``.

    Float inputs: ``pixel * scale + offset`` in float32. Integer inputs (``dtype`` int8 or uint8,
    ``quantisation`` = (input scale, zero point)): that value quantised as LiteRT's
    ``set_input`` does it, ``clip(round(x / input_scale + zero_point))``. The table is computed
    with the same float32 operations, so looking it up gives the same values as computing them.
    """
    values = np.arange(256, dtype=np.uint8).astype(np.float32) * scale + offset
    if quantisation is None:
        return values.astype(dtype)
    input_scale, zero_point = quantisation
    info = np.iinfo(dtype)
    return np.clip(np.round(values / input_scale + zero_point), info.min, info.max).astype(dtype)


def channel_argmax(logits: np.ndarray) -> np.ndarray:
    """``logits.argmax(-1)`` of (H, W, C) scores as uint8 class ids (the first of equal maxima).

    NumPy's argmax over a short last axis costs a call per pixel; here each channel plane is
    compared with the best so far (OpenCV, vectorised): several times faster at camera sizes.
    Other dtypes, and more than 256 classes (beyond uint8), go to NumPy.
    """
    if logits.ndim != 3 or logits.dtype not in _LOOKUP_DTYPES or not 1 < logits.shape[2] <= 256:
        return np.asarray(logits).argmax(-1).astype(np.uint8)
    height, width, classes = logits.shape
    planes = logits.transpose(2, 0, 1)
    if not planes.flags.c_contiguous:  # scores as stored (H, W, C), not one plane per class
        # A transpose of the (pixels, classes) matrix: cv2.split is 3 times slower at 12.
        planes = cv2.transpose(np.ascontiguousarray(logits).reshape(height * width, classes))
        planes = planes.reshape(classes, height, width)
    best = planes[0].copy()
    labels = np.zeros(best.shape, np.uint8)
    step = np.empty(best.shape, np.uint8)
    for class_id in range(1, classes):
        cv2.compare(planes[class_id], best, cv2.CMP_GT, dst=step)  # strictly: the first max wins
        # 255 where higher -> class_id, which exceeds every id set so far: max sets it there.
        cv2.min(step, class_id, dst=step)
        cv2.max(labels, step, dst=labels)
        cv2.max(best, planes[class_id], dst=best)
    return labels


class _DirectInput:
    """A LiteRT interpreter fed and read without the float round trip of ``run_interpreter``.

    The batch comes quantised from :meth:`Segmenter.preprocess`; scores (1, h, w, C) come back
    laid out one plane per class, integer ones as they are (their argmax is that of the
    dequantised ones); any other output as ``read_output`` returns it.
    """

    def __init__(self, interpreter):
        self.interpreter = interpreter
        detail = interpreter.get_input_details()[0]
        self.input_index = detail["index"]
        self.input_shape = tuple(int(n) for n in detail["shape"])
        self.dtype = np.dtype(detail["dtype"])
        self.quantisation = tuple(detail["quantization"])
        self.output = interpreter.get_output_details()[0]

    @classmethod
    def of(cls, predictor: Predictor) -> _DirectInput | None:
        """The direct path for a LiteRT predictor with a batch-1 uint8, int8 or float32 input."""
        interpreter = getattr(predictor, "interpreter", None)
        if predictor.format != "tflite" or interpreter is None:
            return None
        direct = cls(interpreter)
        if direct.input_shape[0] != 1 or direct.dtype not in _LOOKUP_DTYPES:
            return None
        if direct.dtype != np.float32 and not direct.quantisation[0] > 0:
            return None
        return direct

    def takes(self, batch: np.ndarray) -> bool:
        return batch.dtype == self.dtype and batch.shape == self.input_shape

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, batch)
        self.interpreter.invoke()
        scale, zero_point = self.output["quantization"]
        shape = tuple(self.output["shape"])
        if (len(shape) == 4 and shape[0] == 1 and 1 < shape[3] <= 256
                and self.output["dtype"] in _LOOKUP_DTYPES and scale >= 0):
            return self._planar_scores(shape)
        output = self.interpreter.get_tensor(self.output["index"])  # a copy: safe across invokes
        if output.dtype in (np.int8, np.uint8) and scale:
            output = (output.astype(np.float32) - zero_point) * scale  # as read_output
        return output

    def _planar_scores(self, shape: tuple[int, ...]) -> np.ndarray:
        """The (1, h, w, C) scores, copied out of the interpreter as one plane per class (the
        copy has to be made anyway; made this way it is the transpose that
        :func:`channel_argmax` would otherwise make): the same values, other strides."""
        _, height, width, classes = shape
        view = self.interpreter.tensor(self.output["index"])()  # no copy; gone before invoke
        planes = cv2.transpose(view.reshape(height * width, classes))
        del view
        return planes.reshape(classes, height, width).transpose(1, 2, 0)[None]


@dataclass
class Geometry:
    """Where the frame went inside the model input (for undoing a letterbox)."""

    frame_size: tuple[int, int]  # (W, H)
    content: tuple[int, int, int, int]  # x, y, w, h of the frame inside the model input


class TimedStages:
    """``__call__`` runs ``preprocess`` -> ``infer`` -> ``postprocess`` on one frame and keeps
    each stage's time in ``last_timings`` (ms): what the demos and benchmarks report."""

    last_timings: dict[str, float]

    def __call__(self, frame: np.ndarray):
        t0 = time.perf_counter()
        batch, geometry = self.preprocess(frame)
        t1 = time.perf_counter()
        output = self.infer(batch)
        t2 = time.perf_counter()
        result = self.postprocess(output, geometry)
        t3 = time.perf_counter()
        self.last_timings = {
            "preprocess": 1e3 * (t1 - t0),
            "inference": 1e3 * (t2 - t1),
            "postprocess": 1e3 * (t3 - t2),
        }
        return result


class Segmenter(TimedStages):
    """Runs a predictor on RGB frames of any size; called on a frame, returns its label map.

    Args:
        predictor: from :func:`edgeseg.runtime.load_predictor`.
        resize: "resize" stretches the frame to the model input; "letterbox" keeps the aspect
            ratio and pads (the padding's predictions are discarded).
    """

    def __init__(self, predictor: Predictor, resize: str = "resize"):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r}")
        if predictor.input_size is None:
            raise ValueError(f"{predictor.path}: the model has no fixed input size")
        self.predictor = predictor
        self.resize = resize
        self.input_size = predictor.input_size
        norm = predictor.normalisation
        self.scale = float(norm["scale"])
        self.offset = float(norm["offset"])
        classes = predictor.classes
        palette = predictor.palette
        self.classes = list(classes) if classes else None
        if palette is not None:
            self.palette = np.asarray(palette, np.uint8).reshape(-1, 3)
        else:
            self.palette = voc_palette(len(classes) if classes else 256)
        self._lookup = colour_lookup(self.palette[:256])
        self._direct = _DirectInput.of(predictor)
        if self._direct is not None and self._direct.dtype != np.float32:
            self._input_lookup = input_lookup(self.scale, self.offset,
                                              self._direct.quantisation, self._direct.dtype)
        else:
            self._input_lookup = input_lookup(self.scale, self.offset)
        self.last_timings: dict[str, float] = {}

    # --- stages ---------------------------------------------------------------------------------

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """uint8 RGB (H, W, 3) -> the model's input (1, h, w, 3): normalised float32, or for a
        LiteRT model with an integer input, those values quantised to its type."""
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
            raise ValueError(f"a frame must be an (H, W, 3) image, got {getattr(frame, 'shape', None)}")
        width, height = self.input_size
        frame_h, frame_w = frame.shape[:2]
        if self.resize == "resize":
            resized = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
            content = (0, 0, width, height)
        else:
            ratio = min(width / frame_w, height / frame_h)
            w, h = max(1, round(frame_w * ratio)), max(1, round(frame_h * ratio))
            x, y = (width - w) // 2, (height - h) // 2
            resized = np.zeros((height, width, 3), frame.dtype)
            resized[y : y + h, x : x + w] = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
            content = (x, y, w, h)
        batch = cv2.LUT(resized, self._input_lookup)  # pixel * scale + offset [, quantised]
        return batch[None], Geometry((frame_w, frame_h), content)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for a batch from :meth:`preprocess`: scores (N, h, w, C), integer
        ones from a quantised LiteRT model as they are, or a label map (N, h, w)."""
        if self._direct is not None and self._direct.takes(batch):
            return self._direct(batch)
        return self.predictor(batch)

    def postprocess(self, output: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Model output -> uint8 label map at the frame's size."""
        labels = output[0] if output.ndim == 3 else channel_argmax(np.asarray(output[0]))
        x, y, w, h = geometry.content
        labels = labels[y : y + h, x : x + w].astype(np.uint8)
        return cv2.resize(labels, geometry.frame_size, interpolation=cv2.INTER_NEAREST)

    # --- drawing --------------------------------------------------------------------------------

    def colourise(self, labels: np.ndarray) -> np.ndarray:
        """uint8 RGB colours of a label map (labels beyond the palette are black)."""
        return colourise(labels, self._lookup)

    def overlay(self, frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The frame blended with the class colours (RGB)."""
        return cv2.addWeighted(frame, 1 - alpha, self.colourise(labels), alpha, 0)
