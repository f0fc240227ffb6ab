"""Instance samples at the model's size, checked against the files they were read from."""

import numpy as np
import pytest

from edgeseg.data import DataError, open_instances, write_synthetic
from edgeseg.instances import frame_boxes, mask_boxes, resize_square
from edgeseg.models.maskrcnn.dataset import prepare_instances
from edgeseg.models.maskrcnn.ops import denormalize_boxes


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "data", n_train=4, n_val=2,
                           size=(96, 64), seed=3)


def test_mask_boxes_are_the_tight_exclusive_boxes():
    masks = np.zeros((2, 10, 12), np.uint8)
    masks[0, 2:5, 3:9] = 1
    masks[1, 9, 11] = 1
    np.testing.assert_array_equal(mask_boxes(masks), [[2, 3, 5, 9], [9, 11, 10, 12]])


def test_resize_square_keeps_the_aspect_and_pads_bottom_right():
    image = np.full((64, 96, 3), 200, np.uint8)
    out, scale, window = resize_square(image, 48)
    assert out.shape == (48, 48, 3) and scale == 0.5 and window == (32, 48)
    assert (out[:32] == 200).all() and (out[32:] == 0).all()


def test_prepared_instances_match_the_annotations(synthetic_root):
    instances = open_instances(f"synthetic:{synthetic_root}", "train")
    assert len(instances) == 4 and instances.classes == ["background", "disc", "ellipse", "box", "triangle"]
    for i in range(len(instances)):
        raw = instances[i]
        sample = prepare_instances(raw, 48, min_pixels=1)
        assert sample.image.shape == (48, 48, 3) and sample.window == (32, 48)
        assert len(sample.masks) == len(sample.class_ids) == len(sample.boxes)
        assert set(sample.class_ids) <= set(raw["class_ids"])
        # Each mask is its annotation's mask resized (nearest) into the window.
        for mask, class_id in zip(sample.masks, sample.class_ids, strict=True):
            candidates = [m for m, c in zip(raw["masks"], raw["class_ids"], strict=True)
                          if c == class_id]
            want = [resize_square(m, 48)[0] for m in candidates]
            assert any(np.array_equal(mask, w) for w in want)
            assert not mask[32:].any()
        # Boxes enclose their masks exactly.
        pixels = np.rint(denormalize_boxes(sample.boxes, 48)).astype(int)
        np.testing.assert_array_equal(pixels, mask_boxes(sample.masks))
        # And map back to the annotation's boxes in the frame within a resize step.
        if len(sample.boxes):
            back = frame_boxes(sample.boxes, sample.scale, 48, raw["image"].shape[:2])
            for box in back:
                assert np.abs(raw["boxes"] - box).max(axis=1).min() <= 2 / sample.scale


def test_formats_without_instances_are_refused_with_the_accepted_ones(tmp_path):
    with pytest.raises(DataError, match="accepted: coco:PATH"):
        open_instances(f"camvid:{tmp_path}")
