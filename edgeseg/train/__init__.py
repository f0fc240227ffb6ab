"""Training: losses, class weights, input augmentation and Keras metrics.

Import the submodules you need (``edgeseg.train.losses``, ``edgeseg.train.weights``,
``edgeseg.train.augment``, ``edgeseg.train.keras_metrics``). This package itself imports
nothing, so ``edgeseg.train.weights`` (NumPy and OpenCV only) stays usable without TensorFlow.
"""
