"""The pipelined demo loop on a real video file: every frame, in order, each with its own labels."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edgeseg.demos.segment_live import run_demo
from edgeseg.runtime import Segmenter
from tests.video.fakes import FakePredictor, decode_all, read_png

BITS = 6  # frame numbers up to 63
BLOCK = 16  # pixels per bit block: big enough to survive MJPG


def numbered_frame(index: int, rng: np.random.Generator) -> np.ndarray:
    """A 96x64 RGB frame whose top band says ``index`` in binary (white block = 1) above noise."""
    frame = rng.integers(40, 90, (64, BITS * BLOCK, 3), dtype=np.uint8)
    for bit in range(BITS):
        frame[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255 if index >> bit & 1 else 0
    return frame


def frame_number(frame: np.ndarray) -> int:
    """The number in a frame's top band, read at the centre of each block."""
    centre = BLOCK // 2
    return sum(
        1 << bit for bit in range(BITS) if frame[centre, bit * BLOCK + centre].mean() > 128
    )


@pytest.fixture
def numbered_video(tmp_path):
    """A 40-frame MJPG video whose frames carry their numbers."""
    rng = np.random.default_rng(7)
    frames = [numbered_frame(i, rng) for i in range(40)]
    path = tmp_path / "numbered.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (96, 64))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot encode MJPG video")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_every_frame_of_a_file_goes_through_the_pipeline_in_order_with_its_own_labels(
    numbered_video, tmp_path
):
    decoded = decode_all(numbered_video)  # the reference reader, independent of the demo
    assert [frame_number(f) for f in decoded] == list(range(40))  # the numbers survived MJPG
    out = tmp_path / "out"
    # A model slower than reading: the reader runs ahead and must wait, never drop.
    summary = run_demo(FakePredictor(input_size=(48, 32), delay=0.004), str(numbered_video),
                       output=f"{out}/", view="side", show_hud=False, print_summary=False)
    assert (summary["frames"], summary["dropped"], summary["skipped"]) == (40, 0, 0)
    assert summary["frames_written"] == 40 and summary["ended_by"] == "end of stream"
    written = sorted(out.iterdir())
    assert len(written) == 40
    reference = Segmenter(FakePredictor(input_size=(48, 32)))
    for path, frame in zip(written, decoded, strict=True):
        canvas = read_png(path)
        left, right = canvas[:, :96], canvas[:, 96:]
        np.testing.assert_array_equal(left, frame)  # the frame itself, in its place
        # ...beside the labels of that same frame, not of a neighbour in the pipeline.
        np.testing.assert_array_equal(right, reference.colourise(reference(frame)))
    assert [frame_number(read_png(p)[:, :96]) for p in written] == list(range(40))


def test_a_slow_sink_holds_the_pipeline_back_instead_of_dropping(numbered_video, tmp_path):
    class SlowSink:
        spec = "slow"

        def __init__(self):
            self.numbers: list[int] = []

        @property
        def frames(self) -> int:
            return len(self.numbers)

        def write(self, canvas):
            time.sleep(0.003)  # slower than the model: the workers must wait for it
            self.numbers.append(frame_number(canvas))

        def poll_key(self):
            return None

        def close(self):
            pass

    sink = SlowSink()
    summary = run_demo(FakePredictor(input_size=(48, 32)), str(numbered_video), output=sink,
                       view="side", show_hud=False, print_summary=False)
    assert summary["frames"] == 40 and summary["dropped"] == 0
    assert sink.numbers == list(range(40))
