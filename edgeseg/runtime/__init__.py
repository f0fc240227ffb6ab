"""One predictor interface over .keras, .tflite, .onnx and TensorRT .engine models.

``load_predictor(path)`` returns a callable that takes a float32 batch (N, H, W, 3), already
normalised as the model's metadata says, and returns what the model returns: logits or
probabilities (N, H, W, K), or a label map (N, H, W). Loading a .tflite model imports LiteRT,
NumPy and OpenCV only, never TensorFlow; a .keras model runs on the active Keras backend
(JAX needs no TensorFlow either), an .engine through TensorRT's Python API on its GPU.

``frame_drawer(segmenter)`` draws results on frames (views, legend, heads-up line);
``edgeseg.runtime.live`` holds the bookkeeping of a live loop (``LiveRun``, ``open_segmenter``).
"""

from edgeseg.runtime.draw import FrameDrawer, InstanceFrameDrawer, frame_drawer
from edgeseg.runtime.instances import InstanceSegmenter, is_instance_model
from edgeseg.runtime.live import LiveRun, open_segmenter
from edgeseg.runtime.predictor import FORMATS_BY_SUFFIX, Predictor, load_predictor, read_metadata
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.tiling import segment_tiled

__all__ = [
    "FORMATS_BY_SUFFIX",
    "FrameDrawer",
    "InstanceFrameDrawer",
    "InstanceSegmenter",
    "LiveRun",
    "Predictor",
    "Segmenter",
    "frame_drawer",
    "is_instance_model",
    "load_predictor",
    "open_segmenter",
    "read_metadata",
    "segment_tiled",
]
