"""One predictor interface over .keras, .tflite and .onnx models.

``load_predictor(path)`` returns a callable that takes a float32 batch (N, H, W, 3), already
normalised as the model's metadata says, and returns what the model returns: logits or
probabilities (N, H, W, K), or a label map (N, H, W). Loading a .tflite model imports LiteRT,
NumPy and OpenCV only, never TensorFlow.
"""

from edgeseg.runtime.instances import InstanceSegmenter, is_instance_model
from edgeseg.runtime.predictor import FORMATS_BY_SUFFIX, Predictor, load_predictor, read_metadata
from edgeseg.runtime.segmenter import Segmenter, default_palette
from edgeseg.runtime.tiling import segment_tiled

__all__ = [
    "FORMATS_BY_SUFFIX",
    "InstanceSegmenter",
    "Predictor",
    "Segmenter",
    "default_palette",
    "is_instance_model",
    "load_predictor",
    "read_metadata",
    "segment_tiled",
]
