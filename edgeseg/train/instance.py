"""Instance segmentation training: the mobile Mask R-CNN (``edgeseg train`` of an instance model).

The task's part of ``edgeseg train``. Each step, as matterport's training graph: the RPN is
trained on anchor targets computed from the GT boxes (``targets.rpn_targets``); the current
RPN's proposals, with the GT boxes added (as Detectron does, so that the heads see positives
from the first step), are sampled into training ROIs with class, box and mask targets
(``targets.detection_targets``); the heads are trained on those ROIs. Targets are NumPy; the
forward / backward pass is one compiled TensorFlow function. The loss is the sum of the five
losses of the paper (RPN class and box, head class and box, mask binary cross-entropy); the
validation metric is COCO mask AP50.

The run directory, resume, checkpoints, optimizer, ``--init-from`` and the time budget are
:mod:`edgeseg.train.run`'s, shared with semantic training; the optimizer state, which lives
outside a compiled Keras model here, is kept beside ``last.keras`` in ``last.optimizer.npz``.
The model side (network, targets, losses, configuration) is :mod:`edgeseg.models.maskrcnn`'s.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeseg.artifacts import DEFAULT_NORMALISATION
from edgeseg.data import open_instances
from edgeseg.data.check import check_instances, check_samples
from edgeseg.instances import evaluate_instances
from edgeseg.io import atomic_path, save_keras_atomic
from edgeseg.models.loading import load_keras_model
from edgeseg.models.maskrcnn.config import RECIPE, MaskRCNNConfig
from edgeseg.models.maskrcnn.dataset import InstanceSample, prepare_instances
from edgeseg.models.maskrcnn.evaluate import keras_predictor
from edgeseg.train.run import (
    RunDirectory,
    TimeBudget,
    TrainingError,
    check_finite_loss,
    describe_transfer,
    make_optimizer,
    open_init_from,
    plural,
    transfer_weights,
)

if TYPE_CHECKING:
    from edgeseg.train.trainer import TrainConfig

METRIC = "mask_AP50"
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


def split_options(options: dict) -> tuple[dict, dict]:
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


def padded_gt(sample: InstanceSample, max_gt: int):
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
            freeze_backbone,
        )
        from edgeseg.models.maskrcnn.ops import ROIAlign

        self.config, self.training, self.optimizer = config, training, optimizer
        if parts is None:
            parts = fresh_parts(config)
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
        gts = [padded_gt(s, int(t["max_gt"])) for s in samples]
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


def save_optimizer_atomic(optimizer, path: Path) -> None:
    """The optimizer's variables (step count, moments) as an .npz, written atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, *[np.asarray(v) for v in optimizer.variables])


def load_optimizer(optimizer, variables, path: Path) -> None:
    optimizer.build(variables)
    with np.load(path) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(optimizer.variables):
        raise TrainingError(
            f"--resume: {path} holds {len(values)} optimizer variables, the model needs "
            f"{len(optimizer.variables)}; was the run started with other options?"
        )
    for variable, value in zip(optimizer.variables, values, strict=True):
        variable.assign(value)


# --- data ---------------------------------------------------------------------------------------


def load_samples(instances, size: int, skip_bad: bool, progress: bool) -> list[InstanceSample]:
    """Every training image at the model's size, decoded and checked before the first step.

    A bad image (unreadable, of another size than its annotations, an unknown category) stops
    the run with one line naming it, or with ``skip_bad`` is left out and counted in
    ``instances.skipped``. Images without an instance are left out: they train nothing.
    """
    prepared: dict[int, InstanceSample] = {}

    def prepare(i: int) -> None:
        prepared[i] = prepare_instances(instances[i], size)

    files = [instances.image_files(i) for i in range(len(instances))]
    # Every image is decoded here anyway, so there is nothing to remember between runs.
    bad = check_samples(files, prepare, label=f"loading {instances.index.annotation_file.name}",
                        skip_bad=skip_bad, cache_path=None, progress=progress)
    instances.skipped.extend((str(files[i][0]), message) for i, message in bad)
    return [prepared[i] for i in sorted(prepared) if len(prepared[i].boxes)]


# --- the run ------------------------------------------------------------------------------------


def train_instance(config: TrainConfig) -> dict:
    """Runs (or resumes) instance training from a ``TrainConfig``; returns the run record."""
    size = square_size(config.size)
    model_options, training = split_options(dict(config.model_options))
    optimizer_name = config.optimizer or RECIPE["optimizer"]
    lr = config.lr if config.lr is not None else RECIPE["lr"]
    momentum = config.momentum if config.momentum is not None else RECIPE["momentum"]
    weight_decay = config.weight_decay if config.weight_decay is not None else RECIPE["weight_decay"]
    batch = config.batch or 2
    run = RunDirectory(config.out, config.model, "instance", METRIC, resume=config.resume)

    progress = bool(config.verbose)
    train_set = open_instances(config.data, "train")
    val_set = open_instances(config.data, config.val_split)
    run.check_classes(list(train_set.classes))
    init = open_init_from(config.init_from, "instance") if config.init_from else None
    samples = load_samples(train_set, size, config.skip_bad, progress)
    # The images validation reads each epoch, checked now rather than after the first epoch.
    val_set = check_instances(val_set, int(training["eval_images"]), skip_bad=config.skip_bad,
                              progress=progress)
    for split, instances in (("train", train_set), (config.val_split, val_set)):
        if instances.skipped:
            print(f"--skip-bad: left out {plural(len(instances.skipped), 'bad image')} of "
                  f"{split} (listed in run.json); the first: {instances.skipped[0][1]}")
    if not samples:
        raise TrainingError(f"{config.data}: no training image has an instance")
    num_classes = train_set.num_classes

    import keras

    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed + run.epochs_done)
    optimizer = make_optimizer(optimizer_name, lr, momentum, weight_decay)
    model_config = MaskRCNNConfig(num_classes=num_classes, image_size=(size, size),
                                  **model_options)
    optimizer_path = run.path("last.optimizer.npz")
    parts = None
    if run.resuming:
        saved = load_keras_model(run.last_path, compile=False)
        parts = tuple(saved.get_layer(n) for n in PART_NAMES)
    elif init is not None:
        parts = fresh_parts(model_config)
        source = load_keras_model(init.path, compile=False)
        copied = sum(transfer_weights(source.get_layer(part.name), part) for part in parts)
        print(describe_transfer(config.init_from, init, copied, num_classes))
    trainer = MaskRCNNTrainer(model_config, training, optimizer, parts)
    if run.resuming:
        load_optimizer(optimizer, trainer.variables, optimizer_path)
    record = run.start({
        "config": {**asdict(config), "size": [size, size]},
        "model": config.model,
        "model_config": asdict(model_config),
        "training": training,
        "optimizer": {"name": optimizer_name, "lr": lr, "momentum": momentum,
                      "weight_decay": weight_decay, "batch": batch},
        "classes": list(train_set.classes),
        "size": [size, size],
        "normalisation": DEFAULT_NORMALISATION,
        "num_train": len(samples),
        "num_val": len(val_set),
        "skipped": {"train": [list(s) for s in train_set.skipped],
                    config.val_split: [list(s) for s in val_set.skipped]},
    })
    if not run.epochs_left(config.epochs):
        return record

    def save(path: Path) -> None:
        save_keras_atomic(trainer.inference_model(), path)
        if path == run.last_path:
            save_optimizer_atomic(optimizer, optimizer_path)

    steps = config.steps_per_epoch or max(1, len(samples) // batch)
    budget = TimeBudget(config.max_minutes)
    for epoch in range(run.epochs_done + 1, config.epochs + 1):
        epoch_started = time.time()
        totals: dict[str, float] = {}
        for step in range(steps):
            chosen = [samples[i] for i in rng.choice(len(samples), batch, replace=False)]
            chosen = [flip_sample(s) if rng.random() < 0.5 else s for s in chosen]
            losses = trainer.train_step(chosen, rng)
            check_finite_loss(losses["loss"], epoch, step, detail=f" ({losses})",
                              hint=" (matterport: 1e-3 with SGD)")
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value / steps
        train_seconds = time.time() - epoch_started
        predict = keras_predictor(trainer.inference_model(training["eval_min_confidence"]))
        scores = evaluate_instances(predict, val_set, size, limit=int(training["eval_images"]))
        entry = {"epoch": epoch, **{k: round(v, 5) for k, v in totals.items()}, **scores,
                 "seconds": round(time.time() - epoch_started, 1),
                 "images_per_second": round(steps * batch / train_seconds, 3)}
        run.end_epoch(entry, scores, save)
        if config.verbose:
            print(f"epoch {epoch}: loss {totals['loss']:.3f} (rpn {totals['rpn_class']:.3f} / "
                  f"{totals['rpn_box']:.3f}, heads {totals['class']:.3f} / {totals['box']:.3f}, "
                  f"mask {totals['mask']:.3f})  box AP50 {100 * scores['box_AP50']:.1f}  mask "
                  f"AP50 {100 * scores['mask_AP50']:.1f}  mask AP {100 * scores['mask_AP']:.1f}  "
                  f"({entry['seconds']:.0f} s)", flush=True)
        if budget.spent(epoch):
            break
    return run.record


PART_NAMES = ("trunk", "box_head", "mask_head")


def fresh_parts(config: MaskRCNNConfig):
    """The trunk, box head and mask head, freshly initialised."""
    from edgeseg.models.maskrcnn.network import build_box_head, build_mask_head, build_trunk

    return build_trunk(config), build_box_head(config), build_mask_head(config)
