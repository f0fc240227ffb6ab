"""Bad files: each error names the file and says what was wrong; skip_bad drops and counts them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.data import DataError, open_dataset, read_camvid


def camvid_tree(root, bad: set[str] = frozenset()):
    """A CamVid tree of five 6x5 samples: 'good' and the bad cases named in ``bad``."""
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    names = ["0000_good", *sorted(bad)]
    for name in names:
        image = np.full((5, 6, 3), 100, np.uint8)
        mask = np.zeros((5, 6), np.uint8)
        if name == "1_unreadable":
            (root / "train" / f"{name}.png").write_bytes(b"this is not an image")
        else:
            cv2.imwrite(str(root / "train" / f"{name}.png"), image)
        if name == "2_no_mask":
            continue
        if name == "3_size":
            mask = np.zeros((5, 7), np.uint8)
        if name == "4_label":
            mask[2, 3] = 37
        cv2.imwrite(str(root / "trainannot" / f"{name}.png"), mask)
    return names


ALL_BAD = {"1_unreadable", "2_no_mask", "3_size", "4_label"}


def test_unreadable_image_names_the_file(tmp_path):
    camvid_tree(tmp_path, {"1_unreadable"})
    dataset = read_camvid(tmp_path)
    with pytest.raises(DataError, match=r"image train/1_unreadable\.png is not a readable image"):
        dataset[1]


def test_missing_mask_names_the_mask_and_its_image(tmp_path):
    camvid_tree(tmp_path, {"2_no_mask"})
    with pytest.raises(
        DataError,
        match=r"mask trainannot/2_no_mask\.png for image train/2_no_mask\.png does not exist",
    ):
        open_dataset(f"camvid:{tmp_path}")
    with pytest.raises(DataError, match=r"mask trainannot/2_no_mask\.png does not exist"):
        read_camvid(tmp_path)[1]


def test_size_mismatch_gives_both_sizes(tmp_path):
    camvid_tree(tmp_path, {"3_size"})
    with pytest.raises(DataError) as error:
        read_camvid(tmp_path)[1]
    assert str(error.value) == (
        "mask trainannot/3_size.png is 7x5 pixels but its image train/3_size.png is 6x5; "
        "a mask must have its image's size"
    )


def test_out_of_range_label_says_value_classes_and_void(tmp_path):
    camvid_tree(tmp_path, {"4_label"})
    with pytest.raises(DataError) as error:
        read_camvid(tmp_path)[1]
    assert str(error.value) == (
        "mask trainannot/4_label.png has label 37 but the dataset has 11 classes "
        "(0-10, void 11, 255)"
    )


def test_skip_bad_drops_and_counts_every_bad_sample(tmp_path):
    camvid_tree(tmp_path, ALL_BAD)

    dataset = open_dataset(f"camvid:{tmp_path}", skip_bad=True)

    assert [p.name for p, _ in dataset.samples] == ["0000_good.png"]
    assert len(dataset) == 1
    image, label = dataset[0]
    assert (image == 100).all() and (label == 0).all()
    reasons = dict(dataset.skipped)
    assert sorted(reasons) == [f"train/{name}.png" for name in sorted(ALL_BAD)]
    assert "not a readable image" in reasons["train/1_unreadable.png"]
    assert "does not exist" in reasons["train/2_no_mask.png"]
    assert "7x5 pixels" in reasons["train/3_size.png"]
    assert "label 37" in reasons["train/4_label.png"]


def test_validate_without_skip_raises_on_the_first_bad_sample(tmp_path):
    camvid_tree(tmp_path, ALL_BAD)
    dataset = read_camvid(tmp_path)
    with pytest.raises(DataError, match="1_unreadable"):
        dataset.validate()
    assert len(dataset) == 5 and dataset.skipped == []


def test_colour_mask_without_palette_is_refused(tmp_path):
    camvid_tree(tmp_path)
    colour = np.zeros((5, 6, 3), np.uint8)
    colour[:, :3] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "trainannot" / "0000_good.png"), colour)
    with pytest.raises(DataError, match=r"0000_good\.png is a colour image \(2 distinct colours\)"):
        read_camvid(tmp_path)[0]


def test_sixteen_bit_mask_with_large_values(tmp_path):
    camvid_tree(tmp_path)
    mask = np.zeros((5, 6), np.uint16)
    mask[0, 0] = 1000
    cv2.imwrite(str(tmp_path / "trainannot" / "0000_good.png"), mask)
    with pytest.raises(DataError, match="has label 1000 but the dataset has 11 classes"):
        read_camvid(tmp_path)[0]
