"""Full-size architectures against the papers' published figures (shared/ANCHORS.md)."""

from __future__ import annotations

import pytest

pytest.importorskip("keras")

from edgeseg.models import build, get_spec, list_models  # noqa: E402
from edgeseg.models.analysis import profile_model  # noqa: E402


def test_enet_has_037m_parameters():
    # Paper 0.37M, Caffe port 0.36M, for CamVid's 11 classes + void.
    params = build("enet", 12, (360, 480, 3)).count_params()
    assert 350_000 <= params <= 380_000


def test_enet_prelu_slopes_are_per_channel():
    model = build("enet", 12, (64, 64, 3))
    prelus = [layer for layer in model.layers if layer.__class__.__name__ == "PReLU"]
    assert prelus
    for layer in prelus:
        assert layer.weights[0].shape == (1, 1, layer.input.shape[-1])


def test_enet_macs_match_the_paper_figure():
    # 3.83 GFLOPs in the paper, which match a count at 1024x512 (ANCHORS.md).
    gmacs = profile_model(build("enet", 19, (512, 1024, 3))).gmacs
    assert gmacs == pytest.approx(3.83, rel=0.05)


def test_segnet_has_2945m_parameters():
    params = build("segnet", 12, (360, 480, 3)).count_params()
    assert params == pytest.approx(29.45e6, rel=0.02)


def test_unet_has_310m_parameters_and_the_papers_valid_sizes():
    model = build("unet", 2, (572, 572, 1), padding="valid")
    assert model.count_params() == pytest.approx(31.0e6, rel=0.01)
    assert model.output_shape == (None, 388, 388, 2)


def test_unet_valid_padding_rejects_odd_pooling_sizes_with_the_nearest_valid_ones():
    with pytest.raises(ValueError, match=r"nearest valid sizes: 556, 572"):
        build("unet", 2, (570, 572, 3), padding="valid")


def test_fcn8s_is_vgg16_sized():
    # VGG16 without its classifier layer plus the score layers: 134M (Long et al., table 1).
    params = build("fcn8s", 21, (64, 64, 3)).count_params()
    assert params == pytest.approx(134.3e6, rel=0.01)


def test_fcn8s_upsampling_starts_as_bilinear_interpolation():
    import numpy as np

    from edgeseg.models.fcn.network import bilinear_kernel

    kernel = bilinear_kernel(4, 1, 1)[:, :, 0, 0]
    np.testing.assert_allclose(kernel[0], [0.0625, 0.1875, 0.1875, 0.0625])
    # Upsampling a constant by 2 with this kernel keeps it constant away from the border.
    import keras

    layer = keras.layers.Conv2DTranspose(
        1, 4, strides=2, padding="same", use_bias=False,
        kernel_initializer=keras.initializers.Constant(bilinear_kernel(4, 1, 1)),
    )
    up = keras.ops.convert_to_numpy(layer(np.ones((1, 6, 6, 1), "float32")))
    np.testing.assert_allclose(up[0, 2:-2, 2:-2, 0], 1.0, atol=1e-6)


def test_unknown_model_names_the_valid_ones_and_the_closest():
    with pytest.raises(ValueError, match=r"valid models: enet, fcn8s, mobile_mask_rcnn, segnet, unet.*'segnet'"):
        build("segnett", 2)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="does not take option"):
        build("enet", 2, (32, 32, 3), width=0.5)


def test_every_model_has_a_spec():
    for name in list_models():
        assert get_spec(name).output_stride in (8, 16, 32)


def test_mask_rcnn_macs_count_every_roi_of_the_heads():
    from edgeseg.models.analysis import profile_model
    from edgeseg.models.maskrcnn.config import MaskRCNNConfig
    from edgeseg.models.maskrcnn.network import build_mask_head, build_trunk

    options = {"alpha": 0.35, "fpn_channels": 32, "box_fc": 64, "mask_channels": 16,
               "proposals": 20, "max_detections": 10}
    model = build("mobile_mask_rcnn", 5, (128, 128, 3), **options)
    config = MaskRCNNConfig(num_classes=5, image_size=(128, 128), **{
        k: v for k, v in options.items()})
    trunk = profile_model(build_trunk(config)).macs
    # Box head per ROI: 7x7x32 -> 64 -> 64 -> 5 logits and 20 deltas, from its definition.
    box = 7 * 7 * 32 * 64 + 64 * 64 + 64 * 5 + 64 * 20
    # Mask head per ROI: four 3x3 convs at 14x14, a 2x2 stride-2 deconv, a 1x1 conv at 28x28.
    mask = (14 * 14 * 9 * 32 * 16 + 3 * 14 * 14 * 9 * 16 * 16 + 14 * 14 * 4 * 16 * 16
            + 28 * 28 * 16 * 5)
    assert profile_model(build_mask_head(config)).macs == mask
    assert profile_model(model).macs == trunk + 20 * box + 10 * mask
