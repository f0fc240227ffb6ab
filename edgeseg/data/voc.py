"""Pascal VOC 2012 segmentation: 21 classes, palette PNG masks, 255 on object borders."""

from __future__ import annotations

import os
from pathlib import Path

from edgeseg.data.base import (
    IGNORE_INDEX,
    DataError,
    SegmentationDataset,
    check_split,
    require_layout,
)
from edgeseg.palette import voc_palette

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_PALETTE = voc_palette(256)  # indices 0-20 are the classes, 255 (224, 224, 192) the border

VOC_LAYOUT = """\
  <root>/JPEGImages/<id>.jpg
  <root>/SegmentationClass/<id>.png   (palette PNG: 0-20 classes, 255 border)
  <root>/ImageSets/Segmentation/<split>.txt   (one <id> a line; split: train, val, trainval)
  <root> may also be VOCdevkit/ or its parent: VOC2012/ is found inside it."""


def _find_voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return root


def read_voc(
    root: str | os.PathLike, split: str = "train", mask_dir: str = "SegmentationClass"
) -> SegmentationDataset:
    """Read Pascal VOC 2012 segmentation; masks are read as palette indices, not colours.

    Args:
        root: ``VOC2012/`` (or ``VOCdevkit/`` or its parent).
        split: a list in ``ImageSets/Segmentation/``: ``train``, ``val`` or ``trainval``.
        mask_dir: the mask folder; ``SegmentationClassAug`` for the SBD-augmented grey masks.

    Masks saved as colour images (palette converted to RGB) are mapped back through the VOC
    colours; the white object borders (255) are ignored.
    """
    root = _find_voc_root(Path(root).expanduser())
    list_dir = Path("ImageSets") / "Segmentation"
    require_layout(root, "Pascal VOC", VOC_LAYOUT, ["JPEGImages", mask_dir, str(list_dir)])
    splits = sorted(p.stem for p in (root / list_dir).glob("*.txt"))
    check_split(root, "Pascal VOC", split, splits)
    list_file = root / list_dir / f"{split}.txt"
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"Pascal VOC split list {list_file} is empty")
    samples = [
        (root / "JPEGImages" / f"{image_id}.jpg", root / mask_dir / f"{image_id}.png")
        for image_id in ids
    ]
    colours = {tuple(int(c) for c in VOC_PALETTE[i]): i for i in range(len(VOC_CLASSES))}
    colours[tuple(int(c) for c in VOC_PALETTE[IGNORE_INDEX])] = IGNORE_INDEX
    return SegmentationDataset(
        samples,
        name="voc",
        split=split,
        classes=VOC_CLASSES,
        palette=VOC_PALETTE[: len(VOC_CLASSES)],
        root=root,
        label_colours=colours,
    )
