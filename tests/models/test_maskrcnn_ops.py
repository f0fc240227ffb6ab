"""Mask R-CNN operations against NumPy references, TensorFlow, the JAX backend and LiteRT."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgeseg.models.maskrcnn import (  # noqa: E402
    ANCHOR_RATIOS,
    ANCHOR_SCALES,
    FPN_STRIDES,
    ROIAlign,
    box_iou,
    clip_boxes,
    decode_boxes,
    denormalize_boxes,
    encode_boxes,
    generate_anchors,
    greedy_nms_padded,
    mobile_anchor_scales,
    nms_padded,
    roi_align,
    roi_levels,
)

IMAGE = 512
FEATURE_STRIDES = (4, 8, 16, 32)  # P2-P5
CHANNELS = 3


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def pyramid(seed: int, batch: int = 2, image: int = IMAGE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, image // s, image // s, CHANNELS)).astype(np.float32)
        for s in FEATURE_STRIDES
    ]


# ---------------------------------------------------------------------------------------------
# Anchors


def test_anchor_counts_centres_and_sizes_by_hand():
    anchors = generate_anchors(64, scales=(8, 16), ratios=(0.5, 1, 2), strides=(16, 32))
    # Level 0: a 4 x 4 map, level 1: 2 x 2; three ratios per cell.
    assert anchors.shape == (4 * 4 * 3 + 2 * 2 * 3, 4) and anchors.dtype == np.float32
    # The first anchor: cell (0, 0), ratio 0.5 (width / height): 8 / sqrt(0.5) = 11.3137 high,
    # 8 * sqrt(0.5) = 5.6569 wide around pixel (0, 0); normalised by (H - 1) = 63 with the
    # exclusive end minus one.
    h, w = 8 / math.sqrt(0.5), 8 * math.sqrt(0.5)
    np.testing.assert_allclose(
        anchors[0], [-h / 2 / 63, -w / 2 / 63, (h / 2 - 1) / 63, (w / 2 - 1) / 63], rtol=1e-6
    )
    # Level 0, row 1, column 2, ratio 1: an 8 x 8 box centred on pixel (16, 32).
    np.testing.assert_allclose(
        anchors[(1 * 4 + 2) * 3 + 1], [12 / 63, 28 / 63, 19 / 63, 35 / 63], rtol=1e-6
    )
    # Level 1 starts after 48 anchors: 16 x 16 boxes (ratio 1) centred on multiples of 32.
    pixels = denormalize_boxes(anchors[48:], 64).reshape(2, 2, 3, 4)
    centres = (pixels[..., :2] + pixels[..., 2:]) / 2
    np.testing.assert_allclose(centres[:, :, 1], [[[0, 0], [0, 32]], [[32, 0], [32, 32]]],
                               atol=1e-4)
    sizes = pixels[..., 2:] - pixels[..., :2]
    np.testing.assert_allclose(sizes[0, 0], [[16 / math.sqrt(0.5), 16 * math.sqrt(0.5)],
                                             [16, 16], [16 / math.sqrt(2), 16 * math.sqrt(2)]],
                               rtol=1e-5)

    sparse = generate_anchors(64, (8, 16), (0.5, 1, 2), (16, 32), anchor_stride=2)
    assert sparse.shape == (2 * 2 * 3 + 1 * 1 * 3, 4)


def test_matterport_and_mobile_anchor_counts():
    # Matterport's 1024 x 1024 default has 261888 anchors (256^2 + ... + 16^2 cells x 3).
    assert generate_anchors(1024, ANCHOR_SCALES, ANCHOR_RATIOS, FPN_STRIDES).shape == (261888, 4)
    assert mobile_anchor_scales(512) == (16, 32, 64, 128, 256)
    assert mobile_anchor_scales(1024) == ANCHOR_SCALES
    mobile = generate_anchors(512, mobile_anchor_scales(512), ANCHOR_RATIOS, FPN_STRIDES)
    assert mobile.shape == ((128**2 + 64**2 + 32**2 + 16**2 + 8**2) * 3, 4)
    with pytest.raises(ValueError, match="one scale per level"):
        generate_anchors(512, (16, 32), ANCHOR_RATIOS, FPN_STRIDES)


# ---------------------------------------------------------------------------------------------
# Boxes


def random_boxes(rng, count: int, min_size: float = 0.02) -> np.ndarray:
    start = rng.random((count, 2)) * 0.8
    size = min_size + rng.random((count, 2)) * 0.4
    return np.concatenate([start, start + size], axis=-1).astype(np.float32)


def test_encode_decode_round_trip_and_known_deltas():
    rng = np.random.default_rng(0)
    boxes, anchors = random_boxes(rng, 50), random_boxes(rng, 50)
    deltas = to_numpy(encode_boxes(boxes, anchors))
    np.testing.assert_allclose(to_numpy(decode_boxes(deltas, anchors)), boxes, atol=1e-5)
    # A unit anchor, and a box shifted by half its size, then one twice as large.
    anchor = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
    known = np.array([[0.5, 0.5, 1.5, 1.5], [0.0, 0.0, 2.0, 2.0]], np.float32)
    np.testing.assert_allclose(
        to_numpy(encode_boxes(known, anchor)),
        [[5.0, 5.0, 0.0, 0.0], [5.0, 5.0, math.log(2) / 0.2, math.log(2) / 0.2]],
        rtol=1e-5,
    )
    clipped = to_numpy(clip_boxes(np.array([[-0.1, 0.2, 1.3, 0.9]], np.float32)))
    np.testing.assert_array_equal(clipped, np.array([[0.0, 0.2, 1.0, 0.9]], np.float32))


def numpy_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i, (ay1, ax1, ay2, ax2) in enumerate(a.astype(np.float64)):
        for j, (by1, bx1, by2, bx2) in enumerate(b.astype(np.float64)):
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            union = (ay2 - ay1) * (ax2 - ax1) + (by2 - by1) * (bx2 - bx1) - ih * iw
            out[i, j] = ih * iw / union if union > 0 else 0.0
    return out


def test_box_iou_matches_a_loop():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 7), random_boxes(rng, 9)
    b[0] = a[0]  # identical: 1
    b[1] = [0.95, 0.95, 0.99, 0.99]  # disjoint from most
    a[1] = [0.3, 0.3, 0.3, 0.3]  # empty: 0
    b[2] = a[1]  # empty with empty: 0
    got = to_numpy(box_iou(a, b))
    np.testing.assert_allclose(got, numpy_iou(a, b), atol=1e-6)
    assert got[0, 0] == pytest.approx(1.0) and got[1, 2] == 0.0
    batched = to_numpy(box_iou(np.stack([a, a]), np.stack([b, b])))
    np.testing.assert_allclose(batched, np.stack([got, got]), atol=1e-7)


# ---------------------------------------------------------------------------------------------
# ROIAlign


def numpy_roi_align(maps, boxes, pool, image):
    """crop_and_resize's bilinear sampling, box by box, in float64, on the FPN level."""
    batch, count, _ = boxes.shape
    out = np.zeros((batch, count, pool, pool, maps[0].shape[-1]))
    for b in range(batch):
        for k in range(count):
            y1, x1, y2, x2 = boxes[b, k].astype(np.float64)
            side = math.sqrt(max((y2 - y1) * (x2 - x1), 0.0)) * image / 224
            level = 2 if side == 0 else min(5, max(2, math.floor(4 + math.log2(side))))
            fmap = maps[level - 2][b].astype(np.float64)
            height, width = fmap.shape[:2]

            def positions(start, end, size):
                if pool == 1:
                    return [0.5 * (start + end) * (size - 1)]
                return [start * (size - 1) + i * (end - start) * (size - 1) / (pool - 1)
                        for i in range(pool)]

            for i, y in enumerate(positions(y1, y2, height)):
                for j, x in enumerate(positions(x1, x2, width)):
                    if not (-1e-6 <= y <= height - 1 + 1e-6 and -1e-6 <= x <= width - 1 + 1e-6):
                        continue
                    y = min(max(y, 0.0), height - 1)
                    x = min(max(x, 0.0), width - 1)
                    y0, x0 = math.floor(y), math.floor(x)
                    y_1, x_1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
                    dy, dx = y - y0, x - x0
                    out[b, k, i, j] = (
                        fmap[y0, x0] * (1 - dy) * (1 - dx) + fmap[y0, x_1] * (1 - dy) * dx
                        + fmap[y_1, x0] * dy * (1 - dx) + fmap[y_1, x_1] * dy * dx
                    )
    return out


def boxes_of_side(centre_y, centre_x, side):
    return [centre_y - side / 2, centre_x - side / 2, centre_y + side / 2, centre_x + side / 2]


# At 512 x 512 the level of a square box of side s is floor(4 + log2(s * 512 / 224)):
# s < 0.219 -> 2, < 0.4375 -> 3, < 0.875 -> 4, else 5.
HAND_BOXES = np.array(
    [
        [
            boxes_of_side(0.5, 0.5, 0.1),  # P2
            boxes_of_side(0.4, 0.6, 0.3),  # P3
            boxes_of_side(0.5, 0.45, 0.6),  # P4
            [0.02, 0.03, 0.98, 0.96],  # P5
            [0.0, 0.0, 0.05, 0.07],  # tiny, touching the top-left corner: P2
            [0.3, 0.0, 1.0, 1.0],  # touching three borders: P4
            [0.4, 0.4, 0.4, 0.4],  # empty: P2, samples one point
            [-0.2, 0.5, 0.3, 1.3],  # partly outside the image: zeros there
        ]
    ],
    np.float32,
)
HAND_LEVELS = [2, 3, 4, 5, 2, 4, 2, 4]


def test_roi_levels_follow_the_fpn_formula():
    np.testing.assert_array_equal(to_numpy(roi_levels(HAND_BOXES, IMAGE)), [HAND_LEVELS])


@pytest.mark.parametrize("pool", [1, 3, 7])
def test_roi_align_matches_numpy_reference(pool):
    rng = np.random.default_rng(pool)
    maps = pyramid(seed=pool)
    boxes = np.concatenate([np.repeat(HAND_BOXES, 2, axis=0),
                            random_boxes(rng, 2 * 8).reshape(2, 8, 4)], axis=1)
    got = to_numpy(roi_align(maps, boxes, pool, IMAGE))
    assert got.shape == (2, 16, pool, pool, CHANNELS)
    np.testing.assert_allclose(got, numpy_roi_align(maps, boxes, pool, IMAGE), atol=1e-4)


def test_roi_align_reads_the_border_of_boxes_that_end_on_it():
    # crop_and_resize's kernel returns zeros for the last row of ~9% of such boxes (float32
    # rounding puts the sample just past the map); a constant map must give the constant.
    maps = [np.ones((1, IMAGE // s, IMAGE // s, 1), np.float32) for s in FEATURE_STRIDES]
    start = np.linspace(0.0, 0.9, 64, dtype=np.float32)
    boxes = np.stack([start, start[::-1] * 0.5, np.ones_like(start), np.ones_like(start)], -1)
    got = to_numpy(roi_align(maps, boxes[None], 7, IMAGE))
    np.testing.assert_allclose(got, 1.0, atol=1e-6)


def test_roi_align_equals_crop_and_resize_on_each_level():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("compares with tf.image.crop_and_resize")
    import tensorflow as tf

    rng = np.random.default_rng(3)
    maps = pyramid(seed=3, batch=2)
    boxes = np.clip(random_boxes(rng, 2 * 12).reshape(2, 12, 4), 0.01, 0.99)
    boxes[:, :4] = HAND_BOXES[0, :4]  # one box on each level
    got = to_numpy(roi_align(maps, boxes, 7, IMAGE))
    levels = to_numpy(roi_levels(boxes, IMAGE))
    assert set(levels.ravel()) == {2, 3, 4, 5}
    for b in range(2):
        for k in range(12):
            fmap = maps[levels[b, k] - 2][b : b + 1]
            want = tf.image.crop_and_resize(fmap, boxes[b, k][None], [0], (7, 7)).numpy()[0]
            np.testing.assert_allclose(got[b, k], want, atol=1e-6, err_msg=f"box {b}, {k}")


def test_roi_align_layer_config_round_trip_and_shapes(tmp_path):
    layer = ROIAlign(image_size=(IMAGE, IMAGE), pool_size=(3, 5), name="roi")
    clone = ROIAlign.from_config(layer.get_config())
    assert clone.image_size == (IMAGE, IMAGE) and clone.pool_size == (3, 5)
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)
                                                 ).pool_size == (3, 5)
    inputs = [keras.Input((8, 4))] + [
        keras.Input((IMAGE // s, IMAGE // s, CHANNELS)) for s in FEATURE_STRIDES
    ]
    output = layer(inputs)
    assert tuple(output.shape) == (None, 8, 3, 5, CHANNELS)
    maps = pyramid(seed=4, batch=1)
    model = keras.Model(inputs, output)
    got = to_numpy(model([HAND_BOXES, *maps]))
    np.testing.assert_allclose(got, to_numpy(roi_align(maps, HAND_BOXES, (3, 5), IMAGE)))
    model.save(tmp_path / "roi.keras")
    restored = keras.saving.load_model(tmp_path / "roi.keras")
    np.testing.assert_array_equal(to_numpy(restored([HAND_BOXES, *maps])), got)
    with pytest.raises(ValueError, match="P2-P5"):
        roi_align(maps[:3], HAND_BOXES, 7, IMAGE)


# ---------------------------------------------------------------------------------------------
# Non-maximum suppression


def numpy_nms(boxes, scores, max_output, iou_threshold, score_threshold):
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] <= score_threshold or len(keep) == max_output:
            break
        if all(numpy_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= iou_threshold
               for j in keep):
            keep.append(int(i))
    return keep


def nms_case(seed: int, count: int = 40):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, count, min_size=0.05)
    flip = rng.random(count) < 0.2  # corners in the other order
    boxes[flip] = boxes[flip][:, [2, 3, 0, 1]]
    scores = (rng.permutation(count) + rng.random(count) * 0.5) / count  # no ties
    return boxes, scores.astype(np.float32)


NMS_SETTINGS = [(0, 10, 0.5, 0.0), (1, 20, 0.3, 0.4), (2, 64, 0.7, float("-inf")),
                (3, 5, 0.1, 0.9)]


def canonical(boxes):
    return np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                           np.maximum(boxes[:, :2], boxes[:, 2:])], axis=-1)


@pytest.mark.parametrize("function", [nms_padded, greedy_nms_padded])
@pytest.mark.parametrize(("seed", "max_output", "iou_threshold", "score_threshold"),
                         NMS_SETTINGS)
def test_nms_padded_matches_numpy_greedy_nms(function, seed, max_output, iou_threshold,
                                             score_threshold):
    boxes, scores = nms_case(seed)
    want = numpy_nms(canonical(boxes), scores, max_output, iou_threshold, score_threshold)
    indices, count = (to_numpy(t) for t in function(boxes, scores, max_output, iou_threshold,
                                                      score_threshold))
    assert indices.shape == (max_output,) and indices.dtype == np.int32
    assert int(count) == len(want)
    assert indices[: len(want)].tolist() == want
    assert not indices[len(want) :].any()  # padded with 0


JAX_SCRIPT = """
import json, sys
import numpy as np
import keras
from edgeseg.models.maskrcnn import ROIAlign, nms_padded, roi_align
data = np.load(sys.argv[1])
results = []
for i in range(int(data["cases"])):
    indices, count = nms_padded(data[f"boxes{i}"], data[f"scores{i}"], *data[f"setting{i}"])
    results.append({"indices": np.asarray(indices).tolist(), "count": int(count)})
maps = [data[f"p{k}"] for k in range(2, 6)]
crops = roi_align(maps, data["rois"], 3, int(data["image"]))
inputs = [keras.Input(data["rois"].shape[1:])] + [keras.Input(m.shape[1:]) for m in maps]
layer = ROIAlign(int(data["image"]), 3)
from_layer = keras.Model(inputs, layer(inputs))([data["rois"], *maps])
np.testing.assert_allclose(np.asarray(from_layer), np.asarray(crops))
np.save(sys.argv[2], np.asarray(crops))
print(json.dumps({"backend": keras.backend.backend(), "nms": results}))
"""


@pytest.mark.slow
def test_nms_and_roi_align_agree_on_jax_backend(tmp_path):
    pytest.importorskip(
        "jax", reason="the JAX backend check needs jax (pip install 'edgeseg[jax]')"
    )
    arrays = {"cases": len(NMS_SETTINGS), "image": IMAGE, "rois": HAND_BOXES}
    expected = []
    for i, (seed, *setting) in enumerate(NMS_SETTINGS):
        boxes, scores = nms_case(seed)
        arrays.update({f"boxes{i}": boxes, f"scores{i}": scores, f"setting{i}": setting})
        indices, count = nms_padded(boxes, scores, *setting)
        expected.append({"indices": to_numpy(indices).tolist(), "count": int(count)})
    maps = pyramid(seed=5, batch=1)
    arrays.update({f"p{k}": m for k, m in zip(range(2, 6), maps, strict=True)})
    np.savez(tmp_path / "inputs.npz", **arrays)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "inputs.npz"), str(tmp_path / "crops")],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    assert result["nms"] == expected
    np.testing.assert_allclose(np.load(tmp_path / "crops.npy"),
                               to_numpy(roi_align(maps, HAND_BOXES, 3, IMAGE)), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# TFLite


class SelectBoxes(keras.layers.Layer):
    """NMS of the one image of a batch, then the kept boxes (zeros past the count)."""

    def __init__(self, max_output, **kwargs):
        super().__init__(**kwargs)
        self.max_output = max_output

    def call(self, boxes, scores):
        indices, count = nms_padded(boxes[0], scores[0], self.max_output, 0.7, 0.5)
        kept = keras.ops.take(boxes[0], indices, axis=0)
        valid = keras.ops.arange(self.max_output) < count
        kept = keras.ops.where(valid[:, None], kept, keras.ops.zeros_like(kept))
        return kept[None], indices[None], keras.ops.reshape(count, (1,))


@pytest.mark.slow
def test_roi_align_and_nms_convert_to_builtin_tflite(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite conversion needs the TensorFlow backend")
    import tensorflow as tf

    from edgeseg.converters.tflite import non_builtin_ops, tflite_op_names
    from edgeseg.runtime_tflite import load_interpreter

    image, num_boxes, max_output = 256, 24, 8
    shapes = [(image // s, image // s, 4) for s in FEATURE_STRIDES]
    features = [keras.Input(shape, batch_size=1, name=f"p{k}")
                for k, shape in zip(range(2, 6), shapes, strict=True)]
    boxes = keras.Input((num_boxes, 4), batch_size=1, name="boxes")
    scores = keras.Input((num_boxes,), batch_size=1, name="scores")
    projected = [keras.layers.Conv2D(4, 1, name=f"lateral{k}")(f)
                 for k, f in zip(range(2, 6), features, strict=True)]
    kept, indices, count = SelectBoxes(max_output)(boxes, scores)
    crops = ROIAlign(image_size=image, pool_size=5)([kept, *projected])
    model = keras.Model([*features, boxes, scores], [crops, indices, count])

    rng = np.random.default_rng(6)
    inputs = {f"p{k}": rng.normal(size=(1, *shape)).astype(np.float32)
              for k, shape in zip(range(2, 6), shapes, strict=True)}
    case_boxes, case_scores = nms_case(7, num_boxes)
    # Sides 0.05-0.45 read P2-P4 at 256 x 256; the best three boxes add P2, P5 and P4.
    case_boxes = canonical(case_boxes)
    case_boxes[:3] = HAND_BOXES[0, [0, 3, 5]]
    case_scores[:3] = [0.99, 0.98, 0.97]
    case_scores[6:] *= 0.4  # below the score threshold 0.5: at most 6 of 8 outputs are kept
    inputs.update(boxes=case_boxes[None], scores=case_scores[None])
    want = [to_numpy(t) for t in model([inputs[f"p{k}"] for k in range(2, 6)]
                                       + [inputs["boxes"], inputs["scores"]])]
    assert 3 <= int(want[2][0]) < max_output  # some padding
    assert len(set(to_numpy(roi_levels(want[0][:, : int(want[2][0])], image)).ravel())) >= 3

    specs = [tf.TensorSpec((1, *shape), tf.float32, name=f"p{k}")
             for k, shape in zip(range(2, 6), shapes, strict=True)]
    specs += [tf.TensorSpec((1, num_boxes, 4), tf.float32, name="boxes"),
              tf.TensorSpec((1, num_boxes), tf.float32, name="scores")]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda *args: model(list(args), training=False),
                         input_signature=specs)
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved_model"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()

    ops = tflite_op_names(flatbuffer)
    assert non_builtin_ops(flatbuffer) == []
    assert "NON_MAX_SUPPRESSION_V4" in ops and "GATHER" in ops, ops
    assert not any("CROP_AND_RESIZE" in op or "WHILE" in op for op in ops), ops
    interpreter = load_interpreter(model_content=flatbuffer)
    (signature,) = interpreter.get_signature_list()
    runner = interpreter.get_signature_runner(signature)
    got = runner(**inputs)
    assert len(got) == 3
    by_shape = {tuple(v.shape): v for v in got.values()}
    np.testing.assert_allclose(by_shape[want[0].shape], want[0], atol=1e-4)
    np.testing.assert_array_equal(by_shape[want[1].shape], want[1])
    np.testing.assert_array_equal(by_shape[want[2].shape], want[2])
