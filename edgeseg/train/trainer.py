"""``edgeseg train``: each model's paper recipe, resumable and atomic, on one or many devices.

A run directory holds:
- ``last.keras``: the model and its optimizer state after the last finished epoch;
- ``best.keras``: the model with the best validation mean IoU so far;
- ``run.json``: the configuration, the class list and palette, and the metrics of every epoch;
- ``tensorboard/``: TensorBoard logs.
Every file is written to a temporary name and renamed, so a run killed at any moment (even
``kill -9`` while saving) leaves the last finished epoch intact; ``--resume`` continues from it.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.data import IGNORE_INDEX, class_pixel_counts, open_dataset
from edgeseg.data.cache import cache_dir
from edgeseg.evaluate import load_keras_model, write_json_atomic
from edgeseg.metrics import ConfusionMatrix
from edgeseg.train.pipeline import NORMALISATION, AugmentConfig, make_dataset
from edgeseg.train.weights import enet_class_weights, median_frequency_weights

CLASS_WEIGHTINGS = ("enet", "median", "none")
OPTIMIZERS = ("adam", "sgd")


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, an incompatible resume)."""


@dataclass
class TrainConfig:
    """Everything a run needs; ``None`` fields take the model's paper recipe."""

    model: str
    data: str = "synthetic"
    out: str = "runs/train"
    size: tuple[int, int] = (480, 360)  # (width, height) of the training crops and the model
    epochs: int = 10
    batch: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    momentum: float | None = None
    class_weighting: str | None = None
    weight_map: bool | None = None
    elastic: bool | None = None
    loss: str = "ce"  # "ce" (weighted cross-entropy) or "dice"
    val_split: str = "val"
    steps_per_epoch: int | None = None  # None: one pass over the training split
    model_options: dict = field(default_factory=dict)
    init_from: str | None = None
    resume: bool = False
    skip_bad: bool = False
    seed: int = 0
    mixed_precision: str = "auto"  # "auto" (on GPUs), "on", "off"
    max_minutes: float | None = None  # stop after the epoch that passes this budget
    verbose: int = 1

    def resolved(self) -> TrainConfig:
        """A copy with the recipe's values in the fields left as None."""
        family = self.model if self.model != "fcn8s" else "fcn"
        recipe = importlib.import_module(f"edgeseg.models.{family}.recipe").RECIPE
        values = asdict(self)
        for key, default in recipe.items():
            if key in values and values[key] is None:
                values[key] = default
        values["momentum"] = values["momentum"] if values["momentum"] is not None else 0.9
        config = TrainConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise ValueError(
                f"class weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, "
                f"got {self.class_weighting!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.loss not in ("ce", "dice"):
            raise ValueError(f"loss must be ce or dice, got {self.loss!r}")
        for name in ("epochs", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")


# --- files --------------------------------------------------------------------------------------


def save_model_atomic(model, path: Path) -> None:
    # Keras only writes files ending in .keras; the temporary name keeps the suffix.
    tmp = path.with_name(f".tmp-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)


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


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.lr, weight_decay=config.weight_decay or None)
    return keras.optimizers.SGD(
        config.lr, momentum=config.momentum, weight_decay=config.weight_decay or None
    )


def make_loss(config: TrainConfig, num_classes: int, class_weights, weight_map: bool):
    from edgeseg.train.losses import DiceLoss, WeightedSparseCrossEntropy

    # With the U-Net weight map the class weights are inside the map (w_c), not in the loss.
    ce = WeightedSparseCrossEntropy(
        num_classes, None if weight_map else [float(w) for w in class_weights], IGNORE_INDEX
    )
    return ce if config.loss == "ce" else DiceLoss(num_classes, IGNORE_INDEX)


def replace_classifier(source, target) -> int:
    """Copies every weight whose layer name and shape match from ``source`` into ``target``.

    Layers whose shapes differ (the classifier when the class count changes) keep their fresh
    initialisation: transfer learning. Returns how many layers were copied.
    """
    copied = 0
    source_layers = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        match = source_layers.get(layer.name)
        if match is None or not layer.weights:
            continue
        theirs = match.get_weights()
        if [w.shape for w in theirs] == [w.shape for w in layer.get_weights()]:
            layer.set_weights(theirs)
            copied += 1
    return copied


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


def train(config: TrainConfig, strategy=None) -> dict:
    """Runs (or resumes) training; returns the run record written to run.json."""
    if config.model == "mobile_mask_rcnn":  # instance segmentation has a training loop of its own
        from edgeseg.models.maskrcnn.train import train_mask_rcnn

        return train_mask_rcnn(config)
    import keras
    import tensorflow as tf

    config = config.resolved()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "run.json"
    last_path, best_path = out / "last.keras", out / "best.keras"

    record = None
    if config.resume:
        if not (record_path.is_file() and last_path.is_file()):
            print(f"--resume: no finished epoch in {out} yet; starting from the beginning")
        else:
            record = json.loads(record_path.read_text())
            if record["config"]["model"] != config.model:
                raise TrainingError(
                    f"--resume: {out} holds a {record['config']['model']} run, not {config.model}"
                )
    elif last_path.exists():
        raise TrainingError(
            f"{out} already holds a run (last.keras); pass --resume to continue it or choose "
            "another --out"
        )

    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision == "on" or (
        config.mixed_precision == "auto" and tf.config.list_physical_devices("GPU")
    ):
        keras.mixed_precision.set_global_policy("mixed_float16")

    train_set = open_dataset(config.data, "train", skip_bad=config.skip_bad)
    val_set = open_dataset(config.data, config.val_split, skip_bad=config.skip_bad)
    num_classes = train_set.num_classes
    class_weights = class_weights_for(train_set, config.class_weighting)
    things = thing_class_ids(train_set) if config.weight_map else None

    strategy = strategy or choose_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch * replicas
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
        if record is not None:
            model = load_keras_model(last_path, compile=True)
        else:
            from edgeseg.models import build

            model = build(config.model, num_classes, (height, width, 3), **config.model_options)
            if config.init_from:
                source = load_keras_model(config.init_from, compile=False)
                copied = replace_classifier(source, model)
                print(f"--init-from {config.init_from}: copied {copied} layers' weights")
            model.compile(
                optimizer=make_optimizer(config, steps),
                loss=make_loss(config, num_classes, class_weights, bool(things)),
                jit_compile=False,
            )

    if record is None:
        record = {
            "config": {**asdict(config), "size": list(config.size)},
            "model": config.model,
            "classes": list(train_set.classes),
            "palette": np.asarray(train_set.palette).tolist(),
            "ignore_index": IGNORE_INDEX,
            "size": list(config.size),
            "normalisation": NORMALISATION,
            "class_weights": [float(w) for w in class_weights],
            "num_train": len(train_set),
            "num_val": len(val_set),
            "skipped": [list(map(str, s)) for s in getattr(train_set, "skipped", [])],
            "epochs": [],
            "best": None,
        }
        write_json_atomic(record_path, record)
    initial_epoch = len(record["epochs"])
    if initial_epoch >= config.epochs:
        print(f"{out}: {initial_epoch} epochs already finished (--epochs {config.epochs})")
        return record
    if initial_epoch:
        print(f"resuming {out} after epoch {initial_epoch}")

    callback = EpochRecorder(record, record_path, last_path, best_path, val_tf, num_classes,
                             images_per_epoch=steps * global_batch)
    started = time.time()
    model.fit(
        train_tf,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps,
        shuffle=False,  # the pipeline shuffles
        callbacks=[
            NaNGuard(),
            callback,
            TimeBudget(config.max_minutes),
            keras.callbacks.TensorBoard(str(out / "tensorboard"), update_freq="epoch"),
        ],
        verbose=config.verbose,
    )
    record["wall_seconds"] = record.get("wall_seconds", 0) + time.time() - started
    write_json_atomic(record_path, record)
    return record


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


class NaNGuard(_keras_callback_base()):
    """Stops training with a message saying where the loss became NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(
                f"the loss became {loss} at batch {batch} of epoch {self.epoch + 1}; nothing of "
                "this epoch was saved. Lower the learning rate (--lr) or check the labels."
            )

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


class TimeBudget(_keras_callback_base()):
    """Ends training after the first epoch that finishes past ``minutes`` (None: no budget)."""

    def __init__(self, minutes: float | None):
        super().__init__()
        self.minutes = minutes
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if self.minutes is not None and time.time() - self.started > 60 * self.minutes:
            print(f"time budget of {self.minutes:g} min reached after epoch {epoch + 1}")
            self.model.stop_training = True


class EpochRecorder(_keras_callback_base()):
    """At each epoch's end: validation metrics, last / best models and run.json, atomically."""

    def __init__(self, record, record_path, last_path, best_path, val_tf, num_classes,
                 images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.record = record
        self.record_path = record_path
        self.last_path = last_path
        self.best_path = best_path
        self.val_tf = val_tf
        self.num_classes = num_classes
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
        # Models first, then the record: a record never names an epoch whose model is missing.
        best = self.record.get("best")
        if best is None or entry["miou"] > best["miou"]:
            save_model_atomic(self.model, self.best_path)
            self.record["best"] = {"epoch": epoch + 1, "miou": entry["miou"]}
        save_model_atomic(self.model, self.last_path)
        self.record["epochs"].append(entry)
        write_json_atomic(self.record_path, self.record)
        print(
            f"\nepoch {epoch + 1}: loss {entry['loss']:.4f}  val mIoU {100 * entry['miou']:.1f}  "
            f"class acc {100 * entry['class_avg_acc']:.1f}  global acc "
            f"{100 * entry['global_acc']:.1f}  ({entry['seconds']:.0f} s)",
            flush=True,
        )
