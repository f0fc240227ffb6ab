"""Bad data before training: ``edgeseg train`` as a user types it, on a folder dataset.

A corrupt image or an out-of-range label stops the run before the first step with one line that
names the file and the value (exit code 2, no traceback); ``--skip-bad`` leaves them out and
counts them; the check is remembered per file (size, modification time); an error raised inside
the tf.data pipeline during ``fit`` reaches the user as one line too.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.data import open_dataset

# Not pytest.importorskip: TensorFlow is left for the command to import, quietly, as for a user.
if importlib.util.find_spec("tensorflow") is None:
    pytest.skip('edgeseg train needs TensorFlow: pip install "edgeseg[train]"',
                allow_module_level=True)

TINY = ["--option", "filters=4", "--option", "depth=2", "--option", "dropout=0"]
CLASSES = ["background", "thing", "other"]
JUNK = b"\x89PNG\r\n\x1a\n truncated junk"  # a PNG signature and nothing OpenCV can decode


def folder_dataset(root: Path, count: int = 6, corrupt: int | None = None,
                   label: tuple[int, int] | None = None) -> Path:
    """``count`` 32x24 samples in the folder layout; sample ``corrupt`` has a PNG that is not
    one, and ``label = (index, value)`` puts ``value`` in that sample's mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES}))
    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        mask = rng.integers(0, len(CLASSES), (24, 32), dtype=np.uint8)
        if label is not None and label[0] == i:
            mask[5, 7] = label[1]
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{i:04d}.png"), mask)
        if i == corrupt:
            (root / "images" / f"{i:04d}.png").write_bytes(JUNK)
    return root


def train_command(root: Path, out: Path, *extra: str, model: str = "unet") -> list[str]:
    return ["train", "--model", model, *(TINY if model == "unet" else []),
            "--data", f"folder:{root}", "--size", "32x24", "--epochs", "1",
            "--steps-per-epoch", "1", "--batch", "2", "--optimizer", "adam",
            "--class-weighting", "none", "--weight-map", "off", "--elastic", "off",
            "--mixed-precision", "off", "--out", str(out), "--quiet", *extra]


def error_lines(err: str) -> list[str]:
    """What ``edgeseg train`` wrote to stderr: every line of it."""
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGESEG_CACHE", str(cache))
    return cache


@pytest.fixture
def count_decodes(monkeypatch) -> list[int]:
    """The indices the check decodes (it trusts what it remembers for the rest)."""
    import edgeseg.data.check as check

    decoded: list[int] = []
    real = check.decode_sample

    def counting(dataset, index):
        decoded.append(index)
        return real(dataset, index)

    monkeypatch.setattr(check, "decode_sample", counting)
    return decoded


def test_a_corrupt_png_stops_train_before_the_first_step_with_one_line(tmp_path, capfd):
    root = folder_dataset(tmp_path / "data", corrupt=3)
    out = tmp_path / "run"

    assert main(train_command(root, out)) == 2

    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert error_lines(err) == [
        "edgeseg train: error: image images/0003.png is not a readable image "
        f"({len(JUNK)} bytes that OpenCV cannot decode)"
    ]
    assert not out.exists()  # stopped before the run directory was started


def test_an_out_of_range_label_names_the_mask_and_the_value(tmp_path, capfd):
    root = folder_dataset(tmp_path / "data", label=(2, 37))

    assert main(train_command(root, tmp_path / "run")) == 2

    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert error_lines(err) == [
        "edgeseg train: error: mask masks/0002.png has label 37 but the dataset has 3 classes "
        "(0-2, void 255)"
    ]


def test_skip_bad_trains_without_the_bad_samples_and_counts_them(tmp_path, capfd):
    root = folder_dataset(tmp_path / "data", corrupt=3)
    out = tmp_path / "run"

    assert main(train_command(root, out, "--skip-bad")) == 0

    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    # The folder layout puts every image in every split: the sample is left out of both.
    assert "left out bad samples (--skip-bad): 1 train, 1 val" in captured.out
    record = json.loads((out / "run.json").read_text())
    assert record["num_train"] == record["num_val"] == 5
    assert [file for file, _ in record["skipped"]["train"]] == ["images/0003.png"]
    assert "not a readable image" in record["skipped"]["train"][0][1]
    assert len(record["epochs"]) == 1 and (out / "best.keras").is_file()


def test_the_check_is_remembered_per_file_size_and_mtime(tmp_path, capfd, count_decodes,
                                                         private_cache):
    root = folder_dataset(tmp_path / "data")
    spec = f"folder:{root}"

    open_dataset(spec, "train", check=True)
    assert sorted(count_decodes) == [0, 1, 2, 3, 4, 5]
    # The cache file: each sample's files with their size and modification time, as on disk.
    (cache_file,) = (private_cache / "checked_samples").glob("*.json")
    remembered = json.loads(cache_file.read_text())["samples"]
    image, mask = root / "images" / "0004.png", root / "masks" / "0004.png"
    stats = [[p.stat().st_size, p.stat().st_mtime_ns] for p in (image, mask)]
    assert remembered[f"{os.path.abspath(image)}\n{os.path.abspath(mask)}"] == stats

    # A training run (train and val splits) decodes nothing for the check.
    count_decodes.clear()
    assert main(train_command(root, tmp_path / "run")) == 0
    assert count_decodes == []
    # Nor does --resume.
    assert main(train_command(root, tmp_path / "run", "--resume", "--epochs", "2")) == 0
    assert count_decodes == []
    assert len(json.loads((tmp_path / "run" / "run.json").read_text())["epochs"]) == 2

    # A file whose modification time changed is decoded again, and only that one.
    info = mask.stat()
    os.utime(mask, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    open_dataset(spec, "val", check=True)
    assert count_decodes == [4]
    assert "Traceback" not in capfd.readouterr().err


def test_an_error_inside_the_input_pipeline_reaches_the_user_as_one_line(tmp_path, capfd):
    root = folder_dataset(tmp_path / "data")
    open_dataset(f"folder:{root}", "train", check=True)  # remembered as good
    # The file goes bad after the check, keeping its size and modification time: the check
    # trusts it, and the tf.data pipeline finds it during fit.
    image = root / "images" / "0003.png"
    info = image.stat()
    image.write_bytes(b"x" * info.st_size)
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))
    capfd.readouterr()

    assert main(train_command(root, tmp_path / "run")) == 2

    err = capfd.readouterr().err
    assert "Traceback" not in err and "PyFunc" not in err
    assert error_lines(err) == [
        f"edgeseg train: error: image images/0003.png is not a readable image ({info.st_size} "
        "bytes that OpenCV cannot decode)"
    ]


def test_a_bad_image_of_instance_data_stops_before_the_first_step(tmp_path, capfd):
    from edgeseg.data import write_synthetic

    root = write_synthetic(tmp_path / "synth", n_train=4, n_val=2, size=(64, 48), seed=1)
    bad = sorted((root / "train").glob("*.png"))[2]
    bad.write_bytes(b"not a png")

    assert main(["train", "--model", "mobile_mask_rcnn", "--data", f"synthetic:{root}",
                 "--size", "64x64", "--out", str(tmp_path / "run"), "--quiet"]) == 2

    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert error_lines(err) == [
        f"edgeseg train: error: image train/{bad.name} is not a readable image (9 bytes that "
        "OpenCV cannot decode)"
    ]
    assert not (tmp_path / "run").exists()


def test_python_errors_are_found_in_tensorflow_error_text():
    from edgeseg.train.pipeline import python_error_in

    text = (
        "Graph execution error:\n\nDetected at node PyFuncStateless defined at (most recent call "
        "last):\n<stack traces unavailable>\nError in user-defined function passed to "
        "MapDataset:1 transformation with iterator: Iterator::Root: DataError: image a.png is "
        "bad\nTraceback (most recent call last):\n\n  File \"x.py\", line 5, in read\n    raise "
        "DataError(\"image a.png is bad\")\n\nedgeseg.data.base.DataError: image a.png is bad\n"
        "\n\n\t [[{{node PyFuncStateless}}]]\n\t [[IteratorGetNext]] [Op:__inference_1]"
    )
    assert python_error_in(text) == ("DataError", "image a.png is bad")
    assert python_error_in("Graph execution error:\n\tOOM when allocating tensor") is None
