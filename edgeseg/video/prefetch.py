"""Reading ahead: a worker thread captures and prepares frames while the caller works on one.

``Prefetcher(source, segmenter.preprocess)`` overlaps capture and preprocessing with the
caller's inference, so on a live source the end-to-end frame rate stays close to the
inference-only rate::

    with open_source("0") as frames, Prefetcher(frames, segmenter.preprocess) as prefetched:
        for item in prefetched:
            batch, geometry = item.prepared
            ...

From files and folders every frame is kept (the worker runs at most ``depth`` frames ahead);
from a live source the worker prepares each new frame and keeps only the newest, so the caller
starts on a frame about one preparation old, not one inference old. The frames, and what
``prepare`` makes of them, pass through untouched.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PrefetchedFrame", "Prefetcher"]


@dataclass
class PrefetchedFrame:
    """A captured frame and what ``prepare`` made of it, with the time each took."""

    frame: np.ndarray
    prepared: Any  # prepare(frame); the frame itself without a prepare function
    capture_ms: float  # waiting for the source's frame
    prepare_ms: float
    started: float  # time.perf_counter() when its capture began


class Prefetcher:
    """Captures and prepares frames in a worker thread; an iterator of :class:`PrefetchedFrame`.

    Args:
        source: an iterable of frames (an ``edgeseg.video`` source, a list, ...). A source
            whose ``live`` attribute is true is read as fast as it delivers, keeping only the
            newest ``depth`` prepared frames; the ones replaced count in ``discarded``.
        prepare: run on each frame in the worker (e.g. ``Segmenter.preprocess``).
        depth: prepared frames held ready, at least 1.

    An error in the worker (the source failing, ``prepare`` raising) is raised by :meth:`get`
    once the frames prepared before it have been taken. :meth:`close` (or the end of a ``with``
    block) stops the worker; it closes a live source first, which wakes a worker waiting on it.
    """

    def __init__(self, source: Iterable[np.ndarray],
                 prepare: Callable[[np.ndarray], Any] | None = None, depth: int = 1):
        if depth < 1:
            raise ValueError(f"depth (frames prepared ahead) must be at least 1, got {depth}")
        self.source = source
        self._frames = iter(source)
        self._prepare = prepare
        self.live = bool(getattr(source, "live", False))
        self.depth = depth
        self.discarded = 0
        self._items: deque[PrefetchedFrame] = deque()
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._ended = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgeseg-prefetch", daemon=True)
        self._thread.start()

    # --- the worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.live:
                    with self._condition:
                        while len(self._items) >= self.depth and not self._stop.is_set():
                            self._condition.wait(0.1)
                    if self._stop.is_set():
                        break
                t0 = time.perf_counter()
                try:
                    frame = next(self._frames)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                prepared = self._prepare(frame) if self._prepare is not None else frame
                t2 = time.perf_counter()
                item = PrefetchedFrame(frame, prepared, 1e3 * (t1 - t0), 1e3 * (t2 - t1), t0)
                with self._condition:
                    while self.live and len(self._items) >= self.depth:
                        self._items.popleft()
                        self.discarded += 1
                    self._items.append(item)
                    self._condition.notify_all()
        except BaseException as error:  # handed to the caller's thread, which raises it
            self._error = error
        finally:
            with self._condition:
                self._ended = True
                self._condition.notify_all()

    # --- the caller -----------------------------------------------------------------------------

    def get(self) -> PrefetchedFrame | None:
        """The next prepared frame, or None at the end of the stream."""
        with self._condition:
            while not self._items and not self._ended:
                self._condition.wait(0.1)  # a timeout keeps Ctrl-C prompt
            if self._items:
                item = self._items.popleft()
                self._condition.notify_all()
                return item
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return None

    def __iter__(self) -> Iterator[PrefetchedFrame]:
        return self

    def __next__(self) -> PrefetchedFrame:
        item = self.get()
        if item is None:
            raise StopIteration
        return item

    def stats(self) -> dict[str, int]:
        """The source's counters, with the frames discarded here counted as dropped."""
        return {
            "dropped": int(getattr(self.source, "dropped", 0)) + self.discarded,
            "skipped": int(getattr(self.source, "skipped", 0)),
            "reopened": int(getattr(self.source, "reopened", 0)),
        }

    def close(self, timeout: float = 10.0) -> None:
        """Stops the worker. A live source is closed first, which wakes a worker waiting on it."""
        self._stop.set()
        if self.live and hasattr(self.source, "close"):
            self.source.close()
        self._thread.join(timeout)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
