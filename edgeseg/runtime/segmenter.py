"""Frames in, label maps out: the pre- and post-processing around a predictor.

``Segmenter(load_predictor("enet_int8.tflite"))(frame)`` resizes (or letterboxes) the frame to
the model's input, normalises it as the model's metadata says, runs the model, takes the argmax
unless the model already outputs a mask, and resizes the label map back to the frame with
nearest-neighbour interpolation. Each stage's time is kept in ``last_timings`` (ms).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.palette import colour_lookup, colourise, voc_palette
from edgeseg.runtime.predictor import Predictor

RESIZE_MODES = ("resize", "letterbox")


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
        self.last_timings: dict[str, float] = {}

    # --- stages ---------------------------------------------------------------------------------

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """uint8 RGB (H, W, 3) -> normalised float32 (1, h, w, 3) at the model's input size."""
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
        batch = resized.astype(np.float32) * self.scale + self.offset
        return batch[None], Geometry((frame_w, frame_h), content)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.predictor(batch)

    def postprocess(self, output: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Model output -> uint8 label map at the frame's size."""
        labels = output[0] if output.ndim == 3 else np.asarray(output[0]).argmax(-1)
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
