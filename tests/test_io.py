"""edgeseg.io: files appear whole or not at all; JSON with NaN as null; the WxH parser."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest

from edgeseg.io import atomic_path, parse_size, read_json, write_bytes_atomic, write_json_atomic


def test_atomic_path_replaces_the_file_only_on_success(tmp_path):
    target = tmp_path / "sub" / "model.tflite"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("killed half-way")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.tflite"]  # no leftovers
    with atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary.suffix == ".tflite"
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_file_gets_the_umask_permissions_not_0600(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write_bytes_atomic(tmp_path / "a.bin", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_atomic_folder_replaces_an_existing_folder(tmp_path):
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "old.pb").write_bytes(b"old")
    with atomic_path(target, folder=True) as temporary:
        assert not temporary.exists()
        temporary.mkdir()
        (temporary / "new.pb").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["new.pb"]


def test_json_writes_nan_as_null_and_numpy_as_python(tmp_path):
    path = write_json_atomic(tmp_path / "r.json",
                             {"iou": math.nan, "n": np.int64(3), "v": np.array([0.5, np.inf]),
                              "size": (640, 360)})
    assert json.loads(path.read_text()) == {"iou": None, "n": 3, "v": [0.5, None],
                                            "size": [640, 360]}
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json")


@pytest.mark.parametrize("text, expected", [("640x360", (640, 360)), (" 96X64 ", (96, 64))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["640", "640x", "x360", "0x360", "640x-1", "axb", "1x2x3"])
def test_parse_size_refuses_with_the_text(text):
    with pytest.raises(ValueError, match=r"--size must be .*" + repr(text).replace("'", ".")):
        parse_size(text, "--size")
