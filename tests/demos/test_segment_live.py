"""The live demo loop, on files it writes, fake cameras and fake or real (tiny) models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeseg.demos.segment_live import main, run_demo
from edgeseg.runtime import Segmenter, load_predictor
from edgeseg.runtime.draw import VIEWS
from edgeseg.runtime.live import STAGES
from edgeseg.video import open_source
from tests.video.fakes import (
    FakeCaptureFactory,
    FakePredictor,
    ScriptedSink,
    TimedSource,
    decode_all,
    read_png,
    scene_frames,
    write_png,
    write_video,
)

REQUIRED_KEYS = {
    "frames", "dropped", "skipped", "reopened", "fps", "inference_fps", "stages_ms", "source",
    "model", "output", "wall_seconds",
}


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory):
    """A tiny U-Net as .tflite with its metadata sidecar (the only test code importing TF)."""
    pytest.importorskip("tensorflow")
    from edgeseg.converters.tflite import convert_keras_to_tflite
    from edgeseg.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE
    from edgeseg.models import build

    model = build("unet", 7, (48, 64, 3), filters=4, depth=2)
    path = tmp_path_factory.mktemp("model") / "model.tflite"
    path.write_bytes(convert_keras_to_tflite(model))
    metadata = {
        "model": "unet",
        "classes": list(SYNTHETIC_CLASSES),
        "palette": [list(c) for c in SYNTHETIC_PALETTE],
        "normalisation": {"scale": 1 / 255, "offset": 0.0},
    }
    path.with_name("model.tflite.json").write_text(json.dumps(metadata))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 10-frame video of a moving scene (MJPG .avi), or a PNG folder without that codec."""
    frames = scene_frames(10, size=(160, 120))
    folder = tmp_path_factory.mktemp("clip")
    if write_video(folder / "clip.avi", frames, fps=10):
        return folder / "clip.avi"
    for i, frame in enumerate(frames):
        write_png(folder / f"{i:03d}.png", frame)
    return folder


def _source_frames(clip) -> list[np.ndarray]:
    """The frames the demo sees, decoded by OpenCV directly."""
    if clip.is_dir():
        return [read_png(p) for p in sorted(clip.glob("*.png"))]
    return decode_all(clip)


# ----------------------------------------------------------------------------------- files


@pytest.mark.slow
def test_every_frame_of_a_video_is_segmented_into_a_video_and_a_folder(tflite_model, clip, tmp_path):
    out_video, out_folder = tmp_path / "out.avi", tmp_path / "frames"
    summary = run_demo(tflite_model, str(clip), output=str(out_video), view="mask",
                       summary_path=tmp_path / "run.json", print_summary=False)
    assert (summary["frames"], summary["dropped"], summary["skipped"]) == (10, 0, 0)
    assert summary["ended_by"] == "end of stream" and summary["error"] is None
    assert len(decode_all(out_video)) == 10

    summary = run_demo(tflite_model, str(clip), output=f"{out_folder}/", alpha=0.4,
                       show_hud=False, print_summary=False)
    assert summary["frames"] == 10 and summary["frames_written"] == 10
    written = sorted(out_folder.iterdir())
    assert len(written) == 10
    # Reference: the runtime's own segmenter and overlay on the same decoded frames.
    segmenter = Segmenter(load_predictor(tflite_model))
    for path, frame in zip(written, _source_frames(clip), strict=True):
        expected = segmenter.overlay(frame, segmenter(frame), 0.4)
        np.testing.assert_array_equal(read_png(path), expected)


def test_truncated_video_ends_cleanly(clip, tmp_path):
    if clip.is_dir():
        pytest.skip("no video codec in this OpenCV build")
    data = clip.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    decodable = len(decode_all(cut))
    assert 1 <= decodable < 10
    summary = run_demo(FakePredictor(), str(cut), output=str(tmp_path / "out"),
                       print_summary=False)
    assert summary["frames"] == decodable and summary["error"] is None
    assert len(os.listdir(tmp_path / "out")) == decodable


def test_corrupt_and_empty_frames_are_skipped(tmp_path):
    frames = scene_frames(8, size=(40, 30))
    folder = tmp_path / "in"
    folder.mkdir()
    for i, frame in enumerate(frames):
        write_png(folder / f"{i:02d}.png", frame)
    (folder / "02.png").write_bytes(os.urandom(300))
    (folder / "05.png").write_bytes(b"")
    summary = run_demo(FakePredictor(), str(folder), output=str(tmp_path / "out"),
                       print_summary=False)
    assert summary["skipped"] == 2 and summary["frames"] == 6 and summary["dropped"] == 0
    assert len(os.listdir(tmp_path / "out")) == 6


# ----------------------------------------------------------------------------------- live


def test_live_source_dying_mid_stream_is_reopened():
    factory = FakeCaptureFactory({"fail_after": 4, "size": (64, 48)}, {"size": (64, 48)})
    source = open_source("0", capture_factory=factory, retry_delay=0.01)
    summary = run_demo(FakePredictor(), source, max_frames=25, print_summary=False)
    assert summary["reopened"] >= 1 and summary["frames"] == 25
    assert summary["ended_by"] == "max frames" and summary["error"] is None
    assert source.closed and factory.captures[-1].released


def test_live_source_that_cannot_be_reopened_ends_with_the_error_in_the_summary(tmp_path):
    factory = FakeCaptureFactory({"fail_after": 3, "size": (64, 48)}, {"opened": False})
    source = open_source("0", capture_factory=factory, retries=2, retry_delay=0.01)
    summary = run_demo(FakePredictor(), source, summary_path=tmp_path / "s.json",
                       print_summary=False)
    assert 1 <= summary["frames"] <= 3 and summary["ended_by"] == "source failed"
    assert "could not be reopened" in summary["error"]
    assert json.loads((tmp_path / "s.json").read_text())["error"] == summary["error"]


def test_capture_and_preprocessing_overlap_inference():
    source = TimedSource(count=8, delay=0.02)
    predictor = FakePredictor(delay=0.02)
    summary = run_demo(predictor, source, print_summary=False)
    assert summary["frames"] == 8
    assert "MainThread" not in source.threads  # frames are captured by the pipeline's worker
    overlaps = sum(
        1
        for c0, c1 in source.intervals
        for i0, i1 in predictor.intervals
        if c0 < i1 and i0 < c1
    )
    assert overlaps >= 1


# ----------------------------------------------------------------------------------- summary


def test_summary_has_the_required_keys_and_stage_stats_from_the_frames(tmp_path):
    path = tmp_path / "summary.json"
    summary = run_demo(FakePredictor(), "synthetic?size=64x48&frames=12&live=0",
                       summary_path=path, record_frames=True, print_summary=False)
    assert set(summary) >= REQUIRED_KEYS
    assert json.loads(path.read_text()) == json.loads(json.dumps(summary))
    assert not [p for p in tmp_path.iterdir() if p.name != "summary.json"]  # no temp files
    assert summary["frames"] == 12 and summary["dropped"] == summary["skipped"] == 0
    per_frame = summary["per_frame_ms"]
    assert set(per_frame) == set(summary["stages_ms"]) == set(STAGES)
    for stage, values in per_frame.items():
        assert len(values) == 12
        stats = summary["stages_ms"][stage]
        assert stats["median"] == pytest.approx(np.median(values))
        assert stats["p90"] == pytest.approx(np.percentile(values, 90))
    parts = np.sum([per_frame[s] for s in STAGES if s != "total"], axis=0)
    assert np.all(np.asarray(per_frame["total"]) >= parts - 1e-6)  # total spans the stages
    assert summary["inference_fps"] == pytest.approx(1e3 / np.median(per_frame["inference"]))
    assert summary["fps"] == pytest.approx(12 / summary["wall_seconds"])
    assert summary["source"] == "synthetic?size=64x48&frames=12&live=0"
    assert summary["model"] == "fake.tflite" and summary["output"] == "none"


def test_ctrl_c_ends_cleanly_with_everything_closed(tmp_path, capsys):
    source = open_source("synthetic?size=64x48&frames=50&live=0")
    out = tmp_path / "out.avi"
    summary = run_demo(FakePredictor(interrupt_at=4), source, output=str(out),
                       summary_path=tmp_path / "s.json")
    assert summary["ended_by"] == "interrupted (Ctrl-C)" and summary["frames"] == 3
    assert source.closed
    assert len(decode_all(out)) == 3  # the sink was closed: the video is in place
    assert (tmp_path / "s.json").is_file()
    assert "3 frames in" in capsys.readouterr().out


def test_keys_change_view_pause_snapshot_and_quit(tmp_path):
    sink = ScriptedSink(keys=["m", None, "s", " ", "m", " ", "q"])
    summary = run_demo(FakePredictor(), "synthetic?size=64x48&frames=50&live=0", output=sink,
                       view="overlay", snapshot_dir=tmp_path, print_summary=False)
    assert summary["ended_by"] == "quit key" and summary["frames"] == 5
    # overlay, mask, mask, mask, (paused: m -> side, redrawn), side
    assert [f.shape[1] for f in sink.written] == [64, 64, 64, 64, 128, 128]
    assert summary["view"] == "side" and sink.closed
    (snapshot,) = summary["snapshots"]
    np.testing.assert_array_equal(read_png(snapshot), sink.written[2])


def test_views_draw_what_the_segmenter_computes():
    frame = scene_frames(1, size=(64, 48))[0]
    segmenter = Segmenter(FakePredictor())
    labels = segmenter(frame)
    expected = {
        "overlay": segmenter.overlay(frame, labels, 0.3),
        "mask": segmenter.colourise(labels),
        "side": np.hstack([frame, segmenter.colourise(labels)]),
    }
    for view in VIEWS:
        sink = ScriptedSink()
        run_demo(segmenter, [frame], output=sink, view=view, alpha=0.3, show_hud=False,
                 print_summary=False)
        np.testing.assert_array_equal(sink.written[0], expected[view])
        hud = ScriptedSink()
        run_demo(segmenter, [frame], output=hud, view=view, alpha=0.3, print_summary=False)
        assert not np.array_equal(hud.written[0], expected[view])  # legend drawn on top


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="view must be one of overlay, mask, side"):
        run_demo(FakePredictor(), "synthetic", view="split")
    with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
        run_demo(FakePredictor(), "synthetic", alpha=1.5)


# ----------------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_command_line(tflite_model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    summary = tmp_path / "run.json"
    argv = ["--model", str(tflite_model), "--source", "synthetic?size=64x48&frames=4&live=0",
            "--max-frames", "3", "--view", "side", "--summary", str(summary)]
    assert main(argv) == 0  # --output display, falling back without a display
    result = json.loads(summary.read_text())
    assert result["frames"] == 3 and result["model"] == str(tflite_model)
    assert result["output"] == "display" and result["frame_size"] == [64, 48]
    captured = capsys.readouterr()
    assert "no window" in captured.err and "3 frames in" in captured.out
    assert main(["--model", str(tmp_path / "missing.tflite"), "--source", "synthetic"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_imports_no_tensorflow():
    code = (
        "import sys; import edgeseg.video, edgeseg.demos.segment_live; "
        "print(','.join(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_edgeseg_demo_subcommand_runs_the_same_loop(tflite_model, tmp_path, capsys):
    from edgeseg.cli import main as edgeseg_main

    summary = tmp_path / "run.json"
    argv = ["demo", "--model", str(tflite_model), "--source",
            "synthetic?size=64x48&frames=5&live=0", "--output", str(tmp_path / "frames") + "/",
            "--summary", str(summary)]
    assert edgeseg_main(argv) == 0
    result = json.loads(summary.read_text())
    assert result["frames"] == 5 == len(list((tmp_path / "frames").iterdir()))
    assert edgeseg_main(["demo", "--model", str(tmp_path / "missing.onnx"),
                         "--source", "synthetic"]) == 2
    assert "missing.onnx" in capsys.readouterr().err
