"""The model registry: one table of the model families, filled explicitly.

Reading the table imports nothing heavy; ``build`` imports Keras and the family's module only when
a model is built, so ``import edgeseg`` and ``edgeseg models`` stay free of TensorFlow.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model family before building it."""

    name: str
    builder: str  # "module:function"
    task: str  # "semantic" or "instance"
    summary: str
    paper: str
    output_stride: int  # input height and width are padded to a multiple of this in the graph
    default_size: tuple[int, int]  # (height, width) the paper trains at
    fixed_size_ok: bool = True
    # (height, width) of the training crops when the train command is given no --size.
    train_size: tuple[int, int] = (360, 480)
    options: dict = field(default_factory=dict)  # option -> (default, help)


_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="enet",
            builder="edgeseg.models.enet.network:build_enet",
            task="semantic",
            summary="ENet: real-time encoder-decoder with bottlenecks and max-unpooling",
            paper="Paszke et al. 2016, arXiv 1606.02147",
            output_stride=8,
            default_size=(360, 480),
        ),
        ModelSpec(
            name="segnet",
            builder="edgeseg.models.segnet.network:build_segnet",
            task="semantic",
            summary="SegNet: VGG16 encoder, decoder upsampling with the pooling indices",
            paper="Badrinarayanan et al. 2017, TPAMI (arXiv 1511.00561)",
            output_stride=32,
            default_size=(360, 480),
            options={"width": (1.0, "channel width multiplier (1.0 = the paper's VGG16)")},
        ),
        ModelSpec(
            name="unet",
            builder="edgeseg.models.unet.network:build_unet",
            task="semantic",
            summary="U-Net: contracting / expanding paths with cropped skip concatenation",
            paper="Ronneberger et al. 2015, MICCAI (arXiv 1505.04597)",
            output_stride=16,
            default_size=(256, 256),
            options={
                "filters": (64, "filters of the first level, doubled at each level down"),
                "depth": (4, "number of down / up steps"),
                "padding": ("same", "'valid' as in the paper (572 -> 388) or 'same'"),
                "dropout": (0.5, "dropout at the end of the contracting path"),
            },
        ),
        ModelSpec(
            name="fcn8s",
            builder="edgeseg.models.fcn.network:build_fcn8s",
            task="semantic",
            summary="FCN-8s: fully convolutional VGG16 with pool3 / pool4 skip fusion",
            paper="Long, Shelhamer, Darrell 2015, CVPR (arXiv 1411.4038)",
            output_stride=32,
            default_size=(512, 512),
            options={
                "width": (1.0, "channel width multiplier for the VGG16 layers"),
                "fc_channels": (4096, "channels of fc6 / fc7 (the paper: 4096)"),
            },
        ),
        ModelSpec(
            name="mobile_mask_rcnn",
            builder="edgeseg.models.maskrcnn.network:build_mobile_mask_rcnn",
            task="instance",
            summary="Mobile Mask R-CNN: MobileNet + FPN instance segmentation, whole graph in TFLite",
            paper="He et al. 2017, ICCV (arXiv 1703.06870); GustavZ/Mobile_Mask_RCNN",
            output_stride=32,
            default_size=(512, 512),
            fixed_size_ok=False,
            train_size=(512, 512),  # square, a multiple of 32 (GustavZ/Mobile_Mask_RCNN)
            options={
                "backbone": ("mobilenet_v2", "'mobilenet' (V1) or 'mobilenet_v2'"),
                "alpha": (1.0, "MobileNet width multiplier"),
                "backbone_weights": (None, "local .h5 / .weights.h5 of the keras.applications "
                                           "backbone (no download)"),
                "fpn_channels": (128, "channels of P2-P6 (matterport: 256)"),
                "rpn_channels": (256, "the RPN's shared conv (matterport: 512)"),
                "box_fc": (512, "the box head's two FC layers (matterport: 1024)"),
                "mask_channels": (128, "the mask head's convs (matterport: 256)"),
                "pre_nms": (1000, "anchors kept before the RPN's NMS"),
                "proposals": (100, "ROIs after the RPN's NMS (GustavZ: 100)"),
                "max_detections": (100, "detections per image, padded"),
                "min_confidence": (0.7, "score threshold of the detections"),
                "detection_nms": (0.3, "IoU threshold of the per-class NMS"),
                "rpn_nms": (0.7, "IoU threshold of the RPN's NMS"),
            },
        ),
    )
}


def list_models(task: str | None = None) -> list[str]:
    """Names of the registered models, sorted; ``task`` ("semantic" or "instance") filters."""
    return sorted(name for name, spec in _MODELS.items() if task in (None, spec.task))


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; an unknown name lists the valid ones."""
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_MODELS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}; valid models: {', '.join(list_models())}.{hint}"
        ) from None


def build(name: str, num_classes: int, input_shape: tuple[int, int, int] | None = None, **options):
    """Builds the named model as a ``keras.Model``.

    Args:
        name: one of ``list_models()``.
        num_classes: number of classes the model predicts (void / ignore not included); for
            instance models (Mask R-CNN) the background class 0 counts: 81 for COCO.
        input_shape: (H, W, C); defaults to the paper's training size with 3 channels.
        **options: the family's options (see ``get_spec(name).options``) and ``output``
            ("logits", "probs" or "mask").
    """
    spec = get_spec(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if input_shape is None:
        input_shape = (*spec.default_size, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any(not isinstance(d, int) or d < 1 for d in input_shape):
        raise ValueError(
            f"input_shape must be (height, width, channels) of positive integers, got {input_shape!r}"
        )
    allowed = set(spec.options) | {"output", "name"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"{name} does not take option(s) {', '.join(sorted(unknown))}; "
            f"it accepts: {', '.join(sorted(allowed))}"
        )
    module_name, function_name = spec.builder.split(":")
    builder = getattr(importlib.import_module(module_name), function_name)
    return builder(num_classes=num_classes, input_shape=input_shape, **options)
