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


def enet_conv_macs(width: int, height: int, classes: int, internal_of: str = "output",
                   up_kernel: int = 3, head_kernel: int = 2,
                   transposed_at: str = "input") -> int:
    """ENet's convolution multiply-accumulates from its architecture (ANCHORS.md), by hand.

    The defaults are the paper's network as edgeseg builds it: bottlenecks of output / 4
    internal channels, a 3x3 transposed convolution in the upsampling bottlenecks, a 2x2
    "fullconv" head, and a transposed convolution counted at its input pixels (each scatters
    one kernel). The options describe other ports and counters (the PixSeg test below).
    """
    p1 = (height // 2) * (width // 2)  # after the initial block
    p2, p3 = p1 // 4, p1 // 16  # after stages 1 and 2

    def conv(pixels, kernel, c_in, c_out):
        return pixels * kernel * c_in * c_out

    def transposed(pixels_in, kernel, c_in, c_out):
        pixels = pixels_in * 4 if transposed_at == "output" else pixels_in  # stride 2
        return conv(pixels, kernel, c_in, c_out)

    def internal(c_in, c_out):
        return (c_out if internal_of == "output" else c_in) // 4

    def regular(pixels, c, asymmetric=False):
        i = internal(c, c)
        middle = 2 * conv(pixels, 5, i, i) if asymmetric else conv(pixels, 9, i, i)
        return conv(pixels, 1, c, i) + middle + conv(pixels, 1, i, c)

    def downsampling(pixels_out, c_in, c_out):
        i = internal(c_in, c_out)
        return conv(pixels_out, 4, c_in, i) + conv(pixels_out, 9, i, i) + conv(pixels_out, 1, i, c_out)

    def upsampling(pixels_in, c_in, c_out):
        i = internal(c_in, c_out)
        return (conv(pixels_in, 1, c_in, c_out)  # shortcut, before max-unpooling
                + conv(pixels_in, 1, c_in, i) + transposed(pixels_in, up_kernel**2, i, i)
                + conv(4 * pixels_in, 1, i, c_out))

    macs = conv(p1, 9, 3, 13)  # initial block: 13 filters beside the max-pooled input
    macs += downsampling(p2, 16, 64) + 4 * regular(p2, 64)
    macs += downsampling(p3, 64, 128)
    stage = [False, False, True, False, False, False, True, False]  # asymmetric 5 at 3 and 7
    macs += sum(regular(p3, 128, asymmetric) for asymmetric in 2 * stage)
    macs += upsampling(p3, 128, 64) + 2 * regular(p2, 64)
    macs += upsampling(p2, 64, 16) + regular(p1, 16)
    return macs + transposed(p1, head_kernel**2, 16, classes)


# ENet's compute as the README documents it (12 classes; 19 for Cityscapes at 1024x512).
ENET_GMACS = {(640, 360, 12): 1.698, (1024, 512, 12): 3.863, (1024, 512, 19): 3.922}
PAPER_GFLOPS = 3.83  # ENet paper, Table 3: no input size given
PIXSEG_GMACS_1024x512 = 5.39  # CyrusCKF/PixSeg, 19 classes (ANCHORS.md)


@pytest.mark.parametrize(("width", "height", "classes"), sorted(ENET_GMACS))
def test_enet_compute_is_the_count_from_its_architecture(width, height, classes):
    profile = profile_model(build("enet", classes, (height, width, 3)))
    assert profile.macs == enet_conv_macs(width, height, classes)
    assert profile.gmacs == pytest.approx(ENET_GMACS[width, height, classes], abs=5e-4)
    assert profile.flops == 2 * profile.macs
    # Bias adds, batch norm, activations, adds and pooling: about 3% on top of the FLOPs.
    assert 0.02 < profile.elementwise_ops / profile.flops < 0.04


def test_enet_compute_beside_the_published_figures():
    """What the README says of the paper's 3.83 GFLOPs and PixSeg's 5.39 GMACs: gaps, not a
    match at a size picked to make one."""
    small = profile_model(build("enet", 12, (360, 640, 3)))
    # The paper's 3.83 is not our FLOPs at 640x360 (the size it is believed to be at):
    # 11% below it, 9% with the element-wise operations added.
    assert small.gflops / PAPER_GFLOPS == pytest.approx(0.887, abs=0.002)
    assert (small.flops + small.elementwise_ops) / 1e9 / PAPER_GFLOPS == pytest.approx(
        0.914, abs=0.002)
    # At 1024x512 our MACs come within 1% of 3.83, but that is MACs, not FLOPs: read as
    # FLOPs the paper's figure is half ours. No size matches in both units.
    large = profile_model(build("enet", 12, (512, 1024, 3)))
    assert large.gflops / PAPER_GFLOPS == pytest.approx(2.017, abs=0.002)

    # PixSeg's 5.39 GMACs at 1024x512 (19 classes) is 37% above our 3.92. Its ENet is not the
    # paper's (internal channels input / 4, a 2x2 transposed convolution in the upsampling
    # bottlenecks, a 3x3 transposed head) and torchinfo, which reports "mult-adds", counts a
    # transposed convolution at its output pixels, 4 times its work at stride 2. Counted our
    # way its network has 4.04 GMACs; torchinfo's way 5.31, within 1.5% of the published 5.39.
    cityscapes = profile_model(build("enet", 19, (512, 1024, 3)))
    assert PIXSEG_GMACS_1024x512 / cityscapes.gmacs == pytest.approx(1.374, abs=0.002)
    pixseg = {"internal_of": "input", "up_kernel": 2, "head_kernel": 3}
    assert enet_conv_macs(1024, 512, 19, **pixseg) / 1e9 == pytest.approx(4.037, abs=5e-4)
    torchinfo = enet_conv_macs(1024, 512, 19, transposed_at="output", **pixseg) / 1e9
    assert torchinfo == pytest.approx(5.315, abs=5e-4)
    assert torchinfo / PIXSEG_GMACS_1024x512 == pytest.approx(1, abs=0.015)


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


def test_profile_counts_each_kind_of_operation_by_hand():
    import keras

    from edgeseg.models.layers import MaxPoolWithIndices, UnpoolWithIndices

    image = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same")(image)  # 8*8*9*3*4 MACs, 256 bias adds
    norm = keras.layers.BatchNormalization()(conv)  # 2 * 256: scale and shift
    act = keras.layers.PReLU(shared_axes=[1, 2])(norm)  # 256
    added = keras.layers.Add()([conv, act])  # 256
    pooled = keras.layers.MaxPooling2D(2)(added)  # 3 comparisons for each of 4*4*4 outputs
    values, indices = MaxPoolWithIndices(2)(added)  # the same 3 * 64
    unpooled = UnpoolWithIndices((8, 8), 2)([values, indices])  # data movement: 0
    merged = keras.layers.Concatenate()([unpooled, keras.layers.UpSampling2D(2)(pooled)])
    up = keras.layers.Conv2DTranspose(2, 2, strides=2, use_bias=False)(merged)  # at its input
    profile = profile_model(keras.Model(image, up))
    assert profile.macs == 8 * 8 * 9 * 3 * 4 + 8 * 8 * 4 * 8 * 2
    assert profile.elementwise_ops == 256 + 512 + 256 + 256 + 192 + 192
    assert profile.flops == 2 * profile.macs
