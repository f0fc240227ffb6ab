"""``edgeseg train``: one trainer for every model, resumable and atomic, on one or many devices.

:func:`train` reads the model's task from the registry and hands the run to the task's loop:
:mod:`edgeseg.train.semantic` (``model.fit`` with each paper's recipe; validation mean IoU) or
:mod:`edgeseg.train.instance` (Mask R-CNN's targets and losses; validation mask AP50). Both
keep the same run directory (:mod:`edgeseg.train.run`): ``last.keras``, ``best.keras`` and
``run.json`` written atomically, so a run killed at any moment (even ``kill -9`` while saving)
leaves the last finished epoch intact and ``--resume`` continues from it; one optimizer factory,
weight transfer for ``--init-from`` and the ``--max-minutes`` budget. Before the first step
every sample is decoded and checked (:mod:`edgeseg.data.check`): a bad file stops the run with
one line naming it, or with ``--skip-bad`` is left out and counted.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field

from edgeseg.models import get_spec
from edgeseg.train.run import OPTIMIZERS, RESUME_MODES, TrainingError

__all__ = ["TrainConfig", "TrainingError", "train"]

CLASS_WEIGHTINGS = ("enet", "median", "none")


@dataclass
class TrainConfig:
    """Everything a run needs; ``None`` fields take the model's recipe (and registry size)."""

    model: str
    data: str = "synthetic"
    out: str = "runs/train"
    size: tuple[int, int] | None = None  # (width, height) of the crops and the model
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
    resume: bool | str = False  # True: --resume; "auto": continue a run if there is one
    skip_bad: bool = False
    seed: int = 0
    mixed_precision: str = "auto"  # "auto" (on GPUs), "on", "off"
    max_minutes: float | None = None  # stop after the epoch that passes this budget
    verbose: int = 1

    def __post_init__(self):
        if self.size is None:
            height, width = get_spec(self.model).train_size
            self.size = (width, height)
        self.size = tuple(int(v) for v in self.size)
        if self.resume not in RESUME_MODES:
            raise ValueError(f"resume must be True, False or 'auto', got {self.resume!r}")

    @property
    def task(self) -> str:
        """``"semantic"`` or ``"instance"``, from the registry."""
        return get_spec(self.model).task

    def resolved(self) -> TrainConfig:
        """A copy with the recipe's values in the fields left as None (semantic models: the
        ``RECIPE`` of the family's ``recipe`` module)."""
        package = get_spec(self.model).builder.partition(":")[0].rpartition(".")[0]
        recipe = importlib.import_module(f"{package}.recipe").RECIPE
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


def train(config: TrainConfig, strategy=None) -> dict:
    """Runs (or resumes) training; returns the run record written to run.json.

    Raises:
        edgeseg.data.DataError: a bad sample (one line naming the file), without ``skip_bad``.
        TrainingError: a NaN loss, an incompatible ``--resume`` or ``--init-from``.
    """
    if config.task == "instance":
        from edgeseg.quiet import keras_backend

        if keras_backend() != "tensorflow":
            raise TrainingError(
                f"{config.model} trains on Keras' TensorFlow backend only (its training step is "
                f"a tf.GradientTape loop); this run has KERAS_BACKEND={keras_backend()}. Unset "
                "it or set KERAS_BACKEND=tensorflow; semantic models train on any backend"
            )
        if strategy is not None:
            raise ValueError(f"{config.model} trains on one device; no distribution strategy")
        from edgeseg.train.instance import train_instance

        return train_instance(config)
    from edgeseg.train.semantic import train_semantic

    return train_semantic(config, strategy)
