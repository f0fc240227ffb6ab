"""Stand-ins for cameras, videos and models, shared by the video and demo tests."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data.synthetic import SceneSequence
from edgeseg.runtime.predictor import Predictor


class FakeCapture:
    """A ``cv2.VideoCapture``-like camera whose frames say where they came from.

    Frame ``i`` of the ``generation``-th capture is BGR with blue = generation and red = i % 256:
    channel 0 and 2 here, channel 2 and 0 once a source has converted it to RGB. After ``fail_after`` reads it fails:
    ``read`` returns (False, None), or raises where ``fail_with_exception``. ``frames`` may list
    what each read returns instead (None, empty arrays, ... to test skipping).
    """

    def __init__(self, generation: int = 1, fail_after: int | None = None,
                 fail_with_exception: bool = False, opened: bool = True, period: float = 0.002,
                 frames: list | None = None, size: tuple[int, int] = (12, 8)):
        self.generation = generation
        self.fail_after = fail_after
        self.fail_with_exception = fail_with_exception
        self.opened = opened
        self.period = period
        self.frames = frames
        self.size = size
        self.reads = 0
        self.released = False

    def isOpened(self) -> bool:  # OpenCV's name
        return self.opened and not self.released

    def read(self):
        time.sleep(self.period)
        if self.fail_after is not None and self.reads >= self.fail_after:
            if self.fail_with_exception:
                raise RuntimeError("camera unplugged")
            return False, None
        index = self.reads
        self.reads += 1
        if self.frames is not None:
            if index >= len(self.frames):
                return False, None
            return True, self.frames[index]
        width, height = self.size
        frame = np.zeros((height, width, 3), np.uint8)
        frame[..., 0] = self.generation
        frame[..., 2] = index % 256
        return True, frame

    def get(self, prop: int) -> float:
        return 0.0

    def release(self) -> None:
        self.released = True


class FakeCaptureFactory:
    """Opens the captures of a plan in turn (the last one again and again); records the calls."""

    def __init__(self, *plan: dict):
        self.plan = plan
        self.targets: list = []
        self.times: list[float] = []
        self.captures: list[FakeCapture] = []

    def __call__(self, target) -> FakeCapture:
        self.targets.append(target)
        self.times.append(time.perf_counter())
        options = self.plan[min(len(self.captures), len(self.plan) - 1)]
        capture = FakeCapture(generation=len(self.captures) + 1, **options)
        self.captures.append(capture)
        return capture


class FakePredictor(Predictor):
    """A semantic predictor (``edgeseg.runtime.Predictor``) whose labels follow the red channel.

    ``delay`` seconds of "inference"; ``intervals`` records each call's (start, end); the call
    numbered ``interrupt_at`` (1-based) raises KeyboardInterrupt, as Ctrl-C would.
    """

    format = "fake"
    CLASSES = ["sky", "ground", "vegetation", "disc", "ellipse", "box", "triangle"]

    def __init__(self, input_size: tuple[int, int] = (32, 24), delay: float = 0.0,
                 interrupt_at: int | None = None):
        super().__init__(Path("fake.tflite"), {
            "classes": self.CLASSES, "normalisation": {"scale": 1 / 255, "offset": 0.0}})
        self.input_size = input_size
        self.delay = delay
        self.interrupt_at = interrupt_at
        self.calls = 0
        self.intervals: list[tuple[float, float]] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        self.calls += 1
        if self.interrupt_at is not None and self.calls >= self.interrupt_at:
            raise KeyboardInterrupt
        if self.delay:
            time.sleep(self.delay)
        labels = np.clip(batch[..., 0] * len(self.CLASSES), 0, len(self.CLASSES) - 1)
        self.intervals.append((start, time.perf_counter()))
        return labels.astype(np.uint8)


class ScriptedSink:
    """A sink that keeps what it is given and answers ``poll_key`` from a script of keys."""

    spec = "scripted"

    def __init__(self, keys: list[str | None] = ()):
        self.keys = list(keys)
        self.written: list[np.ndarray] = []
        self.closed = False

    @property
    def frames(self) -> int:
        return len(self.written)

    def write(self, frame: np.ndarray) -> None:
        self.written.append(frame.copy())

    def poll_key(self) -> str | None:
        return self.keys.pop(0) if self.keys else None

    def close(self) -> None:
        self.closed = True


class TimedSource:
    """An in-order source whose frames take ``delay`` seconds each; records when and where."""

    spec = "timed"
    live = False

    def __init__(self, count: int, delay: float, size: tuple[int, int] = (64, 48)):
        self.count, self.delay = count, delay
        self.sequence = SceneSequence(seed=2, size=size)
        self.intervals: list[tuple[float, float]] = []
        self.threads: set[str] = set()
        self.dropped = self.skipped = self.reopened = 0
        self.closed = False

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if len(self.intervals) >= self.count:
            raise StopIteration
        start = time.perf_counter()
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        frame = self.sequence.frame(len(self.intervals))[0]
        self.intervals.append((start, time.perf_counter()))
        return frame

    def close(self) -> None:
        self.closed = True


def scene_frames(count: int, size: tuple[int, int] = (64, 48), seed: int = 1) -> list[np.ndarray]:
    """``count`` consecutive RGB frames of a synthetic scene."""
    sequence = SceneSequence(seed=seed, size=size)
    return [sequence.frame(t)[0] for t in range(count)]


def write_video(path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "MJPG") -> bool:
    """Writes RGB frames as a video; False where this OpenCV cannot encode ``fourcc``."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        return False
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return True


def decode_all(path) -> list[np.ndarray]:
    """Every frame OpenCV decodes from a video file, as RGB (the reference reader)."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while capture.isOpened():
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def write_png(path, frame_rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))


def read_png(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
