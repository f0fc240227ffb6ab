"""Training the mobile Mask R-CNN (``edgeseg train --model mobile_mask_rcnn``).

Each step, as matterport's training graph: the RPN is trained on anchor targets computed from
the GT boxes (``targets.rpn_targets``); the current RPN's proposals, with the GT boxes added
(as Detectron does, so that the heads see positives from the first step), are sampled into
training ROIs with class, box and mask targets (``targets.detection_targets``); the heads are
trained on those ROIs. Targets are NumPy; the forward / backward pass is one compiled
TensorFlow function. The loss is the sum of the five losses of the paper (RPN class and box,
head class and box, mask binary cross-entropy).

The run directory is the one of ``edgeseg train``: ``best.keras`` (the inference model with the
best validation mask AP50), ``last.keras`` and ``last.optimizer.npz`` (the optimizer state),
``run.json`` with the losses and COCO AP of every epoch. Files are written atomically; a killed
run continues from its last finished epoch with ``--resume``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from edgeseg.models.maskrcnn.config import RECIPE, MaskRCNNConfig
from edgeseg.models.maskrcnn.dataset import InstanceSample, open_instances, prepare_instances

MODEL_NAME = "mobile_mask_rcnn"
# Training-only options (``--option key=value``), with matterport's values as defaults.
TRAIN_OPTIONS = {
    "rpn_train_anchors": RECIPE["rpn_train_anchors"],
    "train_rois": RECIPE["train_rois"],
    "roi_positive_ratio": RECIPE["roi_positive_ratio"],
    "train_proposals": 256,  # post-NMS proposals per image while training (matterport: 2000)
    "train_pre_nms": 1000,  # (matterport: 6000)
    "max_gt": 32,  # GT instances per image kept (matterport: MAX_GT_INSTANCES 100)
    "train_bn": None,  # None: True without backbone weights (batch norm must learn), else False
    "freeze": "all",  # backbone stages that train: heads, 5+, 4+, 3+, 2+, all
    "eval_min_confidence": 0.05,  # the COCO evaluation's score threshold (Detectron: 0.05)
    "eval_images": 50,
    "gradient_clip_norm": 5.0,
    "bn_momentum": 0.9,  # of the batch norms that train (see MaskRCNNTrainer)
}


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _split_options(options: dict) -> tuple[dict, dict]:
    model_fields = {f.name for f in fields(MaskRCNNConfig)} - {"num_classes", "image_size"}
    unknown = set(options) - model_fields - set(TRAIN_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown mobile_mask_rcnn option(s) {', '.join(sorted(unknown))}; model options: "
            f"{', '.join(sorted(model_fields))}; training options: {', '.join(TRAIN_OPTIONS)}"
        )
    model = {k: v for k, v in options.items() if k in model_fields}
    training = {**TRAIN_OPTIONS, **{k: v for k, v in options.items() if k in TRAIN_OPTIONS}}
    if training["train_bn"] is None:
        training["train_bn"] = model.get("backbone_weights") is None
    return model, training


def square_size(size) -> int:
    width, height = (int(v) for v in size)
    if width != height or width % 32:
        raise ValueError(
            f"mobile_mask_rcnn takes a square input whose side is a multiple of 32, e.g. --size "
            f"256x256 or 512x512 (GustavZ/Mobile_Mask_RCNN); got {width}x{height}"
        )
    return width


def flip_sample(sample: InstanceSample) -> InstanceSample:
    """The sample mirrored left-right inside its window (boxes and masks with it)."""
    width = sample.window[1]
    image = sample.image.copy()
    image[:, :width] = sample.image[:, :width][:, ::-1]
    masks = sample.masks.copy()
    masks[:, :, :width] = sample.masks[:, :, :width][:, :, ::-1]
    size = sample.image.shape[1]
    boxes = sample.boxes.copy()
    # Normalised x maps to pixel x * (S - 1); a pixel column c goes to (width - 1 - c).
    x1, x2 = boxes[:, 1] * (size - 1), boxes[:, 3] * (size - 1)
    boxes[:, 1] = (width - 1 - x2) / (size - 1)
    boxes[:, 3] = (width - 1 - x1) / (size - 1)
    return InstanceSample(image, boxes, sample.class_ids, masks, sample.scale, sample.window,
                          sample.image_id)


def _padded_gt(sample: InstanceSample, max_gt: int):
    n = min(len(sample.boxes), max_gt)
    size = sample.image.shape[0]
    boxes = np.zeros((max_gt, 4), np.float32)
    classes = np.zeros((max_gt,), np.int32)
    masks = np.zeros((max_gt, size, size), np.uint8)
    boxes[:n], classes[:n], masks[:n] = sample.boxes[:n], sample.class_ids[:n], sample.masks[:n]
    return boxes, classes, masks


class MaskRCNNTrainer:
    """The parts (trunk, box head, mask head), their optimizer and one compiled training step."""

    def __init__(self, config: MaskRCNNConfig, training: dict, optimizer, parts=None):
        import keras

        from edgeseg.models.maskrcnn.network import (
            ProposalLayer,
            build_box_head,
            build_mask_head,
            build_trunk,
            freeze_backbone,
        )
        from edgeseg.models.maskrcnn.ops import ROIAlign

        self.config, self.training, self.optimizer = config, training, optimizer
        if parts is None:
            parts = build_trunk(config), build_box_head(config), build_mask_head(config)
        self.trunk, self.box_head, self.mask_head = parts
        freeze_backbone(self.trunk, training["freeze"], train_bn=bool(training["train_bn"]))
        if training["train_bn"]:
            # keras.applications' MobileNets use a moving-average momentum of 0.999 (ImageNet's
            # long schedule): trained from scratch for a few thousand steps their moving
            # statistics would still lag far behind, and the inference graph, which uses them,
            # would see other features than training did.
            for part in parts:
                for layer in _all_layers(part):
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.momentum = float(training["bn_momentum"])
        self.anchors = config.anchors()
        self.propose = ProposalLayer(
            config.image_size, config.anchor_scales, config.anchor_ratios,
            pre_nms=int(training["train_pre_nms"]), proposals=int(training["train_proposals"]),
            nms_threshold=config.rpn_nms, name="train_proposals")
        self.box_align = ROIAlign(config.image_size, config.box_pool, name="train_align_boxes")
        self.mask_align = ROIAlign(config.image_size, config.mask_pool, name="train_align_masks")
        self.variables = [v for part in parts for v in part.trainable_variables]
        if not optimizer.built:  # its variables must exist before the compiled step runs
            optimizer.build(self.variables)
        self._keras = keras
        self._step = None
        self._proposals = None

    def inference_model(self, min_confidence: float | None = None):
        """The inference graph over the trained parts (weights shared, not copied)."""
        from edgeseg.models.maskrcnn.network import assemble_mask_rcnn

        config = self.config
        if min_confidence is not None:
            config = MaskRCNNConfig(**{**asdict(config), "min_confidence": min_confidence})
        return assemble_mask_rcnn(config, self.trunk, self.box_head, self.mask_head)

    def _compile(self, batch: int):
        import tensorflow as tf

        from edgeseg.models.maskrcnn import losses

        positives = max(1, int(self.training["train_rois"] * self.training["roi_positive_ratio"]))
        clip = float(self.training["gradient_clip_norm"])

        @tf.function(reduce_retracing=True)
        def proposals(images):
            features = self.trunk(images, training=False)
            rois, _ = self.propose([features["rpn_logits"], features["rpn_deltas"]])
            return rois

        @tf.function(reduce_retracing=True)
        def step(images, rpn_match, rpn_deltas, rois, roi_classes, roi_deltas, roi_masks,
                 roi_valid):
            with tf.GradientTape() as tape:
                features = self.trunk(images, training=True)
                pyramid = [features[f"p{level}"] for level in (2, 3, 4, 5)]
                class_logits, box_deltas = self.box_head(
                    self.box_align([rois, *pyramid]), training=True)
                # Positives come first: the mask branch only needs them (the loss ignores the rest).
                mask_logits = self.mask_head(
                    self.mask_align([rois[:, :positives], *pyramid]), training=True)
                parts = {
                    "rpn_class": losses.rpn_class_loss(rpn_match, features["rpn_logits"]),
                    "rpn_box": losses.rpn_box_loss(rpn_match, rpn_deltas, features["rpn_deltas"]),
                    "class": losses.head_class_loss(roi_classes, class_logits, roi_valid),
                    "box": losses.head_box_loss(roi_classes, roi_deltas, box_deltas),
                    "mask": losses.mask_loss(roi_classes[:, :positives], roi_masks[:, :positives],
                                             mask_logits),
                }
                total = tf.add_n(list(parts.values()))
            gradients = tape.gradient(total, self.variables)
            gradients, _ = tf.clip_by_global_norm(gradients, clip)
            self.optimizer.apply_gradients(zip(gradients, self.variables, strict=True))
            return total, parts

        self._proposals, self._step = proposals, step

    def targets(self, samples: list[InstanceSample], rng: np.random.Generator):
        """RPN targets now; detection targets after the proposals of the current weights."""
        from edgeseg.models.maskrcnn.targets import detection_targets, rpn_targets

        t = self.training
        images = np.stack([s.image for s in samples]).astype(np.float32) / 255.0
        gts = [_padded_gt(s, int(t["max_gt"])) for s in samples]
        rpn = [rpn_targets(self.anchors, g[0], int(t["rpn_train_anchors"]), rng=rng) for g in gts]
        if self._step is None:
            self._compile(len(samples))
        proposals = np.asarray(self._proposals(images))
        detections = []
        for (boxes, classes, masks), rois in zip(gts, proposals, strict=True):
            candidates = np.concatenate([boxes, rois], axis=0)  # GT boxes join the proposals
            detections.append(detection_targets(
                candidates, classes, boxes, masks, train_rois=int(t["train_rois"]),
                positive_fraction=float(t["roi_positive_ratio"]), rng=rng))
        stack = lambda name: np.stack([getattr(d, name) for d in detections])  # noqa: E731
        return (images, np.stack([r.match for r in rpn]), np.stack([r.deltas for r in rpn]),
                stack("rois").astype(np.float32), stack("class_ids").astype(np.int32),
                stack("deltas").astype(np.float32), stack("masks").astype(np.float32),
                stack("valid"))

    def train_step(self, samples: list[InstanceSample], rng: np.random.Generator) -> dict:
        batch = self.targets(samples, rng)  # compiles the step on the first call
        total, parts = self._step(*batch)
        return {"loss": float(total), **{k: float(v) for k, v in parts.items()}}


# --- files --------------------------------------------------------------------------------------


def _save_optimizer_atomic(optimizer, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as handle:
        np.savez(handle, *[np.asarray(v) for v in optimizer.variables])
    os.replace(tmp, path)


def _load_optimizer(optimizer, variables, path: Path) -> None:
    optimizer.build(variables)
    with np.load(path) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(optimizer.variables):
        raise RuntimeError(
            f"--resume: {path} holds {len(values)} optimizer variables, the model needs "
            f"{len(optimizer.variables)}; was the run started with other options?"
        )
    for variable, value in zip(optimizer.variables, values, strict=True):
        variable.assign(value)


def make_optimizer(name: str, lr: float, momentum: float, weight_decay: float):
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be sgd or adam, got {name!r}")


# --- the run ------------------------------------------------------------------------------------


def train_mask_rcnn(config) -> dict:
    """Runs (or resumes) a Mask R-CNN run from an ``edgeseg.train.trainer.TrainConfig``."""
    import keras

    from edgeseg.evaluate import load_keras_model, write_json_atomic
    from edgeseg.models.maskrcnn.evaluate import evaluate_instances, keras_predictor
    from edgeseg.train.trainer import TrainingError, save_model_atomic

    size = square_size(config.size)
    model_options, training = _split_options(dict(config.model_options))
    optimizer_name = config.optimizer or RECIPE["optimizer"]
    lr = config.lr if config.lr is not None else RECIPE["lr"]
    momentum = config.momentum if config.momentum is not None else RECIPE["momentum"]
    weight_decay = config.weight_decay if config.weight_decay is not None else RECIPE["weight_decay"]
    batch = config.batch or 2

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path, last_path = out / "run.json", out / "last.keras"
    best_path, optimizer_path = out / "best.keras", out / "last.optimizer.npz"
    record = None
    if config.resume and record_path.is_file() and last_path.is_file():
        record = json.loads(record_path.read_text())
        if record["model"] != MODEL_NAME:
            raise TrainingError(f"--resume: {out} holds a {record['model']} run, not {MODEL_NAME}")
    elif config.resume:
        print(f"--resume: no finished epoch in {out} yet; starting from the beginning")
    elif last_path.exists():
        raise TrainingError(
            f"{out} already holds a run (last.keras); pass --resume to continue it or choose "
            "another --out"
        )

    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed + (len(record["epochs"]) if record else 0))
    train_set = open_instances(config.data, "train")
    val_set = open_instances(config.data, config.val_split)
    num_classes = train_set.num_classes
    samples = [prepare_instances(train_set[i], size) for i in range(len(train_set))]
    samples = [s for s in samples if len(s.boxes)]
    if not samples:
        raise TrainingError(f"{config.data}: no training image has an instance")

    optimizer = make_optimizer(optimizer_name, lr, momentum, weight_decay)
    model_config = MaskRCNNConfig(num_classes=num_classes, image_size=(size, size),
                                  **model_options)
    parts = None
    if record is not None:
        saved = load_keras_model(last_path, compile=False)
        parts = tuple(saved.get_layer(n) for n in ("trunk", "box_head", "mask_head"))
    elif config.init_from:
        source = load_keras_model(config.init_from, compile=False)
        parts = _init_parts(source, model_config)
    trainer = MaskRCNNTrainer(model_config, training, optimizer, parts)
    if record is not None:
        _load_optimizer(optimizer, trainer.variables, optimizer_path)
    else:
        record = {
            "config": {**asdict(config), "size": list(config.size)},
            "model": MODEL_NAME,
            "model_config": {k: v for k, v in asdict(model_config).items()},
            "training": training,
            "optimizer": {"name": optimizer_name, "lr": lr, "momentum": momentum,
                          "weight_decay": weight_decay, "batch": batch},
            "classes": list(train_set.classes),
            "size": [size, size],
            "normalisation": {"scale": 1 / 255.0, "offset": 0.0},
            "num_train": len(samples),
            "num_val": len(val_set),
            "epochs": [],
            "best": None,
        }
        write_json_atomic(record_path, record)

    steps = config.steps_per_epoch or max(1, len(samples) // batch)
    started = time.time()
    for epoch in range(len(record["epochs"]), config.epochs):
        epoch_started = time.time()
        totals: dict[str, float] = {}
        for _ in range(steps):
            chosen = [samples[i] for i in rng.choice(len(samples), batch, replace=False)]
            chosen = [flip_sample(s) if rng.random() < 0.5 else s for s in chosen]
            losses = trainer.train_step(chosen, rng)
            if not np.isfinite(losses["loss"]):
                raise TrainingError(
                    f"epoch {epoch + 1}: the loss is {losses['loss']} ({losses}); lower --lr "
                    "(matterport: 1e-3 with SGD) or check the data"
                )
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value / steps
        train_seconds = time.time() - epoch_started
        predict = keras_predictor(trainer.inference_model(training["eval_min_confidence"]))
        scores = evaluate_instances(predict, val_set, size, limit=int(training["eval_images"]))
        entry = {"epoch": epoch + 1, **{k: round(v, 5) for k, v in totals.items()},
                 **{k: v for k, v in scores.items()}, "seconds": round(time.time() - epoch_started, 1),
                 "images_per_second": round(steps * batch / train_seconds, 3)}
        save_model_atomic(trainer.inference_model(), last_path)
        _save_optimizer_atomic(optimizer, optimizer_path)
        best = record["best"]
        if best is None or scores["mask_AP50"] > best["mask_AP50"]:
            save_model_atomic(trainer.inference_model(), best_path)
            record["best"] = {"epoch": epoch + 1, **scores}
        record["epochs"].append(entry)
        record["wall_seconds"] = record.get("wall_seconds", 0) + time.time() - epoch_started
        write_json_atomic(record_path, record)
        if config.verbose:
            print(f"epoch {epoch + 1}: loss {totals['loss']:.3f} (rpn {totals['rpn_class']:.3f} / "
                  f"{totals['rpn_box']:.3f}, heads {totals['class']:.3f} / {totals['box']:.3f}, "
                  f"mask {totals['mask']:.3f})  box AP50 {100 * scores['box_AP50']:.1f}  mask "
                  f"AP50 {100 * scores['mask_AP50']:.1f}  mask AP {100 * scores['mask_AP']:.1f}  "
                  f"({entry['seconds']:.0f} s)", flush=True)
        if config.max_minutes is not None and time.time() - started > 60 * config.max_minutes:
            print(f"--max-minutes {config.max_minutes}: stopping after epoch {epoch + 1}")
            break
    return record


def _init_parts(source, config: MaskRCNNConfig):
    """Fresh parts with the weights of a trained Mask R-CNN where the shapes agree.

    The classifier, box and mask outputs keep their fresh weights when the class count differs
    (fine-tuning on other classes).
    """
    from edgeseg.models.maskrcnn.network import build_box_head, build_mask_head, build_trunk

    parts = build_trunk(config), build_box_head(config), build_mask_head(config)
    for part in parts:
        old = source.get_layer(part.name)
        for layer in part.layers:
            try:
                weights = old.get_layer(layer.name).get_weights()
            except ValueError:
                continue
            if [w.shape for w in weights] == [w.shape for w in layer.get_weights()]:
                layer.set_weights(weights)
    return parts
