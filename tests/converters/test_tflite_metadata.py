"""Export metadata: the sidecar JSON, TFLite metadata in the model, and MediaPipe loading it.

The MediaPipe checks run the exported float and int8 models in MediaPipe Tasks'
``ImageSegmenter`` and compare its category and confidence masks with edgeseg's own LiteRT
runtime on the same file. They need ``mediapipe`` (``pip install --no-deps mediapipe==1.2.2``:
its pins conflict with TensorFlow's tooling, and its segmenter needs only NumPy).
"""

from __future__ import annotations

import io
import json
import zipfile

import flatbuffers
import numpy as np
import pytest

from edgeseg.artifacts import SIDECAR_VERSION, read_sidecar, sidecar_path, write_sidecar
from edgeseg.converters.tflite_metadata import (
    DEFAULT_NORMALISATION,
    EMBEDDED_JSON_NAME,
    LABELS_FILE_NAME,
    MediaPipeIncompatibleError,
    build_metadata,
    embed_metadata,
    normalisation_mean_std,
    read_associated_files,
    read_embedded_metadata,
    read_metadata_buffer,
)
from edgeseg.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, generate_scene

SIZE = 64  # square, so that MediaPipe resizes nothing
IO_TYPES = ("float32", "uint8")


def scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    image, label, _ = generate_scene(np.random.default_rng(seed), (SIZE, SIZE))
    return image, label


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- metadata and sidecar (no TensorFlow) --------------------------------------------------------


def test_build_metadata_records_the_export():
    import edgeseg

    md = build_metadata(
        "unet", SYNTHETIC_CLASSES, (640, 480), "probs", "int8", "uint8", palette=SYNTHETIC_PALETTE
    )
    assert md["model"] == "unet" and md["classes"] == list(SYNTHETIC_CLASSES)
    assert md["input_size"] == [640, 480] and md["output"] == "probs"
    assert md["quant"] == "int8" and md["io"] == "uint8"
    assert md["palette"] == [list(rgb) for rgb in SYNTHETIC_PALETTE]
    assert md["normalisation"] == DEFAULT_NORMALISATION
    assert md["edgeseg_version"] == edgeseg.__version__
    assert md["created"].endswith("+00:00")
    with pytest.raises(ValueError, match="palette has 2 colours but there are 7 classes"):
        build_metadata("unet", SYNTHETIC_CLASSES, (64, 64), palette=[(0, 0, 0)] * 2)
    with pytest.raises(ValueError, match="output must be one of"):
        build_metadata("unet", SYNTHETIC_CLASSES, (64, 64), output="scores")


@pytest.mark.parametrize(
    ("normalisation", "mean", "std"),
    [
        ({"mean": [0, 0, 0], "std": [255, 255, 255]}, [0, 0, 0], [255, 255, 255]),
        ({"scale": 1 / 255, "offset": 0.0}, [0.0], [255.0]),
        ({"scale": 1 / 127.5, "offset": -1.0}, [127.5], [127.5]),
        (
            {
                "scale": [1 / 58.4, 1 / 57.1, 1 / 57.4],
                "offset": [-123.7 / 58.4, -116.3 / 57.1, -103.5 / 57.4],
            },
            [123.7, 116.3, 103.5],
            [58.4, 57.1, 57.4],
        ),
    ],
)
def test_normalisation_scale_offset_is_mean_std(normalisation, mean, std):
    got_mean, got_std = normalisation_mean_std(normalisation)
    np.testing.assert_allclose(got_mean, mean, atol=1e-9)
    np.testing.assert_allclose(got_std, std, rtol=1e-12)
    # Both forms give the same x for every pixel value.
    pixels = np.arange(256.0)[:, None]
    want = (pixels - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose((pixels - np.asarray(got_mean)) / np.asarray(got_std), want)


def test_normalisation_errors_name_what_is_accepted():
    with pytest.raises(ValueError, match=r"'mean' and 'std' or 'scale' and 'offset'.*\['mu'\]"):
        normalisation_mean_std({"mu": 0})
    with pytest.raises(ValueError, match="std must not be 0"):
        normalisation_mean_std({"mean": [0], "std": [0]})


def test_default_normalisation_is_the_core_one_and_maps_to_pixels_over_255():
    from edgeseg import artifacts

    assert DEFAULT_NORMALISATION == artifacts.DEFAULT_NORMALISATION
    mean, std = normalisation_mean_std(DEFAULT_NORMALISATION)
    pixels = np.arange(256.0)
    np.testing.assert_allclose((pixels - mean[0]) / std[0], pixels / 255.0, rtol=1e-12)
    assert str(mean[0]) == "0.0"  # not -0.0 in the metadata


def test_sidecar_of_build_metadata_round_trips_through_the_one_writer(tmp_path):
    tflite = tmp_path / "enet_int8.tflite"
    md = build_metadata("enet", ["a", "b"], (48, 32))
    md["palette"] = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)  # NumPy values: plain JSON
    path = write_sidecar(tflite, md)
    assert path == sidecar_path(tflite) == tmp_path / "enet_int8.tflite.json"
    want = {**md, "palette": [[0, 0, 0], [255, 0, 0]], "sidecar_version": SIDECAR_VERSION}
    assert read_sidecar(tflite) == want
    assert json.loads(path.read_text())["classes"] == ["a", "b"]

    # Rewriting replaces the file; a failed write leaves the old one and no temporary file.
    write_sidecar(tflite, {**md, "classes": ["x", "y"]})
    assert read_sidecar(tflite)["classes"] == ["x", "y"]
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_sidecar(tflite, {**md, "classes": object()})
    assert read_sidecar(tflite)["classes"] == ["x", "y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enet_int8.tflite.json"]
    assert read_sidecar(tmp_path / "other.tflite") is None


# --- exported models -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_model():
    """A small U-Net trained briefly on synthetic scenes, so that its masks have regions."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from edgeseg.models import build

    keras.utils.set_random_seed(0)
    images, labels = zip(*(scene(seed) for seed in range(8)), strict=True)
    x = np.stack(images).astype(np.float32) / 255.0
    y = np.stack(labels)
    model = build("unet", len(SYNTHETIC_CLASSES), (SIZE, SIZE, 3), filters=8, depth=2, dropout=0)
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
    )
    model.fit(x, y, batch_size=8, epochs=60, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(trained_model):
    """io type -> (model without metadata, model with metadata, the metadata)."""
    from edgeseg.converters.tflite import convert_keras_to_tflite

    # Calibration images cover the full pixel range, so the uint8 input gets scale 1/255.
    calibration = [scene(seed)[0].astype(np.float32) / 255.0 for seed in range(8)]
    calibration[0][:2, :2] = [[0.0], [1.0]]
    models = {
        "float32": convert_keras_to_tflite(trained_model),
        "uint8": convert_keras_to_tflite(
            trained_model, "int8", lambda: iter(calibration), io_type="uint8"
        ),
    }
    out = {}
    for io_type, raw in models.items():
        md = build_metadata(
            "unet",
            SYNTHETIC_CLASSES,
            (SIZE, SIZE),
            "logits",
            "none" if io_type == "float32" else "int8",
            io_type,
            palette=SYNTHETIC_PALETTE,
        )
        out[io_type] = (raw, embed_metadata(raw, md), md)
    return out


def edgeseg_scores(tflite: bytes, image: np.ndarray) -> np.ndarray:
    """edgeseg's runtime on one uint8 image: x = image / 255, float scores (H, W, classes)."""
    from edgeseg.runtime_tflite import load_interpreter, run_interpreter

    return run_interpreter(load_interpreter(model_content=tflite), image[None] / 255.0)[0]


@pytest.mark.slow
@pytest.mark.parametrize("io_type", IO_TYPES)
def test_embedded_metadata_round_trip(exported, io_type):
    raw, with_md, md = exported[io_type]
    assert read_embedded_metadata(with_md) == json.loads(json.dumps(md))
    files = read_associated_files(with_md)
    assert sorted(files) == [EMBEDDED_JSON_NAME, LABELS_FILE_NAME]
    assert files[LABELS_FILE_NAME].decode().split("\n") == list(SYNTHETIC_CLASSES)
    # Stored, not compressed: metadata readers hand the files out as views into the model.
    with zipfile.ZipFile(io.BytesIO(with_md)) as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
    assert with_md[4:8] == b"TFL3"

    # Embedding again replaces the metadata rather than adding a second copy.
    again = embed_metadata(with_md, {**md, "classes": [c.upper() for c in md["classes"]]})
    assert read_embedded_metadata(again)["classes"][0] == "SKY"
    assert len(again) == len(with_md)
    assert read_associated_files(raw) == {}
    with pytest.raises(ValueError, match=r"no edgeseg\.json \(packed files: none\)"):
        read_embedded_metadata(raw)
    assert read_metadata_buffer(raw) is None
    assert read_metadata_buffer(with_md)[4:8] == b"M001"


@pytest.mark.slow
@pytest.mark.parametrize("io_type", IO_TYPES)
def test_litert_runs_the_model_with_metadata_as_without(exported, io_type):
    from ai_edge_litert import schema_py_generated as schema

    from edgeseg.runtime_tflite import load_interpreter

    raw, with_md, _ = exported[io_type]
    image = scene(100)[0]
    np.testing.assert_array_equal(edgeseg_scores(with_md, image), edgeseg_scores(raw, image))
    before, after = load_interpreter(model_content=raw), load_interpreter(model_content=with_md)
    for get in ("get_input_details", "get_output_details"):
        for a, b in zip(getattr(before, get)(), getattr(after, get)(), strict=True):
            assert (a["name"], a["dtype"], list(a["shape"]), a["quantization"]) == (
                b["name"],
                b["dtype"],
                list(b["shape"]),
                b["quantization"],
            )
    assert before.get_signature_list() == after.get_signature_list()

    # Constant buffers stay 16-byte aligned after the model is repacked.
    model = schema.Model.GetRootAs(with_md, 0)
    for i in range(model.BuffersLength()):
        table = model.Buffers(i)._tab
        if table.Offset(4) and table.VectorLen(table.Offset(4)):
            assert table.Vector(table.Offset(4)) % 16 == 0, f"buffer {i} is not 16-byte aligned"


@pytest.mark.slow
@pytest.mark.parametrize("io_type", IO_TYPES)
def test_metadata_reads_back_with_the_tflite_metadata_schema(exported, io_type):
    """MediaPipe's generated schema classes (an independent reader) decode what was written."""
    pytest.importorskip("mediapipe", reason="pip install --no-deps mediapipe==1.2.2")
    from mediapipe.tasks.metadata import image_segmenter_metadata_schema_py_generated as seg_fb
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md_fb

    _, with_md, md = exported[io_type]
    buffer = read_metadata_buffer(with_md)
    assert md_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    meta = md_fb.ModelMetadataT.InitFromObj(md_fb.ModelMetadata.GetRootAs(buffer, 0))
    assert meta.name == b"edgeseg unet" and meta.version == md["edgeseg_version"].encode()
    assert meta.minParserVersion == b"1.5.0"
    assert [(f.name, f.type) for f in meta.associatedFiles] == [
        (EMBEDDED_JSON_NAME.encode(), md_fb.AssociatedFileType.UNKNOWN)
    ]
    (graph,) = meta.subgraphMetadata
    (image,), (masks,) = graph.inputTensorMetadata, graph.outputTensorMetadata

    assert image.content.contentPropertiesType == md_fb.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == md_fb.ColorSpaceType.RGB
    if io_type == "float32":
        (unit,) = image.processUnits
        assert unit.optionsType == md_fb.ProcessUnitOptions.NormalizationOptions
        assert list(unit.options.mean) == [0.0] * 3 and list(unit.options.std) == [255.0] * 3
        assert list(image.stats.min) == [0.0] * 3 and list(image.stats.max) == [1.0] * 3
    else:  # MediaPipe feeds uint8 models raw pixels; the input quantisation does the rest
        assert image.processUnits is None
        assert list(image.stats.min) == [0.0] and list(image.stats.max) == [255.0]

    assert masks.content.contentProperties.colorSpace == md_fb.ColorSpaceType.GRAYSCALE
    assert (masks.content.range.min, masks.content.range.max) == (1, 2)
    (labels,) = masks.associatedFiles
    assert labels.name == LABELS_FILE_NAME.encode()
    assert labels.type == md_fb.AssociatedFileType.TENSOR_AXIS_LABELS

    (custom,) = graph.customMetadata
    assert custom.name == b"SEGMENTER_METADATA"
    data = bytes(np.asarray(custom.data, dtype=np.uint8))
    assert seg_fb.ImageSegmenterOptions.ImageSegmenterOptionsBufferHasIdentifier(data, 0)
    options = seg_fb.ImageSegmenterOptions.GetRootAs(data, 0)
    assert options.Activation() == seg_fb.Activation.SOFTMAX  # the model outputs logits


@pytest.mark.slow
@pytest.mark.parametrize("io_type", IO_TYPES)
def test_mediapipe_image_segmenter_matches_edgeseg_runtime(exported, io_type):
    mp = pytest.importorskip("mediapipe", reason="pip install --no-deps mediapipe==1.2.2")
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision import ImageSegmenter, ImageSegmenterOptions

    from edgeseg.runtime_tflite import load_interpreter

    _, with_md, _ = exported[io_type]
    image, label = scene(100)  # not one of the training scenes
    scores = edgeseg_scores(with_md, image)
    want = scores.argmax(-1)
    # The model has learnt something, so the masks compared have several regions.
    assert len(np.unique(want)) >= 3
    assert (want == label)[label != 255].mean() > 0.5
    if io_type == "uint8":
        # run_interpreter quantises image / 255 back to the pixels that MediaPipe feeds as they are.
        scale, zero_point = load_interpreter(model_content=with_md).get_input_details()[0][
            "quantization"
        ]
        np.testing.assert_array_equal(np.round(image / 255.0 / scale + zero_point), image)

    options = ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_buffer=with_md),
        output_category_mask=True,
        output_confidence_masks=True,
    )
    with ImageSegmenter.create_from_options(options) as segmenter:
        assert segmenter.labels == list(SYNTHETIC_CLASSES)
        result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        # numpy_view() points into memory the result owns: copy while the result is alive.
        category = np.array(result.category_mask.numpy_view()).reshape(SIZE, SIZE)
        confidence = np.stack(
            [np.array(m.numpy_view()).reshape(SIZE, SIZE) for m in result.confidence_masks],
            axis=-1,
        )
    # The segmenter applies the softmax that the metadata names to the scores edgeseg gets.
    np.testing.assert_allclose(confidence, softmax(scores), atol=1e-4)
    # Equal wherever the top two classes are not tied to within float rounding.
    agree = (category == want).mean()
    assert agree >= 0.99, f"MediaPipe and edgeseg agree on {agree:.2%} of pixels"


@pytest.mark.slow
def test_embed_rejects_models_mediapipe_would_misread(exported):
    from ai_edge_litert import schema_py_generated as schema

    raw_float, _, md = exported["float32"]
    raw_uint8 = exported["uint8"][0]
    with pytest.raises(
        ValueError, match=r"per-class scores \(1, H, W, 3\) .*output shape \[1, 64, 64, 7\]"
    ) as error:
        embed_metadata(raw_float, {**md, "classes": ["a", "b", "c"]})
    assert not isinstance(error.value, MediaPipeIncompatibleError)  # a mistake, not a model kind
    with pytest.raises(MediaPipeIncompatibleError, match="'logits' or 'probs'; got 'mask'"):
        embed_metadata(raw_float, {**md, "output": "mask"})
    # A uint8 model gets raw pixels from MediaPipe: its quantisation must match the normalisation.
    with pytest.raises(
        MediaPipeIncompatibleError, match=r"scale 0\.00392.* x = \(pixel - 127\.5\) / 127\.5"
    ):
        embed_metadata(raw_uint8, {**md, "normalisation": {"mean": [127.5], "std": [127.5]}})
    # MediaPipe's image preprocessing feeds float32 or uint8 tensors only.
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(raw_uint8, 0))
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].type = schema.TensorType.INT8
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), b"TFL3")
    with pytest.raises(MediaPipeIncompatibleError, match="input is int8 .*io_type='uint8'"):
        embed_metadata(bytes(builder.Output()), md)
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        embed_metadata(b"\0" * 64, md)
