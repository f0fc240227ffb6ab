"""The live loop's bookkeeping: the segmenter chosen, stage times, how a run ends, keys."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgeseg.runtime import InstanceSegmenter, LiveRun, Segmenter, frame_drawer, open_segmenter
from edgeseg.runtime.live import STAGES, format_summary
from edgeseg.video import PrefetchedFrame, SourceError
from tests.runtime.test_draw import detector
from tests.video.fakes import FakePredictor, ScriptedSink, read_png, scene_frames


def test_the_task_decides_the_segmenter():
    semantic = open_segmenter(FakePredictor(), resize="letterbox")
    assert type(semantic) is Segmenter and semantic.resize == "letterbox"
    instances = detector()
    assert open_segmenter(instances.predictor, resize="letterbox").__class__ is InstanceSegmenter
    assert open_segmenter(semantic) is semantic
    with pytest.raises(ValueError, match="resize must be one of resize, letterbox; got 'crop'"):
        open_segmenter(FakePredictor(), resize="crop")


def one_frame(run: LiveRun, frame: np.ndarray, result, inference_s: float = 0.0) -> None:
    """A frame through the stages, as a loop would."""
    run.begin_frame(PrefetchedFrame(frame, None, 1.0, 2.0, time.perf_counter()))
    for stage in ("inference", "postprocess", "draw", "output"):
        with run.stage(stage):
            time.sleep(inference_s if stage == "inference" else 0)
    run.end_frame(result)


def run_frames(run: LiveRun, count: int, inference_s: float = 0.0) -> None:
    """``count`` frames, or fewer once the run has finished."""
    frame = np.zeros((6, 8, 3), np.uint8)
    for _ in range(count):
        if run.finished:
            break
        one_frame(run, frame, frame[..., 0], inference_s)


def test_stage_times_and_the_summary_come_from_the_frames():
    run = LiveRun(record_frames=True)
    with run:
        run_frames(run, 5, inference_s=0.01)
    assert run.error is None
    summary = run.summary("m.tflite", "clip.mp4", None, Segmenter(FakePredictor()))
    per_frame = summary["per_frame_ms"]
    assert set(per_frame) == set(STAGES) and all(len(v) == 5 for v in per_frame.values())
    assert per_frame["capture"] == [1.0] * 5 and per_frame["preprocess"] == [2.0] * 5
    assert min(per_frame["inference"]) >= 10
    for stage, values in per_frame.items():
        assert summary["stages_ms"][stage]["median"] == pytest.approx(np.median(values))
        assert summary["stages_ms"][stage]["p90"] == pytest.approx(np.percentile(values, 90))
    assert summary["frames"] == 5 and summary["ended_by"] == "end of stream"
    assert summary["frame_size"] == [8, 6] and summary["model_input"] == [32, 24]
    assert (summary["model"], summary["source"], summary["output"]) == (
        "m.tflite", "clip.mp4", "none")
    assert summary["fps"] == pytest.approx(5 / summary["wall_seconds"])
    assert "instances" not in summary
    # A predictor that does not say what runs it: nothing said.
    assert (summary["runtime"], summary["xnnpack"], summary["graph"]) == (None, None, None)
    text = format_summary(summary, "run.json")
    assert text.startswith("5 frames in") and "summary written to run.json" in text
    assert "runtime" not in text
    assert len([line for line in text.splitlines() if line.split()[0] in STAGES]) == 7


@pytest.mark.parametrize(("max_frames", "done"), [(0, 0), (3, 3)])
def test_max_frames_finishes_the_run(max_frames, done):
    run = LiveRun(max_frames=max_frames)
    with run:
        run_frames(run, 10)
    assert run.frames == done and run.finished and run.ended_by == "max frames"


def test_errors_end_the_loop_and_the_unexpected_one_is_raised_after_the_summary():
    ends = {}
    for error in (KeyboardInterrupt(), SourceError("camera gone"), RuntimeError("boom")):
        run = LiveRun()
        with run:
            run_frames(run, 2)
            raise error
        summary = run.summary("m", "s", "o", Segmenter(FakePredictor()))
        assert summary["frames"] == 2
        ends[type(error).__name__] = (summary["ended_by"], summary["error"])
    assert ends == {"KeyboardInterrupt": ("interrupted (Ctrl-C)", None),
                    "SourceError": ("source failed", "camera gone"),
                    "RuntimeError": ("error", "RuntimeError: boom")}
    with pytest.raises(RuntimeError, match="boom"):
        run.raise_error()
    with pytest.raises(SystemExit), LiveRun():
        raise SystemExit(3)


def test_keys_cycle_the_view_save_snapshots_and_quit(tmp_path):
    frame = scene_frames(1, size=(64, 48))[0]
    segmenter = Segmenter(FakePredictor())
    drawer = frame_drawer(segmenter, show_hud=False)
    run = LiveRun(view="mask", snapshot_dir=tmp_path)
    sink = ScriptedSink(keys=["m", "s", None, "x", "q"])
    with run:
        while not run.finished:
            labels = segmenter(frame)
            canvas = drawer.draw(frame, labels, run.view)
            sink.write(canvas)
            one_frame(run, frame, labels)
            run.handle_keys(sink, drawer, canvas)
    assert run.error is None
    assert run.frames == 5 and run.ended_by == "quit key" and run.view == "side"
    assert [f.shape[1] for f in sink.written] == [64, 128, 128, 128, 128]
    (snapshot,) = run.snapshots
    np.testing.assert_array_equal(read_png(snapshot), sink.written[1])


def test_an_instance_run_counts_instances():
    segmenter = detector()
    frame = scene_frames(1, size=(96, 72))[0]
    run = LiveRun()
    with run:
        for _ in range(2):
            one_frame(run, frame, segmenter(frame))
    assert run.error is None
    assert run.summary("m", "s", "o", segmenter)["instances"] == 2.0


def test_frame_age_summary_against_numpy():
    from edgeseg.runtime.live import frame_age_summary

    ages = list(np.random.default_rng(3).gamma(2.0, 10.0, 95))
    got = frame_age_summary(ages)
    tail = 10  # ceil(0.1 * 95)
    for key, part in (("first_10pct", ages[:tail]), ("last_10pct", ages[-tail:])):
        assert got[key] == pytest.approx({"p50": np.median(part), "p90": np.percentile(part, 90),
                                          "max": np.max(part)})
    assert got["p90"] == pytest.approx(np.percentile(ages, 90))
    assert frame_age_summary([]) is None
