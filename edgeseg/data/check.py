"""Decode every sample before training, remembering which files were found good.

A corrupt image or an out-of-range label found in the middle of an epoch costs the epoch and
surfaces as a TensorFlow traceback; found before the first step it is one line that names the
file and the value. :func:`check_dataset` decodes each sample as training will (image, mask,
their sizes, the label values) and raises the first :class:`~edgeseg.data.base.DataError`, or
with ``skip_bad`` drops the bad samples and lists them in ``dataset.skipped``.

Good samples are remembered in a JSON file under :func:`~edgeseg.data.cache.cache_dir` (one per
dataset folder and label mapping), keyed by their files' paths with each file's size and
modification time: a second run, or ``--resume``, decodes only the files that changed. Bad
samples are not remembered (a file that could not be read may be readable after a ``chmod``),
so they are decoded, and reported, again. Light: NumPy and the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from edgeseg.data.base import DataError, SegmentationDataset
from edgeseg.data.cache import cache_dir
from edgeseg.data.coco import CocoInstances
from edgeseg.io import write_json_atomic

__all__ = ["CHECK_CACHE_FOLDER", "ProgressBar", "check_cache_path", "check_dataset",
           "check_instances", "check_samples", "decode_sample", "quiet_opencv"]

CHECK_CACHE_FOLDER = "checked_samples"
_CACHE_VERSION = 1


# --- progress ------------------------------------------------------------------------------------


class ProgressBar:
    """``checking camvid train  120/367 [=======             ] 33%`` on stderr.

    On a terminal the bar is redrawn in place (at most ten times a second); elsewhere (a log
    file, a pipe) only the closing line is written. ``enabled=False`` writes nothing.
    """

    def __init__(self, total: int, label: str, enabled: bool = True,
                 stream: TextIO | None = None, width: int = 24):
        self.total, self.label, self.width = max(0, int(total)), label, width
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.total > 0
        self.live = self.enabled and getattr(self.stream, "isatty", lambda: False)()
        self.done = 0
        self.started = time.time()
        self._drawn = 0.0
        self._open = False

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.time()
        if self.live and (now - self._drawn > 0.1 or self.done >= self.total):
            self._drawn = now
            filled = self.width * self.done // max(1, self.total)
            bar = "=" * filled + " " * (self.width - filled)
            self.stream.write(f"\r{self.label}  {self.done}/{self.total} [{bar}] "
                              f"{100 * self.done // max(1, self.total)}%")
            self.stream.flush()
            self._open = True

    def close(self, summary: str | None = None) -> None:
        """Ends the bar's line; with ``summary`` writes it as the last word."""
        if not self.enabled:
            return
        if summary is not None:
            prefix = "\r" if self._open else ""
            self.stream.write(f"{prefix}{self.label}: {summary}\033[K\n" if self.live
                              else f"{self.label}: {summary}\n")
        elif self._open:
            self.stream.write("\n")
        self.stream.flush()
        self._open = False


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV's own log lines off (``[ERROR:0@4.8] ... IHDR chunk shall be first``): a file it
    cannot decode becomes a DataError naming the file, which says it once. Enter and leave it
    from one thread; the level is process-wide."""
    import cv2

    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(previous)


# --- the cache of good samples ----------------------------------------------------------------


def _stat(path: Path) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [int(info.st_size), int(info.st_mtime_ns)]


def _key(files: Sequence[Path]) -> str:
    return "\n".join(os.path.abspath(path) for path in files)


def _load(path: Path | None) -> dict[str, list]:
    if path is None:
        return {}
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one that is rewritten
    if not isinstance(content, dict) or content.get("version") != _CACHE_VERSION:
        return {}
    samples = content.get("samples")
    return samples if isinstance(samples, dict) else {}


def _save(path: Path | None, samples: dict[str, list], about: dict) -> None:
    if path is None:
        return
    # A read-only cache folder costs a re-check next time, nothing else.
    with contextlib.suppress(OSError):
        write_json_atomic(path, {"version": _CACHE_VERSION, **about, "samples": samples},
                          indent=None)


def check_cache_path(dataset: SegmentationDataset) -> Path:
    """The JSON file that remembers the good samples of ``dataset``'s folder and label mapping.

    What makes a mask valid (the class count, the stored value -> label map, the colours of
    colour masks) is part of the file's name, so a dataset read with another mapping starts a
    file of its own.
    """
    about = [_CACHE_VERSION, type(dataset).__name__, dataset.name,
             os.path.abspath(dataset.root) if dataset.root is not None else None,
             list(dataset.classes),
             dataset._lookup.tolist(),
             sorted((list(k), v) for k, v in (dataset._label_colours or {}).items())]
    digest = hashlib.sha256(json.dumps(about).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset.name) or "dataset"
    return cache_dir() / CHECK_CACHE_FOLDER / f"{safe}-{digest}.json"


# --- the check -----------------------------------------------------------------------------------


def decode_sample(dataset: SegmentationDataset, index: int) -> None:
    """Decodes sample ``index`` as training does; raises its DataError when it is bad."""
    dataset[index]


def check_samples(
    files: Sequence[Sequence[Path]],
    decode: Callable[[int], object],
    *,
    label: str,
    skip_bad: bool = False,
    cache_path: Path | None = None,
    about: dict | None = None,
    progress: bool = True,
) -> list[tuple[int, str]]:
    """Decodes every sample whose files changed since they were last found good.

    Args:
        files: for each sample, the files it is read from (their size and modification time
            decide whether it must be decoded again).
        decode: decodes sample ``i``, raising :class:`DataError` when it is bad.
        label: what the progress bar says, e.g. ``"checking camvid train"``.
        skip_bad: return the bad samples instead of raising on the first one.
        cache_path: the JSON file of good samples (None: decode every sample, remember none).
        about: fields written beside the samples in the cache file, for a person reading it.
        progress: draw a progress bar on stderr.

    Returns:
        ``(index, message)`` of each bad sample (empty unless ``skip_bad``).

    Raises:
        DataError: the first bad sample, when ``skip_bad`` is False.
    """
    known = _load(cache_path)
    remembered = dict(known)
    todo: list[tuple[int, str, list]] = []
    for index, sample_files in enumerate(files):
        key = _key(sample_files)
        stats = [_stat(Path(path)) for path in sample_files]
        if None in stats or known.get(key) != stats:
            todo.append((index, key, stats))
    bad: list[tuple[int, str]] = []
    bar = ProgressBar(len(todo), label, enabled=progress)
    finished = False
    try:
        with quiet_opencv():
            for index, key, stats in todo:
                try:
                    decode(index)
                except DataError as error:
                    if not skip_bad:
                        raise
                    bad.append((index, str(error)))
                    remembered.pop(key, None)
                else:
                    remembered[key] = stats
                bar.update()
        finished = True
    finally:
        if not finished:  # the error, not a summary, is the last word
            bar.close()
        else:
            known_good = len(files) - len(todo)
            bar.close(f"{len(files)} samples, " + (f"{len(bad)} bad" if bad else "all good")
                      + f" ({len(todo)} decoded"
                      + (f", {known_good} known good from an earlier check" if known_good else "")
                      + f"; {time.time() - bar.started:.1f} s)")
        if remembered != known:
            _save(cache_path, remembered, about or {})
    return bad


def check_dataset(
    dataset: SegmentationDataset,
    skip_bad: bool = False,
    progress: bool = True,
    cache: bool = True,
) -> SegmentationDataset:
    """Decodes and checks every sample of ``dataset`` (unless remembered good); see the module.

    Args:
        dataset: the dataset; with ``skip_bad`` its bad samples are removed from it.
        skip_bad: drop bad samples, recording ``(image file, reason)`` in ``dataset.skipped``,
            instead of raising on the first.
        progress: draw a progress bar on stderr while decoding.
        cache: remember good samples in :func:`check_cache_path` and trust what it remembers.

    Returns:
        ``dataset``, for chaining.

    Raises:
        DataError: the first bad sample (one line naming the file and what is wrong with it),
            when ``skip_bad`` is False; or every sample is bad.
    """
    bad = check_samples(
        dataset.samples, lambda index: decode_sample(dataset, index),
        label=f"checking {dataset.name} {dataset.split}", skip_bad=skip_bad,
        cache_path=check_cache_path(dataset) if cache else None,
        about={"dataset": dataset.name, "root": str(dataset.root)}, progress=progress,
    )
    if bad:
        drop = {index for index, _ in bad}
        dataset.skipped.extend((dataset.display_path(dataset.samples[index][0]), message)
                               for index, message in bad)
        if len(drop) == len(dataset.samples):
            raise DataError(
                f"every one of the {len(drop)} samples of {dataset.name} {dataset.split} is bad; "
                f"the first: {bad[0][1]}"
            )
        dataset.samples = [s for i, s in enumerate(dataset.samples) if i not in drop]
    return dataset


def check_instances(
    instances: CocoInstances,
    count: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    cache: bool = True,
) -> CocoInstances:
    """Decodes and checks the first ``count`` images of COCO instances (default: all).

    Each image is read as training and evaluation read it (the image, its size against the
    annotations, the masks, the categories). Good images are remembered as in
    :func:`check_dataset`, keyed by the image and the annotation file.

    Returns:
        ``instances``, or with ``skip_bad`` and bad images a copy without them whose
        ``skipped`` lists ``(image file, reason)``.

    Raises:
        DataError: the first bad image, when ``skip_bad`` is False; or every image is bad.
    """
    annotation_file = instances.index.annotation_file
    cache_path = None
    if cache:
        about = [_CACHE_VERSION, "instances", os.path.abspath(annotation_file),
                 os.path.abspath(instances.index.image_dir), instances.include_crowd]
        digest = hashlib.sha256(json.dumps(about).encode()).hexdigest()[:16]
        cache_path = cache_dir() / CHECK_CACHE_FOLDER / f"coco-{digest}.json"
    while True:  # images left out make room for unchecked ones among the first ``count``
        first = len(instances) if count is None else min(count, len(instances))
        files = [instances.image_files(i) for i in range(first)]
        bad = check_samples(
            files, instances.__getitem__, label=f"checking {annotation_file.name}",
            skip_bad=skip_bad, cache_path=cache_path,
            about={"annotations": str(annotation_file)}, progress=progress,
        )
        if not bad:
            return instances
        if len(bad) == len(instances):
            raise DataError(f"every one of the {len(bad)} images of {annotation_file} is bad; "
                            f"the first: {bad[0][1]}")
        kept = instances.without(index for index, _ in bad)
        kept.skipped.extend((str(files[index][0]), message) for index, message in bad)
        instances = kept
