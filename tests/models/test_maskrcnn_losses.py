"""Mask R-CNN losses against NumPy computations from their definitions, on TensorFlow and JAX."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from edgeseg.models.maskrcnn import losses

BATCH, ANCHORS, ROIS, CLASSES, MASK = 2, 40, 12, 4, 6


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    rpn_match = rng.choice([-1, 0, 1], size=(BATCH, ANCHORS), p=[0.4, 0.4, 0.2]).astype(np.int32)
    class_ids = rng.integers(0, CLASSES, size=(BATCH, ROIS)).astype(np.int32)
    valid = np.ones((BATCH, ROIS), bool)
    valid[:, -3:] = False
    class_ids[~valid] = 0
    mask_logits = rng.normal(scale=2, size=(BATCH, ROIS, MASK, MASK, CLASSES))
    return {
        "rpn_match": rpn_match,
        "rpn_logits": rng.normal(scale=2, size=(BATCH, ANCHORS, 2)).astype(np.float32),
        "rpn_objectness": rng.normal(scale=2, size=(BATCH, ANCHORS)).astype(np.float32),
        "rpn_target_deltas": rng.normal(size=(BATCH, ANCHORS, 4)).astype(np.float32),
        "rpn_deltas": rng.normal(scale=1.5, size=(BATCH, ANCHORS, 4)).astype(np.float32),
        "class_ids": class_ids,
        "valid": valid,
        "class_logits": rng.normal(scale=2, size=(BATCH, ROIS, CLASSES)).astype(np.float32),
        "target_deltas": rng.normal(size=(BATCH, ROIS, 4)).astype(np.float32),
        "pred_deltas": rng.normal(scale=1.5, size=(BATCH, ROIS, CLASSES, 4)).astype(np.float32),
        "target_masks": (rng.random((BATCH, ROIS, MASK, MASK)) > 0.5).astype(np.float32),
        "mask_logits": mask_logits.astype(np.float32),
        "mask_probs": (1 / (1 + np.exp(-mask_logits))).astype(np.float32),
    }


def all_losses(data, module=losses):
    return {
        "rpn_class": module.rpn_class_loss(data["rpn_match"], data["rpn_logits"]),
        "rpn_box": module.rpn_box_loss(data["rpn_match"], data["rpn_target_deltas"],
                                       data["rpn_deltas"]),
        "head_class": module.head_class_loss(data["class_ids"], data["class_logits"],
                                             data["valid"]),
        "head_box": module.head_box_loss(data["class_ids"], data["target_deltas"],
                                         data["pred_deltas"]),
        "rpn_class_sigmoid": module.rpn_class_loss(data["rpn_match"], data["rpn_objectness"]),
        "mask": module.mask_loss(data["class_ids"], data["target_masks"], data["mask_probs"],
                                 from_logits=False),
        "mask_logits": module.mask_loss(data["class_ids"], data["target_masks"],
                                        data["mask_logits"]),
    }


def ce(logits, label):
    logits = logits.astype(np.float64)
    return -(logits[label] - logits.max() - np.log(np.exp(logits - logits.max()).sum()))


def smooth_l1(diff):
    diff = np.abs(diff.astype(np.float64))
    return np.where(diff < 1, 0.5 * diff**2, diff - 0.5)


def mean_or_zero(values):
    return float(np.mean(values)) if len(values) else 0.0


def numpy_losses(data):
    """The losses from their definitions, one anchor / ROI at a time."""
    rpn_ce, rpn_bce, rpn_l1, head_ce, head_l1, mask_bce, logit_bce = ([] for _ in range(7))
    for b in range(BATCH):
        for a in range(ANCHORS):
            match = data["rpn_match"][b, a]
            if match != 0:
                rpn_ce.append(ce(data["rpn_logits"][b, a], int(match == 1)))
                p = 1 / (1 + np.exp(-np.float64(data["rpn_objectness"][b, a])))
                rpn_bce.append(-np.log(p if match == 1 else 1 - p))
            if match == 1:
                diff = data["rpn_target_deltas"][b, a] - data["rpn_deltas"][b, a]
                rpn_l1.extend(smooth_l1(diff))
        for r in range(ROIS):
            c = data["class_ids"][b, r]
            if data["valid"][b, r]:
                head_ce.append(ce(data["class_logits"][b, r], c))
            if c > 0:
                head_l1.extend(smooth_l1(data["target_deltas"][b, r] - data["pred_deltas"][b, r, c]))
                t = data["target_masks"][b, r]
                p = data["mask_probs"][b, r, :, :, c].astype(np.float64)
                mask_bce.extend((-(t * np.log(p) + (1 - t) * np.log(1 - p))).ravel())
                p = 1 / (1 + np.exp(-data["mask_logits"][b, r, :, :, c].astype(np.float64)))
                logit_bce.extend((-(t * np.log(p) + (1 - t) * np.log(1 - p))).ravel())
    return {
        "rpn_class": mean_or_zero(rpn_ce),
        "rpn_class_sigmoid": mean_or_zero(rpn_bce),
        "rpn_box": mean_or_zero(rpn_l1),
        "head_class": mean_or_zero(head_ce),
        "head_box": mean_or_zero(head_l1),
        "mask": mean_or_zero(mask_bce),
        "mask_logits": mean_or_zero(logit_bce),
    }


def test_losses_match_numpy_definitions():
    data = make_inputs()
    # The random inputs include every case: neutral, negative and positive anchors, padding,
    # background and positive ROIs.
    assert set(np.unique(data["rpn_match"])) == {-1, 0, 1}
    assert (data["class_ids"] == 0).any() and (data["class_ids"] > 0).any()
    got = {name: float(value) for name, value in all_losses(data).items()}
    expected = numpy_losses(data)
    for name, value in expected.items():
        assert value > 0
        assert got[name] == pytest.approx(value, rel=1e-5), name


def test_padding_and_other_classes_do_not_count():
    data = make_inputs(seed=1)
    base = {name: float(v) for name, v in all_losses(data).items()}
    changed = dict(data)
    rng = np.random.default_rng(2)
    # Padded ROIs, neutral anchors and the non-GT classes' outputs may hold anything.
    changed["class_logits"] = np.where(data["valid"][..., None], data["class_logits"],
                                       rng.normal(scale=50, size=data["class_logits"].shape))
    changed["rpn_logits"] = np.where((data["rpn_match"] == 0)[..., None], 1e3,
                                     data["rpn_logits"]).astype(np.float32)
    changed["rpn_objectness"] = np.where(data["rpn_match"] == 0, -1e3,
                                         data["rpn_objectness"]).astype(np.float32)
    one_hot = np.eye(CLASSES, dtype=bool)[data["class_ids"]]
    changed["pred_deltas"] = np.where(one_hot[..., None], data["pred_deltas"], 7.0)
    changed["mask_logits"] = np.where(one_hot[:, :, None, None, :], data["mask_logits"], -9.0)
    changed["mask_probs"] = np.where(one_hot[:, :, None, None, :], data["mask_probs"], 0.01)
    changed = {k: np.asarray(v, np.float32) if np.asarray(v).dtype == np.float64 else v
               for k, v in changed.items()}
    for name, value in all_losses(changed).items():
        assert float(value) == pytest.approx(base[name], rel=1e-6), name


def test_nothing_positive_gives_zero_and_finite_gradients():
    data = make_inputs(seed=3)
    data["rpn_match"][:] = 0
    data["class_ids"][:] = 0
    data["valid"][:] = False
    names = ("rpn_logits", "rpn_objectness", "rpn_deltas", "class_logits", "pred_deltas",
             "mask_logits", "mask_probs")
    variables = {k: tf.Variable(data[k]) for k in names}
    with tf.GradientTape() as tape:
        values = all_losses({**data, **variables})
        total = tf.add_n(list(values.values()))
    for name, value in values.items():
        assert float(value) == 0.0, name
    for name, gradient in zip(variables, tape.gradient(total, list(variables.values())),
                              strict=True):
        assert gradient is not None, name
        assert np.all(tf.convert_to_tensor(gradient).numpy() == 0), name

    # Only negatives: the RPN class loss counts them, the box loss stays 0.
    data["rpn_match"][:] = -1
    assert float(losses.rpn_class_loss(data["rpn_match"], data["rpn_logits"])) > 0
    assert float(losses.rpn_box_loss(data["rpn_match"], data["rpn_target_deltas"],
                                     data["rpn_deltas"])) == 0.0


def test_mask_loss_of_certain_probabilities_is_finite():
    data = make_inputs(seed=4)
    probs = np.where(np.random.default_rng(5).random(data["mask_logits"].shape) > 0.5, 1.0, 0.0)
    value = float(losses.mask_loss(data["class_ids"], data["target_masks"],
                                   probs.astype(np.float32), from_logits=False))
    assert np.isfinite(value) and value > 0


def test_single_and_two_way_rpn_logits_agree():
    data = make_inputs(seed=8)
    z = data["rpn_objectness"]
    two_way = np.stack([np.zeros_like(z), z], axis=-1)
    single = float(losses.rpn_class_loss(data["rpn_match"], z))
    assert float(losses.rpn_class_loss(data["rpn_match"], two_way)) == pytest.approx(single,
                                                                                      rel=1e-5)
    assert float(losses.rpn_class_loss(data["rpn_match"], z[..., None])) == pytest.approx(
        single, rel=1e-6)
    with pytest.raises(ValueError, match="rpn_logits must be"):
        losses.rpn_class_loss(data["rpn_match"], np.zeros((BATCH, ANCHORS, 3), np.float32))


JAX_SCRIPT = """
import json, sys
import numpy as np
import keras
from edgeseg.models.maskrcnn import losses
sys.path.insert(0, sys.argv[2])
from tests.models.test_maskrcnn_losses import all_losses
data = dict(np.load(sys.argv[1]))
print(json.dumps({"backend": keras.backend.backend(),
                  **{k: float(v) for k, v in all_losses(data, losses).items()}}))
"""


@pytest.mark.slow
def test_losses_agree_on_jax_backend(tmp_path):
    pytest.importorskip("jax", reason="the JAX backend check needs jax (pip install 'edgeseg[jax]')")
    data = make_inputs(seed=6)
    path = tmp_path / "inputs.npz"
    np.savez(path, **data)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(path), root],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result.pop("backend") == "jax"
    expected = {name: float(value) for name, value in all_losses(data).items()}
    assert result.keys() == expected.keys()
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-5), name


def test_losses_trace_with_unknown_batch_and_roi_counts():
    data = make_inputs(seed=7)
    expected = {name: float(value) for name, value in all_losses(data).items()}

    def spec(value):
        value = np.asarray(value)
        return tf.TensorSpec((None, None, *value.shape[2:]), tf.as_dtype(value.dtype))

    names = sorted(data)
    traced = tf.function(lambda *args: all_losses(dict(zip(names, args, strict=True))),
                         input_signature=[spec(data[n]) for n in names])
    for name, value in traced(*[data[n] for n in names]).items():
        assert float(value) == pytest.approx(expected[name], rel=1e-6), name
