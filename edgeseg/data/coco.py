"""COCO instance annotations, read as semantic label maps or as per-image instances.

Polygons and RLEs are rasterised with pycocotools (an optional dependency, imported when a
mask is first drawn) each time a sample is read; nothing is cached on disk.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import numpy as np

from edgeseg.data.base import IGNORE_INDEX, DataError, SegmentationDataset, read_image
from edgeseg.palette import voc_palette

COCO_LAYOUT = """\
  <root>/annotations/instances_<split>2017.json   (or instances_<split>.json)
  <root>/<split>2017/<file_name>   (or <root>/<split>/; the images the json lists)
  or give the json file itself: coco:/data/coco/annotations/instances_val2017.json"""


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError:
        raise ImportError(
            'reading COCO annotations needs pycocotools: pip install "edgeseg[coco]"'
        ) from None
    return mask_api


def rasterise_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Draw one COCO ``segmentation`` (polygons, RLE or uncompressed RLE) as an (H, W) uint8 mask.

    Polygons with fewer than three points are left out, as COCO's own API would fail on them.
    """
    mask_api = _mask_api()
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_api.merge(mask_api.frPyObjects(polygons, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_api.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return np.ascontiguousarray(mask_api.decode(rle), dtype=np.uint8)


class CocoIndex:
    """One COCO annotation file, indexed: images sorted by id, their annotations, categories.

    Categories become contiguous class ids ordered by category id, starting at 1: class 0 is
    ``"background"``.
    """

    def __init__(self, annotation_file: Path, image_dir: Path):
        self.annotation_file = annotation_file
        self.image_dir = image_dir
        try:
            content = json.loads(annotation_file.read_text())
        except FileNotFoundError:
            raise DataError(
                f"COCO annotation file {annotation_file} does not exist; expected:\n{COCO_LAYOUT}"
            ) from None
        except (OSError, ValueError) as error:
            raise DataError(
                f"COCO annotation file {annotation_file} is not JSON ({error})"
            ) from None
        if not isinstance(content, dict) or "images" not in content or "categories" not in content:
            raise DataError(
                f"COCO annotation file {annotation_file} lacks 'images' or 'categories'; "
                "is it an instances_*.json file?"
            )
        categories = sorted(content["categories"], key=lambda c: c["id"])
        self.category_to_class = {c["id"]: i + 1 for i, c in enumerate(categories)}
        self.classes = ["background"] + [c["name"] for c in categories]
        self.images = sorted(content["images"], key=lambda image: image["id"])
        self.annotations: dict[int, list[dict]] = {image["id"]: [] for image in self.images}
        for annotation in content.get("annotations", []):
            self.annotations.setdefault(annotation["image_id"], []).append(annotation)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.images[index]["file_name"]

    def describe(self, index: int) -> str:
        """How messages name the annotations of image ``index``."""
        image = self.images[index]
        return f"{self.annotation_file.name} (image id {image['id']}, {image['file_name']})"

    def class_id(self, index: int, annotation: dict) -> int:
        category = annotation["category_id"]
        if category not in self.category_to_class:
            raise DataError(
                f"annotation {annotation.get('id')} in {self.describe(index)} has category "
                f"{category}, which is not in the file's categories "
                f"({', '.join(str(c) for c in self.category_to_class)})"
            )
        return self.category_to_class[category]

    def instance_masks(self, index: int) -> list[tuple[dict, int, np.ndarray]]:
        """(annotation, class id, (H, W) uint8 mask) for each annotation of image ``index``."""
        image = self.images[index]
        height, width = int(image["height"]), int(image["width"])
        return [
            (a, self.class_id(index, a), rasterise_segmentation(a["segmentation"], height, width))
            for a in self.annotations.get(image["id"], [])
            if a.get("segmentation")
        ]


def _resolve(
    root: str | os.PathLike, split: str, annotation_file, image_dir
) -> tuple[Path, Path, str]:
    """Find the annotation file and image folder from the root, split and overrides."""
    root = Path(root).expanduser()
    if root.suffix == ".json":
        annotation_file = root
        match = re.fullmatch(r"instances_(.+?)(2017)?\.json", root.name)
        if match:
            split = match.group(1)
        root = root.parent.parent if root.parent.name == "annotations" else root.parent
    if not root.is_dir():
        raise DataError(f"COCO root {root} does not exist; expected:\n{COCO_LAYOUT}")
    if annotation_file is None:
        candidates = [root / "annotations" / f"instances_{split}{y}.json" for y in ("2017", "")]
        annotation_file = next((c for c in candidates if c.is_file()), None)
        if annotation_file is None:
            found = sorted(p.name for p in (root / "annotations").glob("instances_*.json"))
            raise DataError(
                f"COCO root {root} has no annotations/instances_{split}2017.json or "
                f"instances_{split}.json (found: {', '.join(found) or 'none'}); expected:\n"
                f"{COCO_LAYOUT}"
            )
    if image_dir is None:
        candidates = [root / f"{split}2017", root / split]
        image_dir = next((c for c in candidates if c.is_dir()), None)
        if image_dir is None:
            raise DataError(
                f"COCO root {root} has no image folder {split}2017/ or {split}/; expected:\n"
                f"{COCO_LAYOUT}"
            )
    return Path(annotation_file), Path(image_dir), split


class CocoSegmentationDataset(SegmentationDataset):
    """COCO instances drawn as a semantic label map; see :func:`read_coco`."""

    def __init__(self, index: CocoIndex, root: Path, split: str):
        self.index = index
        samples = [(index.image_path(i), index.annotation_file) for i in range(len(index.images))]
        super().__init__(
            samples,
            name="coco",
            split=split,
            classes=index.classes,
            palette=voc_palette(len(index.classes)),
            root=root,
        )

    def read_stored_label(self, index: int) -> np.ndarray:
        image = self.index.images[index]
        label = np.zeros((int(image["height"]), int(image["width"])), dtype=np.uint8)
        covered = np.zeros(label.shape, dtype=bool)
        crowd = np.zeros(label.shape, dtype=bool)
        instances = self.index.instance_masks(index)
        # Larger objects first, so that a smaller object in front of a larger one stays visible.
        for annotation, class_id, mask in sorted(instances, key=lambda x: -np.count_nonzero(x[2])):
            region = mask.astype(bool)
            if annotation.get("iscrowd"):
                crowd |= region
            else:
                label[region] = class_id
                covered |= region
        label[crowd & ~covered] = IGNORE_INDEX
        return label

    def read_label(self, index: int, image_size: tuple[int, int] | None = None) -> np.ndarray:
        label = self.read_stored_label(index)
        if image_size is not None and label.shape != tuple(image_size):
            (mh, mw), (ih, iw) = label.shape, image_size
            raise DataError(
                f"annotations {self.index.describe(index)} give the image a size of {mw}x{mh} "
                f"pixels but {self.display_path(self.samples[index][0])} is {iw}x{ih}"
            )
        return label


def read_coco(
    root: str | os.PathLike,
    split: str = "train",
    annotation_file: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
) -> SegmentationDataset:
    """Read COCO instance annotations as semantic segmentation.

    Class 0 is ``"background"`` (pixels no annotation covers) and the json's categories follow
    as 1..K, ordered by category id (COCO 2017: 80 categories, ids 1-90, become 1-80). Objects
    are drawn largest first so smaller ones in front stay visible; crowd regions
    (``iscrowd=1``) not covered by another object are 255.

    Args:
        root: the COCO folder, or an ``instances_*.json`` file (its split comes from the name
            and the root is the folder above ``annotations/``).
        split: ``train`` or ``val``: reads ``annotations/instances_<split>2017.json`` (or
            ``instances_<split>.json``) and images from ``<split>2017/`` (or ``<split>/``).
        annotation_file: the annotation file, overriding the one found from root and split.
        image_dir: the image folder, overriding the one found from root and split.
    """
    annotation_file, image_dir, split = _resolve(root, split, annotation_file, image_dir)
    index = CocoIndex(annotation_file, image_dir)
    root = image_dir.parent
    return CocoSegmentationDataset(index, root, split)


class CocoInstances:
    """Per-image COCO instances for instance segmentation; see :func:`read_coco_instances`."""

    def __init__(self, index: CocoIndex, split: str, include_crowd: bool = False):
        self.index = index
        self.split = split
        self.include_crowd = include_crowd
        self.classes = index.classes
        self.root = index.image_dir.parent
        self.skipped: list[tuple[str, str]] = []  # (image file, reason) of images left out

    @property
    def num_classes(self) -> int:
        """Classes including background (class 0)."""
        return len(self.classes)

    def image_files(self, i: int) -> tuple[Path, Path]:
        """The files image ``i`` is read from: the image and the annotation file."""
        return self.index.image_path(i), self.index.annotation_file

    def without(self, indices) -> CocoInstances:
        """These instances less the images at ``indices`` (bad files left out by
        ``--skip-bad``); evaluation scores the images that remain."""
        drop = set(indices)
        index = copy.copy(self.index)
        index.images = [image for i, image in enumerate(self.index.images) if i not in drop]
        kept = CocoInstances(index, self.split, self.include_crowd)
        kept.skipped = list(self.skipped)
        return kept

    def __len__(self) -> int:
        return len(self.index.images)

    def __getitem__(self, i: int) -> dict:
        """Image ``i`` and its instances.

        Returns:
            A dict with ``image`` (H, W, 3) uint8 RGB; ``boxes`` (N, 4) float32 as x0, y0, x1,
            y1 in pixels; ``class_ids`` (N,) int32 in 1..K; ``masks`` (N, H, W) uint8 0/1;
            ``iscrowd`` (N,) bool; ``image_id``; ``path``.
        """
        if not -len(self) <= i < len(self):
            raise IndexError(f"image {i} is out of range: {len(self)} images")
        i %= len(self)
        path = self.index.image_path(i)
        image = read_image(path, f"{self.index.image_dir.name}/{path.name}")
        info = self.index.images[i]
        if image.shape[:2] != (int(info["height"]), int(info["width"])):
            raise DataError(
                f"annotations {self.index.describe(i)} give the image a size of "
                f"{info['width']}x{info['height']} pixels but {path} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        boxes, class_ids, masks, crowd = [], [], [], []
        for annotation, class_id, mask in self.index.instance_masks(i):
            is_crowd = bool(annotation.get("iscrowd"))
            x, y, w, h = annotation["bbox"]
            if (is_crowd and not self.include_crowd) or w < 1 or h < 1:
                continue
            boxes.append((x, y, x + w, y + h))
            class_ids.append(class_id)
            masks.append(mask)
            crowd.append(is_crowd)
        height, width = image.shape[:2]
        return {
            "image": image,
            "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
            "class_ids": np.array(class_ids, dtype=np.int32),
            "masks": np.stack(masks) if masks else np.zeros((0, height, width), np.uint8),
            "iscrowd": np.array(crowd, dtype=bool),
            "image_id": info["id"],
            "path": path,
        }


def read_coco_instances(
    root: str | os.PathLike,
    split: str = "train",
    annotation_file: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    include_crowd: bool = False,
) -> CocoInstances:
    """Read COCO instance annotations per image: boxes, class ids and masks (for Mask R-CNN).

    Class ids are those of :func:`read_coco` (0 background, categories 1..K by id). Crowd
    annotations are left out unless ``include_crowd``; images without objects are kept, with
    N = 0. The arguments are those of :func:`read_coco`.
    """
    annotation_file, image_dir, split = _resolve(root, split, annotation_file, image_dir)
    return CocoInstances(CocoIndex(annotation_file, image_dir), split, include_crowd)
