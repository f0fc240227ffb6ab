"""The Segmenter's pre- and post-processing against direct computations."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.palette import voc_palette as default_palette
from edgeseg.runtime import Segmenter
from edgeseg.runtime.predictor import Predictor


class FakePredictor(Predictor):
    """Logits that say 'class = 1 where the red channel is above half', on a known input size."""

    format = "fake"

    def __init__(self, input_size=(64, 48), metadata=None, mask_output=False):
        super().__init__(Path("fake"), metadata or {"classes": ["a", "b"]})
        self.input_size = input_size
        self.mask_output = mask_output
        self.seen = []

    def run(self, batch):
        self.seen.append(batch.copy())
        red = batch[..., 0]
        logits = np.stack([0.5 - red, red - 0.5], axis=-1)
        return logits.argmax(-1).astype(np.uint8) if self.mask_output else logits


def test_resize_normalises_and_maps_back_with_nearest():
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:, 80:, 0] = 255  # right half red
    predictor = FakePredictor()
    labels = Segmenter(predictor)(frame)
    assert labels.shape == (120, 160) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[:, :80], 0)
    np.testing.assert_array_equal(labels[:, 80:], 1)
    fed = predictor.seen[0]
    want = cv2.resize(frame, (64, 48), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    np.testing.assert_allclose(fed[0], want, atol=1e-6)


@pytest.mark.parametrize("mask_output", [False, True])
def test_letterbox_discards_the_padding(mask_output):
    frame = np.zeros((30, 160, 3), np.uint8)  # much wider than the model's 64x48
    frame[:, :40, 0] = 255
    predictor = FakePredictor(mask_output=mask_output)
    segmenter = Segmenter(predictor, resize="letterbox")
    labels = segmenter(frame)
    assert labels.shape == (30, 160)
    assert (labels[:, :38] == 1).all() and (labels[:, 42:] == 0).all()
    fed = predictor.seen[0][0]
    # 160x30 scaled by 0.4 -> 64x12, centred vertically: rows 18..29 hold the frame.
    assert not fed[:18].any() and not fed[30:].any()
    assert set(segmenter.last_timings) == {"preprocess", "inference", "postprocess"}


def test_normalisation_from_metadata_and_palette():
    metadata = {"classes": ["a", "b"], "normalisation": {"scale": 2 / 255, "offset": -1.0},
                "palette": [[1, 2, 3], [4, 5, 6]]}
    predictor = FakePredictor(metadata=metadata)
    segmenter = Segmenter(predictor)
    frame = np.full((48, 64, 3), 255, np.uint8)
    segmenter(frame)
    np.testing.assert_allclose(predictor.seen[0], 1.0, atol=1e-6)
    labels = np.array([[0, 1], [1, 0]], np.uint8)
    np.testing.assert_array_equal(segmenter.colourise(labels)[0, 1], [4, 5, 6])


def test_bad_frames_and_options_are_refused():
    segmenter = Segmenter(FakePredictor())
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        segmenter(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="resize must be one of"):
        Segmenter(FakePredictor(), resize="crop")


def test_default_palette_is_distinct():
    palette = default_palette(21)
    assert len({tuple(c) for c in palette}) == 21
    assert tuple(palette[1]) == (128, 0, 0) and tuple(palette[2]) == (0, 128, 0)  # VOC colours


@pytest.mark.parametrize("alpha", [0.25, 0.3, 0.5, 0.8])
def test_overlay_is_the_alpha_blend_of_the_frame_and_the_class_colours(alpha):
    rng = np.random.default_rng(4)
    palette = rng.integers(0, 256, (5, 3))
    metadata = {"classes": list("abcde"), "palette": palette.tolist()}
    segmenter = Segmenter(FakePredictor(metadata=metadata))
    frame = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, (45, 61), dtype=np.uint8)  # 5 and 6: beyond the palette
    got = segmenter.overlay(frame, labels, alpha)
    assert got.dtype == np.uint8 and got.shape == frame.shape

    colours = np.zeros((256, 3))
    colours[:5] = palette  # labels beyond the palette are black
    blend = (1 - alpha) * frame + alpha * colours[labels]
    want = np.round(blend)
    # OpenCV blends in float32: a blend that is exactly k + 0.5 (alpha 0.3: 0.7 * 1 + 0.3 * 6)
    # may round either way there, and only there.
    tie = np.isclose(blend % 1, 0.5, atol=1e-6)
    difference = np.abs(got - want)
    assert difference.max() <= 1
    np.testing.assert_array_equal(got[~tie], want[~tie])
