"""Sinks against what is read back from the files they write."""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np
import pytest

from edgeseg.video import (
    DisplaySink,
    ImageFolderSink,
    NullSink,
    SinkError,
    VideoFileSink,
    as_sink,
    display_unavailable_reason,
    open_sink,
)
from edgeseg.video import sinks as sinks_module
from tests.video.fakes import ScriptedSink, decode_all, read_png, scene_frames

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the $DISPLAY check is for Linux"
)


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_sink_writes_every_frame_atomically(tmp_path, suffix):
    frames = scene_frames(7, size=(64, 48))
    path = tmp_path / f"out{suffix}"
    sink = open_sink(f"{path}?fps=12")
    assert isinstance(sink, VideoFileSink)
    for frame in frames:
        sink.write(frame)
    assert not path.exists()  # still under its temporary name
    assert len(list(tmp_path.iterdir())) == 1
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    back = decode_all(path)
    assert len(back) == 7 and sink.frames == 7
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) == pytest.approx(12)
    for got, expected in zip(back, frames, strict=True):
        assert got.shape == (48, 64, 3)
        assert np.abs(got.astype(int) - expected).mean() < 10  # lossy, but the same frame


def test_video_sink_keeps_the_first_size_and_writes_nothing_without_frames(tmp_path):
    frames = scene_frames(2, size=(64, 48))
    with open_sink(str(tmp_path / "sizes.avi")) as sink:
        sink.write(frames[0])
        sink.write(frames[1][:, :32])
    assert sink.resized == 1
    back = decode_all(tmp_path / "sizes.avi")
    assert [f.shape for f in back] == [(48, 64, 3)] * 2
    assert back[1][:, :16].max() < 40  # the narrow frame is letterboxed between black bars
    with open_sink(str(tmp_path / "empty.avi")):
        pass
    assert not (tmp_path / "empty.avi").exists()


def test_image_folder_sink_writes_numbered_lossless_images(tmp_path):
    frames = scene_frames(5, size=(40, 30))
    folder = tmp_path / "frames"
    with open_sink(f"{folder}/") as sink:
        for frame in frames:
            sink.write(frame)
    assert isinstance(sink, ImageFolderSink)
    names = sorted(os.listdir(folder))
    assert names == [f"{i:06d}.png" for i in range(5)]
    for name, frame in zip(names, frames, strict=True):
        np.testing.assert_array_equal(read_png(folder / name), frame)


def test_image_folder_sink_jpg_and_pattern(tmp_path):
    frame = scene_frames(1, size=(40, 30))[0]
    with open_sink(str(tmp_path / "jpgs"), ext="jpg", start=3) as sink:
        sink.write(frame)
    assert os.listdir(tmp_path / "jpgs") == ["000003.jpg"]
    with open_sink(str(tmp_path / "shots" / "shot_%03d.jpg")) as sink:
        sink.write(frame)
        sink.write(frame)
    assert sorted(os.listdir(tmp_path / "shots")) == ["shot_000.jpg", "shot_001.jpg"]
    assert np.abs(read_png(tmp_path / "shots" / "shot_001.jpg").astype(int) - frame).mean() < 10


def test_sink_spec_errors(tmp_path):
    with pytest.raises(ValueError, match=r"one frame; write frames to a folder"):
        open_sink(str(tmp_path / "snap.png"))
    with pytest.raises(ValueError, match=r"unknown output '\.xyz'"):
        open_sink(str(tmp_path / "out.xyz"))
    with pytest.raises(ValueError, match=r"unknown option\(s\) speed; accepted: fps, fourcc"):
        open_sink(str(tmp_path / "out.avi"), speed=2)
    with open_sink("none") as sink, pytest.raises(ValueError, match=r"uint8 RGB .* float32"):
        sink.write(np.zeros((4, 4, 3), np.float32))


def test_null_sink_counts_frames():
    for spec in ("none", "null", None):
        with open_sink(spec) as sink:
            sink.write(np.zeros((4, 4, 3), np.uint8))
        assert isinstance(sink, NullSink) and sink.frames == 1 and sink.poll_key() is None


# ----------------------------------------------------------------------------------- display


@linux_only
def test_display_without_a_display_falls_back_with_one_message(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sinks_module, "_opencv_gui", lambda: "QT5")
    with open_sink("display") as sink:
        for _ in range(3):
            sink.write(np.zeros((8, 8, 3), np.uint8))
        assert sink.poll_key() is None
    assert isinstance(sink, DisplaySink) and not sink.available and sink.frames == 3
    err = capsys.readouterr().err
    assert err.count("no window") == 1 and "$DISPLAY" in err


def test_display_falls_back_when_imshow_raises(monkeypatch, capsys):
    def imshow(*args):
        raise cv2.error("The function is not implemented. Rebuild the library with GTK+")

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(sinks_module, "_opencv_gui", lambda: "GTK3")
    monkeypatch.setattr(cv2, "imshow", imshow)
    with open_sink("display?probe=0") as sink:
        assert sink.available
        sink.write(np.zeros((8, 8, 3), np.uint8))
        sink.write(np.zeros((8, 8, 3), np.uint8))
        assert sink.poll_key() is None
    assert not sink.available and "cv2.imshow failed" in sink.reason
    assert capsys.readouterr().err.count("no window") == 1


def test_display_reports_a_headless_opencv(monkeypatch):
    monkeypatch.setattr(sinks_module, "_opencv_gui", lambda: "NONE")
    assert "without GUI support" in display_unavailable_reason()


@linux_only
def test_display_probe_survives_an_unreachable_display(monkeypatch):
    if sinks_module._opencv_gui() == "NONE":
        pytest.skip("this OpenCV has no GUI to probe")
    monkeypatch.setenv("DISPLAY", ":87")  # no X server there
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    reason = display_unavailable_reason(probe=True)
    # OpenCV's Qt backend would abort this process here; the probe's child takes the hit.
    assert reason is not None and "DISPLAY=:87" in reason


def test_as_sink_opens_a_spec_and_closes_what_it_is_given(tmp_path):
    frame = scene_frames(1)[0]
    with as_sink(None) as sink:
        sink.write(frame)
    assert sink.closed and sink.frames == 1
    scripted = ScriptedSink()
    with as_sink(scripted) as sink:
        assert sink is scripted
    assert scripted.closed
    with as_sink(tmp_path / "out") as sink:
        sink.write(frame)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["000000.png"]
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "000000.png"), frame)


def test_a_video_that_cannot_be_encoded_leaves_no_file(tmp_path, monkeypatch):
    class NoEncoder:  # what cv2.VideoWriter is without the codec
        fourcc = staticmethod(cv2.VideoWriter.fourcc)

        def __init__(self, *args):
            pass

        def isOpened(self) -> bool:
            return False

    monkeypatch.setattr(sinks_module.cv2, "VideoWriter", NoEncoder)
    sink = open_sink(str(tmp_path / "out.mp4"))
    with pytest.raises(SinkError, match="no 'mp4v' encoder for .mp4"):
        sink.write(scene_frames(1)[0])
    sink.close()
    assert list(tmp_path.iterdir()) == []
