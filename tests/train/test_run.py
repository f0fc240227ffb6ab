"""The run directory both tasks share: resume modes, the epoch's atomic end, optimizer, budget."""

from __future__ import annotations

import json

import pytest

from edgeseg.train.run import RunDirectory, TimeBudget, TrainingError, make_optimizer


def test_auto_resume_starts_a_new_run_quietly_and_resume_says_there_is_none(tmp_path, capsys):
    RunDirectory(tmp_path / "auto", "enet", "semantic", "miou", resume="auto")
    assert capsys.readouterr().out == ""  # edgeseg quickstart's first run: no --resume talk
    RunDirectory(tmp_path / "asked", "enet", "semantic", "miou", resume=True)
    assert "--resume: no finished epoch" in capsys.readouterr().out
    assert not (tmp_path / "auto").exists()  # nothing is written before the run starts


def test_a_folder_with_a_run_needs_resume_and_the_same_model(tmp_path):
    pytest.importorskip("keras")
    from edgeseg.io import save_keras_atomic, write_json_atomic
    from edgeseg.models import build

    out = tmp_path / "run"
    save_keras_atomic(build("unet", 3, (32, 32, 3), filters=4, depth=2), out / "last.keras")
    write_json_atomic(out / "run.json", {"model": "unet", "classes": ["a", "b", "c"],
                                         "epochs": [{"epoch": 1}], "best": None})

    with pytest.raises(TrainingError, match="already holds a run.*--resume"):
        RunDirectory(out, "unet", "semantic", "miou", resume=False)
    with pytest.raises(TrainingError, match="holds a unet run .semantic segmentation., not enet"):
        RunDirectory(out, "enet", "semantic", "miou", resume=True)
    with pytest.raises(TrainingError, match="holds a unet run .*not mobile_mask_rcnn .instance"):
        RunDirectory(out, "mobile_mask_rcnn", "instance", "mask_AP50", resume="auto")
    run = RunDirectory(out, "unet", "semantic", "miou", resume=True)
    assert run.resuming and run.epochs_done == 1
    with pytest.raises(TrainingError, match="trained on 3 classes .* --data has 2"):
        run.check_classes(["a", "b"])


def test_an_epoch_ends_with_its_models_before_the_record_names_it(tmp_path):
    run = RunDirectory(tmp_path / "run", "mobile_mask_rcnn", "instance", "mask_AP50")
    run.start({"model": "mobile_mask_rcnn", "classes": ["background", "a"]})
    saved = []

    def save(path):
        # What run.json says while the model is being written: not yet this epoch.
        epochs = json.loads(run.record_path.read_text())["epochs"]
        saved.append((path.name, len(epochs)))

    scores = [0.4, None, 0.3, 0.5]  # None: a NaN metric (null in JSON) never counts as best
    for epoch, score in enumerate(scores, 1):
        run.end_epoch({"epoch": epoch}, {"mask_AP50": score, "mask_AP": 0.1}, save)

    assert saved == [("last.keras", 0), ("best.keras", 0), ("last.keras", 1), ("last.keras", 2),
                     ("last.keras", 3), ("best.keras", 3)]
    record = json.loads(run.record_path.read_text())
    assert record["task"] == "instance"
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3, 4]
    assert record["best"] == {"epoch": 4, "mask_AP50": 0.5, "mask_AP": 0.1}
    assert record["wall_seconds"] >= 0


def test_one_optimizer_factory_for_both_tasks():
    pytest.importorskip("keras")
    sgd = make_optimizer("sgd", 0.01, momentum=0.99, weight_decay=1e-4)
    assert type(sgd).__name__ == "SGD"
    assert sgd.momentum == pytest.approx(0.99) and sgd.weight_decay == pytest.approx(1e-4)
    adam = make_optimizer("adam", 1e-3, weight_decay=0.0)
    assert type(adam).__name__ == "Adam" and adam.weight_decay is None
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd, got 'rmsprop'"):
        make_optimizer("rmsprop", 1e-3)


def test_the_time_budget_ends_after_the_epoch_that_passes_it(capsys):
    assert not TimeBudget(None).spent(5)
    assert not TimeBudget(10).spent(1)
    spent = TimeBudget(0.5)
    spent.started -= 31  # half a minute and a second ago
    assert spent.spent(3)
    assert "time budget of 0.5 min reached after epoch 3" in capsys.readouterr().out
