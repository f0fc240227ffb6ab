"""edgeseg.evaluate against references computed here: NumPy IoU from the model's own outputs,
a perfect predictor, palette lookups and the pictures written."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.data import open_dataset, write_synthetic
from edgeseg.evaluate import (
    evaluate,
    evaluate_predictor,
    format_report,
    predict_label_map,
    save_visualisation,
)
from edgeseg.io import write_json_atomic
from edgeseg.metrics import ConfusionMatrix
from edgeseg.models.loading import load_keras_model

WIDTH, HEIGHT = 48, 32
IGNORE = 255


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(
        tmp_path_factory.mktemp("data") / "synthetic", n_train=2, n_val=3, size=(WIDTH, HEIGHT),
        workers=1,
    )


@pytest.fixture(scope="module")
def val_set(data_dir):
    return open_dataset(f"synthetic:{data_dir}", "val")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, val_set):
    """A run folder as the trainer leaves it: best.keras and run.json."""
    pytest.importorskip("keras")
    from tests.helpers import spread_unet

    model = spread_unet(val_set.num_classes, HEIGHT, WIDTH)
    out = tmp_path_factory.mktemp("run")
    model.save(out / "best.keras")
    (out / "run.json").write_text(json.dumps({
        "model": "unet",
        "classes": list(val_set.classes),
        "palette": val_set.palette.tolist(),
        "ignore_index": IGNORE,
        "size": [WIDTH, HEIGHT],
        "normalisation": {"scale": 1 / 255, "offset": 0.0},
    }))
    return out


def numpy_scores(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> dict:
    """IoU and accuracies by per-class boolean masks, straight from the definitions."""
    valid = labels != IGNORE
    iou, acc = [], []
    for cls in range(num_classes):
        is_gt = (labels == cls) & valid
        is_pred = (preds == cls) & valid
        tp = np.sum(is_gt & is_pred)
        union = np.sum(is_gt | is_pred)
        iou.append(tp / union if union else math.nan)
        acc.append(tp / np.sum(is_gt) if np.sum(is_gt) else math.nan)
    return {
        "per_class_iou": iou,
        "per_class_acc": acc,
        "miou": np.nanmean(iou),
        "class_avg_acc": np.nanmean(acc),
        "global_acc": np.sum((labels == preds) & valid) / np.sum(valid),
    }


# --- evaluate() on a saved model ----------------------------------------------------------------


def test_evaluate_matches_numpy_scores_of_the_models_outputs(run_dir, data_dir, val_set, tmp_path):
    json_path = tmp_path / "out" / "metrics.json"
    vis_dir = tmp_path / "vis"
    result = evaluate(
        run_dir / "best.keras", f"synthetic:{data_dir}", "val",
        save_vis=vis_dir, json_path=json_path, batch_size=2,
    )

    # The reference runs the model here, on the images as read from disk.
    model = load_keras_model(run_dir / "best.keras")
    images = np.stack([val_set[i][0] for i in range(len(val_set))])
    labels = np.stack([val_set[i][1] for i in range(len(val_set))])
    logits = np.asarray(model(images.astype(np.float32) / 255.0, training=False))
    preds = logits.argmax(-1)
    assert len(np.unique(preds)) > 1, "the test model should predict more than one class"
    expected = numpy_scores(labels, preds, val_set.num_classes)

    np.testing.assert_allclose(result["per_class_iou"], expected["per_class_iou"], equal_nan=True)
    np.testing.assert_allclose(result["per_class_acc"], expected["per_class_acc"], equal_nan=True)
    for key in ("miou", "class_avg_acc", "global_acc"):
        assert result[key] == pytest.approx(expected[key]), key
    assert result["num_images"] == 3
    assert result["classes"] == list(val_set.classes)
    assert result["num_pixels"] == int(np.sum(labels != IGNORE))
    assert result["model"] == str(run_dir / "best.keras")
    assert result["architecture"] == "unet"
    assert (result["data"], result["split"]) == (f"synthetic:{data_dir}", "val")
    assert result["input_size"] == [WIDTH, HEIGHT]

    written = json.loads(json_path.read_text())
    assert written["miou"] == pytest.approx(result["miou"])
    assert [v is None for v in written["per_class_iou"]] == [
        math.isnan(v) for v in result["per_class_iou"]
    ]
    assert not list(json_path.parent.glob(".*tmp")), "the temporary file should be renamed"

    # One picture per image, named after it: image | ground truth | prediction.
    for index in range(len(val_set)):
        stem = val_set.sample_paths(index)[0].stem
        picture = cv2.imread(str(vis_dir / f"{stem}.png"))[..., ::-1]
        assert picture.shape == (HEIGHT, 3 * WIDTH, 3)
        np.testing.assert_array_equal(picture[:, :WIDTH], images[index])
        np.testing.assert_array_equal(
            picture[:, 2 * WIDTH:], val_set.palette[preds[index]]
        )


def test_evaluate_limit_scores_the_first_images(run_dir, data_dir):
    result = evaluate(run_dir / "best.keras", f"synthetic:{data_dir}", "val", limit=2)
    assert result["num_images"] == 2


def test_class_count_mismatch_names_both_counts(tmp_path, data_dir):
    pytest.importorskip("keras")
    from edgeseg.models import build

    model = build("unet", 3, (HEIGHT, WIDTH, 3), filters=4, depth=2)
    model.save(tmp_path / "three.keras")
    with pytest.raises(ValueError, match=r"predicts 3 classes .* has 7 classes"):
        evaluate(tmp_path / "three.keras", f"synthetic:{data_dir}", "val")


# --- predict_label_map --------------------------------------------------------------------------


def one_hot(label: np.ndarray, num_classes: int) -> np.ndarray:
    # Ignored pixels (255) get all-zero scores: any prediction there is not counted.
    return (label[..., None] == np.arange(num_classes)).astype(np.float32)


def test_perfect_predictor_scores_one_on_the_classes_present(val_set):
    confusion = ConfusionMatrix(val_set.num_classes)
    for image, label in val_set:
        seen = []

        def predict_fn(x, label=label, seen=seen):
            seen.append(x)
            return one_hot(label, val_set.num_classes)[None]

        pred = predict_label_map(predict_fn, image, (WIDTH, HEIGHT), {"scale": 0.5, "offset": -1})
        # The model saw the image normalised as asked, as one float32 batch.
        assert seen[0].dtype == np.float32
        np.testing.assert_allclose(seen[0][0], image * 0.5 - 1)
        assert pred.dtype == np.uint8
        confusion.update(label, pred)
    scores = confusion.result()
    present = [c for c in range(val_set.num_classes) if confusion.confusion[c].sum()]
    assert present
    assert scores["miou"] == 1.0
    assert scores["global_acc"] == 1.0
    assert [scores["per_class_iou"][c] for c in present] == [1.0] * len(present)


def test_label_map_is_resized_from_the_model_size_with_nearest_neighbours():
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    small = np.zeros((HEIGHT // 2, WIDTH // 2), dtype=np.uint8)  # model size 24x16
    small[:, 8:] = 1
    small[10:, :5] = 2
    seen = []

    def predict_fn(x):
        seen.append(x.shape)
        return one_hot(small, 3)[None] * 5.0

    pred = predict_label_map(predict_fn, image, (WIDTH // 2, HEIGHT // 2))
    assert seen == [(1, HEIGHT // 2, WIDTH // 2, 3)]
    # A 2x upscale by nearest neighbours repeats every pixel twice in both directions.
    np.testing.assert_array_equal(pred, small.repeat(2, axis=0).repeat(2, axis=1))


def test_mask_outputs_are_used_as_they_are():
    image = np.full((HEIGHT, WIDTH, 3), 7, dtype=np.uint8)
    mask = np.arange(HEIGHT * WIDTH, dtype=np.uint8).reshape(1, HEIGHT, WIDTH) % 5
    pred = predict_label_map(lambda x: mask, image)
    np.testing.assert_array_equal(pred, mask[0])


def test_output_that_is_not_a_map_of_the_input_is_refused():
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"returned shape \(1, 20, 36, 4\).*padding='same'"):
        predict_label_map(lambda x: np.zeros((1, 20, 36, 4), np.float32), image)


def test_evaluate_predictor_batches_and_limits(val_set):
    calls = []

    def predict_fn(x):
        calls.append(len(x))
        return np.zeros(x.shape[:3], dtype=np.uint8)  # everything "sky"

    result = evaluate_predictor(predict_fn, val_set, (WIDTH, HEIGHT), batch_size=2)
    assert calls == [2, 1]
    labels = np.stack([label for _, label in val_set])
    expected = numpy_scores(labels, np.zeros_like(labels), val_set.num_classes)
    assert result["global_acc"] == pytest.approx(expected["global_acc"])
    assert result["miou"] == pytest.approx(expected["miou"])
    assert evaluate_predictor(predict_fn, val_set, limit=1)["num_images"] == 1


# --- pictures and reports -----------------------------------------------------------------------


def test_save_visualisation_puts_three_panels_side_by_side(tmp_path, val_set):
    image, label = val_set[0]
    pred = np.where(label == IGNORE, 0, label).astype(np.uint8)
    path = save_visualisation(tmp_path / "vis" / "a.png", image, label, pred, val_set.palette)
    picture = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert picture.shape == (HEIGHT, 3 * WIDTH, 3)
    rgb = picture[..., ::-1]
    np.testing.assert_array_equal(rgb[:, WIDTH:2 * WIDTH][label == IGNORE], 0)
    scored = label != IGNORE
    np.testing.assert_array_equal(
        rgb[:, WIDTH:2 * WIDTH][scored], val_set.palette[label[scored]]
    )


def test_format_report_lists_classes_and_percentages():
    result = {
        "per_class_iou": [0.5, math.nan, 0.25],
        "per_class_acc": [0.75, math.nan, 1.0],
        "miou": 0.375,
        "class_avg_acc": 0.875,
        "global_acc": 0.8,
        "classes": ["road", "sky", "car"],
    }
    lines = format_report(result, result["classes"]).splitlines()
    assert lines[0].split() == ["class", "IoU", "acc"]
    assert lines[2].split() == ["road", "50.0", "75.0"]
    assert lines[3].split() == ["sky", "-", "-"]
    assert lines[4].split() == ["car", "25.0", "100.0"]
    text = "\n".join(lines)
    assert "mIoU             37.5" in text
    assert "class avg acc    87.5" in text
    assert "global acc       80.0" in text


def test_format_report_reads_results_written_as_json(tmp_path):
    result = {
        "per_class_iou": [math.nan, 1.0], "per_class_acc": [math.nan, 1.0], "miou": 1.0,
        "class_avg_acc": 1.0, "global_acc": 1.0, "classes": ["a", "b"],
    }
    path = write_json_atomic(tmp_path / "r.json", result)
    report = format_report(json.loads(path.read_text()))
    assert report.splitlines()[2].split() == ["a", "-", "-"]


# --- the ENet paper's CamVid row ----------------------------------------------------------------

# The columns of the ENet paper's CamVid table and the edgeseg class each one is.
PAPER_CAMVID_COLUMNS = {
    "Building": "Building", "Tree": "Tree", "Sky": "Sky", "Car": "Car", "Sign": "SignSymbol",
    "Road": "Road", "Pedestrian": "Pedestrian", "Fence": "Fence", "Pole": "Pole",
    "Sidewalk": "Pavement", "Bicyclist": "Bicyclist",
}


def write_tiny_camvid(root, count=3, size=(48, 32), seed=0):
    """The SegNet CamVid layout's test split: blocks of the 11 classes and of void (11)."""
    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(count):
        mask = np.repeat(np.repeat(rng.integers(0, 12, (height // 8, width // 8)), 8, 0), 8, 1)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for folder, picture in (("test", image), ("testannot", mask.astype(np.uint8))):
            (root / folder).mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / folder / f"0001TP_{i:06d}.png"), picture)


def test_eval_on_camvid_prints_the_enet_papers_table_row(tmp_path, capsys):
    keras = pytest.importorskip("keras")
    from edgeseg.data import CAMVID_CLASSES
    from edgeseg.models import build

    root = tmp_path / "CamVid"
    write_tiny_camvid(root)
    keras.utils.set_random_seed(1)
    model = build("unet", 11, (HEIGHT, WIDTH, 3), filters=4, depth=2)
    classifier = model.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel * 20, np.random.default_rng(1).normal(0, 0.05, bias.shape)
                            .astype(bias.dtype)])
    model.save(tmp_path / "best.keras")
    (tmp_path / "run.json").write_text(json.dumps({
        "model": "unet", "classes": list(CAMVID_CLASSES), "size": [WIDTH, HEIGHT],
        "normalisation": {"scale": 1 / 255, "offset": 0.0},
    }))

    assert main(["eval", str(tmp_path / "best.keras"), "--data", f"camvid:{root}",
                 "--split", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()

    # The reference: per-class accuracy (recall) from the definition, on the model's outputs.
    test_set = open_dataset(f"camvid:{root}", "test")
    images = np.stack([image for image, _ in test_set])
    labels = np.stack([label for _, label in test_set])
    preds = load_keras_model(tmp_path / "best.keras")(images / np.float32(255), training=False)
    preds = np.asarray(preds).argmax(-1)
    assert len(np.unique(preds)) > 2, "the test model should predict several classes"
    accuracy = {}
    for index, name in enumerate(CAMVID_CLASSES):
        truth = labels == index
        accuracy[name] = np.sum(truth & (preds == index)) / np.sum(truth)
    expected = numpy_scores(labels, preds, 11)

    header = next(i for i, line in enumerate(lines) if line.startswith("CamVid "))
    assert lines[header].split()[1:] == [
        "Building", "Tree", "Sky", "Car", "Sign", "Road", "Pedestrian", "Fence", "Pole",
        "Sidewalk", "Bicyclist", "Class", "avg.", "Class", "IoU"]
    row = lines[header + 1]
    assert row.startswith("unet (this run)")
    assert row.split()[3:] == [
        *(f"{100 * accuracy[PAPER_CAMVID_COLUMNS[title]]:.1f}" for title in PAPER_CAMVID_COLUMNS),
        f"{100 * expected['class_avg_acc']:.1f}", f"{100 * expected['miou']:.1f}"]
    assert lines[header + 2].split()[-2:] == ["65.2", "55.6"]  # SegNet, ENet: the paper's
    assert lines[header + 3].split()[-2:] == ["68.3", "51.3"]
    assert lines[header + 3].startswith("ENet (paper)")


# --- instance models without TensorFlow ---------------------------------------------------------


def write_tiny_coco(root, names, count=3, size=(80, 50)):
    """A COCO-layout val split: ``count`` images with one square object each, of category 1."""
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    images, annotations = [], []
    width, height = size
    for i in range(count):
        image = np.full((height, width, 3), 40, np.uint8)
        x, y = 10 + 5 * i, 8 + 3 * i
        image[y : y + 20, x : x + 20] = (220, 60, 30)
        cv2.imwrite(str(root / "val" / f"{i}.png"), image)
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": width, "height": height})
        polygon = [x, y, x + 20, y, x + 20, y + 20, x, y + 20]
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                            "segmentation": [polygon], "area": 400.0, "bbox": [x, y, 20, 20]})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(names)]
    (root / "annotations" / "instances_val.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))


@pytest.mark.slow
def test_eval_of_an_instance_tflite_runs_with_tensorflow_and_keras_blocked(tmp_path_factory,
                                                                            tmp_path):
    pytest.importorskip("pycocotools")
    import subprocess
    import sys

    from tests.helpers import BLOCK_TENSORFLOW
    from tests.runtime.test_instances_runtime import CLASSES, mask_rcnn_files

    model = mask_rcnn_files(tmp_path_factory)["tflite"]
    write_tiny_coco(tmp_path / "coco", CLASSES[1:])
    script = BLOCK_TENSORFLOW + """
from edgeseg.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "imported": [m for m in ("tensorflow", "keras", "jax")
                                             if m in sys.modules]}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, "eval", str(model), "--data", f"coco:{tmp_path / 'coco'}",
         "--json", str(tmp_path / "eval.json")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"code": 0, "imported": []}
    assert "mask" in result.stdout and "box" in result.stdout
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["task"] == "instance" and written["num_images"] == 3
    assert written["format"] == "tflite" and 0.0 <= written["mask_AP"] <= 1.0
