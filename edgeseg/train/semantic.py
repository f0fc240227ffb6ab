"""Semantic segmentation training: ``model.fit`` on any Keras backend, each paper's recipe.

The task's part of ``edgeseg train``: the loss (class-weighted cross-entropy, optionally with
U-Net's border weight map, or Dice), the targets (augmented crops and label maps from
:mod:`edgeseg.train.pipeline`) and the validation metric (mean IoU over the validation split).
The run directory, resume, checkpoints, optimizer, ``--init-from`` and the time budget are
:mod:`edgeseg.train.run`'s, shared with instance training.

On the TensorFlow backend the input is a tf.data pipeline and training runs on one device or
many (MirroredStrategy, or MultiWorkerMirroredStrategy under ``TF_CONFIG``), with TensorBoard
logs. On JAX (or PyTorch) the same samples come through a ``keras.utils.PyDataset`` and nothing
imports TensorFlow: ``KERAS_BACKEND=jax edgeseg train ...`` runs where TensorFlow is not
installed, XLA-compiled, on the first GPU JAX sees.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import zlib
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
from edgeseg.train.pipeline import AugmentConfig, make_dataset, make_py_dataset, pipeline_errors
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
    """MultiWorkerMirroredStrategy under TF_CONFIG, MirroredStrategy over several GPUs, else
    default. TensorFlow backend only."""
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


def evaluate_dataset(model, batches, num_classes: int) -> dict:
    """Confusion-matrix metrics of ``model`` over batches of (image, label): a tf.data dataset
    or a PyDataset (:mod:`edgeseg.train.pipeline`)."""
    import keras

    # The compiled predict step on JAX (an eager call runs op by op); a plain call on
    # TensorFlow, which also holds under a distribution strategy.
    if keras.backend.backend() == "tensorflow":
        def predict(images):
            return model(images, training=False)
    else:
        predict = model.predict_on_batch
    confusion = ConfusionMatrix(num_classes, IGNORE_INDEX)
    for batch in batches:
        images, labels = batch[0], np.asarray(batch[1])
        preds = np.asarray(predict(images)).argmax(-1)
        confusion.update(labels, preds)
    return confusion.result()


def has_gpu() -> bool:
    """Whether the active Keras backend sees a GPU."""
    from edgeseg.runtime.predictor import keras_device

    return keras_device()["platform"] == "gpu"


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

    on_tensorflow = keras.backend.backend() == "tensorflow"
    if strategy is not None and not on_tensorflow:
        raise ValueError(f"a tf.distribute strategy needs the TensorFlow backend, not "
                         f"{keras.backend.backend()} (KERAS_BACKEND)")
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision == "on" or (config.mixed_precision == "auto" and has_gpu()):
        keras.mixed_precision.set_global_policy("mixed_float16")

    class_weights = class_weights_for(train_set, config.class_weighting)
    things = thing_class_ids(train_set) if config.weight_map else None

    if on_tensorflow:
        strategy = strategy or choose_strategy()
        global_batch = config.batch * strategy.num_replicas_in_sync
    else:
        global_batch = config.batch
    steps = config.steps_per_epoch or math.ceil(len(train_set) / global_batch)
    data = {"augment": AugmentConfig(elastic=bool(config.elastic)),
            "class_weights": class_weights, "weight_map_things": things, "seed": config.seed}
    if on_tensorflow:
        train_data = make_dataset(train_set, config.size, global_batch, training=True, **data)
        val_data = make_dataset(val_set, config.size, global_batch, training=False)
        if config.steps_per_epoch:
            train_data = train_data.repeat()
    else:
        train_data = make_py_dataset(train_set, config.size, global_batch, training=True,
                                     steps_per_epoch=steps, first_epoch=run.epochs_done, **data)
        val_data = make_py_dataset(val_set, config.size, global_batch, training=False)

    width, height = config.size
    with strategy.scope() if on_tensorflow else contextlib.nullcontext():
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
            )
        # XLA on JAX (eager JAX runs op by op), TensorFlow's own graph on TensorFlow; set after
        # loading too, since a checkpoint holds the setting of the backend that saved it.
        model.jit_compile = not on_tensorflow

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

    if not on_tensorflow:
        # fit builds an unbuilt loss or optimizer from a batch it reads off the PyDataset's
        # queue, and that read shifts every later batch by one place (Keras 3.15): epoch 2
        # would train on most of epoch 1's batches, and a resumed run (whose optimizer is
        # built) on others. Built here from batch 0 itself, fit reads nothing extra.
        model._symbolic_build(data_batch=train_data[0])
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    callbacks = [
        EpochSeeding(config.seed, train_data),
        NaNGuard(),
        EpochRecorder(run, val_data, num_classes, images_per_epoch=steps * global_batch),
        TimeBudgetCallback(config.max_minutes),
    ]
    if on_tensorflow:  # TensorBoard's writer is TensorFlow's
        callbacks.append(
            keras.callbacks.TensorBoard(str(run.path("tensorboard")), update_freq="epoch"))
    # A sample that goes bad after the check surfaces inside tf.data: one line, as the check's
    # (a PyDataset raises the reader's DataError itself).
    with pipeline_errors() if on_tensorflow else contextlib.nullcontext(), quiet_opencv():
        model.fit(
            train_data,
            epochs=config.epochs,
            initial_epoch=run.epochs_done,
            steps_per_epoch=steps,
            shuffle=False,  # the pipeline shuffles
            callbacks=callbacks,
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


class EpochSeeding(_keras_callback_base()):
    """As each epoch begins, seeds its randomness from (run seed, epoch): the model's random
    layers (dropout) and, for a PyDataset, the place in the input stream.

    A .keras file does not keep the state of the layers' random generators, and Keras may read
    a PyDataset for one extra pass (to build a model before its first step), so counting
    passes would drift; with this, epoch N draws the same inputs and dropout masks whether the
    run was resumed or not. (A tf.data pipeline keeps its own shuffling state: resumed runs on
    TensorFlow continue from the saved state but draw other inputs.)
    """

    def __init__(self, seed: int, data=None):
        super().__init__()
        self.seed = seed
        self.data = data

    def on_epoch_begin(self, epoch, logs=None):
        if hasattr(self.data, "epoch"):  # before Keras starts the PyDataset's workers
            self.data.epoch = epoch
        # By layer name: a loaded model lists its generators' variables in another order.
        for layer in self.model._flatten_layers(include_self=False):
            generator = getattr(layer, "seed_generator", None)
            if generator is not None:
                key = zlib.crc32(layer.name.encode())
                seed = np.random.default_rng([self.seed, epoch, key]).integers(0, 2**31)
                generator.state.assign(np.array([seed, 0], dtype=generator.state.dtype))


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

    def __init__(self, run: RunDirectory, val_data, num_classes: int, images_per_epoch: int):
        super().__init__()
        self.run = run
        self.val_data = val_data
        self.num_classes = num_classes
        self.images_per_epoch = images_per_epoch
        self.epoch_started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        train_seconds = time.time() - self.epoch_started
        metrics = evaluate_dataset(self.model, self.val_data, self.num_classes)
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
