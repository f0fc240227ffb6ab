"""The live demo with an instance model (Mask R-CNN): masks, boxes and labels per instance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeseg.demos.segment_live import run_demo
from edgeseg.runtime import InstanceSegmenter, load_predictor
from edgeseg.runtime.draw import VIEWS
from tests.runtime.test_instances_runtime import FakeDetector, mask_rcnn_files, padded_outputs
from tests.video.fakes import (
    FakePredictor,
    ScriptedSink,
    decode_all,
    read_png,
    scene_frames,
    write_png,
    write_video,
)


@pytest.fixture(scope="module")
def mask_rcnn(tmp_path_factory):
    return mask_rcnn_files(tmp_path_factory)


@pytest.fixture(scope="module")
def frames_folder(tmp_path_factory):
    """Six frames of a moving scene as PNGs (lossless: the demo sees exactly these)."""
    folder = tmp_path_factory.mktemp("frames")
    for i, frame in enumerate(scene_frames(6, size=(96, 72))):
        write_png(folder / f"{i:03d}.png", frame)
    return folder


def fake_detector() -> FakeDetector:
    """Two instances in the 64 x 64 input: class 1 on the left, class 3 at the bottom right."""
    masks = np.zeros((2, 28, 28), np.float32)
    masks[0, 4:24, 4:24] = 1.0
    masks[1] = 1.0
    boxes = [[0.1, 0.05, 0.6, 0.45], [0.55, 0.5, 0.74, 0.95]]
    return FakeDetector(padded_outputs(boxes, [1, 3], [0.9, 0.7], masks))


@pytest.mark.slow
def test_every_frame_of_a_folder_gets_its_instances_drawn(mask_rcnn, frames_folder, tmp_path):
    out = tmp_path / "out"
    summary = run_demo(mask_rcnn["tflite"], str(frames_folder), output=f"{out}/", alpha=0.4,
                       show_hud=False, summary_path=tmp_path / "run.json", print_summary=False)
    assert (summary["frames"], summary["dropped"], summary["skipped"]) == (6, 0, 0)
    assert summary["ended_by"] == "end of stream" and summary["error"] is None
    assert summary["model_input"] == [64, 64] and summary["frame_size"] == [96, 72]
    assert json.loads((tmp_path / "run.json").read_text()) == json.loads(json.dumps(summary))
    written = sorted(out.iterdir())
    assert len(written) == 6
    # Reference: the runtime's own instance segmenter and overlay on the same frames.
    segmenter = InstanceSegmenter(load_predictor(mask_rcnn["tflite"]))
    counts = []
    for path, source in zip(written, sorted(frames_folder.iterdir()), strict=True):
        frame = read_png(source)
        found = segmenter(frame)
        counts.append(len(found["scores"]))
        np.testing.assert_array_equal(read_png(path), segmenter.overlay(frame, found, 0.4))
    assert max(counts) >= 1, "the test model should detect"
    assert summary["instances"] == pytest.approx(np.mean(counts))


@pytest.mark.slow
def test_a_video_is_processed_frame_by_frame_with_the_heads_up_line(mask_rcnn, tmp_path):
    clip = tmp_path / "clip.avi"
    if not write_video(clip, scene_frames(5, size=(80, 60)), fps=10):
        pytest.skip("no video codec in this OpenCV build")
    sink = ScriptedSink()
    summary = run_demo(str(mask_rcnn["tflite"]), str(clip), output=sink, view="side",
                       print_summary=False)
    assert summary["frames"] == len(decode_all(clip)) == len(sink.written) == 5
    assert all(f.shape == (60, 160, 3) for f in sink.written)
    assert summary["stages_ms"]["inference"]["median"] > 0 and "instances" in summary


def test_views_draw_what_the_instance_segmenter_computes():
    frame = scene_frames(1, size=(96, 72))[0]
    segmenter = InstanceSegmenter(fake_detector())
    found = segmenter(frame)
    assert len(found["scores"]) == 2 and found["masks"].any(axis=(1, 2)).all()
    expected = {
        "overlay": segmenter.overlay(frame, found, 0.3),
        "mask": segmenter.colourise(found, frame.shape[:2]),
        "side": np.hstack([frame, segmenter.colourise(found, frame.shape[:2])]),
    }
    assert not np.array_equal(expected["overlay"], frame)
    for view in VIEWS:
        sink = ScriptedSink()
        summary = run_demo(segmenter, [frame], output=sink, view=view, alpha=0.3,
                           show_hud=False, print_summary=False)
        np.testing.assert_array_equal(sink.written[0], expected[view])
        assert summary["instances"] == 2.0
        hud = ScriptedSink()
        run_demo(segmenter, [frame], output=hud, view=view, alpha=0.3, print_summary=False)
        assert not np.array_equal(hud.written[0], expected[view])  # legend and HUD on top


def test_a_predictor_with_instance_metadata_runs_as_instances_and_others_as_before():
    frames = scene_frames(3, size=(96, 72))
    summary = run_demo(fake_detector(), frames, print_summary=False)
    assert summary["frames"] == 3 and summary["instances"] == 2.0
    assert summary["model"] == "fake.tflite" and summary["model_input"] == [64, 64]
    semantic = run_demo(FakePredictor(), frames, print_summary=False)
    assert semantic["frames"] == 3 and "instances" not in semantic
