"""Class pixel counts against a direct count of the masks written, and their cache."""

from __future__ import annotations

import json

import cv2
import numpy as np

from edgeseg.data import class_pixel_counts, read_camvid


def camvid_tree(root, masks):
    for folder in ("train", "trainannot"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        cv2.imwrite(str(root / "train" / f"{name}.png"), np.zeros((*mask.shape, 3), np.uint8))
        cv2.imwrite(str(root / "trainannot" / f"{name}.png"), mask)


def direct_count(masks, classes=11):
    counts = [0] * classes
    for mask in masks.values():
        for value in mask.ravel().tolist():
            if value < classes:  # 11 is CamVid's void
                counts[value] += 1
    return counts


def test_counts_match_the_masks(tmp_path):
    rng = np.random.default_rng(0)
    masks = {f"{i:02d}": rng.integers(0, 12, (7, 9), dtype=np.uint8) for i in range(3)}
    masks["00"][:] = 4  # class 4 only, so some classes have few pixels
    camvid_tree(tmp_path, masks)

    counts = class_pixel_counts(read_camvid(tmp_path))

    assert counts.dtype == np.int64 and counts.shape == (11,)
    assert counts.tolist() == direct_count(masks)


def test_counts_are_cached_per_file_list(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    masks = {"a": rng.integers(0, 12, (5, 6), dtype=np.uint8)}
    camvid_tree(tmp_path / "data", masks)
    cache = tmp_path / "cache" / "counts.json"
    first = class_pixel_counts(read_camvid(tmp_path / "data"), cache)
    assert first.tolist() == direct_count(masks)
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 1 and list(entries.values())[0]["counts"] == first.tolist()

    dataset = read_camvid(tmp_path / "data")

    def no_reading(*args, **kwargs):
        raise AssertionError("the cached counts should have been used")

    monkeypatch.setattr(dataset, "read_label", no_reading)
    assert class_pixel_counts(dataset, cache).tolist() == first.tolist()
    monkeypatch.undo()

    masks["b"] = np.full((5, 6), 2, np.uint8)  # another file: another key, a new count
    camvid_tree(tmp_path / "data", masks)
    second = class_pixel_counts(read_camvid(tmp_path / "data"), cache)
    assert second.tolist() == direct_count(masks) and second[2] == first[2] + 30
    assert len(json.loads(cache.read_text())["entries"]) == 2
