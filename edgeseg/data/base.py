"""Segmentation datasets: image and mask files, what the label values mean, and their checks.

Every reader returns a :class:`SegmentationDataset` whose labels are already the training ids:
``0 .. num_classes - 1`` for the classes and ``255`` (:data:`IGNORE_INDEX`) for pixels that are
not scored (CamVid's void 11, Cityscapes' non-train labelIds, VOC's object borders, COCO crowds).
Files are read lazily, one sample at a time; a bad file raises :class:`DataError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data.png import PngError, decode_palette_png, is_palette_png
from edgeseg.palette import voc_palette

IGNORE_INDEX = 255
"""The label of pixels that are not scored, in every dataset after reading."""


class DataError(ValueError):
    """A dataset, a spec or one of its files is missing, unreadable or inconsistent."""


def _value_ranges(values: Sequence[int]) -> str:
    """Write sorted integers compactly: [0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts: list[str] = []
    values = sorted(values)
    start = prev = None
    for value in [*values, None]:
        if value is not None and prev is not None and value == prev + 1:
            prev = value
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = value
    return ", ".join(parts)


def _display(path: Path, root: Path | None) -> str:
    """The path as a person wants to read it in a message: relative to the dataset root."""
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def read_image(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array, ignoring EXIF orientation.

    Masks and annotations are drawn on the stored pixels, so the image is not rotated.

    Raises:
        DataError: the file is missing or is not an image OpenCV can decode.
    """
    path = Path(path)
    name = name or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image {name} does not exist") from None
    except OSError as error:
        raise DataError(f"image {name} cannot be read: {error.strerror}") from None
    image = cv2.imdecode(
        np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    )
    if image is None:
        raise DataError(
            f"image {name} is not a readable image ({len(data)} bytes that OpenCV cannot decode)"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label_file(
    path: str | os.PathLike,
    name: str | None = None,
    colours: Mapping[tuple[int, int, int], int] | None = None,
) -> np.ndarray:
    """Read a mask file as an (H, W) integer array of the values stored in it.

    Palette PNGs give their palette indices (not their colours), grey PNGs their values (8 or
    16 bit), and colour masks are mapped back to values through ``colours`` when it is given.

    Args:
        path: the mask file.
        name: how to name the file in error messages (default: the path).
        colours: RGB colour -> stored value, for masks saved as colour images.

    Raises:
        DataError: the file is missing, unreadable, or a colour mask that cannot be mapped.
    """
    path = Path(path)
    name = name or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"mask {name} does not exist") from None
    except OSError as error:
        raise DataError(f"mask {name} cannot be read: {error.strerror}") from None
    if is_palette_png(data):
        try:
            return decode_palette_png(data)[0]
        except PngError as error:
            raise DataError(f"mask {name} is a broken palette PNG: {error}") from None
    mask = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DataError(
            f"mask {name} is not a readable image ({len(data)} bytes that OpenCV cannot decode)"
        )
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim == 2:
        return mask
    bgr = mask[:, :, :3]
    if (bgr[:, :, 0] == bgr[:, :, 1]).all() and (bgr[:, :, 1] == bgr[:, :, 2]).all():
        return bgr[:, :, 0]  # a grey mask saved with three equal channels
    if not colours:
        count = len(np.unique(bgr.reshape(-1, 3), axis=0))
        raise DataError(
            f"mask {name} is a colour image ({count} distinct colours); expected class indices "
            "in a single-channel or palette PNG"
        )
    return _colours_to_values(bgr[:, :, ::-1], colours, name)


def _colours_to_values(
    rgb: np.ndarray, colours: Mapping[tuple[int, int, int], int], name: str
) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    keys = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    unique, inverse = np.unique(keys, return_inverse=True)
    lookup = {(r << 16) | (g << 8) | b: value for (r, g, b), value in colours.items()}
    unknown = [int(key) for key in unique if int(key) not in lookup]
    if unknown:
        shown = ", ".join(str(((k >> 16) & 255, (k >> 8) & 255, k & 255)) for k in unknown[:5])
        raise DataError(
            f"mask {name} has colour(s) {shown} that are not in the dataset's palette; expected "
            "class indices, or exactly the palette colours"
        )
    values = np.array([lookup[int(key)] for key in unique], dtype=np.int32)
    return values[inverse.reshape(keys.shape)]


class SegmentationDataset:
    """Image and mask files of one split, with the class names, colours and label mapping.

    ``dataset[i]`` reads sample ``i`` and returns ``(image, label)``: an (H, W, 3) uint8 RGB
    image and an (H, W) uint8 label with values ``0 .. num_classes - 1`` or 255 (ignore).

    Args:
        samples: (image path, mask path) pairs.
        name: the dataset's name, e.g. ``"camvid"``.
        split: the split these samples come from, e.g. ``"train"``.
        classes: class names; index ``i`` is label ``i``.
        palette: (num_classes, 3) RGB colours to draw the classes with (default: VOC colours).
        root: the dataset folder; messages show file paths relative to it.
        label_map: stored mask value -> label (a class index or 255), for datasets whose files
            do not store training ids (CamVid's void 11, Cityscapes' labelIds). Default: the
            values ``0 .. num_classes - 1`` are the classes and 255 is ignored. A stored value
            missing from the map is an error.
        label_colours: RGB colour -> stored value, to read masks saved as colour images.
        label_description: what stored values are accepted, for error messages (default:
            worked out from ``label_map``).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        samples: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
        *,
        name: str,
        split: str,
        classes: Sequence[str],
        palette: np.ndarray | Sequence[Sequence[int]] | None = None,
        root: str | os.PathLike | None = None,
        label_map: Mapping[int, int] | None = None,
        label_colours: Mapping[tuple[int, int, int], int] | None = None,
        label_description: str | None = None,
    ):
        self.samples: list[tuple[Path, Path]] = [(Path(i), Path(m)) for i, m in samples]
        self.name = name
        self.split = split
        self.classes = list(classes)
        if not self.classes:
            raise DataError(f"dataset {name} has no classes")
        if len(self.classes) > IGNORE_INDEX:
            raise DataError(
                f"dataset {name} has {len(self.classes)} classes; at most {IGNORE_INDEX} fit "
                f"in uint8 labels next to the ignore value {IGNORE_INDEX}"
            )
        if palette is None:
            palette = voc_palette(len(self.classes))
        self.palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        if len(self.palette) != len(self.classes):
            raise DataError(
                f"dataset {name} has {len(self.classes)} classes but {len(self.palette)} palette "
                "colours; give one RGB colour per class"
            )
        self.root = Path(root) if root is not None else None
        self.skipped: list[tuple[str, str]] = []

        if label_map is None:
            label_map = {value: value for value in range(len(self.classes))}
            label_map[IGNORE_INDEX] = IGNORE_INDEX
        lookup = np.full(256, -1, dtype=np.int16)
        for stored, label in label_map.items():
            if not (0 <= label < len(self.classes) or label == IGNORE_INDEX):
                raise DataError(
                    f"label_map sends stored value {stored} to {label}, which is neither a class "
                    f"(0-{len(self.classes) - 1}) nor the ignore value {IGNORE_INDEX}"
                )
            lookup[stored] = label
        self._lookup = lookup
        self._label_colours = dict(label_colours) if label_colours else None
        if label_description is None:
            scored = [v for v in range(256) if 0 <= lookup[v] < len(self.classes)]
            void = [v for v in range(256) if lookup[v] == IGNORE_INDEX]
            label_description = _value_ranges(scored)
            if void:
                label_description += f", void {_value_ranges(void)}"
        self.label_description = label_description

    # ----------------------------------------------------------------------------- sequence

    @property
    def num_classes(self) -> int:
        """The number of classes (the ignore value 255 is not one)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read sample ``index`` as ``(image (H, W, 3) uint8 RGB, label (H, W) uint8)``."""
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(
                f"sample {index} is out of range: the {self.name} {self.split} split has "
                f"{len(self.samples)} samples"
            )
        index %= len(self.samples)
        image_path, _ = self.samples[index]
        image = read_image(image_path, self.display_path(image_path))
        label = self.read_label(index, image.shape[:2])
        return image, label

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for index in range(len(self.samples)):
            yield self[index]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"samples={len(self.samples)}, classes={self.num_classes}, root={str(self.root)!r})"
        )

    def sample_paths(self, index: int) -> tuple[Path, Path]:
        """The (image, mask) files of sample ``index``."""
        return self.samples[index]

    def display_path(self, path: Path) -> str:
        """``path`` relative to the dataset root, as error messages show it."""
        return _display(path, self.root)

    # ----------------------------------------------------------------------------- labels

    def read_stored_label(self, index: int) -> np.ndarray:
        """The values stored in sample ``index``'s mask, before mapping to training ids."""
        image_path, mask_path = self.samples[index]
        return read_label_file(mask_path, self.display_path(mask_path), self._label_colours)

    def read_label(self, index: int, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """Sample ``index``'s label as training ids, checked against its image size.

        Args:
            index: the sample.
            image_size: (height, width) of its image; when given, a mask of another size is
                an error.

        Raises:
            DataError: the mask is missing, unreadable, of another size than the image, or
                holds values that are neither classes nor void.
        """
        image_path, mask_path = self.samples[index]
        stored = self.read_stored_label(index)
        name = self.display_path(mask_path)
        if image_size is not None and stored.shape[:2] != tuple(image_size):
            (mh, mw), (ih, iw) = stored.shape[:2], image_size
            raise DataError(
                f"mask {name} is {mw}x{mh} pixels but its image {self.display_path(image_path)} "
                f"is {iw}x{ih}; a mask must have its image's size"
            )
        return self.map_labels(stored, name)

    def map_labels(self, stored: np.ndarray, name: str = "mask") -> np.ndarray:
        """Map stored mask values to training ids (uint8), rejecting values the dataset lacks."""
        if stored.dtype != np.uint8:
            too_big = stored > 255
            if too_big.any() or (stored < 0).any():
                bad = np.unique(stored[too_big | (stored < 0)])
                raise self._bad_values_error(name, bad)
            stored = stored.astype(np.uint8)
        label = self._lookup[stored]
        bad = label < 0
        if bad.any():
            raise self._bad_values_error(name, np.unique(stored[bad]))
        return label.astype(np.uint8)

    def _bad_values_error(self, name: str, values: np.ndarray) -> DataError:
        shown = ", ".join(str(int(v)) for v in values[:8])
        more = f" and {len(values) - 8} more" if len(values) > 8 else ""
        word = "label" if len(values) == 1 else "labels"
        return DataError(
            f"mask {name} has {word} {shown}{more} but the dataset has {self.num_classes} "
            f"classes ({self.label_description})"
        )

    # ----------------------------------------------------------------------------- checks

    def validate(self, skip_bad: bool = False, read_pixels: bool = True) -> SegmentationDataset:
        """Check every sample; raise on the first bad one, or drop the bad ones.

        Args:
            skip_bad: drop bad samples and record ``(file, reason)`` in ``self.skipped``
                instead of raising.
            read_pixels: read every image and mask (finds unreadable files, size mismatches and
                bad label values); when False only check that the files exist, which is quick.

        Returns:
            This dataset, for chaining.

        Raises:
            DataError: a bad sample, when ``skip_bad`` is False.
        """
        kept = []
        for index, sample in enumerate(self.samples):
            try:
                if read_pixels:
                    self[index]
                else:
                    self._check_exists(index)
            except DataError as error:
                if not skip_bad:
                    raise
                self.skipped.append((self.display_path(sample[0]), str(error)))
            else:
                kept.append(sample)
        self.samples = kept
        return self

    def _check_exists(self, index: int) -> None:
        image_path, mask_path = self.samples[index]
        if not image_path.is_file():
            raise DataError(f"image {self.display_path(image_path)} does not exist")
        if not mask_path.is_file():
            raise DataError(
                f"mask {self.display_path(mask_path)} for image "
                f"{self.display_path(image_path)} does not exist"
            )


def require_layout(root: Path, format_name: str, layout: str, needed: Sequence[str]) -> None:
    """Raise a DataError naming ``root`` and the expected layout if a needed folder is missing.

    Args:
        root: the dataset folder.
        format_name: e.g. ``"CamVid"``.
        layout: one or more lines describing the folders the format expects.
        needed: paths relative to ``root`` that must be folders.
    """
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"{format_name} root {root} {what}; expected:\n{layout}")
    missing = [part for part in needed if not (root / part).is_dir()]
    if missing:
        raise DataError(
            f"{format_name} root {root} has no {', '.join(p + '/' for p in missing)}; "
            f"expected:\n{layout}"
        )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, any case), sorted by name."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def check_split(root: Path, format_name: str, split: str, available: Sequence[str]) -> None:
    """Raise a DataError listing the splits found when ``split`` is not one of them."""
    if split not in available:
        found = ", ".join(available) if available else "none"
        raise DataError(f"{format_name} at {root} has no split {split!r} (found: {found})")
