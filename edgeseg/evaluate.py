"""Scores a trained model on a dataset split: mIoU, class average and global accuracy.

``evaluate("runs/enet/best.keras", "camvid:/data/CamVid", "test")`` reads every image of the
split, runs the model at its input size, resizes the predicted label map back to the image and
counts it against the full-resolution label, as the ENet paper's tables do (Paszke et al. 2016,
Section 5). The scores are those of :mod:`edgeseg.metrics`; on Cityscapes they include the
benchmark's class iIoU, category IoU and category iIoU, and :func:`format_report` prints a
CamVid model's scores as a row of the ENet paper's CamVid table.

The scoring loop takes any ``predict_fn`` (a callable from a float32 (N, H, W, 3) batch to the
model's output), so that exported TFLite and ONNX models are scored by the same code as Keras
ones. Nothing here imports Keras: a .keras model is loaded by the runtime's predictor, and a
.tflite or .onnx one is scored with NumPy, OpenCV and its runtime only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from edgeseg.artifacts import DEFAULT_NORMALISATION
from edgeseg.data.camvid import CAMVID_CLASSES
from edgeseg.data.cityscapes import CityscapesDataset
from edgeseg.io import write_json_atomic
from edgeseg.metrics import CityscapesScores, ConfusionMatrix
from edgeseg.palette import colourise

__all__ = [
    "CAMVID_TABLE_COLUMNS",
    "evaluate",
    "evaluate_predictor",
    "format_camvid_row",
    "format_cityscapes_report",
    "format_report",
    "predict_label_map",
    "predict_label_maps",
    "save_visualisation",
]


PredictFn = Callable[[np.ndarray], np.ndarray]


# --- models and their metadata ------------------------------------------------------------------


# --- prediction ---------------------------------------------------------------------------------


def _check_size(size, what: str) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (width, height), got {size!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"{what} must be positive, got {size!r}")
    return width, height


def _normalisation(normalisation: Mapping[str, float] | None) -> tuple[float, float]:
    if normalisation is None:
        normalisation = DEFAULT_NORMALISATION
    unknown = set(normalisation) - {"scale", "offset"}
    if unknown:
        raise ValueError(
            f"normalisation takes 'scale' and 'offset' (image * scale + offset), got "
            f"{', '.join(sorted(map(repr, unknown)))}"
        )
    return float(normalisation.get("scale", 1.0)), float(normalisation.get("offset", 0.0))


def predict_label_maps(
    predict_fn: PredictFn,
    images: Sequence[np.ndarray],
    input_size: tuple[int, int] | None = None,
    normalisation: Mapping[str, float] | None = None,
) -> list[np.ndarray]:
    """Label maps for a batch of images, each at its own image's size.

    Args:
        predict_fn: takes a float32 (N, H, W, 3) batch and returns logits or probabilities
            (N, H, W, K), or a label map (N, H, W) of integers (a model built with
            ``output="mask"``).
        images: uint8 RGB images (H, W, 3); they may differ in size when ``input_size`` is given.
        input_size: (width, height) the model takes; each image is resized to it (bilinear).
            None runs the images at their own size, which must then be the same.
        normalisation: ``{"scale": s, "offset": o}``: the model sees ``image * s + o``
            (default: ``DEFAULT_NORMALISATION``, RGB in [0, 1]).

    Returns:
        uint8 label maps (H, W), resized back to each image's size with nearest-neighbour
        interpolation (class ids must not be blended).

    Raises:
        ValueError: an image that is not (H, W, 3); images of different sizes without
            ``input_size``; an output of a shape that is not a per-pixel map of the input.
    """
    scale, offset = _normalisation(normalisation)
    input_size = _check_size(input_size, "input_size")
    if not images:
        return []
    batch = []
    for image in images:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
        height, width = image.shape[:2]
        if input_size is not None and input_size != (width, height):
            image = cv2.resize(image, input_size, interpolation=cv2.INTER_LINEAR)
        batch.append(image)
    sizes = {image.shape[:2] for image in batch}
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
        raise ValueError(
            f"images of different sizes ({shown}) cannot share a batch; give an input_size"
        )
    x = np.stack(batch).astype(np.float32) * np.float32(scale) + np.float32(offset)
    y = np.asarray(predict_fn(x))
    model_h, model_w = x.shape[1:3]
    if y.ndim == 4 and y.shape[:3] == x.shape[:3]:
        # np.argmax takes the first maximum, as the in-graph ClassMask does.
        maps = np.argmax(y, axis=-1)
    elif y.ndim == 3 and y.shape == x.shape[:3] and y.dtype.kind in "iu":
        maps = y
    else:
        raise ValueError(
            f"the model returned shape {y.shape} ({y.dtype}) for an input of shape {x.shape}; "
            f"expected scores ({len(x)}, {model_h}, {model_w}, num_classes) or a label map "
            f"({len(x)}, {model_h}, {model_w}) of integers. A model whose output is smaller "
            "than its input (U-Net with padding='valid') predicts only part of the image: build "
            "it with padding='same' to score it here"
        )
    if maps.size and (maps.min() < 0 or maps.max() > 254):
        raise ValueError(
            f"predicted class ids range over {int(maps.min())}-{int(maps.max())}; uint8 label "
            "maps hold classes 0-254"
        )
    maps = maps.astype(np.uint8)
    out = []
    for image, label_map in zip(images, maps, strict=True):
        height, width = np.asarray(image).shape[:2]
        if label_map.shape != (height, width):
            label_map = cv2.resize(label_map, (width, height), interpolation=cv2.INTER_NEAREST)
        out.append(label_map)
    return out


def predict_label_map(
    predict_fn: PredictFn,
    image: np.ndarray,
    input_size: tuple[int, int] | None = None,
    normalisation: Mapping[str, float] | None = None,
) -> np.ndarray:
    """The uint8 label map (H, W) of one RGB image; see :func:`predict_label_maps`."""
    return predict_label_maps(predict_fn, [image], input_size, normalisation)[0]


# --- pictures -----------------------------------------------------------------------------------


def save_visualisation(
    path: str | os.PathLike,
    image: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    palette: np.ndarray | Sequence[Sequence[int]],
) -> Path:
    """Writes ``image | ground truth | prediction`` side by side as one picture (PNG by suffix).

    Args:
        path: the file to write; its folder is created.
        image: uint8 RGB (H, W, 3).
        label: the ground truth (H, W), 255 for ignored pixels (drawn black).
        pred: the predicted label map (H, W).
        palette: one RGB colour per class.
    """
    image = np.asarray(image)
    if label.shape != image.shape[:2] or pred.shape != image.shape[:2]:
        raise ValueError(
            f"image {image.shape}, label {label.shape} and prediction {pred.shape} must have "
            "the same height and width"
        )
    panel = np.concatenate([image, colourise(label, palette), colourise(pred, palette)], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path} (is the suffix an image format OpenCV writes?)")
    return path


# --- scoring ------------------------------------------------------------------------------------


def _batches(count: int, batch_size: int):
    for start in range(0, count, batch_size):
        yield range(start, min(start + batch_size, count))


def evaluate_predictor(
    predict_fn: PredictFn,
    dataset,
    input_size: tuple[int, int] | None = None,
    normalisation: Mapping[str, float] | None = None,
    limit: int | None = None,
    save_vis: str | os.PathLike | None = None,
    batch_size: int = 1,
) -> dict:
    """Scores any predictor on a :class:`~edgeseg.data.SegmentationDataset`.

    Args:
        predict_fn, input_size, normalisation: as for :func:`predict_label_maps`.
        dataset: the images and labels; its ``num_classes`` and ``ignore_index`` are used.
        limit: score only the first ``limit`` images.
        save_vis: a folder to write ``<image stem>.png`` into for every image, showing the
            image, the ground truth and the prediction side by side.
        batch_size: images per call of ``predict_fn`` (1 for models with a fixed batch, such
            as TFLite ones); with no ``input_size`` it must be 1 unless the images share a size.

    Returns:
        The scores of :meth:`edgeseg.metrics.ConfusionMatrix.result` (NaN where a class is
        absent), ``num_images`` and ``classes``. On Cityscapes (a
        :class:`~edgeseg.data.cityscapes.CityscapesDataset`) also the benchmark's
        ``class_iou``, ``class_iiou``, ``category_iou``, ``category_iiou``, ``per_class_iiou``,
        ``per_category_iou`` and ``per_category_iiou`` (see
        :class:`edgeseg.metrics.CityscapesScores`); when an image has no
        ``*_instanceIds.png`` the iIoUs are NaN and ``cityscapes_note`` says why.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive whole number or None, got {limit!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise ValueError(f"{dataset!r} has no images to evaluate")
    vis_dir = Path(save_vis) if save_vis is not None else None
    confusion = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index)
    cityscapes = CityscapesScores() if isinstance(dataset, CityscapesDataset) else None
    missing_instances = [
        index for index in range(count)
        if cityscapes is not None and not dataset.instance_ids_path(index).is_file()
    ]
    for indices in _batches(count, batch_size):
        samples = [dataset[i] for i in indices]
        preds = predict_label_maps(predict_fn, [s[0] for s in samples], input_size, normalisation)
        for index, (image, label), pred in zip(indices, samples, preds, strict=True):
            confusion.update(label, pred)
            if cityscapes is not None:
                instance_ids = None if missing_instances else dataset.read_instance_ids(index)
                cityscapes.update(label, pred, instance_ids)
            if vis_dir is not None:
                stem = dataset.sample_paths(index)[0].stem
                save_visualisation(vis_dir / f"{stem}.png", image, label, pred, dataset.palette)
    result = {**confusion.result(), "num_images": count, "classes": list(dataset.classes)}
    if cityscapes is not None:
        scores = cityscapes.result()
        del scores["per_class_iou"]  # the list above holds the same numbers
        result.update(scores)
        if missing_instances:
            first = dataset.display_path(dataset.instance_ids_path(missing_instances[0]))
            result["cityscapes_note"] = (
                f"no class or category iIoU: {len(missing_instances)} of {count} images have no "
                f"*_instanceIds.png (the first: {first})"
            )
    return result


def evaluate(
    model_path: str | os.PathLike,
    data_spec: str,
    split: str = "val",
    limit: int | None = None,
    save_vis: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    batch_size: int = 8,
) -> dict:
    """Scores a ``.keras``, ``.tflite`` or ``.onnx`` model on a split of a dataset spec.

    The model runs at its input size (from the metadata beside it when the model has no static
    one, else at each image's size) with the normalisation in its metadata (default: RGB / 255).
    Class names come from the dataset.

    Args:
        model_path: the ``.keras`` file, e.g. ``runs/enet/best.keras``.
        data_spec: a dataset spec such as ``camvid:/data/CamVid`` (see
            :func:`edgeseg.data.open_dataset`).
        split: the split to score.
        limit: score only the first ``limit`` images.
        save_vis: a folder for one ``image | ground truth | prediction`` PNG per image.
        json_path: write the result there as JSON (atomically; NaN written as null).
        batch_size: images per forward pass.

    Returns:
        ``miou``, ``per_class_iou``, ``class_avg_acc``, ``per_class_acc``, ``global_acc``,
        ``num_pixels``, ``confusion``, ``classes``, ``num_images``, ``model`` (the file),
        ``architecture`` (the run's model name, else the Keras model's), ``data``, ``split``,
        ``input_size`` ([width, height] or None) and ``normalisation``. On ``cityscapes:``
        data also the benchmark's ``class_iou``, ``class_iiou``, ``category_iou``,
        ``category_iiou`` and their ``per_class_iiou``, ``per_category_iou`` and
        ``per_category_iiou`` (see :func:`evaluate_predictor`). Scores are fractions; a class
        absent from both labels and predictions has NaN IoU.

    Raises:
        FileNotFoundError, ValueError: no model file, or one whose class count differs from
            the dataset's.
        edgeseg.data.DataError: a bad spec or dataset.
    """
    from edgeseg.data import open_dataset
    from edgeseg.runtime import load_predictor

    model_path = Path(model_path).expanduser()
    predictor = load_predictor(model_path)
    metadata = predictor.metadata
    if predictor.task == "instance":
        result = evaluate_instance_model(predictor, data_spec, split, limit)
        result["model"] = str(model_path)
        if json_path is not None:
            write_json_atomic(json_path, result)
        return result
    dataset = open_dataset(data_spec, split)

    num_classes = len(predictor.classes) if predictor.classes else None
    if num_classes is not None and num_classes != dataset.num_classes:
        raise ValueError(
            f"model {model_path} predicts {num_classes} classes but dataset {data_spec!r} "
            f"({split}) has {dataset.num_classes} classes ({', '.join(dataset.classes)}); "
            "evaluate a model trained on this dataset's classes"
        )
    input_size = predictor.input_size or _check_size(metadata.get("size"), "run size")
    normalisation = predictor.normalisation

    scores = evaluate_predictor(
        predictor,
        dataset,
        input_size=input_size,
        normalisation=normalisation,
        limit=limit,
        save_vis=save_vis,
        batch_size=batch_size if input_size is not None else 1,
    )
    result = {
        **scores,
        "model": str(model_path),
        "architecture": predictor.artifact.family,
        "format": predictor.format,
        "data": data_spec,
        "split": split,
        "input_size": list(input_size) if input_size is not None else None,
        "normalisation": dict(normalisation),
    }
    if json_path is not None:
        write_json_atomic(json_path, result)
    return result


def evaluate_instance_model(predictor, data_spec: str, split: str = "val",
                            limit: int | None = None) -> dict:
    """COCO box and mask AP, AP50, AP75 of a Mask R-CNN predictor (.keras / .tflite / .onnx).

    The data spec must have instance annotations (``coco:PATH`` or the synthetic scenes).
    """
    from edgeseg.data import open_instances
    from edgeseg.instances import evaluate_instances
    from edgeseg.runtime.instances import detect

    instances = open_instances(data_spec, split)
    classes = predictor.metadata.get("classes")
    if classes and list(classes) != list(instances.classes):
        raise ValueError(
            f"model {predictor.path} detects {', '.join(classes[1:])} but dataset {data_spec!r} "
            f"({split}) has {', '.join(instances.classes[1:])}; evaluate a model trained on "
            "this dataset's classes"
        )
    width, height = predictor.input_size or tuple(predictor.metadata["size"])
    scale, offset = _normalisation(predictor.normalisation)
    scores = evaluate_instances(
        lambda image: detect(predictor, image[None].astype(np.float32) * scale + offset),
        instances, int(height), limit=limit)
    return {**scores, "task": "instance", "architecture": predictor.artifact.family,
            "format": predictor.format, "data": data_spec, "split": split,
            "input_size": [int(width), int(height)], "classes": list(instances.classes)}


def format_instance_report(result: Mapping) -> str:
    """The COCO table of an instance evaluation: AP, AP50, AP75 for boxes and masks."""
    lines = [f"{'':6} {'AP':>6} {'AP50':>6} {'AP75':>6}"]
    for kind in ("box", "mask"):
        lines.append(f"{kind:6} " + " ".join(
            f"{100 * result[f'{kind}_{k}']:6.1f}" for k in ("AP", "AP50", "AP75")))
    lines.append(f"{result['num_images']} images, {result['num_detections']} detections")
    return "\n".join(lines)


# --- output -------------------------------------------------------------------------------------


# The ENet paper's figures (Paszke et al. 2016, arXiv 1606.02147), as shared/ANCHORS.md records
# them: the Cityscapes benchmark's four scores on its test set, and the class average accuracy
# and class IoU of the CamVid table (its per-class accuracies are not recorded there).
ENET_CITYSCAPES_SCORES = {
    "class_iou": 0.583, "class_iiou": 0.344, "category_iou": 0.804, "category_iiou": 0.640,
}
CAMVID_PAPER_ROWS = (("SegNet (paper)", 0.652, 0.556), ("ENet (paper)", 0.683, 0.513))

# The columns of the ENet paper's CamVid table, each with the edgeseg class it shows.
CAMVID_TABLE_COLUMNS = (
    ("Building", "Building"),
    ("Tree", "Tree"),
    ("Sky", "Sky"),
    ("Car", "Car"),
    ("Sign", "SignSymbol"),
    ("Road", "Road"),
    ("Pedestrian", "Pedestrian"),
    ("Fence", "Fence"),
    ("Pole", "Pole"),
    ("Sidewalk", "Pavement"),
    ("Bicyclist", "Bicyclist"),
)

_CITYSCAPES_SCORES = (
    ("class_iou", "class IoU"),
    ("class_iiou", "class iIoU"),
    ("category_iou", "category IoU"),
    ("category_iiou", "category iIoU"),
)


def _percent(value) -> str:
    """A fraction as a percentage with one decimal; ``-`` for NaN or None (JSON's NaN)."""
    return "-" if value is None or math.isnan(value) else f"{100.0 * value:.1f}"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as lines: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join([row[0].ljust(widths[0]),
                   *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))])
        .rstrip()
        for row in rows
    ]


def _run_name(result: Mapping) -> str:
    architecture = result.get("architecture")
    return f"{architecture} (this run)" if architecture else "this run"


def format_cityscapes_report(result: Mapping) -> str:
    """The Cityscapes benchmark's four scores beside ENet's, then IoU and iIoU per category.

    Args:
        result: what :func:`evaluate` returns on ``cityscapes:`` data (or its JSON).
    """
    paper = ENET_CITYSCAPES_SCORES
    lines = ["Cityscapes benchmark (the scores of cityscapesScripts' evaluation)"]
    lines += _table([
        ("", *(title for _, title in _CITYSCAPES_SCORES)),
        (_run_name(result), *(_percent(result[key]) for key, _ in _CITYSCAPES_SCORES)),
        ("ENet (paper, test set)", *(_percent(paper[key]) for key, _ in _CITYSCAPES_SCORES)),
    ])
    if result.get("cityscapes_note"):
        lines.append(result["cityscapes_note"])
    iiou = result.get("per_category_iiou") or {}
    lines.append("")
    lines += _table([
        ("category", "IoU", "iIoU"),
        *((name, _percent(iou), _percent(iiou[name]) if name in iiou else "")
          for name, iou in result["per_category_iou"].items()),
    ])
    return "\n".join(lines)


def format_camvid_row(result: Mapping) -> str:
    """This run as a row of the ENet paper's CamVid table, with the paper's rows below it.

    The columns are the per-class accuracies of the 11 classes in the paper's order, the class
    average accuracy and the class IoU (mIoU), in percent.

    Args:
        result: the scores of a model of the 11 CamVid classes (:data:`CAMVID_CLASSES`).
    """
    classes = list(result["classes"])
    accuracy = dict(zip(classes, result["per_class_acc"], strict=True))
    header = ("CamVid", *(title for title, _ in CAMVID_TABLE_COLUMNS), "Class avg.", "Class IoU")
    rows = [
        header,
        (_run_name(result), *(_percent(accuracy[name]) for _, name in CAMVID_TABLE_COLUMNS),
         _percent(result["class_avg_acc"]), _percent(result["miou"])),
    ]
    rows += [
        (name, *("-" for _ in CAMVID_TABLE_COLUMNS), _percent(avg), _percent(iou))
        for name, avg, iou in CAMVID_PAPER_ROWS
    ]
    return "\n".join(
        ["As the ENet paper's CamVid table: per-class accuracy, class average, class IoU",
         *_table(rows)]
    )


def format_report(result: Mapping, class_names: Sequence[str] | None = None) -> str:
    """A text table of per-class IoU and accuracy, then mIoU, class average and global accuracy.

    On Cityscapes the table has the class iIoU too and is followed by the benchmark's four
    scores (:func:`format_cityscapes_report`); a model of the 11 CamVid classes is followed by
    its row of the ENet paper's CamVid table (:func:`format_camvid_row`).

    Args:
        result: what :func:`evaluate` returns (or reads back from its JSON, with null for NaN).
        class_names: one name per class (default: ``result["classes"]``).
    """
    if class_names is None:
        class_names = result.get("classes") or [
            f"class {i}" for i in range(len(result["per_class_iou"]))
        ]
    class_names = [str(name) for name in class_names]
    if len(class_names) != len(result["per_class_iou"]):
        raise ValueError(
            f"got {len(class_names)} class names for {len(result['per_class_iou'])} classes"
        )

    percent = _percent
    iiou = result.get("per_class_iiou")
    rows = [
        (name, percent(iou), percent(acc))
        for name, iou, acc in zip(
            class_names, result["per_class_iou"], result["per_class_acc"], strict=True
        )
    ]
    width = max(len("class"), *(len(name) for name in class_names))
    if iiou is None:
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}", "-" * (width + 16)]
        lines += [f"{name:<{width}}  {iou:>6}  {acc:>6}" for name, iou, acc in rows]
        rule = "-" * (width + 16)
    else:
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'iIoU':>6}  {'acc':>6}", "-" * (width + 24)]
        lines += [
            f"{name:<{width}}  {iou:>6}  {percent(iiou[name]) if name in iiou else '':>6}  "
            f"{acc:>6}"
            for name, iou, acc in rows
        ]
        rule = "-" * (width + 24)
    lines += [
        rule,
        f"mIoU             {percent(result['miou'])}",
        f"class avg acc    {percent(result['class_avg_acc'])}",
        f"global acc       {percent(result['global_acc'])}",
    ]
    if "num_images" in result:
        lines.append(f"images           {result['num_images']}")
    if "class_iiou" in result:
        lines += ["", format_cityscapes_report(result)]
    if class_names == list(CAMVID_CLASSES):
        lines += ["", format_camvid_row({**result, "classes": class_names})]
    return "\n".join(lines)
