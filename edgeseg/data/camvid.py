"""CamVid as distributed with SegNet: 11 classes at 480x360, void stored as 11."""

from __future__ import annotations

import os
from pathlib import Path

from edgeseg.data.base import (
    IGNORE_INDEX,
    DataError,
    SegmentationDataset,
    check_split,
    list_images,
    require_layout,
)

CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
"""The 11 CamVid classes of SegNet (Badrinarayanan et al. 2017), label i is CAMVID_CLASSES[i]."""

# The colours of SegNet-Tutorial's Scripts/test_segmentation_camvid.py, in class order.
CAMVID_PALETTE = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)
CAMVID_VOID = 11  # the stored value of "Unlabelled"; read as IGNORE_INDEX

CAMVID_LAYOUT = """\
  <root>/train/*.png  <root>/trainannot/*.png   (same file names; masks hold 0-10, void 11)
  <root>/val/*.png    <root>/valannot/*.png
  <root>/test/*.png   <root>/testannot/*.png"""


def paired_folder_samples(
    root: Path, image_dir: str, mask_dir: str, mask_suffix: str = ".png"
) -> list[tuple[Path, Path]]:
    """Pair each image in ``root/image_dir`` with ``root/mask_dir/<its stem><mask_suffix>``.

    A mask that does not exist is kept in the pair; reading or validating the sample reports it.
    """
    masks = root / mask_dir
    return [(image, masks / (image.stem + mask_suffix)) for image in list_images(root / image_dir)]


def _camvid_splits(root: Path) -> list[str]:
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and (root / f"{p.name}annot").is_dir()
    )


def read_camvid_layout(
    root: str | os.PathLike,
    split: str,
    *,
    name: str,
    format_name: str,
    classes,
    palette,
    label_map: dict[int, int] | None,
    layout: str,
) -> SegmentationDataset:
    """Read ``root/<split>/`` images and ``root/<split>annot/`` masks (the SegNet layout)."""
    root = Path(root).expanduser()
    require_layout(root, format_name, layout, [])
    splits = _camvid_splits(root)
    if not splits:
        raise DataError(
            f"{format_name} root {root} has no <split>/ and <split>annot/ folders; "
            f"expected:\n{layout}"
        )
    check_split(root, format_name, split, splits)
    samples = paired_folder_samples(root, split, f"{split}annot")
    if not samples:
        raise DataError(f"{format_name} folder {root / split} holds no images")
    return SegmentationDataset(
        samples,
        name=name,
        split=split,
        classes=classes,
        palette=palette,
        root=root,
        label_map=label_map,
    )


def read_camvid(root: str | os.PathLike, split: str = "train") -> SegmentationDataset:
    """Read CamVid in the SegNet layout (``train/`` + ``trainannot/``, ``val``, ``test``).

    Masks store the 11 classes as 0-10 and void as 11; void is read as 255.
    """
    label_map = {value: value for value in range(len(CAMVID_CLASSES))}
    label_map[CAMVID_VOID] = IGNORE_INDEX
    label_map[IGNORE_INDEX] = IGNORE_INDEX
    return read_camvid_layout(
        root,
        split,
        name="camvid",
        format_name="CamVid",
        classes=CAMVID_CLASSES,
        palette=CAMVID_PALETTE,
        label_map=label_map,
        layout=CAMVID_LAYOUT,
    )
