"""The one Keras loader: edgeseg's layers registered once, ``safe_mode``, errors that name the file."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from edgeseg.artifacts import ArtifactError, check_model_file

__all__ = ["load_keras_model", "register_custom_objects"]

_REGISTERED = False


def register_custom_objects() -> None:
    """Imports the modules whose layers a saved edgeseg model refers to by name (each family's
    network module and the shared layers), once. Training-only objects (losses, metrics) are
    registered by ``edgeseg.train`` when it is imported."""
    global _REGISTERED
    if _REGISTERED:
        return
    from edgeseg.models.registry import get_spec, list_models

    importlib.import_module("edgeseg.models.layers")
    for name in list_models():
        importlib.import_module(get_spec(name).builder.partition(":")[0])
    _REGISTERED = True


def load_keras_model(path: str | os.PathLike, compile: bool = False):
    """Loads a ``.keras`` model saved by edgeseg (with its optimizer and loss if ``compile``).

    Raises:
        FileNotFoundError: the file does not exist.
        edgeseg.artifacts.ArtifactError: not a ``.keras`` path, or a file that is not a Keras
            archive (junk, truncated, empty), or an archive Keras cannot rebuild; the message
            names the file.
    """
    path = Path(path).expanduser()
    if path.suffix != ".keras":
        raise ArtifactError(
            f"{path} is not a Keras model: expected a file ending in .keras (such as "
            f"runs/<name>/best.keras), got suffix {path.suffix or '(none)'!r}"
        )
    check_model_file(path)
    register_custom_objects()
    import keras

    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except (ValueError, TypeError, KeyError, OSError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ArtifactError(f"{path}: Keras cannot rebuild this model: {first_line}") from error
