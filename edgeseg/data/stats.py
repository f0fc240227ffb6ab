"""Dataset statistics that need a pass over every mask, cached so that it is done once."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from edgeseg.data.base import IGNORE_INDEX, SegmentationDataset

_CACHE_VERSION = 1


def dataset_key(dataset: SegmentationDataset) -> str:
    """A hash of what the dataset's labels depend on: name, root, split, classes and every
    sample's files with their sizes and modification times."""
    digest = hashlib.sha256()
    header = [_CACHE_VERSION, dataset.name, str(dataset.root), dataset.split, dataset.classes]
    digest.update(json.dumps(header).encode())
    stats: dict[Path, tuple[int, int]] = {}
    for paths in dataset.samples:
        for path in paths:
            if path not in stats:
                try:
                    info = path.stat()
                    stats[path] = (info.st_size, info.st_mtime_ns)
                except OSError:
                    stats[path] = (-1, -1)
            digest.update(f"{path}\0{stats[path][0]}\0{stats[path][1]}\n".encode())
    return digest.hexdigest()


def _load_cache(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one that will be rewritten
    return content.get("entries", {}) if isinstance(content, dict) else {}


def _save_cache(path: Path, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump({"version": _CACHE_VERSION, "entries": entries}, file, indent=1)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def class_pixel_counts(
    dataset: SegmentationDataset, cache_path: str | os.PathLike | None = None
) -> np.ndarray:
    """Count the label pixels of each class over the whole dataset (ignore pixels left out).

    The counts are what median-frequency (SegNet) and ENet class weights are computed from.

    Args:
        dataset: the dataset to scan; every mask is read (images are not).
        cache_path: a JSON file that keeps the counts of scanned datasets, keyed by
            :func:`dataset_key`; a later call with the same files reads them from it. None: no
            cache (for a default place, pass ``edgeseg.data.cache_dir() / "class_counts.json"``).

    Returns:
        A (num_classes,) int64 array.

    Raises:
        DataError: a mask that is missing or holds values the dataset does not have.
    """
    key = None
    if cache_path is not None:
        cache_path = Path(cache_path).expanduser()
        key = dataset_key(dataset)
        entry = _load_cache(cache_path).get(key)
        if entry and len(entry.get("counts", ())) == dataset.num_classes:
            return np.array(entry["counts"], dtype=np.int64)

    counts = np.zeros(IGNORE_INDEX + 1, dtype=np.int64)
    for index in range(len(dataset)):
        counts += np.bincount(dataset.read_label(index).ravel(), minlength=IGNORE_INDEX + 1)
    counts = counts[: dataset.num_classes]

    if cache_path is not None:
        entries = _load_cache(cache_path)
        entries[key] = {
            "name": dataset.name,
            "split": dataset.split,
            "root": str(dataset.root),
            "classes": dataset.classes,
            "samples": len(dataset),
            "counts": counts.tolist(),
        }
        _save_cache(cache_path, entries)
    return counts
