"""The check before training: instance data, what is remembered, and the progress bar."""

from __future__ import annotations

import io

import pytest

from edgeseg.data import DataError, open_instances, write_synthetic
from edgeseg.data.check import ProgressBar, check_instances
from edgeseg.data.coco import CocoInstances


@pytest.fixture
def synthetic_root(tmp_path, monkeypatch):
    pytest.importorskip("pycocotools")
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    return write_synthetic(tmp_path / "synth", n_train=2, n_val=4, size=(48, 32), seed=2)


def test_a_bad_instance_image_is_named_or_left_out(synthetic_root, monkeypatch):
    spec = f"synthetic:{synthetic_root}"
    names = [image["file_name"] for image in open_instances(spec, "val").index.images]
    (synthetic_root / "val" / names[1]).write_bytes(b"junk")

    with pytest.raises(DataError, match=rf"image val/{names[1]} is not a readable image"):
        check_instances(open_instances(spec, "val"), progress=False)

    decoded = []
    real = CocoInstances.__getitem__
    monkeypatch.setattr(CocoInstances, "__getitem__",
                        lambda self, i: decoded.append(i) or real(self, i))
    # Of the first two images one is bad: the third takes its place and is checked too.
    kept = check_instances(open_instances(spec, "val"), count=2, skip_bad=True, progress=False)
    assert [image["file_name"] for image in kept.index.images] == [names[0], *names[2:]]
    assert [file.rsplit("/", 1)[-1] for file, _ in kept.skipped] == [names[1]]
    assert decoded == [1, 1]  # 0 was remembered good by the first call; then the new second
    decoded.clear()
    check_instances(open_instances(spec, "val"), count=2, skip_bad=True, progress=False)
    assert decoded == [1]  # only the bad image is decoded again


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_is_drawn_on_a_terminal_and_summed_up_elsewhere():
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        bar = ProgressBar(4, "checking camvid train", stream=stream)
        for _ in range(4):
            bar.update()
        bar.close("4 samples, all good")
    assert "\rchecking camvid train  4/4 [========================] 100%" in terminal.getvalue()
    assert terminal.getvalue().endswith("checking camvid train: 4 samples, all good\033[K\n")
    assert log.getvalue() == "checking camvid train: 4 samples, all good\n"
    silent = io.StringIO()
    ProgressBar(4, "x", enabled=False, stream=silent).close("done")
    assert silent.getvalue() == ""
