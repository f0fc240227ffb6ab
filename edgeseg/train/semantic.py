"""Semantic segmentation training: ``model.fit`` over the tf.data pipeline, each paper's recipe.

The task's part of ``edgeseg train``: the loss (class-weighted cross-entropy, optionally with
U-Net's border weight map, or Dice), the targets (augmented crops and label maps from
:mod:`edgeseg.train.pipeline`) and the validation metric (mean IoU over the validation split).
The run directory, resume, checkpoints, optimizer, ``--init-from`` and the time budget are
:mod:`edgeseg.train.run`'s, shared with instance training. Runs on one device or many
(MirroredStrategy, or MultiWorkerMirroredStrategy under ``TF_CONFIG``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from edgeseg.artifacts import DEFAULT_NORMALISATION
from edgeseg.data import IGNORE_INDEX, class_pixel_counts, open_dataset
from edgeseg.data.cache import cache_dir
from edgeseg.data.check import quiet_opencv
from edgeseg.io import save_keras_atomic
from edgeseg.metrics import ConfusionMatrix
from edgeseg.models.loading import load_keras_model
from edgeseg.train.pipeline import AugmentConfig, make_dataset, pipeline_errors
from edgeseg.train.run import (
    RunDirectory,
    TimeBudget,
    check_finite_loss,
    describe_transfer,
    make_optimizer,
    open_init_from,
    plural,
    transfer_weights,
)
from edgeseg.train.weights import enet_class_weights, median_frequency_weights

if TYPE_CHECKING:
    from edgeseg.train.trainer import TrainConfig

METRIC = "miou"


# --- pieces -------------------------------------------------------------------------------------


def choose_strategy():
    """MultiWorkerMirroredStrategy under TF_CONFIG, MirroredStrategy over several GPUs, else default."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def class_weights_for(dataset, weighting: str) -> np.ndarray:
    if weighting == "none":
        return np.ones(dataset.num_classes, np.float32)
    counts = class_pixel_counts(dataset, cache_path=cache_dir() / "class_counts.json")
    if weighting == "enet":
        return enet_class_weights(counts).astype(np.float32)
    return median_frequency_weights(counts).astype(np.float32)


def thing_class_ids(dataset, counts: np.ndarray | None = None) -> list[int]:
    """Classes whose connected regions are U-Net's 'cells' for the border weight map.

    The dataset's own ``things`` list when it declares one (the synthetic set's objects);
    otherwise every class but the most frequent one (the background of the paper's cell images).
    """
    from edgeseg.data import SYNTHETIC_CLASSES

    if list(dataset.classes) == list(SYNTHETIC_CLASSES):
        return [dataset.classes.index(n) for n in ("disc", "ellipse", "box", "triangle")]
    things = getattr(dataset, "things", None)
    if things:
        return [dataset.classes.index(n) for n in things]
    if counts is None:
        counts = class_pixel_counts(dataset, cache_path=cache_dir() / "class_counts.json")
    background = int(np.argmax(counts))
    return [i for i in range(dataset.num_classes) if i != background]


def make_loss(config: TrainConfig, num_classes: int, class_weights, weight_map: bool):
    from edgeseg.train.losses import DiceLoss, WeightedSparseCrossEntropy

    # With the U-Net weight map the class weights are inside the map (w_c), not in the loss.
    ce = WeightedSparseCrossEntropy(
        num_classes, None if weight_map else [float(w) for w in class_weights], IGNORE_INDEX
    )
    return ce if config.loss == "ce" else DiceLoss(num_classes, IGNORE_INDEX)


def evaluate_dataset(model, dataset_tf, num_classes: int) -> dict:
    """Confusion-matrix metrics of ``model`` over a batched (image, label) dataset."""
    confusion = ConfusionMatrix(num_classes, IGNORE_INDEX)
    for batch in dataset_tf:
        images, labels = batch[0], batch[1]
        logits = model(images, training=False)
        preds = np.asarray(logits).argmax(-1)
        confusion.update(np.asarray(labels), preds)
    return confusion.result()


# --- the run ------------------------------------------------------------------------------------


def train_semantic(config: TrainConfig, strategy=None) -> dict:
    """Runs (or resumes) semantic training; returns the run record written to run.json."""
    config = config.resolved()
    run = RunDirectory(config.out, config.model, "semantic", METRIC, resume=config.resume)

    # Every sample is decoded and checked before TensorFlow starts: a bad file stops the run
    # at once, with one line naming it (or, with --skip-bad, is left out and counted).
    progress = bool(config.verbose)
    train_set = open_dataset(config.data, "train", skip_bad=config.skip_bad, check=True,
                             progress=progress)
    val_set = open_dataset(config.data, config.val_split, skip_bad=config.skip_bad, check=True,
                           progress=progress)
    for split in (train_set, val_set):
        if split.skipped:
            print(f"--skip-bad: left out {plural(len(split.skipped), 'bad sample')} of "
                  f"{split.name} {split.split} (listed in run.json); the first: "
                  f"{split.skipped[0][1]}")
    num_classes = train_set.num_classes
    run.check_classes(train_set.classes)
    init = open_init_from(config.init_from, "semantic") if config.init_from else None

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision == "on" or (
        config.mixed_precision == "auto" and tf.config.list_physical_devices("GPU")
    ):
        keras.mixed_precision.set_global_policy("mixed_float16")

    class_weights = class_weights_for(train_set, config.class_weighting)
    things = thing_class_ids(train_set) if config.weight_map else None

    strategy = strategy or choose_strategy()
    global_batch = config.batch * strategy.num_replicas_in_sync
    train_tf = make_dataset(
        train_set, config.size, global_batch, training=True,
        augment=AugmentConfig(elastic=bool(config.elastic)),
        class_weights=class_weights, weight_map_things=things, seed=config.seed,
    )
    val_tf = make_dataset(val_set, config.size, global_batch, training=False)
    steps = config.steps_per_epoch or math.ceil(len(train_set) / global_batch)
    if config.steps_per_epoch:
        train_tf = train_tf.repeat()

    width, height = config.size
    with strategy.scope():
        if run.resuming:
            import edgeseg.train.losses  # noqa: F401  (registers the loss last.keras names)

            model = load_keras_model(run.last_path, compile=True)
        else:
            from edgeseg.models import build

            model = build(config.model, num_classes, (height, width, 3), **config.model_options)
            if init is not None:
                source = load_keras_model(init.path, compile=False)
                copied = transfer_weights(source, model)
                print(describe_transfer(config.init_from, init, copied, num_classes))
            model.compile(
                optimizer=make_optimizer(config.optimizer, config.lr, config.momentum,
                                         config.weight_decay),
                loss=make_loss(config, num_classes, class_weights, bool(things)),
                jit_compile=False,
            )

    record = run.start({
        "config": {**asdict(config), "size": list(config.size)},
        "model": config.model,
        "classes": list(train_set.classes),
        "palette": np.asarray(train_set.palette).tolist(),
        "ignore_index": IGNORE_INDEX,
        "size": list(config.size),
        "normalisation": DEFAULT_NORMALISATION,
        "class_weights": [float(w) for w in class_weights],
        "num_train": len(train_set),
        "num_val": len(val_set),
        "skipped": {"train": [list(s) for s in train_set.skipped],
                    config.val_split: [list(s) for s in val_set.skipped]},
    })
    if not run.epochs_left(config.epochs):
        return record

    # A sample that goes bad after the check surfaces inside tf.data: one line, as the check's.
    with pipeline_errors(), quiet_opencv():
        model.fit(
            train_tf,
            epochs=config.epochs,
            initial_epoch=run.epochs_done,
            steps_per_epoch=steps,
            shuffle=False,  # the pipeline shuffles
            callbacks=[
                NaNGuard(),
                EpochRecorder(run, val_tf, num_classes, images_per_epoch=steps * global_batch),
                TimeBudgetCallback(config.max_minutes),
                keras.callbacks.TensorBoard(str(run.path("tensorboard")), update_freq="epoch"),
            ],
            verbose=config.verbose,
        )
    return run.record


# --- callbacks ----------------------------------------------------------------------------------


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


class NaNGuard(_keras_callback_base()):
    """Stops training with a message saying where the loss became NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None:
            check_finite_loss(float(loss), self.epoch + 1, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


class TimeBudgetCallback(_keras_callback_base()):
    """Ends ``model.fit`` after the first epoch that finishes past ``minutes`` (None: never)."""

    def __init__(self, minutes: float | None):
        super().__init__()
        self.budget = TimeBudget(minutes)

    def on_epoch_end(self, epoch, logs=None):
        if self.budget.spent(epoch + 1):
            self.model.stop_training = True


class EpochRecorder(_keras_callback_base()):
    """At each epoch's end: validation metrics, then last / best models and run.json."""

    def __init__(self, run: RunDirectory, val_tf, num_classes: int, images_per_epoch: int):
        super().__init__()
        self.run = run
        self.val_tf = val_tf
        self.num_classes = num_classes
        self.images_per_epoch = images_per_epoch
        self.epoch_started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        train_seconds = time.time() - self.epoch_started
        metrics = evaluate_dataset(self.model, self.val_tf, self.num_classes)
        entry = {
            "epoch": epoch + 1,
            "loss": float((logs or {}).get("loss", float("nan"))),
            "seconds": time.time() - self.epoch_started,
            # The first epoch includes tracing the training graph.
            "train_images_per_second": self.images_per_epoch / train_seconds,
            **{k: metrics[k] for k in ("miou", "class_avg_acc", "global_acc", "per_class_iou")},
        }
        self.run.end_epoch(entry, {METRIC: entry["miou"]},
                           lambda path: save_keras_atomic(self.model, path))
        print(
            f"\nepoch {epoch + 1}: loss {entry['loss']:.4f}  val mIoU {100 * entry['miou']:.1f}  "
            f"class acc {100 * entry['class_avg_acc']:.1f}  global acc "
            f"{100 * entry['global_acc']:.1f}  ({entry['seconds']:.0f} s)",
            flush=True,
        )
