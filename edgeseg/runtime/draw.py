"""Drawing a segmenter's result on its frame: three views, a class legend and a heads-up line.

``frame_drawer(segmenter)`` returns the drawer for the segmenter's task: a :class:`FrameDrawer`
for a :class:`Segmenter`'s label maps, an :class:`InstanceFrameDrawer` for an
:class:`InstanceSegmenter`'s detections. ``drawer.draw(frame, result, view, hud)`` returns a
new uint8 RGB picture::

    drawer = frame_drawer(segmenter, alpha=0.5)
    canvas = drawer.draw(frame, segmenter(frame), "overlay", "12.0 fps")

Views: "overlay" (the frame blended with the class colours, as ``Segmenter.overlay``), "mask"
(the colours alone) and "side" (the frame and the colours side by side). The colours are the
segmenter's palette, through :func:`edgeseg.palette.colourise`.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgeseg.palette import colour_lookup, colourise
from edgeseg.runtime.instances import InstanceSegmenter
from edgeseg.runtime.segmenter import Segmenter

__all__ = ["VIEWS", "FrameDrawer", "InstanceFrameDrawer", "frame_drawer"]

VIEWS = ("overlay", "mask", "side")

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE = (255, 255, 255)


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")


class FrameDrawer:
    """Composes a view of a frame and its label map, with a legend and a heads-up line.

    Args:
        segmenter: gives the palette and the class names (a :class:`Segmenter`).
        alpha: the class colours' weight in the overlay, 0 to 1.
        show_hud: draw the legend (bottom right) and the heads-up text (top).
    """

    max_legend_classes = 16  # more classes than this: the legend shows those in the frame

    def __init__(self, segmenter: Segmenter, alpha: float = 0.5, show_hud: bool = True):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
        self.segmenter = segmenter
        self.alpha = alpha
        self.show_hud = show_hud
        classes = segmenter.classes
        self.names = list(classes) if classes else None
        self.lookup = colour_lookup(np.asarray(segmenter.palette, np.uint8).reshape(-1, 3)[:256])
        self._legends: dict[tuple, np.ndarray] = {}

    def colourise(self, labels: np.ndarray) -> np.ndarray:
        """The label map in the segmenter's colours (as :meth:`Segmenter.colourise`)."""
        return colourise(labels, self.lookup)

    def compose(self, frame: np.ndarray, labels: np.ndarray, view: str) -> np.ndarray:
        """The view alone: the overlay, the colour mask, or the frame and the mask side by side."""
        _check_view(view)
        mask = self.colourise(labels)
        if view == "overlay":  # as Segmenter.overlay
            return cv2.addWeighted(frame, 1 - self.alpha, mask, self.alpha, 0)
        if view == "mask":
            return mask
        return np.hstack([frame, mask])

    def draw(self, frame: np.ndarray, result, view: str, hud: str = "") -> np.ndarray:
        """The view, with the legend and the heads-up text ``hud`` on top (with ``show_hud``)."""
        canvas = self.compose(frame, result, view)
        if self.show_hud:
            scale = min(max(canvas.shape[0] / 960, 0.3), 0.8)  # text size follows the height
            self._paste_legend(canvas, result, scale)
            if hud:
                self._draw_hud(canvas, hud, scale)
        return canvas

    # --- the legend -----------------------------------------------------------------------------

    def legend_ids(self, labels: np.ndarray) -> tuple[int, ...]:
        """The classes the legend lists: all of them when few, else the most frequent present."""
        known = len(self.names) if self.names else 0
        if 0 < known <= self.max_legend_classes:
            return tuple(range(known))
        counts = np.bincount(labels.ravel(), minlength=256)
        present = np.flatnonzero(counts)
        present = present[np.argsort(-counts[present], kind="stable")][: self.max_legend_classes]
        return tuple(int(i) for i in sorted(present))

    def name(self, class_id: int) -> str:
        if self.names and class_id < len(self.names):
            return str(self.names[class_id])
        return f"class {class_id}"

    def legend(self, class_ids: tuple[int, ...], scale: float) -> np.ndarray:
        """The legend (swatches and names on black), cached per set of classes and scale."""
        key = (class_ids, round(scale, 2))
        if key in self._legends:
            return self._legends[key]
        (_, text_h), _ = cv2.getTextSize("Ag", _FONT, scale, 1)
        row, pad, swatch = text_h + 8, 6, text_h + 2
        widths = [cv2.getTextSize(self.name(i), _FONT, scale, 1)[0][0] for i in class_ids]
        width = pad * 3 + swatch + max(widths, default=0)
        height = pad * 2 + row * len(class_ids)
        image = np.zeros((height, width, 3), np.uint8)
        for k, class_id in enumerate(class_ids):
            y = pad + k * row
            colour = tuple(int(c) for c in self.lookup[class_id])
            cv2.rectangle(image, (pad, y + 2), (pad + swatch, y + 2 + swatch), colour, -1)
            cv2.rectangle(image, (pad, y + 2), (pad + swatch, y + 2 + swatch), _WHITE, 1)
            cv2.putText(image, self.name(class_id), (2 * pad + swatch, y + 2 + text_h), _FONT,
                        scale, _WHITE, 1, cv2.LINE_AA)
        self._legends[key] = image
        return image

    def _paste_legend(self, canvas: np.ndarray, result, scale: float) -> None:
        class_ids = self.legend_ids(result)
        if not class_ids:
            return
        image = self.legend(class_ids, scale)
        h, w = min(image.shape[0], canvas.shape[0]), min(image.shape[1], canvas.shape[1])
        region = canvas[canvas.shape[0] - h :, canvas.shape[1] - w :]
        # A dark, see-through box: the scene stays visible behind the legend.
        region[:] = cv2.addWeighted(region, 0.35, image[:h, :w], 1.0, 0)

    # --- the heads-up line ----------------------------------------------------------------------

    def _draw_hud(self, canvas: np.ndarray, text: str, scale: float) -> None:
        (_, text_h), baseline = cv2.getTextSize(text, _FONT, scale, 1)
        band = min(canvas.shape[0], text_h + baseline + 8)
        canvas[:band] = canvas[:band] // 3
        cv2.putText(canvas, text, (6, 4 + text_h), _FONT, scale, _WHITE, 1, cv2.LINE_AA)


class InstanceFrameDrawer(FrameDrawer):
    """A :class:`FrameDrawer` for an :class:`InstanceSegmenter`'s detections (not label maps):
    the overlay shows each instance's mask, box and "class score" label, the mask view the
    instance masks on black."""

    def compose(self, frame: np.ndarray, detections: dict, view: str) -> np.ndarray:
        """As :meth:`InstanceSegmenter.overlay`, the instance masks on black, or side by side."""
        _check_view(view)
        if view == "overlay":
            return self.segmenter.overlay(frame, detections, self.alpha)
        masks = self.segmenter.colourise(detections, frame.shape[:2])
        if view == "mask":
            return masks
        return np.hstack([frame, masks])

    def legend_ids(self, detections: dict) -> tuple[int, ...]:
        """Every class but the background when few, else those detected."""
        known = len(self.names) if self.names else 0
        if 1 < known <= self.max_legend_classes + 1:
            return tuple(range(1, known))
        present = sorted({int(c) for c in detections["classes"]})
        return tuple(present[: self.max_legend_classes])


def frame_drawer(segmenter: Segmenter | InstanceSegmenter, alpha: float = 0.5,
                 show_hud: bool = True) -> FrameDrawer:
    """The drawer for a segmenter's results: instances for an :class:`InstanceSegmenter`,
    label maps otherwise."""
    drawer = InstanceFrameDrawer if isinstance(segmenter, InstanceSegmenter) else FrameDrawer
    return drawer(segmenter, alpha=alpha, show_hud=show_hud)
