"""Dataset specs: parsing, and errors that say what is accepted."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgeseg.data import DATASET_FORMATS, DataError, open_dataset, parse_dataset_spec


def test_formats_table_names_every_format():
    assert list(DATASET_FORMATS) == ["camvid", "cityscapes", "voc", "folder", "coco", "synthetic"]
    for name, fmt in DATASET_FORMATS.items():
        assert fmt.example.startswith(name) and fmt.layout and callable(fmt.reader)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("camvid:/data/CamVid", ("camvid", "/data/CamVid", {})),
        ("  VOC:/data/VOC2012 ", ("voc", "/data/VOC2012", {})),
        ("coco:/c/annotations/instances_val2017.json",
         ("coco", "/c/annotations/instances_val2017.json", {})),
        ("synthetic", ("synthetic", None, {})),
        ("synthetic:/tmp/s", ("synthetic", "/tmp/s", {})),
        ("synthetic?n_train=50&size=96x64&seed=3",
         ("synthetic", None, {"n_train": 50, "size": (96, 64), "seed": 3})),
    ],
)  # fmt: skip
def test_parse(spec, expected):
    name, path, options = parse_dataset_spec(spec)
    assert (name, None if path is None else path.as_posix(), options) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty dataset spec"),
        ("camvidd:/data", "unknown dataset format 'camvidd'.*did you mean 'camvid'"),
        ("/data/CamVid", "names its format before the path, e.g. camvid:/data/CamVid"),
        ("imagenet:/data", "Accepted formats: camvid \\(e.g. camvid:/data/CamVid\\); cityscapes"),
        ("camvid", "needs a path after the colon, e.g. camvid:/data/CamVid"),
        ("cityscapes:", "leftImg8bit/<split>/<city>"),
        ("synthetic?n_trian=5", "unknown option 'n_trian=5'; accepted: n_train="),
        ("synthetic?size=big", "size: the value must be WIDTHxHEIGHT in pixels, such as 640x360"),
        ("synthetic?n_val=-1", "n_val: expected a whole number"),
        ("camvid?n_train=1", "only 'synthetic' without a path takes \\?options"),
    ],
)
def test_bad_specs_say_what_is_accepted(spec, message):
    with pytest.raises(DataError, match=message):
        open_dataset(spec)


def test_missing_root_names_it_and_the_expected_folders(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(
        DataError, match=f"CamVid root {missing} does not exist; expected:\n.*trainannot"
    ):
        open_dataset(f"camvid:{missing}")
    (tmp_path / "leftImg8bit").mkdir()
    with pytest.raises(DataError, match=f"Cityscapes root {tmp_path} has no gtFine/"):
        open_dataset(f"cityscapes:{tmp_path}")
    with pytest.raises(
        DataError, match="has no JPEGImages/, SegmentationClass/, ImageSets/Segmentation/"
    ):
        open_dataset(f"voc:{tmp_path}")
    with pytest.raises(DataError, match="has no images/, masks/"):
        open_dataset(f"folder:{tmp_path}")


def test_unknown_split_lists_the_splits_found(tmp_path):
    for folder in ("train", "trainannot", "val", "valannot"):
        (tmp_path / folder).mkdir()
    cv2.imwrite(str(tmp_path / "train" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "trainannot" / "a.png"), np.zeros((4, 4), np.uint8))
    assert len(open_dataset(f"camvid:{tmp_path}", "train")) == 1
    with pytest.raises(DataError, match="has no split 'test' \\(found: train, val\\)"):
        open_dataset(f"camvid:{tmp_path}", "test")
    with pytest.raises(DataError, match="holds no images"):
        open_dataset(f"camvid:{tmp_path}", "val")


def test_importing_edgeseg_data_imports_no_tensorflow():
    code = (
        "import sys, edgeseg.data\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf_keras', 'jax', 'torch', 'pycocotools')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
