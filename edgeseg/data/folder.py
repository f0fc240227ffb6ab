"""A plain folder of images and index masks with a ``classes.json``: for your own data."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeseg.data.base import (
    IGNORE_INDEX,
    DataError,
    SegmentationDataset,
    list_images,
    require_layout,
)

FOLDER_LAYOUT = """\
  <root>/images/<name>.<png|jpg|...>   <root>/masks/<name>.png   (class indices)
  <root>/classes.json   {"classes": [...], "ignore_index": 11, "palette": [[r, g, b], ...]}
  splits, first that exists: <root>/splits/<split>.txt (names, one a line);
  <root>/images/<split>/ + <root>/masks/<split>/; else every image, for any split"""


def read_classes_json(path: Path) -> tuple[list[str], int | None, list[list[int]] | None]:
    """Read a ``classes.json``: ``{"classes": [...], "ignore_index": int?, "palette": [...]?}``.

    Returns:
        ``(classes, ignore_index or None, palette or None)``.

    Raises:
        DataError: the file is missing, not JSON, or its fields have the wrong form.
    """
    example = '{"classes": ["background", "cat"], "ignore_index": 255}'
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path} does not exist; it lists the class names, e.g. {example}"
        ) from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is not readable JSON ({error}); expected e.g. {example}") from None
    classes = spec.get("classes") if isinstance(spec, dict) else None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise DataError(f'{path} needs "classes": a non-empty list of names, e.g. {example}')
    ignore = spec.get("ignore_index")
    if ignore is not None:
        if not isinstance(ignore, int) or not 0 <= ignore <= 255:
            raise DataError(f"{path}: ignore_index must be an integer 0-255, got {ignore!r}")
        if ignore < len(classes):
            raise DataError(
                f"{path}: ignore_index {ignore} is the index of class {classes[ignore]!r}; list "
                "only the classes that are trained and give the void value after them (or 255)"
            )
    palette = spec.get("palette")
    if palette is not None and not (
        isinstance(palette, list)
        and len(palette) == len(classes)
        and all(
            isinstance(c, list)
            and len(c) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette
        )
    ):
        raise DataError(
            f"{path}: palette must be one [r, g, b] (0-255) per class: {len(classes)} colours"
        )
    return list(classes), ignore, palette


def _folder_samples(root: Path, split: str) -> list[tuple[Path, Path]]:
    images, masks = root / "images", root / "masks"
    split_dir = root / "splits"
    if split_dir.is_dir():
        list_file = split_dir / f"{split}.txt"
        if not list_file.is_file():
            found = ", ".join(sorted(p.stem for p in split_dir.glob("*.txt"))) or "none"
            raise DataError(f"folder dataset {root} has no {list_file.name} (found: {found})")
        by_stem = {path.stem: path for path in list_images(images)}
        stems = [Path(line.strip()).stem for line in list_file.read_text().splitlines()]
        return [(by_stem.get(stem, images / stem), masks / f"{stem}.png") for stem in stems if stem]
    subfolders = sorted(p.name for p in images.iterdir() if p.is_dir())
    if subfolders:
        if split not in subfolders:
            raise DataError(
                f"folder dataset {root} has no images/{split}/ (found: {', '.join(subfolders)})"
            )
        images, masks = images / split, masks / split
    return [(image, masks / f"{image.stem}.png") for image in list_images(images)]


def read_folder(root: str | os.PathLike, split: str = "train") -> SegmentationDataset:
    """Read ``images/`` and ``masks/`` (same names, masks ``.png``) and ``classes.json``.

    The split is chosen by the first of these that exists: ``splits/<split>.txt`` listing
    image names (with or without suffix); ``images/<split>/`` and ``masks/<split>/``
    subfolders; otherwise every image is in every split, so train and val are the same files.

    Masks hold class indices ``0 .. len(classes) - 1``; ``ignore_index`` from ``classes.json``
    and 255 are void and read as 255. With a palette, colour masks are mapped back to indices.
    """
    root = Path(root).expanduser()
    require_layout(root, "folder dataset", FOLDER_LAYOUT, ["images", "masks"])
    classes, ignore, palette = read_classes_json(root / "classes.json")
    samples = _folder_samples(root, split)
    if not samples:
        raise DataError(f"folder dataset {root} has no images for split {split!r}")
    label_map = {value: value for value in range(len(classes))}
    label_map[IGNORE_INDEX] = IGNORE_INDEX
    if ignore is not None:
        label_map[ignore] = IGNORE_INDEX
    colours = None
    if palette is not None:
        colours = {tuple(colour): index for index, colour in enumerate(palette)}
    return SegmentationDataset(
        samples,
        name=root.name or "folder",
        split=split,
        classes=classes,
        palette=palette,
        root=root,
        label_map=label_map,
        label_colours=colours,
    )
