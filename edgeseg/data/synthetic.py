"""Synthetic street-like scenes with exact labels, for tests, demos and quick training runs.

A scene is a sky / vegetation / ground background (gradients and noise textures) with a few
overlapping convex objects in front: discs, ellipses, boxes and triangles. Object colours
come from overlapping hue ranges (discs and ellipses share reds and oranges, boxes and
triangles share blues, as does the sky), so a network has to learn shapes as well as colours;
lighting (gain, tint, a brightness gradient), blur and Gaussian noise vary per scene. A thin
void (255) band runs along the edge of some objects, as in CamVid. Everything is determined by
the seed: the same seed writes the same bytes.

``write_synthetic`` writes a dataset in the CamVid layout plus COCO instance annotations of the
same scenes; ``generate_scene`` makes one scene in memory; ``SceneSequence`` makes a scene
whose objects move smoothly from frame to frame, for live demos.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np

from edgeseg.data.base import IGNORE_INDEX, DataError, SegmentationDataset
from edgeseg.data.cache import cache_dir
from edgeseg.data.camvid import read_camvid_layout
from edgeseg.data.folder import read_classes_json

SYNTHETIC_CLASSES = ("sky", "ground", "vegetation", "disc", "ellipse", "box", "triangle")
SKY, GROUND, VEGETATION, DISC, ELLIPSE, BOX, TRIANGLE = range(len(SYNTHETIC_CLASSES))
THING_CLASSES = (DISC, ELLIPSE, BOX, TRIANGLE)
"""The classes drawn as separate objects; they are the categories of the COCO annotations."""

SYNTHETIC_PALETTE = (
    (70, 130, 180),
    (128, 64, 128),
    (107, 142, 35),
    (220, 20, 60),
    (255, 160, 0),
    (0, 0, 142),
    (0, 200, 200),
)
GENERATOR_VERSION = 1  # bump when the scenes change, so cached datasets are written anew
DEFAULT_SIZE = (480, 360)  # (width, height), CamVid's size
DEFAULT_COUNTS = {"n_train": 300, "n_val": 60, "n_test": 0}

SYNTHETIC_LAYOUT = """\
  <root>/train/*.png  <root>/trainannot/*.png   (masks: 0-6 classes, 255 void)
  <root>/val/*.png    <root>/valannot/*.png
  <root>/annotations/instances_<split>.json   <root>/classes.json   (from write_synthetic)"""

# Object hue ranges in degrees. Pairs overlap so that colour alone cannot tell the class.
_HUES = {DISC: (0.0, 40.0), ELLIPSE: (20.0, 60.0), BOX: (190.0, 250.0), TRIANGLE: (220.0, 280.0)}
_SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}  # independent random streams per split
_MIN_AREA = 24  # smaller visible fragments of an object become void instead of an instance
_GAUSSIAN_QUANTILES = np.array(
    [NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float32
)


# ----------------------------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Value noise in about [-1, 1]: random values on a grid of ``cell`` pixels, interpolated."""
    grid = rng.random((max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)))
    grid = (grid * 2 - 1).astype(np.float32)
    if cell <= 8:
        return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    # OpenCV's cubic upscaling of a tiny grid is slow: go a quarter of the way, then linear.
    quarter = (max(2, width // 4), max(2, height // 4))
    grid = cv2.resize(grid, quarter, interpolation=cv2.INTER_CUBIC)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)


def _random_colour(rng: np.random.Generator, hue: tuple[float, float], sat, val) -> np.ndarray:
    h = rng.uniform(*hue) / 360.0 % 1.0
    rgb = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, dtype=np.float32) * 255


@dataclass
class _Background:
    image: np.ndarray  # (H, W, 3) float32 RGB
    label: np.ndarray  # (H, W) uint8
    detail: np.ndarray  # (H, W) float32 noise in about [-1, 1], the objects' surface texture


def _make_background(rng: np.random.Generator, size: tuple[int, int]) -> _Background:
    width, height = size
    x = np.arange(width, dtype=np.float32)
    y = np.arange(height, dtype=np.float32)
    horizon = height * rng.uniform(0.38, 0.62) + rng.uniform(-0.08, 0.08) * (x - width / 2)
    hills = cv2.resize(
        rng.random((1, int(rng.integers(3, 9)))).astype(np.float32),
        (width, 1),
        interpolation=cv2.INTER_CUBIC,
    )[0]
    ridge = horizon - np.clip(hills * 1.4 - 0.25, 0, 1) * height * rng.uniform(0.05, 0.22)
    label = np.full((height, width), GROUND, dtype=np.uint8)
    label[y[:, None] < horizon] = VEGETATION
    label[y[:, None] < ridge] = SKY

    # Colour by region and row (sky: a vertical gradient; ground: darker far away), then one
    # single-channel texture over all regions: value noise of a size that differs by region.
    mean_horizon = max(float(horizon.mean()), 1.0)
    top = _random_colour(rng, (195, 225), (0.35, 0.75), (0.55, 0.9))
    low = top + (255 - top) * rng.uniform(0.3, 0.7)
    depth = np.clip(y / mean_horizon, 0, 1)[:, None]
    green = _random_colour(rng, (75, 130), (0.45, 0.85), (0.3, 0.6))
    earth = _random_colour(rng, (20, 50), (0.05, 0.3), (0.35, 0.65))
    near = np.clip((y - mean_horizon) / max(height - mean_horizon, 1.0), 0, 1)[:, None]
    rows = np.empty((3, height, 3), dtype=np.float32)  # [sky, ground, vegetation] x row x RGB
    rows[SKY] = top + (low - top) * depth
    rows[GROUND] = earth * (0.85 + 0.35 * near)
    rows[VEGETATION] = green
    row_index = label.astype(np.intp) * height + np.arange(height)[:, None]
    image = np.take(rows.reshape(-1, 3), row_index, axis=0)

    leaves = _smooth_noise(rng, height, width, rng.uniform(4, 10))
    grain = _smooth_noise(rng, height, width, rng.uniform(1.5, 3))
    clouds = np.clip(_smooth_noise(rng, height, width, height / 3.0), 0, 1)
    shade = np.where(label == VEGETATION, 1 + 0.3 * leaves, 1 + 0.12 * grain)
    image *= shade[:, :, None]
    cover = np.where(label == SKY, clouds * np.float32(rng.uniform(0.2, 0.8)), 0)[:, :, None]
    top_rows = slice(0, int(np.ceil(ridge.max())) + 1)  # the rows that hold sky
    image[top_rows] += (245 - image[top_rows]) * cover[top_rows]
    detail = _smooth_noise(rng, height, width, rng.uniform(2, 5))
    return _Background(image=image, label=label, detail=detail)


# ----------------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class _Shape:
    class_id: int
    centre: tuple[float, float]  # (x, y) pixels
    size: tuple[float, float]  # disc: (r, r); ellipse: semi-axes; box: (w, h); triangle: (R, R)
    angle: float  # degrees
    colour: tuple[float, float, float]  # RGB 0-255
    pattern_angle: float  # radians: direction of stripes (box) and of the shading gradient
    period: float  # box stripe period, pixels
    corners: tuple[float, ...]  # triangle: 3 angle offsets (deg) then 3 radius factors
    border: bool  # draw a void band along the visible edge
    # For SceneSequence: amplitude x, y (pixels), period x, y (frames), phase x, y, spin (deg).
    motion: tuple[float, ...]


def _sample_shape(rng: np.random.Generator, size: tuple[int, int]) -> _Shape:
    width, height = size
    short = min(width, height)
    class_id = int(rng.choice(THING_CLASSES))
    if class_id == DISC:
        r = rng.uniform(0.06, 0.15) * short
        dims = (r, r)
    elif class_id == ELLIPSE:
        a = rng.uniform(0.1, 0.22) * short
        dims = (a, a / rng.uniform(1.8, 3.0))
    elif class_id == BOX:
        w = rng.uniform(0.12, 0.32) * short
        dims = (w, w * rng.uniform(0.45, 1.4))
    else:
        r = rng.uniform(0.1, 0.2) * short
        dims = (r, r)
    corners = (*rng.uniform(-20, 20, 3), *rng.uniform(0.8, 1.0, 3))
    angle = rng.uniform(-30, 30) if class_id == BOX else rng.uniform(0, 360)
    motion = (
        rng.uniform(0.05, 0.25) * width,
        rng.uniform(0.02, 0.1) * height,
        rng.uniform(80, 240),
        rng.uniform(80, 240),
        rng.uniform(0, 2 * math.pi),
        rng.uniform(0, 2 * math.pi),
        rng.uniform(-1.5, 1.5) if class_id != DISC else 0.0,
    )
    return _Shape(
        class_id=class_id,
        centre=(rng.uniform(0.05, 0.95) * width, rng.uniform(0.15, 0.95) * height),
        size=tuple(float(d) for d in dims),
        angle=float(angle),
        colour=tuple(
            float(c) for c in _random_colour(rng, _HUES[class_id], (0.45, 1.0), (0.45, 1.0))
        ),
        pattern_angle=float(rng.uniform(0, 2 * math.pi)),
        period=float(rng.uniform(5, 14)),
        corners=tuple(float(c) for c in corners),
        border=bool(rng.random() < 0.5),
        motion=tuple(float(m) for m in motion),
    )


def _moved(shape: _Shape, t: float) -> _Shape:
    """The shape at frame ``t``: its centre swings smoothly about its start, it turns slowly."""
    ax, ay, px, py, fx, fy, spin = shape.motion
    x, y = shape.centre
    return replace(
        shape,
        centre=(
            x + ax * math.sin(2 * math.pi * t / px + fx) - ax * math.sin(fx),
            y + ay * math.sin(2 * math.pi * t / py + fy) - ay * math.sin(fy),
        ),
        angle=shape.angle + spin * t,
    )


def _extent(shape: _Shape) -> float:
    if shape.class_id == BOX:
        return math.hypot(*shape.size) / 2
    return max(shape.size)


def _draw(shape: _Shape, height: int, width: int):
    """Rasterise a shape in its bounding box: ((y0, y1, x0, x1), bool mask), or None if off-frame."""
    reach = _extent(shape) + 2
    cx, cy = shape.centre
    x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 2)
    y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 2)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    scale = 16  # 4 fractional bits: objects move by less than a pixel between frames
    centre = (round((cx - x0) * scale), round((cy - y0) * scale))
    if shape.class_id == DISC:
        cv2.circle(mask, centre, round(shape.size[0] * scale), 1, -1, cv2.LINE_8, 4)
    elif shape.class_id == ELLIPSE:
        axes = (round(shape.size[0] * scale), round(shape.size[1] * scale))
        cv2.ellipse(mask, centre, axes, shape.angle, 0, 360, 1, -1, cv2.LINE_8, 4)
    else:
        if shape.class_id == BOX:
            points = cv2.boxPoints(((cx - x0, cy - y0), shape.size, shape.angle))
        else:
            angles = np.radians(shape.angle + np.array([0, 120, 240]) + shape.corners[:3])
            radii = shape.size[0] * np.array(shape.corners[3:])
            points = np.stack(
                [cx - x0 + radii * np.cos(angles), cy - y0 + radii * np.sin(angles)], axis=1
            )
        cv2.fillPoly(mask, [np.round(points * scale).astype(np.int32)], 1, cv2.LINE_8, 4)
    if not mask.any():
        return None
    return (y0, y1, x0, x1), mask.astype(bool)


def _surface(shape: _Shape, box, detail: np.ndarray) -> np.ndarray:
    """The object's colours over its bounding box: its colour under a class-specific pattern."""
    y0, y1, x0, x1 = box
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - shape.centre[1]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - shape.centre[0]
    along = xx * math.cos(shape.pattern_angle) + yy * math.sin(shape.pattern_angle)
    reach = max(shape.size)
    if shape.class_id == DISC:  # a ball lit from the upper left
        distance = np.hypot(xx + 0.35 * reach, yy + 0.35 * reach) / (1.6 * reach)
        shade = 1.25 - 0.55 * np.clip(distance, 0, 1) + 0.05 * detail
    elif shape.class_id == ELLIPSE:  # flat, mottled
        shade = 1.0 + 0.18 * detail
    elif shape.class_id == BOX:  # stripes
        shade = 1.0 + 0.16 * np.sin(2 * math.pi * along / shape.period) + 0.05 * detail
    else:  # a gradient across
        shade = 1.0 + 0.3 * along / reach + 0.05 * detail
    return shade[:, :, None] * np.array(shape.colour, dtype=np.float32)


# ----------------------------------------------------------------------------------- lighting


@dataclass(frozen=True)
class _Lighting:
    gain: float
    tint: tuple[float, float, float]
    slope: float  # brightness change across the frame
    direction: float  # radians
    blur: float  # Gaussian sigma, pixels
    noise: float  # Gaussian noise sigma, grey levels


def _sample_lighting(rng: np.random.Generator) -> _Lighting:
    return _Lighting(
        gain=float(rng.uniform(0.65, 1.25)),
        tint=tuple(float(t) for t in rng.uniform(0.9, 1.1, 3)),
        slope=float(rng.uniform(0.0, 0.5)),
        direction=float(rng.uniform(0, 2 * math.pi)),
        blur=float(rng.uniform(0.4, 1.0)),
        noise=float(rng.uniform(2.0, 7.0)),
    )


# ----------------------------------------------------------------------------------- scenes


def _render(background: _Background, shapes, lighting: _Lighting, rng: np.random.Generator):
    height, width = background.label.shape
    image = background.image.copy()
    label = background.label.copy()
    owner = np.full((height, width), -1, dtype=np.int16)
    boxes = []
    for k, shape in enumerate(shapes):
        drawn = _draw(shape, height, width)
        boxes.append(drawn[0] if drawn else None)
        if drawn is None:
            continue
        (y0, y1, x0, x1), mask = drawn
        surface = _surface(shape, (y0, y1, x0, x1), background.detail[y0:y1, x0:x1])
        image[y0:y1, x0:x1][mask] = surface[mask]
        label[y0:y1, x0:x1][mask] = shape.class_id
        owner[y0:y1, x0:x1][mask] = k

    instances = []
    band = max(1, round(min(height, width) / 300))
    kernel = np.ones((2 * band + 1, 2 * band + 1), dtype=np.uint8)
    for k, shape in enumerate(shapes):
        if boxes[k] is None:
            continue
        y0, y1, x0, x1 = boxes[k]
        visible = owner[y0:y1, x0:x1] == k
        area = int(visible.sum())
        if area == 0:
            continue
        if area < _MIN_AREA:
            label[y0:y1, x0:x1][visible] = IGNORE_INDEX
            continue
        if shape.border:
            # The erosion treats outside the box as inside, so edges at the frame stay labelled.
            inner = cv2.erode(visible.astype(np.uint8), kernel).astype(bool)
            label[y0:y1, x0:x1][visible & ~inner] = IGNORE_INDEX
        ys, xs = np.nonzero(visible)
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = visible
        instances.append(
            {
                "class_id": shape.class_id,
                "mask": mask,
                "box": (
                    x0 + int(xs.min()),
                    y0 + int(ys.min()),
                    x0 + int(xs.max()) + 1,
                    y0 + int(ys.max()) + 1,
                ),
                "area": area,
            }
        )

    x = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    y = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    light = lighting.gain * (
        1 + lighting.slope * (x * math.cos(lighting.direction) + y * math.sin(lighting.direction))
    )
    image *= light[:, :, None]
    image *= np.array(lighting.tint, dtype=np.float32)
    image = cv2.GaussianBlur(image, (0, 0), lighting.blur)
    # Gaussian noise through a quantile table: random bytes are much faster than normal draws.
    image += cv2.LUT(
        rng.integers(0, 256, image.shape, dtype=np.uint8), _GAUSSIAN_QUANTILES * lighting.noise
    )
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label, instances


def _spoils(owner: np.ndarray, full_areas: list[int], boxes: list, drawn) -> bool:
    """Whether a new object on top would hide most of one below or cut a hole in it."""
    (y0, y1, x0, x1), mask = drawn
    below = np.unique(owner[y0:y1, x0:x1][mask])
    if len(below) == 0 or below[-1] < 0:
        return False
    on_top = np.zeros(owner.shape, dtype=bool)
    on_top[y0:y1, x0:x1] = mask
    for j in below[below >= 0]:
        by0, by1, bx0, bx1 = boxes[j]
        left = (owner[by0:by1, bx0:bx1] == j) & ~on_top[by0:by1, bx0:bx1]
        if left.sum() < 0.55 * full_areas[j]:
            return True
        # A hole would not survive as a COCO polygon; RETR_CCOMP reports holes as children.
        _, hierarchy = cv2.findContours(
            left.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
        )
        if hierarchy is not None and (hierarchy[0][:, 3] >= 0).any():
            return True
    return False


def generate_scene(
    rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Make one random scene.

    Objects are placed so that none hides more than 45 % of one below it or cuts a hole in it,
    so each object's visible part is one or more hole-free regions.

    Args:
        rng: the random generator; the scene is a function of its state.
        size: (width, height) in pixels.

    Returns:
        ``(image, label, instances)``: (H, W, 3) uint8 RGB; (H, W) uint8 with classes 0-6 and
        255 void; one dict per visible object with ``class_id``, ``mask`` ((H, W) bool, its
        visible pixels, void band included), ``box`` (x0, y0, x1, y1, pixel edges) and
        ``area`` (pixels).
    """
    width, height = _check_size(size)
    background = _make_background(rng, (width, height))
    owner = np.full((height, width), -1, dtype=np.int16)
    shapes, boxes, full_areas = [], [], []
    for _ in range(int(rng.integers(3, 8))):
        for _attempt in range(8):
            shape = _sample_shape(rng, (width, height))
            drawn = _draw(shape, height, width)
            if drawn is not None and not _spoils(owner, full_areas, boxes, drawn):
                (y0, y1, x0, x1), mask = drawn
                owner[y0:y1, x0:x1][mask] = len(shapes)
                shapes.append(shape)
                boxes.append((y0, y1, x0, x1))
                full_areas.append(int(mask.sum()))
                break
    return _render(background, shapes, _sample_lighting(rng), rng)


class SceneSequence:
    """One scene whose objects move smoothly: ``frame(t)`` is frame ``t`` (0, 1, 2, ...).

    Objects swing back and forth about their start and turn slowly; the light breathes. Frames
    are a function of (seed, size, t) alone, so they can be made in any order. Objects may
    overlap in any way here: no placement rules, unlike :func:`generate_scene`.

    Args:
        seed: chooses the scene.
        size: (width, height) in pixels.
        objects: how many objects (default: 3 to 7, chosen by the seed).
    """

    def __init__(
        self, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE, objects: int | None = None
    ):
        self.seed = seed
        self.size = _check_size(size)
        rng = np.random.default_rng([seed, 0x5E0])
        self._background = _make_background(rng, self.size)
        count = int(rng.integers(3, 8)) if objects is None else objects
        self._shapes = [_sample_shape(rng, self.size) for _ in range(count)]
        self._lighting = _sample_lighting(rng)
        self._light_wave = (float(rng.uniform(150, 400)), float(rng.uniform(0, 2 * math.pi)))

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Frame ``t``: ``(image, label, instances)`` as :func:`generate_scene` returns them."""
        period, phase = self._light_wave
        gain = self._lighting.gain * (1 + 0.1 * math.sin(2 * math.pi * t / period + phase))
        lighting = replace(self._lighting, gain=gain)
        shapes = [_moved(shape, t) for shape in self._shapes]
        noise = np.random.default_rng([self.seed, 0x5E1, int(t)])
        return _render(self._background, shapes, lighting, noise)

    def __iter__(self):
        t = 0
        while True:
            yield self.frame(t)
            t += 1


def _check_size(size) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"size must be (width, height), got {size!r}") from None
    if width < 16 or height < 16:
        raise DataError(f"size must be at least 16x16 pixels, got {width}x{height}")
    return width, height


# ----------------------------------------------------------------------------------- writing


def instance_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (x0, y0, x1, y1, ...) of a binary mask's outer contours, one per piece.

    The contour is traced on the mask scaled up twice, so that it runs a quarter pixel outside
    the centres of the edge pixels: rasterising the polygons (pycocotools) gives back the mask
    exactly, where a contour through the pixel centres would lose half of every edge pixel.
    Holes are not represented (COCO polygons have none).
    """
    mask = mask.astype(np.uint8)
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return []
    doubled = cv2.resize(
        mask[y : y + h, x : x + w], (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST
    )
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if len(contour) >= 3:
            points = (contour.reshape(-1, 2) + 0.5) / 2 + (x, y)
            polygons.append([float(v) for v in points.reshape(-1)])
    return polygons


def _coco_json(images: list[dict], annotations: list[dict]) -> dict:
    return {
        "info": {"description": "edgeseg synthetic scenes", "version": str(GENERATOR_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c, "name": SYNTHETIC_CLASSES[c], "supercategory": "shape"} for c in THING_CLASSES
        ],
    }


def _png_options() -> list[int]:
    """Fast PNG settings: the Sub filter and run-length zlib compress these scenes about as well
    as the defaults at a third of the time (OpenCV 4.10+ has the filter option)."""
    options = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        options += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
        options += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    return options


def _write_scene(root: Path, split: str, index: int, size, seed: int, png) -> list[dict]:
    """Generate and write scene ``index`` of a split; return its COCO annotations (no ids)."""
    rng = np.random.default_rng([seed, _SPLIT_STREAMS[split], index])
    image, label, instances = generate_scene(rng, size)
    name = f"{index:05d}.png"
    if not (
        cv2.imwrite(str(root / split / name), image[:, :, ::-1], png)
        and cv2.imwrite(str(root / f"{split}annot" / name), label, png)
    ):
        raise OSError(f"could not write {root / split / name}")
    annotations = []
    for instance in instances:
        polygons = instance_polygons(instance["mask"])
        if polygons:
            x0, y0, x1, y1 = instance["box"]
            annotations.append(
                {
                    "image_id": index + 1,
                    "category_id": instance["class_id"],
                    "segmentation": polygons,
                    "area": instance["area"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
    return annotations


def _write_split(root: Path, split: str, count: int, size, seed: int, workers: int) -> None:
    (root / split).mkdir()
    (root / f"{split}annot").mkdir()
    png = _png_options()
    # Scenes are independent (one random stream each) and NumPy and OpenCV release the GIL,
    # so threads share the work; results are gathered in order, so the files do not depend
    # on the number of workers.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        per_image = list(
            pool.map(lambda i: _write_scene(root, split, i, size, seed, png), range(count))
        )
    images = [
        {"id": i + 1, "file_name": f"{i:05d}.png", "width": size[0], "height": size[1]}
        for i in range(count)
    ]
    annotations = [a for image_annotations in per_image for a in image_annotations]
    annotations = [{"id": i + 1, **a} for i, a in enumerate(annotations)]
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps(_coco_json(images, annotations), separators=(",", ":"))
    )


def write_synthetic(
    out_dir: str | os.PathLike,
    n_train: int = DEFAULT_COUNTS["n_train"],
    n_val: int = DEFAULT_COUNTS["n_val"],
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    n_test: int = DEFAULT_COUNTS["n_test"],
    workers: int | None = None,
) -> Path:
    """Write a synthetic dataset in the CamVid layout, with COCO annotations of the same scenes.

    Writes ``train/``, ``trainannot/``, ``val/``, ``valannot/`` (and ``test/``, ``testannot/``
    when ``n_test`` > 0) of ``00000.png``...; ``annotations/instances_<split>.json`` with one
    polygon annotation per visible object (categories: the object classes, ids as in the
    masks); ``classes.json``; and ``synthetic.json`` with the parameters. The folder is written
    under a temporary name and renamed when complete, so a reader never sees half of it.

    Args:
        out_dir: the folder to create; it must not exist or be empty.
        n_train, n_val, n_test: scenes per split.
        size: (width, height) in pixels.
        seed: the same seed writes the same bytes; scene ``i`` of a split does not depend on
            how many scenes are written.
        workers: threads that generate scenes (default: the CPU count, at most 8); the files
            are the same for any number.

    Returns:
        ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir).expanduser()
    size = _check_size(size)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, count in counts.items():
        if not isinstance(count, int) or count < 0:
            raise DataError(f"n_{split} must be a whole number 0 or more, got {count!r}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir} already exists and is not an empty folder; choose a new one")
    workers = workers or min(8, os.cpu_count() or 1)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        for split, count in counts.items():
            if count or split != "test":
                _write_split(temporary, split, count, size, seed, workers)
        classes = {
            "classes": list(SYNTHETIC_CLASSES),
            "ignore_index": IGNORE_INDEX,
            "palette": [list(c) for c in SYNTHETIC_PALETTE],
        }
        (temporary / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
        params = {"generator_version": GENERATOR_VERSION, "seed": seed, "size": list(size)}
        params.update({f"n_{split}": count for split, count in counts.items()})
        (temporary / "synthetic.json").write_text(json.dumps(params, indent=1) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(temporary, out_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out_dir


def synthetic_cache_path(
    n_train: int = DEFAULT_COUNTS["n_train"],
    n_val: int = DEFAULT_COUNTS["n_val"],
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    n_test: int = DEFAULT_COUNTS["n_test"],
) -> Path:
    """Where :func:`ensure_synthetic` keeps the dataset with these parameters."""
    params = {
        "generator_version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "size": list(_check_size(size)),
        "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"synthetic-{digest}"


def ensure_synthetic(
    n_train: int = DEFAULT_COUNTS["n_train"],
    n_val: int = DEFAULT_COUNTS["n_val"],
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    n_test: int = DEFAULT_COUNTS["n_test"],
) -> Path:
    """The cached synthetic dataset with these parameters, written first if it is not there.

    The cache folder is :func:`edgeseg.data.cache.cache_dir` (``$EDGESEG_CACHE`` or
    ``~/.cache/edgeseg``); the dataset is ``synthetic-<hash of the parameters>`` in it.
    Processes that race to write it each write their own copy and the first rename wins.
    """
    path = synthetic_cache_path(n_train, n_val, size, seed, n_test)
    if (path / "synthetic.json").is_file():
        return path
    try:
        return write_synthetic(path, n_train, n_val, size, seed, n_test)
    except (DataError, OSError):
        if (path / "synthetic.json").is_file():  # another process finished first
            return path
        raise


def read_synthetic(root: str | os.PathLike, split: str = "train") -> SegmentationDataset:
    """Read a dataset written by :func:`write_synthetic` (the CamVid layout, 7 classes)."""
    root = Path(root).expanduser()
    classes, palette = SYNTHETIC_CLASSES, SYNTHETIC_PALETTE
    if (root / "classes.json").is_file():
        classes, _, palette = read_classes_json(root / "classes.json")
    return read_camvid_layout(
        root,
        split,
        name="synthetic",
        format_name="synthetic dataset",
        classes=classes,
        palette=palette,
        label_map=None,
        layout=SYNTHETIC_LAYOUT,
    )
