"""edgeseg: real-time image segmentation for edge devices.

Importing this package is cheap and never imports TensorFlow or Keras: the runtime that runs
exported models on a device needs only NumPy, OpenCV and LiteRT. Model building, training and
conversion import Keras when they are called.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
