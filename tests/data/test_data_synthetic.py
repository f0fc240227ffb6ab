"""Synthetic scenes: deterministic files, valid labels, COCO annotations that match the masks."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from edgeseg.data import (
    SYNTHETIC_CLASSES,
    SceneSequence,
    generate_scene,
    open_dataset,
    read_coco_instances,
    read_synthetic,
    write_synthetic,
)

SIZE = (96, 72)
THINGS = {"disc": 3, "ellipse": 4, "box": 5, "triangle": 6}


def file_hashes(root):
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    return write_synthetic(root, n_train=6, n_val=3, size=SIZE, seed=7)


def test_same_seed_same_bytes_other_seed_other_images(written, tmp_path):
    again = write_synthetic(tmp_path / "again", n_train=6, n_val=3, size=SIZE, seed=7, workers=1)
    other = write_synthetic(tmp_path / "other", n_train=6, n_val=3, size=SIZE, seed=8)

    hashes = file_hashes(written)
    assert hashes == file_hashes(again)  # also with another number of worker threads
    assert len([name for name in hashes if name.startswith("train/")]) == 6
    other_hashes = file_hashes(other)
    for name in hashes:
        if name.startswith(("train/", "val/")):
            assert hashes[name] != other_hashes[name], name


def test_layout_and_labels(written):
    assert sorted(p.name for p in written.iterdir()) == [
        "annotations", "classes.json", "synthetic.json", "train", "trainannot", "val",
        "valannot",
    ]  # fmt: skip
    assert not list(written.parent.glob(".*partial*"))  # the temporary folder was renamed
    dataset = read_synthetic(written, "train")
    assert dataset.classes == list(SYNTHETIC_CLASSES) and len(dataset) == 6
    seen, void = set(), []
    for image, label in dataset:
        assert image.shape == (SIZE[1], SIZE[0], 3) and label.shape == (SIZE[1], SIZE[0])
        values = set(np.unique(label).tolist())
        assert values <= set(range(len(SYNTHETIC_CLASSES))) | {255}
        seen |= values
        void.append(np.mean(label == 255))
    assert seen >= {0, 1, 255} and len(seen & set(THINGS.values())) >= 3
    assert np.mean(void) > 0 and max(void) < 0.1  # a little void, not much


def test_coco_annotations_match_the_masks(written):
    mask_api = pytest.importorskip("pycocotools.mask")
    content = json.loads((written / "annotations" / "instances_train.json").read_text())
    assert {c["id"]: c["name"] for c in content["categories"]} == {v: k for k, v in THINGS.items()}
    assert [a["id"] for a in content["annotations"]] == list(
        range(1, len(content["annotations"]) + 1)
    )
    for info in content["images"]:
        label = cv2.imread(str(written / "trainannot" / info["file_name"]), cv2.IMREAD_UNCHANGED)
        assert label.shape == (info["height"], info["width"])
        annotations = [a for a in content["annotations"] if a["image_id"] == info["id"]]
        assert annotations
        cover = np.zeros(label.shape, np.int32)
        for annotation in annotations:
            assert annotation["iscrowd"] == 0
            rles = mask_api.frPyObjects(annotation["segmentation"], *label.shape)
            drawn = mask_api.decode(mask_api.merge(rles)).astype(bool)
            category = annotation["category_id"]
            # Every pixel of the object has its class, or is void (its edge band).
            assert np.isin(label[drawn], (category, 255)).all()
            # The polygons give the object's pixels: compare with the label map's pixels of
            # that class inside the box, edge band included; same-class neighbours aside, 1.
            x, y, w, h = annotation["bbox"]
            ys, xs = np.nonzero(drawn)
            assert (xs.min(), ys.min(), xs.max() + 1 - x, ys.max() + 1 - y) == (x, y, w, h)
            assert annotation["area"] == drawn.sum()
            region = np.zeros_like(drawn)
            region[y : y + h, x : x + w] = np.isin(label[y : y + h, x : x + w], (category, 255))
            fill = np.zeros(label.shape, np.uint8)  # OpenCV as a second rasteriser
            for polygon in annotation["segmentation"]:
                points = np.round(np.array(polygon).reshape(-1, 2) - 0.5).astype(np.int32)
                cv2.fillPoly(fill, [points], 1)
            for mask in (drawn, fill.astype(bool)):
                iou = (mask & region).sum() / (mask | region).sum()
                assert iou > 0.9 or _same_class_neighbour(annotations, annotation), iou
            cover += drawn
        assert cover.max() == 1  # objects' visible parts do not overlap
        for category in THINGS.values():  # and every labelled object pixel is annotated
            assert (cover[label == category] == 1).all()


def _same_class_neighbour(annotations, annotation):
    x, y, w, h = annotation["bbox"]
    for other in annotations:
        if other is annotation or other["category_id"] != annotation["category_id"]:
            continue
        ox, oy, ow, oh = other["bbox"]
        if ox < x + w and x < ox + ow and oy < y + h and y < oy + oh:
            return True
    return False


def test_coco_reader_reads_the_synthetic_annotations(written):
    pytest.importorskip("pycocotools")
    instances = read_coco_instances(written, "val")
    dataset = read_synthetic(written, "val")
    assert instances.classes == ["background", "disc", "ellipse", "box", "triangle"]
    for index in range(len(dataset)):
        image, label = dataset[index]
        sample = instances[index]
        np.testing.assert_array_equal(sample["image"], image)
        for class_id, mask in zip(sample["class_ids"], sample["masks"], strict=True):
            synthetic_class = SYNTHETIC_CLASSES.index(instances.classes[class_id])
            assert np.isin(label[mask.astype(bool)], (synthetic_class, 255)).all()


def test_generate_scene_instances_are_exact():
    for seed in range(5):
        image, label, instances = generate_scene(np.random.default_rng(seed), (120, 90))
        assert image.shape == (90, 120, 3) and image.dtype == np.uint8
        taken = np.zeros(label.shape, bool)
        for instance in instances:
            mask = instance["mask"]
            assert not (taken & mask).any()
            taken |= mask
            assert np.isin(label[mask], (instance["class_id"], 255)).all()
            ys, xs = np.nonzero(mask)
            assert instance["box"] == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert instance["area"] == mask.sum()
        for class_id in THINGS.values():
            assert taken[label == class_id].all()


def test_generate_scene_is_a_function_of_the_generator_state():
    first = generate_scene(np.random.default_rng(3), SIZE)
    second = generate_scene(np.random.default_rng(3), SIZE)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], generate_scene(np.random.default_rng(4), SIZE)[0])


def test_scene_sequence_moves_smoothly():
    sequence = SceneSequence(seed=2, size=(160, 120), objects=5)
    frames = [sequence.frame(t) for t in range(0, 40)]
    again = SceneSequence(seed=2, size=(160, 120), objects=5).frame(17)
    np.testing.assert_array_equal(again[0], frames[17][0])
    np.testing.assert_array_equal(again[1], frames[17][1])

    def things(label):
        return np.isin(label, list(THINGS.values()))

    steps = [
        np.mean(things(a[1]) != things(b[1])) for a, b in zip(frames, frames[1:], strict=False)
    ]
    drift = np.mean(things(frames[0][1]) != things(frames[-1][1]))
    assert max(steps) < 0.05  # a frame differs a little from the one before...
    assert drift > 2 * np.mean(steps)  # ...and the differences add up: objects move


def test_synthetic_spec_generates_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path))
    dataset = open_dataset("synthetic?n_train=3&n_val=2&size=64x48&seed=5", "val")
    assert len(dataset) == 2 and dataset[0][0].shape == (48, 64, 3)
    (root,) = tmp_path.iterdir()
    assert root.name.startswith("synthetic-")
    stamp = (root / "train" / "00000.png").stat().st_mtime_ns
    again = open_dataset("synthetic?n_train=3&n_val=2&size=64x48&seed=5", "train")
    assert len(again) == 3 and again.root == root
    assert (root / "train" / "00000.png").stat().st_mtime_ns == stamp  # not written again
    assert len(list(tmp_path.iterdir())) == 1

    from_path = open_dataset(f"synthetic:{root}", "train")
    np.testing.assert_array_equal(from_path[2][1], again[2][1])


def test_write_synthetic_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not an empty folder"):
        write_synthetic(tmp_path, n_train=1, n_val=1, size=SIZE)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
