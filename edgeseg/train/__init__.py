"""Training: one trainer for both tasks, losses, class weights, input augmentation and metrics.

``edgeseg.train.trainer.train(TrainConfig(...))`` runs ``edgeseg train``: the shared run
directory (``edgeseg.train.run``) and the task's loop (``edgeseg.train.semantic``,
``edgeseg.train.instance``). Import the submodules you need (``edgeseg.train.losses``,
``edgeseg.train.weights``, ``edgeseg.train.augment``, ``edgeseg.train.keras_metrics``). This
package itself imports nothing, so ``edgeseg.train.weights`` (NumPy and OpenCV only) stays
usable without TensorFlow.
"""
