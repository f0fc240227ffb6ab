"""Instance data (COCO-format annotations) of a data spec, for instance models."""

from __future__ import annotations

from edgeseg.data.base import DataError
from edgeseg.data.coco import CocoInstances, read_coco_instances
from edgeseg.data.spec import parse_dataset_spec
from edgeseg.data.synthetic import ensure_synthetic

__all__ = ["INSTANCE_FORMATS", "open_instances"]

INSTANCE_FORMATS = ("coco", "synthetic")


def open_instances(spec: str, split: str = "train") -> CocoInstances:
    """The instances of a data spec: ``coco:PATH``, ``synthetic``, ``synthetic?...`` or
    ``synthetic:PATH`` (the synthetic scenes' COCO annotations).

    Raises:
        DataError: a spec of a format without instance annotations, naming the accepted ones.
    """
    name, path, options = parse_dataset_spec(spec)
    if name not in INSTANCE_FORMATS:
        raise DataError(
            f"dataset spec {spec!r}: instance segmentation needs instance annotations, which "
            f"{name!r} does not have; accepted: coco:PATH (COCO instances json, polygons or "
            "RLE), synthetic, synthetic?n_train=..., synthetic:PATH"
        )
    if name == "synthetic" and path is None:
        path = ensure_synthetic(**options)
    return read_coco_instances(path, split)
