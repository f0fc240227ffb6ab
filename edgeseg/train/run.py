"""The run directory every ``edgeseg train`` writes, whatever the task.

A run directory holds:

- ``last.keras``: the model after the last finished epoch (for a Keras-compiled model, its
  optimizer state too; a task that trains outside ``model.fit`` keeps that beside it);
- ``best.keras``: the model with the best validation score so far (the task's metric: mean IoU
  for semantic segmentation, mask AP50 for instance segmentation);
- ``run.json``: the configuration, the classes and what the task adds, and every epoch's
  metrics, written after the models of that epoch, so a record never names an epoch whose
  model is missing.

Every file is written under a temporary name and renamed (:mod:`edgeseg.io`), so a run killed
at any moment (even ``kill -9`` while saving) leaves the last finished epoch intact, and
``--resume`` continues from it. This module also holds what both tasks' loops share: the
optimizer factory, weight transfer for ``--init-from`` and the time budget (``--max-minutes``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from edgeseg.artifacts import Artifact, open_artifact
from edgeseg.io import read_json, write_json_atomic

OPTIMIZERS = ("adam", "sgd")
RESUME_MODES = (False, True, "auto")


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, an incompatible resume or --init-from)."""


# --- the run directory ---------------------------------------------------------------------------


class RunDirectory:
    """``--out``: the resume check, the record and the atomic end of each epoch.

    Args:
        out: the folder.
        model: the registry name of the model being trained.
        task: its task, ``"semantic"`` or ``"instance"``.
        metric: the validation metric that picks ``best.keras`` (higher is better).
        resume: False: a folder that already holds a finished epoch is an error; True
            (``--resume``): continue that run, saying so when there is none yet; ``"auto"``:
            continue it if there is one, else start quietly (``edgeseg quickstart``).

    Raises:
        TrainingError: the folder holds a run and ``resume`` is False, or it holds a run of
            another model or task.
    """

    def __init__(self, out: str | os.PathLike, model: str, task: str, metric: str,
                 resume: bool | str = False):
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
        self.out = Path(out)
        self.model, self.task, self.metric = model, task, metric
        self.record_path = self.out / "run.json"
        self.last_path = self.out / "last.keras"
        self.best_path = self.out / "best.keras"
        self.record: dict | None = None
        self._clock = time.time()
        finished = self.record_path.is_file() and self.last_path.is_file()
        if resume and finished:
            self.record = self._resumable_record()
        elif resume is True:
            print(f"--resume: no finished epoch in {self.out} yet; starting from the beginning")
        elif not resume and self.last_path.exists():
            raise TrainingError(
                f"{self.out} already holds a run (last.keras); pass --resume to continue it or "
                "choose another --out"
            )

    def _resumable_record(self) -> dict:
        record = read_json(self.record_path, "training record")
        artifact = open_artifact(self.last_path)  # what the checkpoint is, from the file itself
        held = record.get("model") or artifact.family
        if artifact.task != self.task or held != self.model:
            raise TrainingError(
                f"--resume: {self.out} holds a {held} run ({artifact.task} segmentation), not "
                f"{self.model} ({self.task}); choose another --out"
            )
        if not isinstance(record.get("epochs"), list):
            raise TrainingError(f"--resume: {self.record_path} has no list of epochs")
        return record

    @property
    def resuming(self) -> bool:
        """Whether there is a finished epoch to continue from."""
        return self.record is not None

    @property
    def epochs_done(self) -> int:
        return len(self.record["epochs"]) if self.record else 0

    def path(self, name: str) -> Path:
        """A file of the run, e.g. ``run.path("last.optimizer.npz")``."""
        return self.out / name

    def check_classes(self, classes: list[str]) -> None:
        """On resume, the data must have the classes the checkpoint was trained on."""
        if self.record is not None and list(self.record.get("classes", classes)) != list(classes):
            theirs = self.record.get("classes", [])
            raise TrainingError(
                f"--resume: {self.out} was trained on {len(theirs)} classes "
                f"({', '.join(map(str, theirs[:6]))}{', ...' if len(theirs) > 6 else ''}) but "
                f"--data has {len(classes)} ({', '.join(map(str, classes[:6]))}"
                f"{', ...' if len(classes) > 6 else ''})"
            )

    def start(self, record: dict) -> dict:
        """The record of a new run (``epochs`` and ``best`` added), written; on resume the one
        read from run.json, untouched."""
        if self.record is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self.record = {**record, "task": self.task, "epochs": [], "best": None}
            write_json_atomic(self.record_path, self.record)
        return self.record

    def epochs_left(self, epochs: int) -> bool:
        """Says where the run stands; False when ``epochs`` are already finished."""
        done = self.epochs_done
        if done >= epochs:
            print(f"{self.out}: {done} epochs already finished (--epochs {epochs})")
            return False
        if done:
            print(f"resuming {self.out} after epoch {done}")
        return True

    def end_epoch(self, entry: dict, scores: dict, save: Callable[[Path], object]) -> bool:
        """Saves ``last.keras`` (and ``best.keras`` when ``scores[metric]`` beats the best so
        far) with ``save(path)``, then appends ``entry`` to run.json. Returns whether it was
        the best epoch."""
        best = self.record.get("best")
        score = _score(scores.get(self.metric))
        improved = best is None or score > _score(best.get(self.metric))
        save(self.last_path)
        if improved:
            save(self.best_path)
            self.record["best"] = {"epoch": entry["epoch"], **scores}
        now = time.time()
        self.record["wall_seconds"] = self.record.get("wall_seconds", 0) + now - self._clock
        self._clock = now
        self.record["epochs"].append(entry)
        write_json_atomic(self.record_path, self.record)
        return improved


def _score(value) -> float:
    """A metric as a number to compare; a missing or NaN one (null in JSON) is the worst."""
    return float(value) if value is not None and math.isfinite(float(value)) else -math.inf


# --- pieces both tasks use -----------------------------------------------------------------------


def make_optimizer(name: str, lr: float, momentum: float = 0.9, weight_decay: float | None = None):
    """The optimizer of a recipe: ``"sgd"`` (with momentum) or ``"adam"``; the weight decay is
    decoupled (Keras 3 applies it to every optimizer as AdamW does)."""
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=momentum, weight_decay=weight_decay or None)
    if name == "adam":
        return keras.optimizers.Adam(lr, weight_decay=weight_decay or None)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def transfer_weights(source, target) -> int:
    """Copies every weight whose layer name and shapes match from ``source`` into ``target``.

    Nested models (a backbone inside a trunk) are matched layer by layer inside. Layers whose
    shapes differ (the classifier when the class count changes) keep their fresh initialisation:
    transfer learning. Returns how many layers were copied.
    """
    copied = 0
    source_layers = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        match = source_layers.get(layer.name)
        if match is None or not layer.weights:
            continue
        if hasattr(layer, "layers") and hasattr(match, "layers"):
            copied += transfer_weights(match, layer)
            continue
        theirs = match.get_weights()
        if [w.shape for w in theirs] == [w.shape for w in layer.get_weights()]:
            layer.set_weights(theirs)
            copied += 1
    return copied


def open_init_from(path: str | os.PathLike, task: str) -> Artifact:
    """What ``--init-from`` names, checked: a ``.keras`` model of the same task.

    Raises:
        TrainingError: another format or another task.
    """
    artifact = open_artifact(path)
    if artifact.format != "keras":
        raise TrainingError(
            f"--init-from {path}: weights are copied from a .keras model, not a "
            f"{artifact.format} file; give the best.keras or last.keras of a run"
        )
    if artifact.task != task:
        raise TrainingError(
            f"--init-from {path} is a {artifact.task} segmentation model"
            + (f" ({artifact.family})" if artifact.family else "")
            + f"; this run trains {task} segmentation"
        )
    return artifact


def describe_transfer(path, artifact: Artifact, copied: int, num_classes: int) -> str:
    """The line ``--init-from`` prints."""
    line = f"--init-from {path}: copied {copied} layers' weights"
    if artifact.num_classes and artifact.num_classes != num_classes:
        line += (f"; the classifier starts afresh ({artifact.num_classes} classes there, "
                 f"{num_classes} here)")
    return line


class TimeBudget:
    """``--max-minutes``: training ends after the first epoch that finishes past the budget."""

    def __init__(self, minutes: float | None):
        self.minutes = minutes
        self.started = time.time()

    def spent(self, epoch: int) -> bool:
        """Whether to stop after ``epoch`` (1-based), saying so."""
        if self.minutes is None or time.time() - self.started <= 60 * self.minutes:
            return False
        print(f"time budget of {self.minutes:g} min reached after epoch {epoch}")
        return True


def check_finite_loss(loss: float, epoch: int, batch: int, detail: str = "",
                      hint: str = "") -> None:
    """Raises a TrainingError saying where the loss became NaN or infinite (1-based epoch)."""
    if not math.isfinite(float(loss)):
        raise TrainingError(
            f"the loss became {loss} at batch {batch} of epoch {epoch}{detail}; nothing of this "
            f"epoch was saved. Lower the learning rate (--lr){hint} or check the labels."
        )


def plural(number: int, noun: str) -> str:
    """``plural(1, "bad sample")`` -> ``"1 bad sample"``; ``plural(2, ...)`` -> ``"2 bad samples"``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
