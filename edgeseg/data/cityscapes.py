"""Cityscapes fine annotations, labelIds mapped to the 19 training classes.

Besides the labels, :class:`CityscapesDataset` reads each image's ``*_instanceIds.png``, which
the benchmark's instance-weighted scores (class and category iIoU,
:class:`edgeseg.metrics.CityscapesScores`) need.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgeseg.data.base import (
    IGNORE_INDEX,
    DataError,
    SegmentationDataset,
    check_split,
    read_label_file,
    require_layout,
)


class CityscapesLabel(NamedTuple):
    """One row of cityscapesScripts' ``helpers/labels.py``.

    ``train_id`` 255 marks the labels that are neither trained nor scored (``ignoreInEval``).
    """

    name: str
    label_id: int
    train_id: int
    category: str
    has_instances: bool
    colour: tuple[int, int, int]


# From cityscapesScripts/helpers/labels.py (Cordts et al. 2016). The licence plate (labelId -1)
# is never stored in masks and is left out.
CITYSCAPES_LABELS = tuple(CityscapesLabel(*row) for row in (
    ("unlabeled", 0, 255, "void", False, (0, 0, 0)),
    ("ego vehicle", 1, 255, "void", False, (0, 0, 0)),
    ("rectification border", 2, 255, "void", False, (0, 0, 0)),
    ("out of roi", 3, 255, "void", False, (0, 0, 0)),
    ("static", 4, 255, "void", False, (0, 0, 0)),
    ("dynamic", 5, 255, "void", False, (111, 74, 0)),
    ("ground", 6, 255, "void", False, (81, 0, 81)),
    ("road", 7, 0, "flat", False, (128, 64, 128)),
    ("sidewalk", 8, 1, "flat", False, (244, 35, 232)),
    ("parking", 9, 255, "flat", False, (250, 170, 160)),
    ("rail track", 10, 255, "flat", False, (230, 150, 140)),
    ("building", 11, 2, "construction", False, (70, 70, 70)),
    ("wall", 12, 3, "construction", False, (102, 102, 156)),
    ("fence", 13, 4, "construction", False, (190, 153, 153)),
    ("guard rail", 14, 255, "construction", False, (180, 165, 180)),
    ("bridge", 15, 255, "construction", False, (150, 100, 100)),
    ("tunnel", 16, 255, "construction", False, (150, 120, 90)),
    ("pole", 17, 5, "object", False, (153, 153, 153)),
    ("polegroup", 18, 255, "object", False, (153, 153, 153)),
    ("traffic light", 19, 6, "object", False, (250, 170, 30)),
    ("traffic sign", 20, 7, "object", False, (220, 220, 0)),
    ("vegetation", 21, 8, "nature", False, (107, 142, 35)),
    ("terrain", 22, 9, "nature", False, (152, 251, 152)),
    ("sky", 23, 10, "sky", False, (70, 130, 180)),
    ("person", 24, 11, "human", True, (220, 20, 60)),
    ("rider", 25, 12, "human", True, (255, 0, 0)),
    ("car", 26, 13, "vehicle", True, (0, 0, 142)),
    ("truck", 27, 14, "vehicle", True, (0, 0, 70)),
    ("bus", 28, 15, "vehicle", True, (0, 60, 100)),
    ("caravan", 29, 255, "vehicle", True, (0, 0, 90)),
    ("trailer", 30, 255, "vehicle", True, (0, 0, 110)),
    ("train", 31, 16, "vehicle", True, (0, 80, 100)),
    ("motorcycle", 32, 17, "vehicle", True, (0, 0, 230)),
    ("bicycle", 33, 18, "vehicle", True, (119, 11, 32)),
))  # fmt: skip

_TRAIN = sorted((label.train_id, label) for label in CITYSCAPES_LABELS if label.train_id < 255)
CITYSCAPES_CLASSES = tuple(label.name for _, label in _TRAIN)
CITYSCAPES_PALETTE = tuple(label.colour for _, label in _TRAIN)
CITYSCAPES_LABEL_TO_TRAIN = {label.label_id: label.train_id for label in CITYSCAPES_LABELS}
CITYSCAPES_CATEGORIES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
"""The 7 scored categories (categoryIds 1-7); ``void`` holds no scored class."""
CITYSCAPES_CLASS_CATEGORY = tuple(label.category for _, label in _TRAIN)
"""The category of each train class, in trainId order."""
CITYSCAPES_INSTANCE_CLASSES = tuple(label.name for _, label in _TRAIN if label.has_instances)
"""The 8 train classes annotated per instance (person ... bicycle), in trainId order."""

CITYSCAPES_LAYOUT = """\
  <root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
  <root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png   (split: train, val or test)
  <root>/gtFine/<split>/<city>/<name>_gtFine_instanceIds.png   (for class / category iIoU)"""


class CityscapesDataset(SegmentationDataset):
    """Cityscapes samples; ``dataset[i]`` is ``(image, trainId label)`` as for every dataset.

    :meth:`read_instance_ids` adds the stored instance ids of a sample: ``labelId * 1000 + k``
    for instance ``k`` of a class annotated per instance, the plain labelId elsewhere.
    """

    def instance_ids_path(self, index: int) -> Path:
        """The ``*_instanceIds.png`` beside sample ``index``'s ``*_labelIds.png``."""
        mask = self.samples[index][1]
        if not mask.name.endswith("_labelIds.png"):
            raise DataError(f"mask {self.display_path(mask)} is not a *_labelIds.png file")
        return mask.with_name(mask.name[: -len("_labelIds.png")] + "_instanceIds.png")

    def has_instance_ids(self, indices=None) -> bool:
        """Whether the instance ids file of every sample (or of ``indices``) exists."""
        indices = range(len(self.samples)) if indices is None else indices
        return all(self.instance_ids_path(index).is_file() for index in indices)

    def read_instance_ids(self, index: int) -> np.ndarray:
        """Sample ``index``'s instance ids as an (H, W) int32 array, as stored (16-bit PNG).

        Raises:
            DataError: the file is missing, unreadable, not single-channel, or not the size of
                the sample's mask.
        """
        path = self.instance_ids_path(index)
        name = self.display_path(path)
        if not path.is_file():
            raise DataError(
                f"instance ids {name} does not exist; Cityscapes' class and category iIoU need "
                "the *_instanceIds.png of every image (from the gtFine download)"
            )
        ids = read_label_file(path, name)
        if ids.ndim != 2:
            raise DataError(
                f"instance ids {name} has shape {ids.shape}; expected a single-channel 16-bit PNG"
            )
        return ids.astype(np.int32)


def read_cityscapes(
    root: str | os.PathLike, split: str = "train", annotations: str = "gtFine"
) -> CityscapesDataset:
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
    return CityscapesDataset(
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
