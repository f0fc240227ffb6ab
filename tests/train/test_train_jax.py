"""``edgeseg train`` on Keras' JAX backend where TensorFlow cannot be imported (as on a GPU box
with CUDA and JAX only): ENet resumes after ``kill -9`` from exactly what the last finished
epoch saved and then matches an uninterrupted run; the time budget stops it; a sample that goes
bad during training reaches the user as one line. Every command runs in its own process with
TensorFlow blocked and fails if anything imported it."""

from __future__ import annotations

import importlib.util
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

from edgeseg.data import write_synthetic
from tests.helpers import WITHOUT_TENSORFLOW, edgeseg_without_tensorflow
from tests.train.test_bad_data import error_lines, folder_dataset, train_command
from tests.train.test_trainer import (
    CAPTURE_RESUME,
    assert_started_from,
    epochs_done,
    saved_state,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                       reason="JAX is not installed (pip install jax)"),
]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synth"), n_train=12, n_val=4, size=(64, 48),
                           seed=3)


@pytest.fixture(scope="module")
def jax_env(tmp_path_factory) -> dict:
    # XLA's persistent cache: the processes of a test compile the same programs once.
    cache = tmp_path_factory.mktemp("jax_cache")
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "EDGESEG_CACHE": str(tmp_path_factory.mktemp("edgeseg_cache"))}


def enet_args(root: Path, out: Path, epochs: int, steps: int, *extra: str) -> list[str]:
    # ENet's own recipe (Adam, ENet class weights) at a small size.
    return ["train", "--model", "enet", "--data", f"synthetic:{root}", "--size", "64x48",
            "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--batch", "2",
            "--out", str(out), "--quiet", *extra]


def run_without_tensorflow(args: list[str], env: dict, timeout: float = 600):
    return subprocess.run(edgeseg_without_tensorflow(*args), env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_enet_on_jax_resumes_after_kill_9_like_an_uninterrupted_run(synthetic_root, jax_env,
                                                                     tmp_path):
    out = tmp_path / "run"
    steps = 300  # seconds per epoch on any machine, so that the kill lands inside epoch 2
    process = subprocess.Popen(
        edgeseg_without_tensorflow(*enet_args(synthetic_root, out, 2, steps)), env=jax_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.time() + 400
    while epochs_done(out) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert epochs_done(out) == 1, process.stdout.read().decode()[-3000:] if process.poll() else ""
    time.sleep(0.5)  # into the second epoch
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first = json.loads((out / "run.json").read_text())
    assert len(first["epochs"]) == 1 and first["epochs"][0]["seconds"] > 1.0
    assert first["model"] == "enet" and not (out / "tensorboard").exists()
    saved = saved_state(out / "last.keras")  # read here by Keras on TensorFlow
    assert saved["iterations"] == steps

    # Resumed, with the state model.fit starts from captured before its first step; the time
    # budget (spent at once) ends it after the one epoch it runs.
    state = tmp_path / "resumed_state"
    script = WITHOUT_TENSORFLOW + CAPTURE_RESUME.replace(
        "sys.exit(main(sys.argv[2:]))",
        "code = main(sys.argv[2:])\nassert 'tensorflow' not in sys.modules\nsys.exit(code)")
    resumed = subprocess.run(
        [sys.executable, "-c", script, str(state),
         *enet_args(synthetic_root, out, 3, steps, "--resume", "--max-minutes", "0")],
        env=jax_env, capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "after epoch 1" in resumed.stdout
    assert "time budget of 0 min reached after epoch 2" in resumed.stdout
    assert_started_from(state, saved)
    record = json.loads((out / "run.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]  # the budget stopped epoch 3
    assert record["epochs"][0] == first["epochs"][0]

    # The same two epochs without the kill: the input stream and the optimizer continue where
    # they stopped, so the resumed epoch is the uninterrupted one (XLA on the CPU is
    # deterministic; the tolerance only allows for a different summation order).
    straight = tmp_path / "straight"
    result = run_without_tensorflow(enet_args(synthetic_root, straight, 2, steps), jax_env)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = json.loads((straight / "run.json").read_text())
    for got, want in zip(record["epochs"], reference["epochs"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["miou"] == pytest.approx(want["miou"], abs=1e-6)
    resumed_weights = saved_state(out / "last.keras")["weights"]
    for got, want in zip(resumed_weights, saved_state(straight / "last.keras")["weights"],
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert all(math.isfinite(e["loss"]) for e in record["epochs"])


def test_a_sample_that_goes_bad_during_jax_training_is_one_line(jax_env, tmp_path,
                                                               monkeypatch):
    from edgeseg.data import open_dataset

    root = folder_dataset(tmp_path / "data")
    env = {**jax_env, "EDGESEG_CACHE": str(tmp_path / "cache")}
    # The check remembers the files as good (in the cache the command will read) ...
    monkeypatch.setenv("EDGESEG_CACHE", env["EDGESEG_CACHE"])
    open_dataset(f"folder:{root}", "train", check=True)
    # ... then one goes bad, keeping its size and modification time, so only the input
    # pipeline finds it, in a PyDataset worker.
    image = root / "images" / "0003.png"
    info = image.stat()
    image.write_bytes(b"x" * info.st_size)
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))

    result = run_without_tensorflow(train_command(root, tmp_path / "run", "--steps-per-epoch",
                                                  "3"), env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [
        f"edgeseg train: error: image images/0003.png is not a readable image ({info.st_size} "
        "bytes that OpenCV cannot decode)"
    ]


def test_mask_rcnn_says_it_trains_on_tensorflow_only(synthetic_root, jax_env, tmp_path):
    result = run_without_tensorflow(
        ["train", "--model", "mobile_mask_rcnn", "--data", f"synthetic:{synthetic_root}",
         "--size", "64x64", "--out", str(tmp_path / "run"), "--quiet"], jax_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [
        "edgeseg train: error: mobile_mask_rcnn trains on Keras' TensorFlow backend only (its "
        "training step is a tf.GradientTape loop); this run has KERAS_BACKEND=jax. Unset it or "
        "set KERAS_BACKEND=tensorflow; semantic models train on any backend"
    ]
    assert not (tmp_path / "run").exists()
