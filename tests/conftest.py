"""Shared fixtures. TensorFlow logs are quietened before anything imports it."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


# --- a briefly trained ENet, shared by the tests that need a trained model ----------------------

TRAINED_ENET = {"size": (96, 64), "n_train": 80, "n_val": 24, "epochs": 6, "steps": 40,
                "batch": 8, "lr": 5e-3}
"""ENet's recipe (Adam, ENet class weights, weight decay) at 96x64 for 240 steps: 80-130 s on two
shared CPU cores, best val mIoU 0.37-0.40 in our runs (sky, ground and vegetation learnt, the
objects begun; the most frequent class everywhere scores 0.06)."""


@pytest.fixture(scope="session")
def trained_enet(tmp_path_factory):
    """The run directory of an ENet trained by ``edgeseg train`` on synthetic scenes (best.keras,
    last.keras, run.json naming the data, which export reads for calibration)."""
    pytest.importorskip("tensorflow")
    from edgeseg.data import write_synthetic
    from edgeseg.train.trainer import TrainConfig, train

    spec = TRAINED_ENET
    root = write_synthetic(tmp_path_factory.mktemp("enet_data") / "synthetic",
                           n_train=spec["n_train"], n_val=spec["n_val"], size=spec["size"],
                           seed=11)
    out = tmp_path_factory.mktemp("enet_run")
    train(TrainConfig(model="enet", data=f"synthetic:{root}", out=str(out), size=spec["size"],
                      epochs=spec["epochs"], steps_per_epoch=spec["steps"], batch=spec["batch"],
                      lr=spec["lr"], verbose=0))
    return out
