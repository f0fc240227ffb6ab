"""COCO: instance annotations drawn as semantic maps and as per-image instances."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest

from edgeseg.data import DataError, open_dataset, read_coco, read_coco_instances

HEIGHT, WIDTH = 8, 10


def rectangle(x0, y0, x1, y1):
    """A polygon covering pixels x0..x1-1, y0..y1-1 in COCO's continuous coordinates."""
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


@pytest.fixture
def coco_root(tmp_path):
    crowd = np.zeros((HEIGHT, WIDTH), np.uint8)
    crowd[6:8, :] = 1
    content = {
        "images": [
            {"id": 42, "file_name": "000000000042.png", "height": HEIGHT, "width": WIDTH},
            {"id": 3, "file_name": "000000000003.png", "height": HEIGHT, "width": WIDTH},
        ],
        "categories": [  # not in id order, ids not contiguous
            {"id": 18, "name": "dog"},
            {"id": 1, "name": "person"},
            {"id": 3, "name": "car"},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 1, "iscrowd": 0, "area": 36,
             "bbox": [0, 0, 6, 6], "segmentation": [rectangle(0, 0, 6, 6)]},
            {"id": 2, "image_id": 42, "category_id": 18, "iscrowd": 0, "area": 16,
             "bbox": [4, 4, 4, 4], "segmentation": [rectangle(4, 4, 8, 8)]},
            {"id": 3, "image_id": 42, "category_id": 3, "iscrowd": 1, "area": 20,
             "bbox": [0, 6, 10, 2], "segmentation": uncompressed_rle(crowd)},
        ],
    }  # fmt: skip
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(content))
    (tmp_path / "val2017").mkdir()
    rng = np.random.default_rng(5)
    images = {}
    for info in content["images"]:
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "val2017" / info["file_name"]), image[:, :, ::-1])
        images[info["id"]] = image
    return tmp_path, images


def test_coco_semantic_map(coco_root):
    pytest.importorskip("pycocotools")
    root, images = coco_root

    dataset = read_coco(root, "val")

    # Background first, then the categories by id: person (1), car (3), dog (18).
    assert dataset.classes == ["background", "person", "car", "dog"]
    assert len(dataset) == 2
    empty_image, empty_label = dataset[0]  # image id 3: no annotations
    np.testing.assert_array_equal(empty_image, images[3])
    assert (empty_label == 0).all()

    image, label = dataset[1]
    np.testing.assert_array_equal(image, images[42])
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[6:8, :] = 255  # the crowd...
    expected[0:6, 0:6] = 1  # person
    expected[4:8, 4:8] = 3  # ...the dog, smaller, in front, and over the crowd
    np.testing.assert_array_equal(label, expected)


def test_coco_instances(coco_root):
    pytest.importorskip("pycocotools")
    root, images = coco_root

    instances = read_coco_instances(root / "annotations" / "instances_val2017.json")

    assert instances.classes == ["background", "person", "car", "dog"] and len(instances) == 2
    sample = instances[1]
    np.testing.assert_array_equal(sample["image"], images[42])
    assert sample["image_id"] == 42
    np.testing.assert_array_equal(sample["class_ids"], [1, 3])  # the crowd is left out
    np.testing.assert_array_equal(sample["boxes"], [[0, 0, 6, 6], [4, 4, 8, 8]])
    assert sample["masks"].shape == (2, HEIGHT, WIDTH)
    assert sample["masks"][0].sum() == 36 and sample["masks"][0][:6, :6].all()
    assert sample["masks"][1].sum() == 16 and sample["masks"][1][4:8, 4:8].all()
    assert instances[0]["masks"].shape == (0, HEIGHT, WIDTH)

    with_crowd = read_coco_instances(root, "val", include_crowd=True)[1]
    np.testing.assert_array_equal(with_crowd["iscrowd"], [False, False, True])
    assert with_crowd["masks"][2].sum() == 20 and with_crowd["masks"][2][6:8].all()


def test_coco_spec_with_json_path(coco_root):
    pytest.importorskip("pycocotools")
    root, _ = coco_root
    dataset = open_dataset(f"coco:{root / 'annotations' / 'instances_val2017.json'}", "train")
    assert dataset.split == "val" and len(dataset) == 2  # the split comes from the file name


def test_coco_size_mismatch_names_image_and_annotation(coco_root):
    pytest.importorskip("pycocotools")
    root, _ = coco_root
    cv2.imwrite(str(root / "val2017" / "000000000003.png"), np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(DataError, match=r"image id 3.*10x8 pixels but .*000000000003\.png is 5x5"):
        read_coco(root, "val")[0]


def test_coco_missing_files_say_what_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"no annotations/instances_train2017\.json"):
        read_coco(tmp_path, "train")


def test_coco_without_pycocotools_says_how_to_install(coco_root, monkeypatch):
    root, _ = coco_root
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # makes the import fail
    dataset = read_coco(root, "val")  # reading the json needs no pycocotools
    with pytest.raises(ImportError, match=r'pip install "edgeseg\[coco\]"'):
        dataset[1]
