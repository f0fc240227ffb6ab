"""Mask R-CNN training and evaluation: COCO AP of an oracle, learning, resume, options."""

import json

import numpy as np
import pytest

from edgeseg.data import open_instances, write_synthetic
from edgeseg.instances import evaluate_instances
from edgeseg.models.maskrcnn.dataset import prepare_instances
from edgeseg.models.maskrcnn.targets import crop_and_resize_masks
from edgeseg.train.instance import flip_sample, split_options, square_size

SMALL = {"alpha": 0.35, "fpn_channels": 32, "rpn_channels": 32, "box_fc": 64,
         "mask_channels": 16, "train_rois": 16, "train_proposals": 32, "train_pre_nms": 200,
         "eval_images": 3, "max_detections": 10, "proposals": 20}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("mr") / "data", n_train=6, n_val=3,
                           size=(96, 64), seed=5)


def oracle(instances, size, shift=0.0):
    """A predictor that returns the GT of each image in turn, as the model would output it."""
    state = {"i": 0}

    def predict(image):
        sample = prepare_instances(instances[state["i"]], size, min_pixels=1)
        state["i"] += 1
        assert np.array_equal(image, sample.image)
        n, boxes = len(sample.boxes), sample.boxes + shift
        masks = crop_and_resize_masks(sample.masks.astype(np.float32), sample.boxes)
        return {"boxes": boxes[None], "classes": sample.class_ids[None],
                "scores": np.linspace(1, 0.5, n, dtype=np.float32)[None], "masks": masks[None],
                "count": np.array([n], np.int32)}

    return predict


def test_oracle_detections_score_full_ap_in_the_frames_pixels(synthetic_root):
    val = open_instances(f"synthetic:{synthetic_root}", "val")
    # At scale 1 (96x64 frames padded to 96x96) the mapping back to the frame is exact.
    exact = evaluate_instances(oracle(val, 96), val, 96)
    assert exact["num_images"] == 3 and exact["num_detections"] > 3
    for key in ("box_AP", "box_AP75", "mask_AP", "mask_AP75"):
        assert exact[key] == pytest.approx(1.0), key
    # Downscaled to 64x64, boxes and masks lose a pixel here and there: AP50 stays 1.
    small = evaluate_instances(oracle(val, 64), val, 64)
    assert small["box_AP50"] == pytest.approx(1.0) and small["mask_AP50"] == pytest.approx(1.0)
    assert 0.5 < small["mask_AP"] < 1.0
    moved = evaluate_instances(oracle(val, 96, shift=0.08), val, 96)
    assert moved["box_AP"] < 0.7


def test_flip_mirrors_boxes_and_masks_inside_the_window(synthetic_root):
    sample = prepare_instances(open_instances(f"synthetic:{synthetic_root}")[0], 64)
    flipped = flip_sample(sample)
    width = sample.window[1]
    np.testing.assert_array_equal(flipped.masks[:, :, :width], sample.masks[:, :, :width][..., ::-1])
    from edgeseg.instances import mask_boxes
    from edgeseg.models.maskrcnn.ops import normalize_boxes

    np.testing.assert_allclose(flipped.boxes, normalize_boxes(mask_boxes(flipped.masks), 64),
                               atol=1e-6)
    np.testing.assert_allclose(flip_sample(flipped).boxes, sample.boxes, atol=1e-6)


def test_options_and_sizes_are_checked():
    with pytest.raises(ValueError, match="multiple of 32"):
        square_size((256, 192))
    with pytest.raises(ValueError, match="unknown mobile_mask_rcnn option"):
        split_options({"filters": 3})
    model, training = split_options({"alpha": 0.5, "train_rois": 8})
    assert model == {"alpha": 0.5} and training["train_rois"] == 8 and training["train_bn"]


@pytest.mark.slow
def test_training_lowers_the_loss_writes_the_run_and_resumes(synthetic_root, tmp_path,
                                                             monkeypatch):
    import shutil

    import keras

    from edgeseg.models.loading import load_keras_model, register_custom_objects
    from edgeseg.train import instance
    from edgeseg.train.trainer import TrainConfig, train

    out = tmp_path / "run"

    def config(epochs, resume=False):
        return TrainConfig(model="mobile_mask_rcnn", data=f"synthetic:{synthetic_root}",
                           out=str(out), size=(64, 64), epochs=epochs, batch=2,
                           steps_per_epoch=6, optimizer="adam", lr=3e-3, resume=resume,
                           model_options=SMALL, verbose=0)

    first = train(config(2))
    assert [e["epoch"] for e in first["epochs"]] == [1, 2]
    assert first["epochs"][1]["loss"] < first["epochs"][0]["loss"]
    for name in ("best.keras", "last.keras", "last.optimizer.npz", "run.json"):
        assert (out / name).is_file()
    with pytest.raises(RuntimeError, match="--resume"):
        train(config(3))
    # What epoch 2 saved, kept aside: the resumed run overwrites it.
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in ("last.keras", "last.optimizer.npz"):
        shutil.copy(out / name, saved / name)
    with np.load(saved / "last.optimizer.npz") as slots:
        saved_slots = [slots[f"arr_{i}"] for i in range(len(slots.files))]
    assert [int(v) for v in saved_slots if v.shape == ()][0] == 12  # 2 epochs x 6 steps
    register_custom_objects()
    saved_model = keras.saving.load_model(saved / "last.keras", compile=False)
    saved_weights = [np.asarray(w) for name in instance.PART_NAMES
                     for w in saved_model.get_layer(name).weights]

    # The state the resumed run's first step starts from.
    seen = {}
    first_step = instance.MaskRCNNTrainer.train_step

    def capture(self, samples, rng):
        if not seen:
            parts = (self.trunk, self.box_head, self.mask_head)
            seen["weights"] = [np.asarray(w) for part in parts for w in part.weights]
            seen["slots"] = [np.asarray(v) for v in self.optimizer.variables]
        return first_step(self, samples, rng)

    monkeypatch.setattr(instance.MaskRCNNTrainer, "train_step", capture)
    resumed = train(config(3, resume=True))
    # Every weight of the three parts (batch-norm statistics included) and every optimizer
    # variable (step count, moments) as epoch 2 saved them.
    assert len(seen["weights"]) == len(saved_weights)
    for got, want in zip(seen["weights"], saved_weights, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(seen["slots"]) == len(saved_slots)
    for got, want in zip(seen["slots"], saved_slots, strict=True):
        np.testing.assert_array_equal(got, want)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]
    assert json.loads((out / "run.json").read_text())["epochs"][:2] == first["epochs"]
    with np.load(out / "last.optimizer.npz") as saved:
        iterations = [saved[k] for k in saved.files if saved[k].shape == ()]
    assert 18 in [int(v) for v in iterations]  # 3 epochs x 6 steps, carried over the resume
    model = load_keras_model(out / "best.keras", compile=False)
    outputs = model(np.zeros((1, 64, 64, 3), np.float32))
    assert tuple(outputs["masks"].shape) == (1, 10, 28, 28)
