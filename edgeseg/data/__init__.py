"""Datasets for segmentation: readers, specs, synthetic scenes and label statistics.

``open_dataset("camvid:/data/CamVid", "train")`` returns a :class:`SegmentationDataset` whose
``dataset[i]`` is ``(image uint8 HxWx3 RGB, label uint8 HxW)``, labels ``0 .. num_classes - 1``
and 255 for ignored pixels in every format. Importing this package needs NumPy and OpenCV only
(pycocotools when COCO masks are drawn), never TensorFlow.
"""

from edgeseg.data.base import (
    IGNORE_INDEX,
    DataError,
    SegmentationDataset,
    read_image,
    read_label_file,
)
from edgeseg.data.cache import cache_dir
from edgeseg.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE, read_camvid
from edgeseg.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN,
    CITYSCAPES_PALETTE,
    read_cityscapes,
)
from edgeseg.data.coco import CocoInstances, read_coco, read_coco_instances
from edgeseg.data.folder import read_folder
from edgeseg.data.instances import open_instances
from edgeseg.data.png import decode_palette_png
from edgeseg.data.spec import DATASET_FORMATS, DatasetFormat, open_dataset, parse_dataset_spec
from edgeseg.data.stats import class_pixel_counts
from edgeseg.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_PALETTE,
    SceneSequence,
    ensure_synthetic,
    generate_scene,
    read_synthetic,
    write_synthetic,
)
from edgeseg.data.voc import VOC_CLASSES, read_voc

__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_PALETTE",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_TO_TRAIN",
    "CITYSCAPES_PALETTE",
    "DATASET_FORMATS",
    "IGNORE_INDEX",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_PALETTE",
    "VOC_CLASSES",
    "CocoInstances",
    "DataError",
    "DatasetFormat",
    "SceneSequence",
    "SegmentationDataset",
    "cache_dir",
    "class_pixel_counts",
    "decode_palette_png",
    "ensure_synthetic",
    "generate_scene",
    "open_dataset",
    "open_instances",
    "parse_dataset_spec",
    "read_camvid",
    "read_cityscapes",
    "read_coco",
    "read_coco_instances",
    "read_folder",
    "read_image",
    "read_label_file",
    "read_synthetic",
    "read_voc",
    "write_synthetic",
]
