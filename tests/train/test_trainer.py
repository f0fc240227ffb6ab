"""The trainer: resume after kill -9, NaN stop, transfer learning, MirroredStrategy, eval."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edgeseg.data import write_synthetic  # noqa: E402

TINY = ["--option", "filters=4", "--option", "depth=2", "--option", "dropout=0"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synth"), n_train=12, n_val=4, size=(64, 48), seed=3)


def edgeseg_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeseg.cli", *args]


def train_args(root: Path, out: Path, epochs: int, steps: int) -> list[str]:
    return [
        "train", "--model", "unet", *TINY, "--data", f"synthetic:{root}", "--size", "48x32",
        "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--batch", "2",
        "--optimizer", "adam", "--lr", "1e-3", "--weight-map", "off", "--elastic", "off",
        "--out", str(out), "--quiet",
    ]


CAPTURE_RESUME = """
import json, sys
import numpy as np
from edgeseg.train import semantic

def capture(self, logs=None):
    # The state model.fit starts the resumed epochs from, before its first step.
    weights, slots = self.model.weights, self.model.optimizer.variables
    np.savez(sys.argv[1] + ".weights.npz", *[np.asarray(v) for v in weights])
    np.savez(sys.argv[1] + ".optimizer.npz", *[np.asarray(v) for v in slots])
    with open(sys.argv[1] + ".json", "w") as f:
        json.dump({"weights": [v.path for v in weights], "optimizer": [v.path for v in slots]}, f)

semantic.EpochRecorder.on_train_begin = capture
from edgeseg.cli import main
sys.exit(main(sys.argv[2:]))
"""


def saved_state(path: Path) -> dict:
    """The weights and optimizer variables a .keras file holds, loaded by Keras itself, with
    the optimizer's also read straight from the archive's HDF5 (no Keras in between)."""
    import io
    import zipfile

    import h5py
    import keras

    import edgeseg.train.losses  # noqa: F401  (registers the loss the file names)
    from edgeseg.models.loading import register_custom_objects

    register_custom_objects()
    model = keras.saving.load_model(path, compile=True)
    state = {
        "weights": [np.asarray(v) for v in model.weights],
        "weight_names": [v.path for v in model.weights],
        "optimizer": [np.asarray(v) for v in model.optimizer.variables],
        "optimizer_names": [v.path for v in model.optimizer.variables],
        "iterations": int(model.optimizer.iterations),
    }
    with zipfile.ZipFile(path) as archive:
        blob = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(blob), "r") as h5:
        slots = h5["optimizer"]["vars"]
        state["optimizer_on_disk"] = [slots[str(i)][()] for i in range(len(slots))]
    return state


def assert_same_arrays(got: list, want: list, names: list) -> None:
    assert len(got) == len(want) == len(names)
    differ = [name for a, b, name in zip(got, want, names, strict=True)
              if a.shape != b.shape or not np.array_equal(a, b)]
    assert not differ, f"{len(differ)} of {len(names)} differ, e.g. {differ[:5]}"


def assert_started_from(state: Path, saved: dict) -> None:
    """The state CAPTURE_RESUME wrote at ``state`` (what the resumed fit started from) is
    ``saved`` (:func:`saved_state` of the checkpoint), variable by variable, names included."""
    names = json.loads(state.with_suffix(".json").read_text())
    assert names == {"weights": saved["weight_names"], "optimizer": saved["optimizer_names"]}
    with np.load(f"{state}.weights.npz") as held:
        assert_same_arrays([held[f"arr_{i}"] for i in range(len(held.files))],
                           saved["weights"], names["weights"])
    with np.load(f"{state}.optimizer.npz") as held:
        assert_same_arrays([held[f"arr_{i}"] for i in range(len(held.files))],
                           saved["optimizer"], names["optimizer"])


def epochs_done(out: Path) -> int:
    try:
        return len(json.loads((out / "run.json").read_text())["epochs"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_loses_no_finished_epoch(synthetic_root, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # Epochs of 400 steps (seconds each, on any machine) so that the kill lands inside one.
    steps = 400
    process = subprocess.Popen(
        edgeseg_command(*train_args(synthetic_root, out, epochs=3, steps=steps)),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.time() + 400
    while epochs_done(out) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert epochs_done(out) == 1, process.stdout.read().decode()[-3000:] if process.poll() else ""
    time.sleep(0.5)  # into the second epoch
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first = json.loads((out / "run.json").read_text())
    assert first["epochs"][0]["seconds"] > 1.0  # an epoch outlasts the wait before the kill
    assert len(first["epochs"]) == 1  # killed before epoch 2 finished
    # What epoch 1 left: the model and the optimizer's step count and moments.
    saved = saved_state(out / "last.keras")
    assert saved["iterations"] == steps  # the end of epoch 1, nothing of epoch 2
    assert_same_arrays(saved["optimizer"], saved["optimizer_on_disk"], saved["optimizer_names"])

    # The same command without --resume refuses to overwrite the run.
    refused = subprocess.run(edgeseg_command(*train_args(synthetic_root, out, 3, steps)),
                             env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "--resume" in refused.stderr

    state = tmp_path / "resumed_state"
    resumed = subprocess.run(
        [sys.executable, "-c", CAPTURE_RESUME, str(state),
         *train_args(synthetic_root, out, 3, steps), "--resume"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "after epoch 1" in resumed.stdout
    # The resumed run continues from exactly what epoch 1 saved: every weight and every
    # optimizer variable (Adam's moments, its iteration count and learning rate).
    assert_started_from(state, saved)
    record = json.loads((out / "run.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3]
    assert record["epochs"][0] == first["epochs"][0]  # the finished epoch is kept as it was
    assert all(math.isfinite(e["loss"]) for e in record["epochs"])
    assert (out / "best.keras").is_file() and (out / "last.keras").is_file()
    assert (out / "tensorboard").is_dir()

    # edgeseg eval on the best model agrees with the trainer's own validation of that epoch.
    report = tmp_path / "eval.json"
    evaluated = subprocess.run(
        edgeseg_command("eval", str(out / "best.keras"), "--data", f"synthetic:{synthetic_root}",
                        "--json", str(report)),
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    best_epoch = record["best"]["epoch"]
    trainer_miou = record["epochs"][best_epoch - 1]["miou"]
    # Evaluation resizes with OpenCV, the trainer's pipeline with tf.image: nearly the same pixels.
    assert json.loads(report.read_text())["miou"] == pytest.approx(trainer_miou, abs=0.05)


def test_a_nan_loss_stops_training_with_a_clear_message():
    import keras

    from edgeseg.train.run import TrainingError
    from edgeseg.train.semantic import NaNGuard

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.ones((8, 4), np.float32)
    x[5] = np.nan  # the second batch of 4 has a NaN input, so a NaN loss
    y = np.zeros(8, np.int32)
    with pytest.raises(TrainingError, match=r"loss became nan at batch 1 of epoch 1.*--lr"):
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, callbacks=[NaNGuard()], verbose=0)


def test_transfer_learning_copies_all_but_the_resized_classifier():
    from edgeseg.models import build
    from edgeseg.train.run import transfer_weights

    source = build("unet", 7, (32, 48, 3), filters=4, depth=2)
    target = build("unet", 3, (32, 48, 3), filters=4, depth=2)
    fresh_classifier = [w.copy() for w in target.get_layer("classifier").get_weights()]
    copied = transfer_weights(source, target)
    assert copied == sum(1 for layer in source.layers if layer.weights) - 1
    for layer in target.layers:
        if layer.weights and layer.name != "classifier":
            for a, b in zip(layer.get_weights(), source.get_layer(layer.name).get_weights(),
                            strict=True):
                np.testing.assert_array_equal(a, b)
    for a, b in zip(target.get_layer("classifier").get_weights(), fresh_classifier, strict=True):
        np.testing.assert_array_equal(a, b)


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from edgeseg.train.trainer import TrainConfig, train
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
config = TrainConfig(model="unet", data=sys.argv[1], out=sys.argv[2], size=(48, 32), epochs=1,
                     batch=2, optimizer="adam", lr=1e-3, weight_map=False, elastic=False,
                     steps_per_epoch=3, model_options={"filters": 4, "depth": 2}, verbose=0)
record = train(config, strategy=strategy)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": record["epochs"][0]["loss"]}))
"""


@pytest.mark.slow
def test_mirrored_strategy_step_on_two_logical_cpus(synthetic_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED, f"synthetic:{synthetic_root}", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["replicas"] == 2
    assert math.isfinite(summary["loss"])
