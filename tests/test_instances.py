"""Instance post-processing and COCO evaluation against hand-worked cases and known scores."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeseg.instances import (
    coco_category_ids,
    coco_instance_eval,
    detections_to_coco,
    instances_to_panoptic,
    paste_masks,
    pixel_boxes,
)

pytest.importorskip("pycocotools", reason='COCO tests need pycocotools: pip install "edgeseg[coco]"')

# Pixel box rows 2-5, columns 2-5 of an 8 x 8 image: normalised, c / (8 - 1).
BOX = np.array([[2, 2, 5, 5]], np.float64) / 7
CORNER = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)


def test_paste_masks_nearest_and_bilinear_by_hand():
    nearest = paste_masks(CORNER, BOX, (8, 8), mode="nearest")
    expected = np.zeros((1, 8, 8), bool)
    expected[0, 2:4, 2:4] = True
    np.testing.assert_array_equal(nearest, expected)

    # Bilinear, half-pixel centres: output pixel i of 4 reads source (i + 0.5) / 2 - 0.5, so the
    # weight of source pixel 0 along each axis is 1, 0.75, 0.25, 0; the value is their product.
    weight = np.array([1, 0.75, 0.25, 0])
    values = np.outer(weight, weight)
    for threshold in (0.5, 0.7):
        bilinear = paste_masks(CORNER, BOX, (8, 8), mode="bilinear", threshold=threshold)
        expected = np.zeros((1, 8, 8), bool)
        expected[0, 2:6, 2:6] = values >= threshold
        np.testing.assert_array_equal(bilinear, expected)
    # At 0.7 the corner is an L, unlike nearest's square: the modes differ here.
    assert expected[0, 2:6, 2:6].sum() == 3


def test_paste_masks_per_class_and_clipped_to_the_image():
    per_class = np.zeros((2, 2, 2, 3), np.float32)
    per_class[0, :, :, 2] = 1.0
    per_class[1, 1, :, 1] = 1.0  # the bottom half of class 1
    boxes = np.concatenate([BOX, np.array([[-2, 6, 1, 9]]) / 7])  # rows -2..1, columns 6..9
    pasted = paste_masks(per_class, boxes, (8, 8), classes=[2, 1], mode="nearest")
    assert pasted.shape == (2, 8, 8) and pasted.dtype == bool
    assert pasted[0].sum() == 16 and pasted[0, 2:6, 2:6].all()
    expected = np.zeros((8, 8), bool)
    expected[0:2, 6:8] = True  # rows 0-1 of rows -2..1; columns 8-9 are outside the image
    np.testing.assert_array_equal(pasted[1], expected)
    with pytest.raises(ValueError, match="pass classes"):
        paste_masks(per_class, boxes, (8, 8))
    with pytest.raises(ValueError, match="mode must be one of"):
        paste_masks(CORNER, BOX, (8, 8), mode="cubic")


def test_detections_to_coco_round_trip():
    from pycocotools import mask as mask_api

    boxes = np.concatenate([BOX, np.zeros((2, 4))])  # padded network output: 1 valid row
    masks = np.concatenate([np.ones((1, 2, 2)), np.zeros((2, 2, 2))]).astype(np.float32)
    results = detections_to_coco(7, boxes, [2, 0, 0], [0.9, 0, 0], masks, count=1,
                                 image_size=(8, 8), category_ids=[5, 11])
    assert len(results) == 1
    (result,) = results
    assert result["image_id"] == 7 and result["category_id"] == 11
    assert result["score"] == pytest.approx(0.9)
    np.testing.assert_allclose(result["bbox"], [2, 2, 4, 4], atol=1e-9)
    decoded = mask_api.decode(result["segmentation"])
    np.testing.assert_array_equal(decoded, paste_masks(masks[:1], BOX, (8, 8))[0])
    json.dumps(results)  # JSON-ready
    with pytest.raises(ValueError, match="class 3 has no COCO category"):
        detections_to_coco(7, BOX, [3], [0.9], None, 1, (8, 8), [5, 11])
    mapped = detections_to_coco(7, BOX, [3], [0.9], None, None, (8, 8), {3: 42})
    assert mapped[0]["category_id"] == 42 and "segmentation" not in mapped[0]


# ------------------------------------------------------------------------------ COCO eval


@pytest.fixture(scope="module")
def synthetic_gt(tmp_path_factory):
    from edgeseg.data.synthetic import write_synthetic

    root = write_synthetic(tmp_path_factory.mktemp("coco") / "synthetic", n_train=0, n_val=3,
                           size=(96, 72), seed=3, workers=1)
    path = root / "annotations" / "instances_val.json"
    gt = json.loads(path.read_text())
    assert len(gt["annotations"]) >= 4
    return path, gt


def results_from_gt(gt, shift=0):
    """Detections that are the ground truth (moved ``shift`` pixels right), via detections_to_coco."""
    from edgeseg.data.coco import rasterise_segmentation

    categories = coco_category_ids(gt)
    images = {image["id"]: image for image in gt["images"]}
    results = []
    for annotation in gt["annotations"]:
        image = images[annotation["image_id"]]
        height, width = image["height"], image["width"]
        mask = rasterise_segmentation(annotation["segmentation"], height, width).astype(bool)
        mask = np.roll(mask, shift, axis=1)
        x, y, w, h = annotation["bbox"]
        box = np.array([[y, x + shift, y + h, x + w + shift]], np.float64)
        box = (box - [0, 0, 1, 1]) / [height - 1, width - 1, height - 1, width - 1]
        class_id = categories.index(annotation["category_id"]) + 1
        results += detections_to_coco(image["id"], box, [class_id], [1.0], mask[None], 1,
                                      (height, width), categories)
    return results


def test_perfect_shifted_dropped_and_empty_detections(synthetic_gt):
    path, gt = synthetic_gt
    perfect = results_from_gt(gt)
    scores = coco_instance_eval(path, perfect)
    assert set(scores) == {f"{t}_{m}" for t in ("box", "mask") for m in ("AP", "AP50", "AP75")}
    for name, value in scores.items():
        assert value == pytest.approx(1.0), name
    assert coco_instance_eval(gt, perfect) == scores  # a dict works as well as a file

    shifted = coco_instance_eval(gt, results_from_gt(gt, shift=4))
    assert shifted["box_AP"] < 0.9 and shifted["mask_AP"] < 0.9
    dropped = coco_instance_eval(gt, perfect[::2])
    assert dropped["box_AP"] < 0.8 and dropped["mask_AP"] < 0.8
    empty = coco_instance_eval(gt, [])
    assert all(value == 0.0 for value in empty.values())
    with pytest.raises(ValueError, match="needs a segmentation"):
        coco_instance_eval(gt, [{k: v for k, v in r.items() if k != "segmentation"}
                                for r in perfect])
    assert set(coco_instance_eval(gt, [], iou_types=("box",))) == {"box_AP", "box_AP50",
                                                                   "box_AP75"}


def rectangle_rle(x: int, y: int, w: int, h: int, size=(100, 100)) -> dict:
    """A filled rectangle as COCO's compressed RLE (JSON-ready)."""
    from pycocotools import mask as mask_api

    canvas = np.zeros(size, np.uint8)
    canvas[y:y + h, x:x + w] = 1
    rle = mask_api.encode(np.asfortranarray(canvas))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def test_ap_of_a_ranked_list_with_false_positives_by_hand():
    """One image, 3 objects, 5 detections: COCO's 101-point interpolated AP worked out by hand.

    Every IoU is 1, 0 or exactly 2/3 (box and mask alike: the masks are the rectangles), so the
    thresholds 0.50-0.65 agree with each other, and so do 0.70-0.95.

    | rank | score | detection                     | IoU 0.50-0.65  | IoU 0.70-0.95  |
    |------|-------|-------------------------------|----------------|----------------|
    | 1    | 0.9   | object A exactly              | TP  P 1/1 R1/3 | TP  P 1/1 R1/3 |
    | 2    | 0.8   | nothing there                 | FP  P 1/2 R1/3 | FP  P 1/2 R1/3 |
    | 3    | 0.7   | A again (A is taken)          | FP  P 1/3 R1/3 | FP  P 1/3 R1/3 |
    | 4    | 0.6   | B moved 4 px: IoU 320/480     | TP  P 2/4 R2/3 | FP  P 1/4 R1/3 |
    | 5    | 0.5   | object C exactly              | TP  P 3/5 R3/3 | TP  P 2/5 R2/3 |

    Interpolated precision (the best precision at this recall or beyond), read at the 101
    recall points 0.00, 0.01, ..., 1.00 (34 points <= 1/3, 33 in (1/3, 2/3], 34 above):
    - loose: 1 up to recall 1/3, then max(2/4, 3/5) = 3/5 up to 1:
      AP = (34 * 1 + 33 * 3/5 + 34 * 3/5) / 101 = 74.2 / 101. (Without the interpolation,
      precision 2/4 at recall 2/3: 70.9 / 101.)
    - strict: 1 up to recall 1/3, 2/5 up to 2/3, 0 beyond (never reached):
      AP = (34 * 1 + 33 * 2/5) / 101 = 47.2 / 101.
    AP50 is the loose value, AP75 the strict one, AP (0.50:0.95, ten thresholds) their mean
    weighted 4 : 6 = (4 * 74.2 + 6 * 47.2) / 1010 = 58 / 101.
    """
    objects = {"A": (10, 10, 20, 20), "B": (50, 10, 20, 20), "C": (10, 50, 30, 30)}
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": i, "image_id": 1, "category_id": 1, "bbox": list(box), "area": box[2] * box[3],
             "iscrowd": 0, "segmentation": rectangle_rle(*box)}
            for i, box in enumerate(objects.values(), start=1)
        ],
    }
    ranked = [(0.9, objects["A"]), (0.8, (70, 70, 20, 20)), (0.7, objects["A"]),
              (0.6, (54, 10, 20, 20)), (0.5, objects["C"])]
    results = [{"image_id": 1, "category_id": 1, "score": score, "bbox": list(box),
                "segmentation": rectangle_rle(*box)} for score, box in ranked]
    scores = coco_instance_eval(gt, results)
    for kind in ("box", "mask"):
        assert scores[f"{kind}_AP50"] == pytest.approx(74.2 / 101, abs=1e-9), kind
        assert scores[f"{kind}_AP75"] == pytest.approx(47.2 / 101, abs=1e-9), kind
        assert scores[f"{kind}_AP"] == pytest.approx(58 / 101, abs=1e-9), kind


def test_pixel_boxes_inverts_normalisation():
    pixel = np.array([[2, 3, 6, 8]], np.float64)
    normalised = (pixel - [0, 0, 1, 1]) / [9, 11, 9, 11]
    np.testing.assert_allclose(pixel_boxes(normalised, (10, 12)), pixel)


def test_instances_to_panoptic():
    semantic = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 1, 1]])  # 2 is a thing class
    masks = np.zeros((3, 3, 4), bool)
    masks[0, 0:2, 2:4] = True
    masks[1, 0:2, 1:3] = True
    masks[2, 0:2, 2:4] = True
    sem, inst = instances_to_panoptic(semantic, masks, [2, 2, 2], [0.7, 0.9, 0.8],
                                      thing_classes=[2])
    # Sorted by score: mask 1 (0.9) first, then mask 2 (0.8) keeps columns 3 -> half: kept,
    # then mask 0 (0.7) has nothing left.
    np.testing.assert_array_equal(inst, [[0, 1, 1, 2], [0, 1, 1, 2], [0, 0, 0, 0]])
    np.testing.assert_array_equal(sem, [[0, 2, 2, 2], [0, 2, 2, 2], [1, 1, 1, 1]])
    # A thing pixel that no instance covers is void; a low score is not placed.
    sem, inst = instances_to_panoptic(semantic, masks[:1], [2], [0.3], thing_classes=[2])
    np.testing.assert_array_equal(sem, np.where(semantic == 2, 255, semantic))
    assert not inst.any()


def test_import_instances_does_not_import_tensorflow():
    code = ("import sys, edgeseg.instances; "
            "print(','.join(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
