"""Cityscapes fine annotations, labelIds mapped to the 19 training classes."""

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

# (name, labelId, trainId, colour) from cityscapesScripts/helpers/labels.py (Cordts et al. 2016).
# trainId 255 is not trained or scored. The licence plate (labelId -1) is never stored in masks.
CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
)

_TRAIN = sorted(
    (train, name, colour) for name, _, train, colour in CITYSCAPES_LABELS if train < 255
)
CITYSCAPES_CLASSES = tuple(name for _, name, _ in _TRAIN)
CITYSCAPES_PALETTE = tuple(colour for _, _, colour in _TRAIN)
CITYSCAPES_LABEL_TO_TRAIN = {label_id: train for _, label_id, train, _ in CITYSCAPES_LABELS}

CITYSCAPES_LAYOUT = """\
  <root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
  <root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png   (split: train, val or test)"""


def read_cityscapes(
    root: str | os.PathLike, split: str = "train", annotations: str = "gtFine"
) -> SegmentationDataset:
    """Read Cityscapes, mapping each mask's labelIds to the 19 trainIds (others to 255).

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test`` (the test masks hold no classes).
        annotations: ``gtFine``, or ``gtCoarse`` for the coarse annotations.
    """
    root = Path(root).expanduser()
    layout = CITYSCAPES_LAYOUT.replace("gtFine", annotations)
    require_layout(root, "Cityscapes", layout, ["leftImg8bit", annotations])
    splits = sorted(
        p.name
        for p in (root / "leftImg8bit").iterdir()
        if p.is_dir() and (root / annotations / p.name).is_dir()
    )
    check_split(root, "Cityscapes", split, splits)
    suffix = "_leftImg8bit.png"
    samples = []
    for image in sorted((root / "leftImg8bit" / split).glob(f"*/*{suffix}")):
        stem = image.name[: -len(suffix)]
        mask = root / annotations / split / image.parent.name / f"{stem}_{annotations}_labelIds.png"
        samples.append((image, mask))
    if not samples:
        raise DataError(
            f"Cityscapes folder {root / 'leftImg8bit' / split} holds no <city>/*{suffix} images"
        )
    label_map = dict(CITYSCAPES_LABEL_TO_TRAIN)
    label_map[IGNORE_INDEX] = IGNORE_INDEX
    return SegmentationDataset(
        samples,
        name="cityscapes",
        split=split,
        classes=CITYSCAPES_CLASSES,
        palette=CITYSCAPES_PALETTE,
        root=root,
        label_map=label_map,
        label_description=(
            "stored labelIds 0-33 are read; those that are not one of the 19 train classes "
            "become void 255"
        ),
    )
