"""Scores a trained model on a dataset split: mIoU, class average and global accuracy.

``evaluate("runs/enet/best.keras", "camvid:/data/CamVid", "test")`` reads every image of the
split, runs the model at its input size, resizes the predicted label map back to the image and
counts it against the full-resolution label, as the ENet paper's tables do (Paszke et al. 2016,
Section 5). The scores are those of :mod:`edgeseg.metrics`.

The scoring loop takes any ``predict_fn`` (a callable from a float32 (N, H, W, 3) batch to the
model's output), so that exported TFLite and ONNX models are scored by the same code as Keras
ones. Only :func:`load_keras_model` and :func:`evaluate` import Keras; everything else here needs
NumPy and OpenCV.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from edgeseg.metrics import ConfusionMatrix

__all__ = [
    "DEFAULT_NORMALISATION",
    "colourise",
    "evaluate",
    "evaluate_predictor",
    "format_report",
    "load_keras_model",
    "predict_label_map",
    "predict_label_maps",
    "read_run_metadata",
    "save_visualisation",
    "write_json_atomic",
]

DEFAULT_NORMALISATION = {"scale": 1 / 255, "offset": 0.0}
"""What the trainer feeds its models: ``image * scale + offset``, i.e. RGB in [0, 1]."""

PredictFn = Callable[[np.ndarray], np.ndarray]


# --- models and their metadata ------------------------------------------------------------------


def load_keras_model(path: str | os.PathLike, compile: bool = False):
    """Loads a ``.keras`` model saved by edgeseg (with its optimizer and loss if ``compile``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the path does not end in ``.keras`` (exported formats have their own
            runtimes).
    """
    path = Path(path).expanduser()
    if path.suffix != ".keras":
        raise ValueError(
            f"{path} is not a Keras model: expected a file ending in .keras (such as "
            f"runs/<name>/best.keras), got suffix {path.suffix or '(none)'!r}"
        )
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"Keras model {path} {what}")

    import keras

    # Imported for their side effect: they register the custom layers, initialisers, losses and
    # metrics that a saved edgeseg model refers to by name.
    import edgeseg.models.fcn.network
    import edgeseg.models.layers
    import edgeseg.models.maskrcnn.network
    import edgeseg.train.keras_metrics
    import edgeseg.train.losses  # noqa: F401

    return keras.saving.load_model(path, compile=compile)


def read_run_metadata(model_path: str | os.PathLike) -> dict | None:
    """The metadata written with a model: ``run.json`` beside it, else ``<stem>.json``, else None.

    ``run.json`` is the trainer's record of a run (model name, classes, palette, input size,
    normalisation); ``<stem>.json`` is a sidecar for a model file copied out of its run folder.

    Raises:
        ValueError: the metadata file exists but is not a JSON object.
    """
    model_path = Path(model_path).expanduser()
    for candidate in (model_path.with_name("run.json"), model_path.with_suffix(".json")):
        if not candidate.is_file():
            continue
        try:
            metadata = json.loads(candidate.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"metadata file {candidate} is not valid JSON: {error}") from None
        if not isinstance(metadata, dict):
            raise ValueError(
                f"metadata file {candidate} holds a {type(metadata).__name__}, expected a JSON "
                "object"
            )
        return metadata
    return None


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


def colourise(
    label_map: np.ndarray,
    palette: np.ndarray | Sequence[Sequence[int]],
    ignore_colour: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """An RGB picture (H, W, 3) uint8 of a label map: class i in ``palette[i]``.

    Pixels whose value has no palette entry (the ignore value 255 among them) get
    ``ignore_colour``.
    """
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) > 256:
        raise ValueError(f"a uint8 label map has at most 256 values; got {len(palette)} colours")
    label_map = np.asarray(label_map)
    if label_map.dtype != np.uint8:
        raise ValueError(f"label_map must be uint8 class ids, got dtype {label_map.dtype}")
    lookup = np.empty((256, 3), dtype=np.uint8)
    lookup[:] = np.asarray(ignore_colour, dtype=np.uint8)
    lookup[: len(palette)] = palette
    return lookup[label_map]


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
        absent), ``num_images`` and ``classes``.
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
    for indices in _batches(count, batch_size):
        samples = [dataset[i] for i in indices]
        preds = predict_label_maps(predict_fn, [s[0] for s in samples], input_size, normalisation)
        for index, (image, label), pred in zip(indices, samples, preds, strict=True):
            confusion.update(label, pred)
            if vis_dir is not None:
                stem = dataset.sample_paths(index)[0].stem
                save_visualisation(vis_dir / f"{stem}.png", image, label, pred, dataset.palette)
    return {**confusion.result(), "num_images": count, "classes": list(dataset.classes)}


def _static_input_size(model) -> tuple[int, int] | None:
    shape = model.input_shape
    if isinstance(shape, list):
        raise ValueError(f"expected a model with one image input, got inputs of shapes {shape}")
    height, width = shape[1:3]
    return (int(width), int(height)) if height and width else None


def _model_num_classes(model, metadata: dict | None) -> int | None:
    shape = model.output_shape
    if isinstance(shape, list):
        raise ValueError(
            f"expected a semantic segmentation model with one output, got outputs {shape}"
        )
    if len(shape) == 4:
        return int(shape[-1])
    if metadata and metadata.get("classes"):
        return len(metadata["classes"])
    return None  # a mask output without metadata: confusion_matrix checks the predicted ids


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
        ``input_size`` ([width, height] or None) and ``normalisation``. Scores are fractions;
        a class absent from both labels and predictions has NaN IoU.

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
    from edgeseg.runtime.instances import is_instance_model

    if is_instance_model(predictor):
        result = evaluate_instance_model(predictor, data_spec, split, limit)
        result["model"] = str(model_path)
        if json_path is not None:
            write_json_atomic(json_path, result)
        return result
    dataset = open_dataset(data_spec, split)

    if predictor.format == "keras":
        num_classes = _model_num_classes(predictor.model, metadata)
    else:
        num_classes = len(metadata["classes"]) if metadata.get("classes") else None
    if num_classes is not None and num_classes != dataset.num_classes:
        raise ValueError(
            f"model {model_path} predicts {num_classes} classes but dataset {data_spec!r} "
            f"({split}) has {dataset.num_classes} classes ({', '.join(dataset.classes)}); "
            "evaluate a model trained on this dataset's classes"
        )
    input_size = predictor.input_size or _check_size(metadata.get("size"), "run size")
    normalisation = metadata.get("normalisation") or DEFAULT_NORMALISATION

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
        "architecture": metadata.get("model", getattr(getattr(predictor, "model", None), "name", None)),
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
    from edgeseg.models.maskrcnn.dataset import open_instances
    from edgeseg.models.maskrcnn.evaluate import evaluate_instances
    from edgeseg.runtime.instances import detect

    instances = open_instances(data_spec, split)
    classes = predictor.metadata.get("classes")
    if classes is not None and list(classes) != list(instances.classes):
        raise ValueError(
            f"model {predictor.path} detects {', '.join(classes[1:])} but dataset {data_spec!r} "
            f"({split}) has {', '.join(instances.classes[1:])}; evaluate a model trained on "
            "this dataset's classes"
        )
    width, height = predictor.input_size or tuple(predictor.metadata["size"])
    scores = evaluate_instances(
        lambda image: detect(predictor, image[None].astype(np.float32) / 255.0),
        instances, int(height), limit=limit)
    return {**scores, "task": "instance", "architecture": predictor.metadata.get("model"),
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


def _json_ready(value):
    # JSON has no NaN: an absent class's score is written as null.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def write_json_atomic(path: str | os.PathLike, data: dict) -> Path:
    """Writes ``data`` as JSON through a temporary file and a rename, so that a reader never
    sees half a file; NaN is written as null."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(_json_ready(data), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def format_report(result: Mapping, class_names: Sequence[str] | None = None) -> str:
    """A text table of per-class IoU and accuracy, then mIoU, class average and global accuracy.

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

    def percent(value) -> str:
        return "-" if value is None or math.isnan(value) else f"{100.0 * value:.1f}"

    rows = [
        (name, percent(iou), percent(acc))
        for name, iou, acc in zip(
            class_names, result["per_class_iou"], result["per_class_acc"], strict=True
        )
    ]
    width = max(len("class"), *(len(name) for name in class_names))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}", "-" * (width + 16)]
    lines += [f"{name:<{width}}  {iou:>6}  {acc:>6}" for name, iou, acc in rows]
    lines += [
        "-" * (width + 16),
        f"mIoU             {percent(result['miou'])}",
        f"class avg acc    {percent(result['class_avg_acc'])}",
        f"global acc       {percent(result['global_acc'])}",
    ]
    if "num_images" in result:
        lines.append(f"images           {result['num_images']}")
    return "\n".join(lines)
