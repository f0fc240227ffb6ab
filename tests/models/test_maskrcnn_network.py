"""The mobile Mask R-CNN graph: shapes, NumPy references of its layers, saving, weights, LiteRT."""

from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgeseg.models.maskrcnn import ops as mrcnn_ops  # noqa: E402
from edgeseg.models.maskrcnn.config import BACKBONES, MaskRCNNConfig  # noqa: E402
from edgeseg.models.maskrcnn.network import (  # noqa: E402
    DetectionLayer,
    DetectionMasks,
    NearestUpsampling,
    ProposalLayer,
    build_box_head,
    build_mask_head,
    build_mobile_mask_rcnn,
    build_rpn_head,
    build_trunk,
    freeze_backbone,
)

IMAGE = 128
# A small graph that builds and runs in about a second on a laptop core.
SMALL = dict(alpha=0.35, proposals=16, max_detections=8, pre_nms=300, min_confidence=0.0,
             fpn_channels=32, rpn_channels=32, box_fc=64, mask_channels=16)
NUM_CLASSES = 4  # background + 3
BACKBONE_ALPHA = {"mobilenet": 0.25, "mobilenet_v2": 0.35}


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def small_model(backbone="mobilenet_v2", **overrides):
    options = {**SMALL, "alpha": BACKBONE_ALPHA[backbone], **overrides}
    return build_mobile_mask_rcnn(NUM_CLASSES, (IMAGE, IMAGE, 3), backbone=backbone, **options)


def blob_image(seed=0):
    # Smooth blobs rather than white noise, so that the features have structure.
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:IMAGE, 0:IMAGE] / IMAGE
    image = np.zeros((IMAGE, IMAGE, 3))
    for _ in range(6):
        cy, cx, r = rng.random(3) * [1, 1, 0.2] + [0, 0, 0.05]
        image += rng.random(3) * (np.hypot(y - cy, x - cx) < r)[..., None]
    return np.clip(image + 0.05 * rng.random(image.shape), 0, 1)[None].astype(np.float32)


def spread_scores(model, factor=8.0):
    """Makes a random model detect: spread-out class and objectness logits, no background.

    Scaled kernels keep scores from near-ties that float rounding could reorder; a low
    background bias makes the ROIs objects, so that there are detections to compare.
    """
    for target in (model.get_layer("box_head").get_layer("box_class_logits"),
                   model.get_layer("trunk").get_layer("rpn").get_layer("rpn_class_raw")):
        kernel, bias = target.get_weights()
        if target.name == "box_class_logits":
            bias[0] = -10.0
        target.set_weights([kernel * factor, bias])


# ---------------------------------------------------------------------------------------------
# NumPy references


def numpy_iou(a, b):
    a, b = a.astype(np.float64)[:, None], b.astype(np.float64)[None]
    ih = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
    iw = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
    inter = ih * iw
    union = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
             + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def numpy_greedy_nms(boxes, order, threshold):
    """Indices of ``order`` (best first) that survive greedy NMS with IoU > threshold."""
    keep = []
    for i in order:
        if all(numpy_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= threshold for j in keep):
            keep.append(int(i))
    return keep


def numpy_decode(deltas, anchors):
    deltas = deltas.astype(np.float64) * np.array(mrcnn_ops.BBOX_STD_DEV)
    anchors = anchors.astype(np.float64)
    h, w = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    cy = anchors[..., 0] + 0.5 * h + deltas[..., 0] * h
    cx = anchors[..., 1] + 0.5 * w + deltas[..., 1] * w
    h, w = h * np.exp(deltas[..., 2]), w * np.exp(deltas[..., 3])
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
    return np.clip(boxes, 0.0, 1.0)


def numpy_proposals(logits, deltas, anchors, pre_nms, proposals, threshold):
    top = np.argsort(-logits, kind="stable")[:pre_nms]
    boxes = numpy_decode(deltas[top], anchors[top])
    keep = numpy_greedy_nms(boxes, range(len(top)), threshold)[:proposals]
    rois = np.zeros((proposals, 4))
    rois[: len(keep)] = boxes[keep]
    return rois, len(keep)


def numpy_detections(rois, roi_count, logits, deltas, max_detections, min_confidence,
                     threshold):
    """Matterport's refine_detections: per-class NMS in a loop over classes, then top-k."""
    logits = logits.astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    classes, scores = probs.argmax(-1), probs.max(-1)
    boxes = numpy_decode(deltas[np.arange(len(rois)), classes], rois)
    kept = []
    for c in range(1, logits.shape[-1]):
        members = [i for i in range(roi_count) if classes[i] == c and scores[i] >= min_confidence]
        members.sort(key=lambda i: -scores[i])
        kept += numpy_greedy_nms(boxes, members, threshold)
    kept = sorted(kept, key=lambda i: -scores[i])[:max_detections]
    return boxes[kept], classes[kept], scores[kept]


# ---------------------------------------------------------------------------------------------
# Building and running


@pytest.mark.parametrize("backbone", ["mobilenet", "mobilenet_v2"])
def test_builds_with_both_backbones_and_outputs_padded_detections(backbone):
    model = small_model(backbone)
    print(f"\n{backbone} alpha {BACKBONE_ALPHA[backbone]} at {IMAGE}x{IMAGE}, "
          f"{NUM_CLASSES} classes: {model.count_params()} parameters")
    trunk = model.get_layer("trunk")
    strides = [IMAGE // trunk.output[f"p{k}"].shape[1] for k in (2, 3, 4, 5)]
    assert strides == [4, 8, 16, 32]
    spread_scores(model)
    out = {k: to_numpy(v) for k, v in model(blob_image()).items()}
    max_det = SMALL["max_detections"]
    shapes = {"boxes": (1, max_det, 4), "classes": (1, max_det), "scores": (1, max_det),
              "masks": (1, max_det, 28, 28), "count": (1,)}
    assert {k: v.shape for k, v in out.items()} == shapes
    assert out["classes"].dtype == np.int32 and out["count"].dtype == np.int32
    assert all(out[k].dtype == np.float32 for k in ("boxes", "scores", "masks"))
    # The symbolic outputs (what edgeseg info and a SavedModel signature show) agree.
    assert {k: model.output[k].dtype for k in out} == {k: v.dtype.name for k, v in out.items()}
    count = int(out["count"][0])
    assert 1 <= count <= max_det
    for key in ("boxes", "classes", "scores", "masks"):
        assert not out[key][0, count:].any(), f"{key} is not zero past the count {count}"
    boxes, scores = out["boxes"][0, :count], out["scores"][0, :count]
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
    assert (np.diff(scores) <= 0).all() and (scores > 1 / NUM_CLASSES).all()
    assert set(out["classes"][0, :count]) <= set(range(1, NUM_CLASSES))
    masks = out["masks"][0, :count]
    assert ((masks > 0) & (masks < 1)).all()


def test_rejects_bad_settings_with_the_values():
    with pytest.raises(ValueError, match="background"):
        MaskRCNNConfig(num_classes=1)
    with pytest.raises(ValueError, match="multiples of 32.*100"):
        MaskRCNNConfig(num_classes=3, image_size=(100, 128))
    with pytest.raises(ValueError, match="valid backbones: .*mobilenet_v2"):
        MaskRCNNConfig(num_classes=3, backbone="resnet50")
    with pytest.raises(ValueError, match="output must be one of"):
        build_mobile_mask_rcnn(3, (64, 64, 3), alpha=0.25, output="logits")
    with pytest.raises(FileNotFoundError, match="no_such.weights.h5"):
        build_mobile_mask_rcnn(3, (64, 64, 3), alpha=0.25, backbone_weights="no_such.weights.h5")


def test_head_parameter_counts_follow_the_design():
    config = MaskRCNNConfig(num_classes=NUM_CLASSES, image_size=(IMAGE, IMAGE), alpha=0.35,
                            fpn_channels=32, rpn_channels=24, box_fc=64, mask_channels=16)
    f, k, fc, m, r, a = 32, NUM_CLASSES, 64, 16, 24, 3
    box = (7 * 7 * f * fc + fc) + (fc * fc + fc) + (fc * k + k) + (fc * 4 * k + 4 * k)
    assert build_box_head(config).count_params() == box
    # Four bias-free 3x3 convs with batch norm (4 numbers per channel), the 2x2 deconv, 1x1.
    mask = 9 * f * m + 3 * 9 * m * m + 4 * 4 * m + (4 * m * m + m) + (m * k + k)
    assert build_mask_head(config).count_params() == mask
    rpn = (9 * f * r + r) + (r * a + a) + (r * 4 * a + 4 * a)
    assert build_rpn_head(f, r, a).count_params() == rpn
    trunk = build_trunk(config)
    backbone = trunk.get_layer("backbone")
    c_channels = [t.shape[-1] for t in backbone.outputs]
    fpn = sum(c * f + f for c in c_channels) + 4 * (9 * f * f + f)
    assert trunk.count_params() == backbone.count_params() + fpn + rpn
    assert trunk.output["rpn_logits"].shape[1] == config.num_anchors == len(config.anchors())


# ---------------------------------------------------------------------------------------------
# Layers against NumPy


def clustered_boxes(rng, clusters, per_cluster):
    centres = 0.2 + 0.6 * rng.random((clusters, 1, 2))
    sizes = 0.1 + 0.2 * rng.random((clusters, 1, 2))
    centres = centres + 0.03 * rng.normal(size=(clusters, per_cluster, 2))
    sizes = sizes * (1 + 0.1 * rng.normal(size=(clusters, per_cluster, 2)))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1)
    return np.clip(boxes.reshape(-1, 4), 0, 1).astype(np.float32)


@pytest.mark.parametrize(("max_detections", "min_confidence"), [(10, 0.35), (40, 0.0)])
def test_detection_layer_matches_per_class_nms_and_top_k(max_detections, min_confidence):
    rng = np.random.default_rng(max_detections)
    num_rois, num_classes, threshold = 48, 4, 0.3
    rois = np.stack([clustered_boxes(rng, 6, 8) for _ in range(2)])
    logits = (2.0 * rng.normal(size=(2, num_rois, num_classes))).astype(np.float32)
    deltas = (0.3 * rng.normal(size=(2, num_rois, num_classes, 4))).astype(np.float32)
    roi_count = np.array([40, 48], np.int32)
    layer = DetectionLayer(max_detections, min_confidence, threshold)
    boxes, classes, scores, count = (to_numpy(t) for t in
                                     layer([rois, roi_count, logits, deltas]))
    assert boxes.shape == (2, max_detections, 4) and classes.dtype == np.int32
    cross_class_overlap = False
    for b in range(2):
        want_boxes, want_classes, want_scores = numpy_detections(
            rois[b], roi_count[b], logits[b], deltas[b], max_detections, min_confidence,
            threshold)
        n = len(want_classes)
        assert count[b] == n
        np.testing.assert_array_equal(classes[b, :n], want_classes)
        np.testing.assert_allclose(scores[b, :n], want_scores, rtol=1e-5)
        np.testing.assert_allclose(boxes[b, :n], want_boxes, atol=1e-5)
        assert not boxes[b, n:].any() and not classes[b, n:].any() and not scores[b, n:].any()
        overlaps = numpy_iou(want_boxes, want_boxes) > threshold
        cross_class_overlap |= bool((overlaps & (want_classes[:, None] != want_classes)).any())
    # Boxes of different classes that overlap both survive: the NMS is per class.
    assert cross_class_overlap
    clone = DetectionLayer.from_config(layer.get_config())
    assert (clone.max_detections, clone.min_confidence, clone.nms_threshold) == (
        max_detections, min_confidence, threshold)


def test_proposal_layer_matches_numpy_top_k_decode_and_nms():
    rng = np.random.default_rng(3)
    image, pre_nms, proposals = 64, 200, 30
    layer = ProposalLayer((image, image), pre_nms=pre_nms, proposals=proposals,
                          nms_threshold=0.7)
    anchors = layer.anchors
    assert len(anchors) == 3 * sum(math.ceil(image / s) ** 2 for s in mrcnn_ops.FPN_STRIDES)
    logits = rng.normal(size=(2, len(anchors))).astype(np.float32) * 3
    deltas = (0.5 * rng.normal(size=(2, len(anchors), 4))).astype(np.float32)
    rois, count = (to_numpy(t) for t in layer([logits, deltas]))
    assert rois.shape == (2, proposals, 4) and count.dtype == np.int32
    for b in range(2):
        want, n = numpy_proposals(logits[b], deltas[b], anchors, pre_nms, proposals, 0.7)
        assert count[b] == n
        np.testing.assert_allclose(rois[b], want, atol=1e-5)
    clone = ProposalLayer.from_config(layer.get_config())
    np.testing.assert_array_equal(clone.anchors, anchors)


def test_detection_masks_pick_the_detected_class_and_zero_padding():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(1, 5, 6, 6, 3)).astype(np.float32)
    classes = np.array([[2, 1, 2, 0, 0]], np.int32)
    count = np.array([3], np.int32)
    got = to_numpy(DetectionMasks()([logits, classes, count]))
    want = 1 / (1 + np.exp(-logits[0, np.arange(5), :, :, classes[0]]))
    np.testing.assert_allclose(got[0, :3], want[:3], rtol=1e-6)
    assert not got[0, 3:].any()


def test_nearest_upsampling_repeats_pixels():
    x = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
    got = to_numpy(NearestUpsampling(2)(x))
    np.testing.assert_array_equal(got, x.repeat(2, axis=1).repeat(2, axis=2))
    assert NearestUpsampling.from_config(NearestUpsampling(3).get_config()).factor == 3


# ---------------------------------------------------------------------------------------------
# Backbone weights and freezing


def test_backbone_weights_load_from_a_local_file(tmp_path):
    source = small_model("mobilenet_v2").get_layer("trunk").get_layer("backbone")
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    model = small_model("mobilenet_v2", backbone_weights=path)
    loaded = model.get_layer("trunk").get_layer("backbone")
    fresh = small_model("mobilenet_v2").get_layer("trunk").get_layer("backbone")
    pairs = list(zip(source.weights, loaded.weights, fresh.weights, strict=True))
    assert len(pairs) > 100
    for want, got, _ in pairs:
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want), err_msg=got.path)
    # A random initialisation differs, so the comparison above can fail.
    assert any(not np.array_equal(to_numpy(w), to_numpy(f)) for w, _, f in pairs)


@pytest.mark.parametrize("backbone", ["mobilenet", "mobilenet_v2"])
def test_freeze_backbone_stages(backbone):
    config = MaskRCNNConfig(num_classes=3, image_size=(64, 64), backbone=backbone,
                            alpha=0.25 if backbone == "mobilenet" else 0.35)
    trunk = build_trunk(config)
    backbone_model = trunk.get_layer("backbone")
    names = [layer.name for layer in backbone_model.layers]
    spec = BACKBONES[backbone]
    start = names.index(spec.stage_starts[4])

    def trainable():
        return [layer.trainable for layer in backbone_model.layers]

    def weighted(predicate):
        return [layer.trainable for i, layer in enumerate(backbone_model.layers)
                if layer.weights and predicate(i, layer)]

    freeze_backbone(trunk, "heads")
    assert not any(trainable())
    assert trunk.get_layer("fpn_p2").trainable
    freeze_backbone(trunk, "4+")
    assert not any(trainable()[:start])
    convs = weighted(lambda i, layer: i >= start and not isinstance(
        layer, keras.layers.BatchNormalization))
    assert convs and all(convs)
    assert not any(weighted(lambda i, layer: isinstance(layer, keras.layers.BatchNormalization)))
    freeze_backbone(trunk, "all", train_bn=True)
    assert all(weighted(lambda i, layer: True))
    with pytest.raises(ValueError, match="heads, 5\\+, 4\\+"):
        freeze_backbone(trunk, "5")


# ---------------------------------------------------------------------------------------------
# Saving and TFLite


@pytest.mark.slow
def test_keras_save_and_reload_gives_identical_outputs(tmp_path):
    model = small_model("mobilenet")
    spread_scores(model)
    image = blob_image(1)
    want = {k: to_numpy(v) for k, v in model(image).items()}
    assert want["count"][0] >= 1
    model.save(tmp_path / "mask_rcnn.keras")
    restored = keras.saving.load_model(tmp_path / "mask_rcnn.keras")
    got = {k: to_numpy(v) for k, v in restored(image).items()}
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert restored.get_layer("detections").get_config()["max_detections"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenet", "mobilenet_v2"])
def test_converts_to_builtin_tflite_and_litert_matches_keras(tmp_path, backbone):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite conversion needs the TensorFlow backend")
    import tensorflow as tf

    from edgeseg.converters.tflite import non_builtin_ops, tflite_op_names
    from edgeseg.runtime_tflite import load_interpreter

    model = small_model(backbone)
    spread_scores(model)
    image = blob_image(2)
    want = {k: to_numpy(v) for k, v in model(image).items()}
    count = int(want["count"][0])
    assert count >= 2

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec(image.shape, tf.float32, name="image")])
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved_model"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()

    ops = tflite_op_names(flatbuffer)
    print("\nTFLite operators:", " ".join(ops))
    assert non_builtin_ops(flatbuffer) == []
    assert "NON_MAX_SUPPRESSION_V4" in ops and "GATHER" in ops, ops
    assert not any("CROP_AND_RESIZE" in op or "WHILE" in op for op in ops), ops
    interpreter = load_interpreter(model_content=flatbuffer)
    got = interpreter.get_signature_runner()(image=image)
    assert set(got) == set(want)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    np.testing.assert_array_equal(got["count"], want["count"])
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4)
    np.testing.assert_allclose(got["masks"][0, :count], want["masks"][0, :count], atol=1e-3)
    assert not got["masks"][0, count:].any()
