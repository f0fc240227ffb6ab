"""Reading ahead: worker threads capture, prepare and infer frames while the caller draws one.

``Prefetcher(source, segmenter.preprocess, infer=...)`` runs a small pipeline, so that on a
live source or a file the end-to-end frame rate stays close to the inference-only rate::

    def infer(prepared):
        return segmenter.infer(prepared[0])

    with open_source("0") as frames, Prefetcher(frames, segmenter.preprocess, infer=infer) as ahead:
        for item in ahead:
            labels = segmenter.postprocess(item.output, item.prepared[1])
            ...  # draw and show frame N while the worker infers frame N+1

From files and folders every frame is kept, in order: one thread reads and prepares frames (at
most ``depth`` ahead), another runs ``infer`` on them (at most ``depth`` results ahead of the
caller, and one more in the making). From a live source one thread takes each frame as it
arrives, keeping only the newest (the others count in ``discarded``), and another prepares and
infers the newest frame as soon as the model is free: no frame is prepared only to be thrown
away, the model is not kept waiting, and inference starts on a frame at most one source period
old (without ``infer``, the newest frame is prepared when the caller has room for it). The
frames, and what ``prepare`` and ``infer`` make of them, pass through untouched.

Each item says when its frame was read (the source's ``read_at`` where it has one: for a live
source, when its own reader thread took the frame from the camera or stream) and, with
``infer``, how old the frame was when inference began (``age_ms``): the latency a model's
output carries, which stays flat on a live source however slow the model is.
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
    """A captured frame and what ``prepare`` (and ``infer``) made of it, with their times."""

    frame: np.ndarray
    prepared: Any  # prepare(frame); the frame itself without a prepare function
    capture_ms: float  # waiting for the source's frame
    prepare_ms: float
    started: float  # time.perf_counter() when its capture began
    output: Any = None  # infer(prepared), with an infer function
    inference_ms: float | None = None
    read_at: float | None = None  # time.perf_counter() when the source read the frame
    age_ms: float | None = None  # with infer: ms from read_at to the start of inference


class Prefetcher:
    """Captures, prepares and infers frames in worker threads; an iterator of
    :class:`PrefetchedFrame`.

    Args:
        source: an iterable of frames (an ``edgeseg.video`` source, a list, ...). A source
            whose ``live`` attribute is true is read as fast as it delivers, keeping only the
            newest frame; the ones replaced before being prepared count in ``discarded``.
        prepare: run on each frame in a worker (e.g. ``Segmenter.preprocess``).
        depth: frames held ready at each step, at least 1.
        infer: run in a worker thread of its own on what ``prepare`` returned (e.g. the
            model on the batch); its result is :attr:`PrefetchedFrame.output`.

    An error in a worker (the source failing, ``prepare`` or ``infer`` raising, Ctrl-C raised
    by them) is raised by :meth:`get` once the frames finished before it have been taken.
    :meth:`close` (or the end of a ``with`` block) stops the workers; it closes a live source
    first, which wakes a worker waiting on it.
    """

    def __init__(self, source: Iterable[np.ndarray],
                 prepare: Callable[[np.ndarray], Any] | None = None, depth: int = 1,
                 infer: Callable[[Any], Any] | None = None):
        if depth < 1:
            raise ValueError(f"depth (frames prepared ahead) must be at least 1, got {depth}")
        self.source = source
        self._frames = iter(source)
        self._prepare = prepare
        self._infer = infer
        self.live = bool(getattr(source, "live", False))
        self.depth = depth
        self.discarded = 0
        self._items: deque[PrefetchedFrame] = deque()  # what get() hands out
        self._ready: deque[PrefetchedFrame] = deque()  # in order, with infer: prepared frames
        # live: (frame, arrival here, when the source read it)
        self._newest: tuple[np.ndarray, float, float] | None = None
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._captured_all = False  # the capture worker has finished
        self._ended = False  # no more items will come
        self._capture_error: BaseException | None = None
        self._process_error: BaseException | None = None
        # Live sources and inference have a second stage; a file without inference has one.
        self._staged = self.live or infer is not None
        self._threads = [threading.Thread(target=self._capture, name="edgeseg-prefetch",
                                          daemon=True)]
        if self._staged:
            self._threads.append(threading.Thread(target=self._process, name="edgeseg-infer",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()

    # --- the workers ----------------------------------------------------------------------------

    def _halted(self) -> bool:
        return self._stop.is_set() or self._ended

    def _capture(self) -> None:
        """Reads the source: in order, prepared, at most ``depth`` ahead; live, every frame as
        it comes, the newest kept for :meth:`_process`."""
        queue = self._ready if self._infer is not None else self._items
        try:
            while not self._halted():
                if not self.live:
                    with self._condition:
                        while len(queue) >= self.depth and not self._halted():
                            self._condition.wait(0.1)
                    if self._halted():
                        break
                t0 = time.perf_counter()
                try:
                    frame = next(self._frames)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                read_at = getattr(self.source, "read_at", None) or t1
                if self.live:
                    with self._condition:
                        if self._newest is not None:
                            self.discarded += 1
                        self._newest = (frame, t1, read_at)
                        self._condition.notify_all()
                    continue
                prepared = self._prepare(frame) if self._prepare is not None else frame
                t2 = time.perf_counter()
                item = PrefetchedFrame(frame, prepared, 1e3 * (t1 - t0), 1e3 * (t2 - t1), t0,
                                       read_at=read_at)
                with self._condition:
                    queue.append(item)
                    self._condition.notify_all()
        except BaseException as error:  # handed to the caller's thread, which raises it
            self._capture_error = error
        finally:
            with self._condition:
                self._captured_all = True
                self._ended = self._ended or not self._staged
                self._condition.notify_all()

    def _wait_for_room(self) -> bool:
        """Waits until the caller has fewer than ``depth`` items waiting; False when stopped.
        Call holding the condition."""
        while len(self._items) >= self.depth and not self._stop.is_set():
            self._condition.wait(0.1)
        return not self._stop.is_set()

    def _next_input(self, wait: bool = True) -> PrefetchedFrame | None:
        """The next prepared frame (in order) or the newest frame (live, prepared here); None
        at the end, or with ``wait=False`` when there is none yet. Without ``infer``, a live
        frame is taken only once the caller has room, so that it is as fresh as can be; with
        it, at once, so that the model is never idle."""
        with self._condition:
            if self.live and self._infer is None and not self._wait_for_room():
                return None
            t0 = time.perf_counter()
            if self.live:
                while (wait and self._newest is None and not self._captured_all
                       and not self._stop.is_set()):
                    self._condition.wait(0.1)
                if self._stop.is_set() or self._newest is None:
                    return None
                (frame, arrived, read_at), self._newest = self._newest, None
            else:
                while (wait and not self._ready and not self._captured_all
                       and not self._stop.is_set()):
                    self._condition.wait(0.1)
                if self._stop.is_set() or not self._ready:
                    return None
                item = self._ready.popleft()
                self._condition.notify_all()  # room for the capture worker
                return item
        t1 = time.perf_counter()
        prepared = self._prepare(frame) if self._prepare is not None else frame
        t2 = time.perf_counter()
        # A frame that arrived before it was asked for is older than the wait says.
        return PrefetchedFrame(frame, prepared, 1e3 * (t1 - t0), 1e3 * (t2 - t1),
                               min(t0, arrived), read_at=read_at)

    def _process(self) -> None:
        """Prepares the newest live frame and runs ``infer``; at most ``depth`` results wait
        for the caller, and one more is being made."""
        try:
            item = self._next_input()
            while item is not None:
                following, failed = None, None
                if self._infer is not None:
                    t0 = time.perf_counter()
                    if item.read_at is not None:
                        item.age_ms = 1e3 * (t0 - item.read_at)
                    item.output = self._infer(item.prepared)
                    item.inference_ms = 1e3 * (time.perf_counter() - t0)
                    # A next input already there is taken and prepared before this result
                    # wakes the caller: the caller's drawing then runs beside the model (which
                    # lets go of the GIL), not beside preparation, whose many short OpenCV
                    # calls it would hold up for a GIL switch interval (5 ms) each time.
                    try:
                        following = self._next_input(wait=False)
                    except BaseException as error:  # after this frame, which is done
                        failed = error
                with self._condition:
                    if not self._wait_for_room():
                        break
                    self._items.append(item)
                    self._condition.notify_all()
                if failed is not None:
                    raise failed
                item = following or self._next_input()
        except BaseException as error:  # handed to the caller's thread, which raises it
            self._process_error = error
        finally:
            with self._condition:
                self._ended = True
                self._condition.notify_all()

    # --- the caller -----------------------------------------------------------------------------

    def get(self) -> PrefetchedFrame | None:
        """The next frame, prepared (and inferred), or None at the end of the stream."""
        with self._condition:
            while not self._items and not self._ended:
                self._condition.wait(0.1)  # a timeout keeps Ctrl-C prompt
            if self._items:
                item = self._items.popleft()
                self._condition.notify_all()
                return item
            # The inference worker's error concerns an earlier frame than the capture's.
            error = self._process_error or self._capture_error
            self._process_error = self._capture_error = None
        if error is not None:
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

    def outage_stats(self) -> dict | None:
        """The source's outages (``LiveSource.outage_stats``), or None for a source that does
        not keep them (files, folders, lists)."""
        stats = getattr(self.source, "outage_stats", None)
        return stats() if stats is not None else None

    def close(self, timeout: float = 10.0) -> None:
        """Stops the workers. A live source is closed first, which wakes a worker waiting on it."""
        self._stop.set()
        with self._condition:
            self._condition.notify_all()
        if self.live and hasattr(self.source, "close"):
            self.source.close()
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
