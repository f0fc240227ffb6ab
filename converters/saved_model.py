"""Keras model -> TensorFlow SavedModel folder (for TF Serving and the TF.js converters)."""

from __future__ import annotations

import os


def write_saved_model(job, path: str | os.PathLike) -> str:
    """The formats table's SavedModel converter: ``job.model`` as a SavedModel folder at ``path``
    (float32; see ``edgeseg.converters.formats``). Returns ``job.quant``."""
    job.model.export(os.fspath(path), format="tf_saved_model", verbose=False)
    return job.quant
