"""The prefetching reader against the frames it was given and the order it was given them."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgeseg.video import Prefetcher, SourceError
from tests.video.fakes import TimedSource


def numbered(count: int) -> list[np.ndarray]:
    """Frames whose first pixel says their index."""
    frames = [np.zeros((4, 6, 3), np.uint8) for _ in range(count)]
    for i, frame in enumerate(frames):
        frame[0, 0, 0] = i
    return frames


class CountingSource:
    """An in-order source that counts the frames read from it."""

    live = False

    def __init__(self, frames):
        self.frames, self.reads = frames, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.reads >= len(self.frames):
            raise StopIteration
        self.reads += 1
        return self.frames[self.reads - 1]


class LiveCounter:
    """A live source delivering a numbered frame every ``period`` seconds until closed."""

    live = True

    def __init__(self, period: float = 0.002, dropped: int = 0):
        self.period, self.index, self.closed = period, 0, False
        self.dropped, self.skipped, self.reopened = dropped, 1, 2

    def __iter__(self):
        return self

    def __next__(self):
        while not self.closed:
            time.sleep(self.period)
            self.index += 1
            frame = np.zeros((2, 2, 3), np.uint8)
            frame[0, 0, 0] = self.index % 256
            return frame
        raise StopIteration

    def close(self):
        self.closed = True


def test_every_frame_of_an_in_order_source_comes_prepared_and_in_order():
    frames = numbered(7)
    with Prefetcher(frames, prepare=lambda f: int(f[0, 0, 0]) * 10) as prefetched:
        items = list(prefetched)
    assert [item.prepared for item in items] == [10 * i for i in range(7)]
    for item, frame in zip(items, frames, strict=True):
        assert item.frame is frame
        assert item.capture_ms >= 0 and item.prepare_ms >= 0
    assert prefetched.discarded == 0 and prefetched.get() is None


@pytest.mark.parametrize("depth", [1, 3])
def test_an_in_order_source_is_read_at_most_depth_frames_ahead(depth):
    source = CountingSource(numbered(20))
    with Prefetcher(source, depth=depth) as prefetched:
        for taken in range(1, 6):
            assert prefetched.get() is not None
            time.sleep(0.05)  # the worker fills the queue, then waits
            assert source.reads == taken + depth


def test_a_live_source_keeps_only_the_newest_frames_and_counts_the_others():
    source = LiveCounter(dropped=4)
    prepared = []
    with Prefetcher(source, prepare=lambda f: prepared.append(int(f[0, 0, 0])),
                    depth=1) as prefetched:
        seen = []
        for _ in range(5):
            item = prefetched.get()
            seen.append(int(item.frame[0, 0, 0]))
            time.sleep(0.03)  # a slow consumer: the source runs ahead
    assert source.closed  # closed by the prefetcher, which woke its workers
    assert seen == sorted(seen) and len(set(seen)) == 5
    assert prefetched.discarded >= 5  # ~15 frames per 30 ms sleep, one kept
    # Only frames handed out were prepared, and at most one more waiting at the end.
    assert prepared[: len(seen)] == seen and len(prepared) - len(seen) in (0, 1)
    # Frames read = taken + discarded + at most the newest and one prepared, at the end.
    assert source.index - len(seen) - prefetched.discarded in (0, 1, 2)
    assert prefetched.stats() == {"dropped": 4 + prefetched.discarded, "skipped": 1,
                                  "reopened": 2}


def test_an_error_in_the_worker_comes_after_the_frames_before_it():
    def frames():
        yield from numbered(2)
        raise SourceError("camera unplugged")

    with Prefetcher(frames()) as prefetched:
        assert prefetched.get() is not None and prefetched.get() is not None
        with pytest.raises(SourceError, match="camera unplugged"):
            prefetched.get()
        assert prefetched.get() is None  # raised once, then the end


def test_capture_runs_in_the_worker_while_the_caller_works():
    source = TimedSource(count=6, delay=0.02)
    busy = []
    with Prefetcher(source) as prefetched:
        for _ in prefetched:
            start = time.perf_counter()
            time.sleep(0.02)  # the caller's "inference"
            busy.append((start, time.perf_counter()))
    assert threading.current_thread().name not in source.threads
    assert any(c0 < b1 and b0 < c1 for c0, c1 in source.intervals for b0, b1 in busy)


def test_depth_below_one_is_refused():
    with pytest.raises(ValueError, match="depth .* at least 1, got 0"):
        Prefetcher([], depth=0)


def test_with_infer_every_frame_of_an_in_order_source_is_inferred_in_order_in_a_worker():
    frames = numbered(9)
    threads = {}

    def prepare(frame):
        threads.setdefault("prepare", set()).add(threading.current_thread().name)
        return int(frame[0, 0, 0])

    def infer(prepared):
        threads.setdefault("infer", set()).add(threading.current_thread().name)
        time.sleep(0.002)
        return prepared * 100

    with Prefetcher(CountingSource(frames), prepare, infer=infer) as prefetched:
        items = list(prefetched)
    assert [item.output for item in items] == [100 * i for i in range(9)]
    assert [item.frame for item in items] == frames  # the very frames, in order
    assert all(item.inference_ms >= 2 for item in items)
    # Reading, inference and the caller: three threads, so that each overlaps the others.
    assert len(threads["prepare"] | threads["infer"] | {threading.current_thread().name}) == 3


def test_with_infer_a_live_source_has_only_its_newest_frames_prepared_and_inferred():
    source = LiveCounter(period=0.001)
    inferred = []

    def infer(frame):
        inferred.append(int(frame[0, 0, 0]))
        time.sleep(0.01)  # the model: ~10 source frames per inference
        return inferred[-1]

    with Prefetcher(source, infer=infer) as prefetched:
        seen = [prefetched.get().output for _ in range(6)]
    assert seen == sorted(seen) and len(set(seen)) == 6
    # Nothing inferred in vain: what was handed out, then at most one waiting and one more.
    assert inferred[: len(seen)] == seen and len(inferred) - len(seen) in (0, 1, 2)
    assert prefetched.discarded >= 6


def test_an_error_in_infer_comes_after_the_frames_inferred_before_it():
    def infer(prepared):
        if prepared[0, 0, 0] == 3:
            raise KeyboardInterrupt  # as Ctrl-C in the model
        return int(prepared[0, 0, 0])

    with Prefetcher(numbered(6), infer=infer) as prefetched:
        assert [prefetched.get().output for _ in range(3)] == [0, 1, 2]
        with pytest.raises(KeyboardInterrupt):
            prefetched.get()
        assert prefetched.get() is None


def test_with_infer_a_result_is_not_held_back_waiting_for_the_next_live_frame():
    source = LiveCounter(period=0.2)  # a camera far slower than the model
    with Prefetcher(source, infer=lambda frame: int(frame[0, 0, 0])) as prefetched:
        for _ in range(3):
            item = prefetched.get()
            # Handed out while its frame is still the source's newest (the next is 0.2 s off).
            assert item.output == source.index
