"""The Cityscapes benchmark's four scores against the Cityscapes authors' own evaluation.

A small Cityscapes-layout tree is written here (two cities, three 64x32 images with instances of
every class annotated per instance, unscored caravans, a car group without instance ids and void
pixels). ``cityscapesscripts`` (evaluation/evalPixelLevelSemanticLabeling.py) scores the same
predictions, written as labelId PNGs as its users write them, in its own environment: it calls
``np.in1d``, which NumPy 2.4 removed, so it runs under ``.side-envs/cityscapes`` (NumPy < 2.4)
or the interpreter named by ``EDGESEG_CITYSCAPES_PYTHON``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.data.cityscapes import (
    CITYSCAPES_CATEGORIES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_INSTANCE_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN,
    CITYSCAPES_PALETTE,
    read_cityscapes,
)
from edgeseg.evaluate import evaluate_predictor, format_report
from edgeseg.metrics import CityscapesScores
from tests.side_envs import side_python

WIDTH, HEIGHT = 64, 32
STEMS = (("aachen", "aachen_000000_000019"), ("aachen", "aachen_000001_000019"),
         ("bochum", "bochum_000000_000313"))
TRAIN_TO_LABEL = np.zeros(256, dtype=np.uint8)
for _label, _train in CITYSCAPES_LABEL_TO_TRAIN.items():
    if _train < 255:
        TRAIN_TO_LABEL[_train] = _label

# (labelId, annotated per instance) of the regions drawn: stuff, void, and every class with
# instances, caravan (29) included, which the benchmark does not score.
STUFF = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23)
VOID = (0, 1, 4, 5)
THINGS = (24, 25, 26, 27, 28, 29, 31, 32, 33)

OFFICIAL = """
import json, sys
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
predictions, ground_truth = json.loads(sys.argv[1])
ev.args.quiet = True
ev.args.JSONOutput = False
ev.args.evalInstLevelScore = True
result = ev.evaluateImgLists(predictions, ground_truth, ev.args)
keys = ("classScores", "classInstScores", "categoryScores", "categoryInstScores",
        "averageScoreClasses", "averageScoreInstClasses", "averageScoreCategories",
        "averageScoreInstCategories")
print(json.dumps({key: result[key] for key in keys}))
"""


def cityscapes_python() -> str:
    """The interpreter that has cityscapesscripts (``.side-envs/cityscapes``, or the one named by
    ``EDGESEG_CITYSCAPES_PYTHON``), or a skip that says how to make one."""
    return str(side_python("cityscapes",
                           "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
                           python=os.environ.get("EDGESEG_CITYSCAPES_PYTHON")))


def official_scores(python: str, predictions: list[Path], ground_truth: list[Path]) -> dict:
    env = {**os.environ, "CITYSCAPES_DATASET": str(ground_truth[0].parents[3])}
    run = subprocess.run(
        [python, "-c", OFFICIAL, json.dumps([list(map(str, predictions)),
                                             list(map(str, ground_truth))])],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


# --- the tree ------------------------------------------------------------------------------------


def draw_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """labelIds and instanceIds of one image: stuff, then void and things of various sizes."""
    label_ids = np.full((HEIGHT, WIDTH), 23, dtype=np.uint8)  # sky
    label_ids[HEIGHT // 2:] = 7  # road
    instance_ids = label_ids.astype(np.uint16)
    counters: dict[int, int] = {}

    def rectangle(label_id: int, instance: bool, largest: int = 14) -> None:
        h, w = rng.integers(1, largest + 1), rng.integers(1, 2 * largest - 4)
        y, x = rng.integers(0, HEIGHT - h + 1), rng.integers(0, WIDTH - w + 1)
        label_ids[y:y + h, x:x + w] = label_id
        value = label_id
        if instance:
            counters[label_id] = counters.get(label_id, 0) + 1
            value = label_id * 1000 + counters[label_id] - 1
        instance_ids[y:y + h, x:x + w] = value

    for _ in range(8):
        rectangle(int(rng.choice(STUFF)), False)
    for _ in range(3):
        rectangle(int(rng.choice(VOID)), False)
    rectangle(26, False)  # a car group: labelled car, no instance id
    for label_id in rng.permutation(THINGS):
        for _ in range(rng.integers(1, 3)):
            rectangle(int(label_id), True)
    rectangle(24, True, largest=3)  # a distant pedestrian: a few pixels
    return label_ids, instance_ids


def predict_from(train_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A prediction near the truth: confusions within and across categories, and noise."""
    pred = np.where(train_ids == 255, rng.integers(0, 19, train_ids.shape), train_ids)
    swaps = {12: 11, 14: 13, 18: 17, 1: 0, 9: 8}  # rider->person, truck->car, ...
    for truth, guess in swaps.items():
        pred[(train_ids == truth) & (rng.random(train_ids.shape) < 0.5)] = guess
    for _ in range(4):
        h, w = rng.integers(2, 10), rng.integers(2, 16)
        y, x = rng.integers(0, HEIGHT - h + 1), rng.integers(0, WIDTH - w + 1)
        pred[y:y + h, x:x + w] = rng.integers(0, 19)
    noise = rng.random(train_ids.shape) < 0.1
    pred[noise] = rng.integers(0, 19, int(noise.sum()))
    return pred.astype(np.uint8)


def write_tree(root: Path, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The val split of a Cityscapes-layout tree; returns (labelIds, instanceIds) per image."""
    rng = np.random.default_rng(seed)
    written = []
    for city, stem in STEMS:
        label_ids, instance_ids = draw_scene(rng)
        # The image shows the classes' colours (and a little noise), so a model can learn them.
        palette = np.zeros((256, 3), dtype=np.uint8)
        for label_id, train in CITYSCAPES_LABEL_TO_TRAIN.items():
            if train < 255:
                palette[label_id] = CITYSCAPES_PALETTE[train]
        image = palette[label_ids] ^ rng.integers(0, 16, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        images = root / "leftImg8bit" / "val" / city
        masks = root / "gtFine" / "val" / city
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(images / f"{stem}_leftImg8bit.png"), image[..., ::-1])
        assert cv2.imwrite(str(masks / f"{stem}_gtFine_labelIds.png"), label_ids)
        assert cv2.imwrite(str(masks / f"{stem}_gtFine_instanceIds.png"), instance_ids)
        written.append((label_ids, instance_ids))
    return written


def ground_truth_files(root: Path) -> list[Path]:
    return [root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png" for city, stem in STEMS]


def write_predictions(folder: Path, preds) -> list[Path]:
    """The predictions as labelId PNGs, named as the benchmark expects."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (_, stem), pred in zip(STEMS, preds, strict=True):
        path = folder / f"{stem}_pred.png"
        assert cv2.imwrite(str(path), TRAIN_TO_LABEL[pred])
        paths.append(path)
    return paths


def edgeseg_scores(root: Path, preds) -> dict:
    dataset = read_cityscapes(root, "val")
    scores = CityscapesScores()
    for index, pred in enumerate(preds):
        _, label = dataset[index]
        scores.update(label, pred, dataset.read_instance_ids(index))
    return scores.result()


def assert_equal_to_official(ours: dict, official: dict) -> None:
    """Every score and every per-class / per-category value, to 1e-6 (NaN where NaN)."""

    def same(a, b) -> bool:
        if a is None or b is None or math.isnan(a) or math.isnan(b):
            return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
        return abs(a - b) <= 1e-6

    pairs = [
        ("class_iou", "averageScoreClasses"), ("class_iiou", "averageScoreInstClasses"),
        ("category_iou", "averageScoreCategories"), ("category_iiou", "averageScoreInstCategories"),
    ]
    for key, theirs in pairs:
        assert same(ours[key], official[theirs]), (key, ours[key], official[theirs])
    for name in CITYSCAPES_CLASSES:
        assert same(ours["per_class_iou"][name], official["classScores"][name]), name
    for name in CITYSCAPES_INSTANCE_CLASSES:
        assert same(ours["per_class_iiou"][name], official["classInstScores"][name]), name
    # The classes without instances have no iIoU there either.
    assert all(math.isnan(official["classInstScores"][name])
               for name in CITYSCAPES_CLASSES if name not in CITYSCAPES_INSTANCE_CLASSES)
    for name in CITYSCAPES_CATEGORIES:
        assert same(ours["per_category_iou"][name], official["categoryScores"][name]), name
    assert sorted(ours["per_category_iiou"]) == ["human", "vehicle"]
    for name, value in official["categoryInstScores"].items():
        assert same(ours["per_category_iiou"].get(name, math.nan), value), name


# --- the metric against the official evaluation --------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    return root, write_tree(root)


def test_the_tree_exercises_every_part_of_the_scores(tree):
    root, written = tree
    label_ids = np.stack([w[0] for w in written])
    instance_ids = np.stack([w[1] for w in written]).astype(np.int64)
    present = {int(v) // 1000 for v in np.unique(instance_ids) if v > 1000}
    assert present >= {24, 25, 26, 27, 28, 29, 31, 32, 33}, "an instance of each class"
    assert np.isin(label_ids, VOID).any() and (instance_ids == 26).any(), "void and a car group"
    sizes = np.unique(instance_ids[instance_ids > 1000], return_counts=True)[1]
    assert sizes.min() < 10 < 100 < sizes.max(), "instances of various sizes"


def test_scores_equal_the_cityscapes_evaluation(tree, tmp_path):
    python = cityscapes_python()
    root, written = tree
    rng = np.random.default_rng(1)
    dataset = read_cityscapes(root, "val")
    preds = [predict_from(dataset[i][1], rng) for i in range(len(dataset))]

    ours = edgeseg_scores(root, preds)
    official = official_scores(python, write_predictions(tmp_path / "results", preds),
                               ground_truth_files(root))

    assert_equal_to_official(ours, official)
    # Not all perfect, not all zero: the comparison has something to compare.
    for key in ("class_iou", "class_iiou", "category_iou", "category_iiou"):
        assert 0.05 < ours[key] < 0.99, (key, ours[key])


# --- edgeseg eval on the tree --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """A small U-Net for the 19 classes, with a classifier bias that spreads its argmax."""
    pytest.importorskip("keras")
    from tests.helpers import spread_unet

    model = spread_unet(len(CITYSCAPES_CLASSES), HEIGHT, WIDTH)
    out = tmp_path_factory.mktemp("run")
    model.save(out / "best.keras")
    (out / "run.json").write_text(json.dumps({
        "model": "unet", "classes": list(CITYSCAPES_CLASSES),
        "palette": [list(c) for c in CITYSCAPES_PALETTE], "ignore_index": 255,
        "size": [WIDTH, HEIGHT], "normalisation": {"scale": 1 / 255, "offset": 0.0},
    }))
    return out / "best.keras"


@pytest.fixture(scope="module")
def model_preds(model_run, tree):
    """The model's label maps, computed here from the Keras model on the images as read."""
    from edgeseg.models.loading import load_keras_model

    root, _ = tree
    dataset = read_cityscapes(root, "val")
    images = np.stack([dataset[i][0] for i in range(len(dataset))]).astype(np.float32) / 255
    logits = np.asarray(load_keras_model(model_run)(images, training=False))
    preds = logits.argmax(-1).astype(np.uint8)
    assert len(np.unique(preds)) > 3, "the test model should predict several classes"
    return preds


@pytest.fixture(scope="module")
def cli_run(model_run, tree, tmp_path_factory):
    root, _ = tree
    json_path = tmp_path_factory.mktemp("eval") / "metrics.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["eval", str(model_run), "--data", f"cityscapes:{root}", "--split", "val",
                     "--json", str(json_path)])
    assert code == 0
    return out.getvalue(), json.loads(json_path.read_text())


def test_eval_prints_and_writes_the_four_scores(cli_run, model_preds, tree):
    printed, written = cli_run
    root, _ = tree
    expected = edgeseg_scores(root, model_preds)

    # The block beside the paper's row: the four scores, in percent with one decimal.
    row = next(line for line in printed.splitlines() if line.startswith("unet (this run)"))
    shown = row.split()[3:]
    assert shown == [f"{100 * expected[key]:.1f}" for key in
                     ("class_iou", "class_iiou", "category_iou", "category_iiou")]
    paper = next(line for line in printed.splitlines() if line.startswith("ENet (paper"))
    assert paper.split()[-4:] == ["58.3", "34.4", "80.4", "64.0"]
    for name in CITYSCAPES_CATEGORIES:
        line = next(line for line in printed.splitlines() if re.match(rf"{name}\s", line))
        assert line.split()[1] == f"{100 * expected['per_category_iou'][name]:.1f}", name

    for key in ("class_iou", "class_iiou", "category_iou", "category_iiou"):
        assert written[key] == pytest.approx(expected[key], abs=1e-12), key
    assert written["class_iou"] == pytest.approx(written["miou"])
    for key in ("per_class_iiou", "per_category_iou", "per_category_iiou"):
        assert list(written[key]) == list(expected[key]), key
        for name, value in expected[key].items():
            assert (written[key][name] is None) == math.isnan(value), (key, name)
            if not math.isnan(value):
                assert written[key][name] == pytest.approx(value, abs=1e-12), (key, name)


def test_eval_scores_equal_the_cityscapes_evaluation(cli_run, model_preds, tree, tmp_path):
    python = cityscapes_python()
    _, written = cli_run
    root, _ = tree
    official = official_scores(python, write_predictions(tmp_path / "results", model_preds),
                               ground_truth_files(root))
    per_class_iou = dict(zip(written["classes"], written["per_class_iou"], strict=True))
    assert_equal_to_official({**written, "per_class_iou": per_class_iou}, official)
    # edgeseg's own mean IoU is the benchmark's class IoU.
    assert written["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-6)


def test_the_report_reads_back_from_the_json(cli_run):
    printed, written = cli_run
    assert format_report(written) in printed


def test_images_without_instance_ids_leave_the_iiou_out_and_say_so(tmp_path):
    write_tree(tmp_path)
    first = tmp_path / "gtFine" / "val" / "aachen" / f"{STEMS[0][1]}_gtFine_instanceIds.png"
    first.unlink()
    dataset = read_cityscapes(tmp_path, "val")

    result = evaluate_predictor(lambda x: np.zeros((*x.shape[:3], 19), np.float32), dataset)

    assert math.isnan(result["class_iiou"]) and math.isnan(result["category_iiou"])
    assert result["category_iou"] > 0
    assert result["cityscapes_note"] == (
        "no class or category iIoU: 1 of 3 images have no *_instanceIds.png (the first: "
        f"gtFine/val/aachen/{STEMS[0][1]}_gtFine_instanceIds.png)"
    )
    assert result["cityscapes_note"] in format_report(result)
