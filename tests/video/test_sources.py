"""Sources against the files, fakes and synthetic scenes they read."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from edgeseg.data.synthetic import SceneSequence
from edgeseg.video import (
    ImageFolderSource,
    LiveSource,
    SourceError,
    SyntheticSource,
    VideoFileSource,
    as_source,
    open_source,
    to_rgb_frame,
)
from edgeseg.video import sources as sources_module
from edgeseg.video.sources import parse_option_value, source_kind
from tests.video.fakes import (
    FakeCaptureFactory,
    decode_all,
    scene_frames,
    write_png,
    write_video,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/video* is Linux")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 10-frame MJPG .avi of a moving synthetic scene, with the frames written into it."""
    frames = scene_frames(10, size=(160, 120))
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    if not write_video(path, frames, fps=10):
        pytest.skip("this OpenCV build cannot write MJPG .avi files")
    return path, frames


# ----------------------------------------------------------------------------------- specs


def test_spec_kinds(tmp_path, video):
    write_png(tmp_path / "a.png", scene_frames(1)[0])
    assert source_kind("0") == ("camera", "0")
    assert source_kind("/dev/video3") == ("camera", "/dev/video3")
    assert source_kind("rtsp://cam.local/live?channel=1") == ("stream", "rtsp://cam.local/live?channel=1")
    assert source_kind("synthetic") == ("synthetic", "synthetic")
    assert source_kind(str(tmp_path)) == ("folder", str(tmp_path))
    assert source_kind(str(tmp_path / "*.png")) == ("folder", str(tmp_path / "*.png"))
    assert source_kind(str(tmp_path / "a.png")) == ("folder", str(tmp_path / "a.png"))
    assert source_kind(str(video[0])) == ("video", str(video[0]))
    assert source_kind(f"file://{video[0]}") == ("video", str(video[0]))
    with pytest.raises(ValueError, match="unknown URL scheme 'ftp'"):
        source_kind("ftp://host/clip.mp4")
    with pytest.raises(FileNotFoundError, match=r"(?s)nothere\.mp4.*camera by index.*synthetic"):
        open_source(str(tmp_path / "nothere.mp4"))


def test_option_values_and_errors():
    assert parse_option_value("640x360") == (640, 360)
    assert parse_option_value("30") == 30 and parse_option_value("0.5") == 0.5
    assert parse_option_value("false") is False and parse_option_value("none") is None
    with pytest.raises(ValueError, match=r"unknown option\(s\) bogus; accepted: size, fps"):
        open_source("synthetic?bogus=1")
    with pytest.raises(ValueError, match="key=value"):
        open_source("synthetic?live")


def test_options_from_query_and_keywords():
    with open_source("synthetic?size=40x30&frames=3&live=0") as source:
        frames = list(source)
    assert isinstance(source, SyntheticSource) and not source.live
    assert [f.shape for f in frames] == [(30, 40, 3)] * 3
    with open_source("synthetic?size=40x30&frames=3&live=0", frames=2) as source:
        assert len(list(source)) == 2  # keyword arguments win


# ----------------------------------------------------------------------------------- synthetic


def test_synthetic_file_mode_delivers_every_frame():
    reference = [SceneSequence(seed=3, size=(48, 32)).frame(t)[0] for t in range(6)]
    with open_source("synthetic", size=(48, 32), seed=3, frames=6, live=False) as source:
        frames = list(source)
    assert len(frames) == 6 and source.dropped == 0 and source.skipped == 0
    for got, expected in zip(frames, reference, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_synthetic_live_drops_stale_frames_for_a_slow_consumer():
    count, size = 40, (32, 24)
    sequence = SceneSequence(seed=0, size=size)
    reference = [sequence.frame(t)[0] for t in range(count)]
    with open_source(f"synthetic?size=32x24&fps=200&frames={count}") as source:
        assert isinstance(source, LiveSource) and source.live
        frames = []
        for frame in source:
            frames.append(frame)
            time.sleep(0.03)  # a consumer far slower than 200 fps
    assert source.dropped > 0
    assert len(frames) + source.dropped == count  # every frame made was delivered or dropped
    # What was delivered are scene frames, newest-first ones, in order, ending with the last.
    indices = [next(t for t, ref in enumerate(reference) if np.array_equal(f, ref)) for f in frames]
    assert indices == sorted(set(indices)) and indices[-1] == count - 1


def test_closing_a_live_source_stops_its_thread():
    source = open_source("synthetic?size=32x24&fps=100")
    next(source)
    source.close()
    assert not source._thread.is_alive()
    with pytest.raises(StopIteration):
        next(source)


# ----------------------------------------------------------------------------------- files


def test_video_file_every_frame_in_order(video):
    path, written = video
    with open_source(str(path)) as source:
        frames = list(source)
    assert isinstance(source, VideoFileSource) and not source.live
    assert len(frames) == len(written)
    assert source.stats() == {"frames": 10, "dropped": 0, "skipped": 0, "reopened": 0}
    assert source.fps == pytest.approx(10)
    for got, expected in zip(frames, written, strict=True):
        assert got.shape == expected.shape and got.dtype == np.uint8
        # JPEG is lossy; a channel swap or another frame would be far off.
        assert np.abs(got.astype(int) - expected).mean() < 6


def test_truncated_video_ends_at_its_last_decodable_frame(video, tmp_path):
    data = video[0].read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    decodable = len(decode_all(cut))
    assert 1 <= decodable < 10
    with open_source(str(cut)) as source:
        frames = list(source)
    assert len(frames) == decodable


def test_video_file_played_live_is_paced_and_may_drop(tmp_path):
    path = tmp_path / "fast.avi"
    if not write_video(path, scene_frames(12, size=(32, 24)), fps=100):
        pytest.skip("this OpenCV build cannot write MJPG .avi files")
    with open_source(f"{path}?live=1") as source:
        assert source.live and source.fps == pytest.approx(100)
        frames = list(source)
    assert len(frames) + source.dropped == 12 and source.reopened == 0


def test_image_folder_skips_corrupt_and_empty_files_in_natural_order(tmp_path):
    frames = scene_frames(8, size=(40, 30))
    for i, frame in enumerate(frames):
        if i not in (2, 5):
            write_png(tmp_path / f"frame{i + 5}.png", frame)  # frame5 ... frame12: 9 < 10
    (tmp_path / "frame7.png").write_bytes(b"\x89PNG garbage, not an image" * 10)
    (tmp_path / "frame10.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image, not a frame")
    with open_source(str(tmp_path)) as source:
        got = list(source)
    assert isinstance(source, ImageFolderSource)
    assert source.skipped == 2 and source.dropped == 0
    expected = [f for i, f in enumerate(frames) if i not in (2, 5)]
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_image_glob_and_empty_folder(tmp_path):
    frame = scene_frames(1, size=(20, 16))[0]
    write_png(tmp_path / "a.png", frame)
    write_png(tmp_path / "b.jpg", frame)
    with open_source(str(tmp_path / "*.png")) as source:
        assert len(list(source)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        open_source(str(empty))


# ----------------------------------------------------------------------------------- frames


def test_frames_are_validated_and_converted_to_rgb():
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    assert to_rgb_frame(bgr)[0, 0].tolist() == [0, 0, 200]
    assert to_rgb_frame(bgr, bgr=False)[0, 0].tolist() == [200, 0, 0]
    assert to_rgb_frame(np.full((4, 5), 7, np.uint8)).shape == (4, 5, 3)
    assert to_rgb_frame(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    for bad in (None, np.zeros((0, 5, 3), np.uint8), np.zeros(12, np.uint8),
                np.zeros((4, 5, 2), np.uint8), np.zeros((4, 5, 3), np.float32), "frame"):
        assert to_rgb_frame(bad) is None


def test_live_source_skips_bad_frames():
    good = np.full((8, 12, 3), 9, np.uint8)
    script = [good, None, good, np.zeros((0, 0, 3), np.uint8), np.zeros(5, np.uint8), good]
    factory = FakeCaptureFactory({"frames": script, "period": 0.0})
    source = open_source("0", capture_factory=factory, retries=0)
    got = []
    with pytest.raises(SourceError, match="could not be reopened"):
        for frame in source:  # the script's end is a failure with no retries left
            got.append(frame)
    source.close()
    assert source.skipped == 3
    assert len(got) + source.dropped == 3


# ----------------------------------------------------------------------------------- live failures


def test_live_source_that_dies_is_reopened():
    factory = FakeCaptureFactory({"fail_after": 5}, {})
    with open_source("0", capture_factory=factory, retry_delay=0.01) as source:
        generations = []
        for frame in source:
            generations.append(int(frame[0, 0, 2]))  # blue (RGB channel 2): the generation
            if generations[-1] == 2 or len(generations) > 500:
                break
    assert generations[0] == 1 and generations[-1] == 2
    assert source.reopened == 1
    assert factory.targets == [0, 0]  # the camera index, opened twice
    assert factory.captures[0].released


def test_live_source_whose_read_raises_is_reopened():
    factory = FakeCaptureFactory({"fail_after": 3, "fail_with_exception": True}, {})
    with open_source("rtsp://cam.local/live?channel=1", capture_factory=factory,
                     retry_delay=0.01) as source:
        for frame in source:
            if frame[0, 0, 2] == 2:
                break
    assert source.reopened == 1
    assert factory.targets[0] == "rtsp://cam.local/live?channel=1"  # the URL keeps its query


def test_reopening_backs_off_then_gives_up():
    factory = FakeCaptureFactory({"fail_after": 2}, {"opened": False})
    source = open_source("0", capture_factory=factory, retries=3, retry_delay=0.02)
    with pytest.raises(SourceError, match=r"camera at index 0.*could not be reopened \(3 attempts"):
        for _ in source:
            pass
    source.close()
    assert len(factory.targets) == 1 + 3 and source.reopened == 0
    gaps = np.diff(factory.times[1:])  # between reopen attempts: 0.04 s, then 0.08 s
    assert gaps[0] >= 0.04 * 0.9 and gaps[1] >= 0.08 * 0.9


# ----------------------------------------------------------------------------------- cameras


@linux_only
@pytest.mark.parametrize("spec", ["99", "/dev/video99"])
def test_missing_camera_says_what_was_tried(spec, monkeypatch):
    with pytest.raises(SourceError, match=r"no camera .*/dev/video99.*found video devices: "):
        open_source(spec)
    monkeypatch.setattr(sources_module, "list_video_devices", lambda: ["/dev/video0", "/dev/video2"])
    with pytest.raises(SourceError, match="found video devices: /dev/video0, /dev/video2"):
        open_source(spec)


def test_camera_that_does_not_open_says_so():
    factory = FakeCaptureFactory({"opened": False})
    with pytest.raises(SourceError, match=r"no camera at index 0 \(/dev/video0\): it could not be"):
        open_source(0, capture_factory=factory)
    assert factory.captures[0].released


def test_as_source_opens_a_spec_and_closes_what_it_is_given():
    with as_source("synthetic?size=32x16&frames=3&live=0") as source:
        assert [f.shape for f in source] == [(16, 32, 3)] * 3
    assert source.closed
    opened = open_source("synthetic?frames=1&live=0")
    with as_source(opened) as source:
        assert source is opened
    assert opened.closed
    frames = scene_frames(2)
    with as_source(frames) as source:  # a list has nothing to close
        assert source is frames
