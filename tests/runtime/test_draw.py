"""The frame drawer against the palette's colours and the segmenters' own drawing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgeseg.palette import voc_palette
from edgeseg.runtime import (
    FrameDrawer,
    InstanceFrameDrawer,
    InstanceSegmenter,
    Segmenter,
    frame_drawer,
)
from edgeseg.runtime.draw import VIEWS
from tests.runtime.test_instances_runtime import CLASSES, FakeDetector, padded_outputs
from tests.video.fakes import FakePredictor, scene_frames


@pytest.fixture(scope="module")
def scene():
    frame = scene_frames(1, size=(320, 240))[0]
    segmenter = Segmenter(FakePredictor())
    labels = segmenter(frame)
    assert len(np.unique(labels)) >= 3, "the test scene should show several classes"
    return frame, segmenter, labels


def detector() -> InstanceSegmenter:
    """Two instances: class 1 on the left, class 3 at the bottom right."""
    masks = np.zeros((2, 28, 28), np.float32)
    masks[0, 4:24, 4:24] = 1.0
    masks[1] = 1.0
    boxes = [[0.1, 0.05, 0.6, 0.45], [0.55, 0.5, 0.74, 0.95]]
    return InstanceSegmenter(FakeDetector(padded_outputs(boxes, [1, 3], [0.9, 0.7], masks)))


def test_views_are_the_frame_and_the_palette_colours(scene):
    frame, segmenter, labels = scene
    drawer = FrameDrawer(segmenter, alpha=0.3, show_hud=False)
    colours = segmenter.palette[labels]  # NumPy indexing, not the drawer's lookup table
    np.testing.assert_array_equal(drawer.draw(frame, labels, "mask"), colours)
    np.testing.assert_array_equal(drawer.draw(frame, labels, "side"), np.hstack([frame, colours]))
    blended = np.round(0.7 * frame.astype(float) + 0.3 * colours)
    overlay = drawer.draw(frame, labels, "overlay")
    assert np.abs(overlay.astype(float) - blended).max() <= 1
    np.testing.assert_array_equal(overlay, segmenter.overlay(frame, labels, 0.3))


def test_the_legend_and_heads_up_line_cover_only_their_corners(scene):
    frame, segmenter, labels = scene
    plain = FrameDrawer(segmenter, alpha=0.5, show_hud=False).draw(frame, labels, "overlay")
    drawer = FrameDrawer(segmenter, alpha=0.5)
    canvas = drawer.draw(frame, labels, "overlay", "12.0 fps")
    legend = drawer.legend(tuple(range(7)), 0.3)  # 240 rows: the smallest text scale
    changed = np.flatnonzero(np.any(canvas != plain, axis=(1, 2)))
    band = changed[changed < 40]  # the heads-up line's rows, at the top
    assert band.size and band[0] == 0 and np.all(np.diff(band) == 1)
    below = canvas[band[-1] + 1 :], plain[band[-1] + 1 :]
    rows, cols = np.nonzero(np.any(below[0] != below[1], axis=2))
    assert rows.min() >= below[0].shape[0] - legend.shape[0]  # the legend, bottom right
    assert cols.min() >= canvas.shape[1] - legend.shape[1]
    # Every class has a swatch in its palette colour, one row each.
    row = (legend.shape[0] - 12) // 7
    swatch_centre = 6 + (row - 6) // 2
    for class_id in range(7):
        y = 6 + class_id * row + 2 + (row - 6) // 2
        np.testing.assert_array_equal(legend[y, swatch_centre], segmenter.palette[class_id])


def test_a_legend_of_many_classes_lists_the_most_frequent_in_the_frame():
    unnamed = SimpleNamespace(classes=None, palette=voc_palette(256))
    drawer = FrameDrawer(unnamed)
    rng = np.random.default_rng(0)
    labels = rng.choice(np.arange(40, 70), size=(60, 80), p=np.arange(1, 31) / 465).astype(
        np.uint8
    )
    ids, counts = np.unique(labels, return_counts=True)
    expected = sorted(ids[np.argsort(-counts, kind="stable")][:16].tolist())
    assert drawer.legend_ids(labels) == tuple(expected)
    assert drawer.name(45) == "class 45"


def test_the_instance_drawer_draws_what_the_instance_segmenter_does():
    frame = scene_frames(1, size=(96, 72))[0]
    segmenter = detector()
    found = segmenter(frame)
    assert len(found["scores"]) == 2
    drawer = frame_drawer(segmenter, alpha=0.3, show_hud=False)
    assert type(drawer) is InstanceFrameDrawer
    masks = segmenter.colourise(found, frame.shape[:2])
    expected = {"overlay": segmenter.overlay(frame, found, 0.3), "mask": masks,
                "side": np.hstack([frame, masks])}
    for view in VIEWS:
        np.testing.assert_array_equal(drawer.draw(frame, found, view), expected[view])
    assert drawer.legend_ids(found) == tuple(range(1, len(CLASSES)))  # all but the background


def test_frame_drawer_follows_the_segmenter_and_refuses_bad_options(scene):
    _, segmenter, labels = scene
    assert type(frame_drawer(segmenter)) is FrameDrawer
    with pytest.raises(ValueError, match="alpha must be between 0 and 1, got 1.5"):
        FrameDrawer(segmenter, alpha=1.5)
    with pytest.raises(ValueError, match="view must be one of overlay, mask, side; got 'split'"):
        FrameDrawer(segmenter).draw(scene[0], labels, "split")
