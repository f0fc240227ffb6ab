"""Dataset specs: ``"camvid:/data/CamVid"`` -> a dataset, driven by one table of formats.

A spec is ``<format>:<path>``. ``synthetic`` alone generates the synthetic dataset into the
cache (once) and reads it; ``synthetic?n_train=50&n_val=10&size=96x64&seed=1`` chooses its
parameters; ``synthetic:/path`` reads one written by ``write_synthetic``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeseg.data.base import DataError, SegmentationDataset
from edgeseg.data.camvid import CAMVID_LAYOUT, read_camvid
from edgeseg.data.check import check_dataset
from edgeseg.data.cityscapes import CITYSCAPES_LAYOUT, read_cityscapes
from edgeseg.data.coco import COCO_LAYOUT, read_coco
from edgeseg.data.folder import FOLDER_LAYOUT, read_folder
from edgeseg.data.synthetic import (
    DEFAULT_COUNTS,
    DEFAULT_SIZE,
    SYNTHETIC_LAYOUT,
    ensure_synthetic,
    read_synthetic,
)
from edgeseg.data.voc import VOC_LAYOUT, read_voc
from edgeseg.io import parse_size


@dataclass(frozen=True)
class DatasetFormat:
    """One dataset format: how to name it in a spec, read it, and what it expects on disk."""

    name: str
    reader: Callable[..., SegmentationDataset]  # reader(root, split) -> dataset
    example: str
    summary: str
    layout: str
    path_required: bool = True
    extra: str | None = None  # the optional dependency group it needs: pip install edgeseg[extra]


DATASET_FORMATS: dict[str, DatasetFormat] = {
    f.name: f
    for f in (
        DatasetFormat(
            "camvid", read_camvid, "camvid:/data/CamVid",
            "CamVid in the SegNet layout, 11 classes, void 11 read as 255", CAMVID_LAYOUT,
        ),
        DatasetFormat(
            "cityscapes", read_cityscapes, "cityscapes:/data/cityscapes",
            "Cityscapes gtFine labelIds mapped to the 19 train classes", CITYSCAPES_LAYOUT,
        ),
        DatasetFormat(
            "voc", read_voc, "voc:/data/VOCdevkit/VOC2012",
            "Pascal VOC 2012 segmentation, 21 classes, borders 255", VOC_LAYOUT,
        ),
        DatasetFormat(
            "folder", read_folder, "folder:/data/my_masks",
            "images/ + masks/ (class indices) + classes.json", FOLDER_LAYOUT,
        ),
        DatasetFormat(
            "coco", read_coco, "coco:/data/coco",
            "COCO instances drawn as semantic maps, background 0, crowds 255", COCO_LAYOUT,
            extra="coco",
        ),
        DatasetFormat(
            "synthetic", read_synthetic, "synthetic?n_train=50&size=96x64",
            "generated scenes (7 classes) cached on first use, or synthetic:/path",
            SYNTHETIC_LAYOUT, path_required=False,
        ),
    )
}  # fmt: skip


def _parse_count(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"expected a whole number, got {text!r}")
    return int(text)


_SYNTHETIC_OPTIONS: dict[str, tuple[Callable[[str], object], str]] = {
    "n_train": (_parse_count, f"training scenes (default {DEFAULT_COUNTS['n_train']})"),
    "n_val": (_parse_count, f"validation scenes (default {DEFAULT_COUNTS['n_val']})"),
    "n_test": (_parse_count, f"test scenes (default {DEFAULT_COUNTS['n_test']})"),
    "size": (lambda text: parse_size(text, "the value"), "<width>x<height> (default {}x{})".format(*DEFAULT_SIZE)),
    "seed": (_parse_count, "random seed (default 0)"),
}


def _accepted() -> str:
    return "; ".join(f"{f.name} (e.g. {f.example})" for f in DATASET_FORMATS.values())


def parse_dataset_spec(spec: str) -> tuple[str, Path | None, dict]:
    """Split a spec into (format, path or None, synthetic options).

    Raises:
        DataError: an empty spec, an unknown format, a missing path, or bad options; the
            message lists what is accepted.
    """
    text = spec.strip() if isinstance(spec, str) else ""
    if not text:
        raise DataError(f"empty dataset spec {spec!r}; accepted formats: {_accepted()}")
    head, colon, path = text.partition(":")
    name, question, query = head.partition("?")
    name = name.strip().lower()
    if name not in DATASET_FORMATS:
        close = difflib.get_close_matches(name, list(DATASET_FORMATS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if not colon and ("/" in text or "\\" in text or Path(text).exists()):
            hint = f"; a spec names its format before the path, e.g. camvid:{text}"
        raise DataError(
            f"unknown dataset format {name!r} in spec {spec!r}{hint}. Accepted formats: "
            f"{_accepted()}"
        )
    fmt = DATASET_FORMATS[name]
    options: dict = {}
    if question:
        if name != "synthetic" or colon:
            raise DataError(
                f"dataset spec {spec!r}: only 'synthetic' without a path takes ?options"
            )
        for item in filter(None, query.split("&")):
            key, equals, value = item.partition("=")
            if key not in _SYNTHETIC_OPTIONS or not equals:
                accepted = ", ".join(f"{k}=<{h}>" for k, (_, h) in _SYNTHETIC_OPTIONS.items())
                raise DataError(
                    f"dataset spec {spec!r}: unknown option {item!r}; accepted: {accepted}"
                )
            parse, help_text = _SYNTHETIC_OPTIONS[key]
            try:
                options[key] = parse(value)
            except ValueError as error:
                raise DataError(f"dataset spec {spec!r}: {key}: {error}") from None
    path = path.strip()
    if not path:
        if fmt.path_required:
            raise DataError(
                f"dataset spec {spec!r} needs a path after the colon, e.g. {fmt.example}; "
                f"{fmt.name} expects:\n{fmt.layout}"
            )
        return name, None, options
    return name, Path(path).expanduser(), options


def open_dataset(
    spec: str,
    split: str = "train",
    skip_bad: bool = False,
    check: bool = False,
    progress: bool = True,
) -> SegmentationDataset:
    """Open the dataset a spec names, e.g. ``open_dataset("camvid:/data/CamVid", "val")``.

    Specs: ``camvid:<path>``, ``cityscapes:<path>``, ``voc:<path>``, ``folder:<path>``,
    ``coco:<path or instances json>``, ``synthetic`` (generated into the cache on first use,
    with optional ``?n_train=300&n_val=60&n_test=0&size=480x360&seed=0``) and
    ``synthetic:<path>``.

    Args:
        spec: the dataset spec.
        split: ``train``, ``val``, ``test`` or what the format offers.
        skip_bad: read every sample now and drop the bad ones, listing them in
            ``dataset.skipped``. Without it only missing files are checked now (and raise);
            unreadable files, size mismatches and bad labels raise when the sample is read.
        check: decode and check every sample now, as training does, remembering the good
            ones per file (size and modification time) so that the next call decodes only
            what changed (:func:`edgeseg.data.check.check_dataset`); the first bad sample
            raises, or with ``skip_bad`` is dropped.
        progress: with ``check``, draw a progress bar on stderr while decoding.

    Raises:
        DataError: a bad spec, a missing folder or split, or (without ``skip_bad``) a missing
            file; the message says what was expected.
    """
    name, path, options = parse_dataset_spec(spec)
    if name == "synthetic" and path is None:
        path = ensure_synthetic(**options)
    dataset = DATASET_FORMATS[name].reader(path, split)
    if check:
        return check_dataset(dataset, skip_bad=skip_bad, progress=progress)
    return dataset.validate(skip_bad=skip_bad, read_pixels=skip_bad)
