"""The model zoo: ``build(name, num_classes, input_shape, **options)`` and ``list_models()``."""

from edgeseg.models.registry import ModelSpec, build, get_spec, list_models

__all__ = ["ModelSpec", "build", "get_spec", "list_models"]
