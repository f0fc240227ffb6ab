"""Each reader against small fixture trees in the format's real layout, written here."""

from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import pytest

from edgeseg.data import (
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    VOC_CLASSES,
    DataError,
    decode_palette_png,
    read_camvid,
    read_cityscapes,
    read_folder,
    read_label_file,
    read_voc,
)

RNG = np.random.default_rng(1234)


def random_image(height=5, width=6):
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def write_grey(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values.astype(np.uint8))


# ------------------------------------------------------------------ a palette PNG writer
# Written from the PNG specification (ISO/IEC 15948), independently of the reader under test.


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _pack_row(row, bit_depth: int) -> bytes:
    if bit_depth == 8:
        return bytes(int(v) for v in row)
    out, per_byte = bytearray(), 8 // bit_depth
    for start in range(0, len(row), per_byte):
        byte = 0
        for k, value in enumerate(row[start : start + per_byte]):
            byte |= int(value) << (8 - bit_depth * (k + 1))
        out.append(byte)
    return bytes(out)


def _filter_row(kind: int, row: bytes, prev: bytes) -> bytes:
    out = bytearray([kind])
    for x, value in enumerate(row):
        a = row[x - 1] if x else 0
        b = prev[x]
        c = prev[x - 1] if x else 0
        if kind == 0:
            predictor = 0
        elif kind == 1:
            predictor = a
        elif kind == 2:
            predictor = b
        elif kind == 3:
            predictor = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out.append((value - predictor) % 256)
    return bytes(out)


def _image_data(indices, bit_depth, filters) -> bytes:
    rows = [_pack_row(row, bit_depth) for row in indices]
    prev, data = bytes(len(rows[0])), bytearray()
    for y, row in enumerate(rows):
        data += _filter_row(filters[y % len(filters)], row, prev)
        prev = row
    return bytes(data)


def palette_png_bytes(indices, palette, bit_depth=8, filters=(0,), interlace=False) -> bytes:
    height, width = indices.shape
    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                  (1, 0, 2, 2), (0, 1, 1, 2)]  # fmt: skip
        raw = b"".join(
            _image_data(indices[y0::dy, x0::dx], bit_depth, filters)
            for x0, y0, dx, dy in passes
            if indices[y0::dy, x0::dx].size
        )
    else:
        raw = _image_data(indices, bit_depth, filters)
    compressed = zlib.compress(raw)
    half = len(compressed) // 2  # two IDAT chunks, as large files have
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 3, 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"PLTE", np.asarray(palette, dtype=np.uint8).tobytes())
        + _chunk(b"IDAT", compressed[:half])
        + _chunk(b"IDAT", compressed[half:])
        + _chunk(b"IEND", b"")
    )


def write_palette_png(path, indices, palette, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(palette_png_bytes(indices, palette, **options))


def voc_colour(index: int) -> tuple[int, int, int]:
    """The VOC colour of one index, from the devkit's bitget definition (VOCdevkit labelcolormap)."""
    r = g = b = 0
    for bit in range(8):
        r |= ((index >> (3 * bit)) & 1) << (7 - bit)
        g |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
        b |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
    return r, g, b


VOC_COLOURS = np.array([voc_colour(i) for i in range(256)], dtype=np.uint8)


# ------------------------------------------------------------------ palette PNG decoding


@pytest.mark.parametrize("bit_depth", [1, 2, 4, 8])
@pytest.mark.parametrize("interlace", [False, True])
def test_palette_png_indices_match_what_was_written(bit_depth, interlace):
    height, width = 11, 13  # not multiples of 8: partial bytes and short Adam7 passes
    indices = RNG.integers(0, 2**bit_depth, (height, width), dtype=np.uint8)
    palette = RNG.integers(0, 256, (2**bit_depth, 3), dtype=np.uint8)
    data = palette_png_bytes(indices, palette, bit_depth, (0, 1, 2, 3, 4), interlace)

    decoded, decoded_palette = decode_palette_png(data)

    np.testing.assert_array_equal(decoded, indices)
    np.testing.assert_array_equal(decoded_palette, palette)
    # The writer itself checked by libpng (through OpenCV): the file shows palette[indices].
    shown = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(shown, palette[indices])


def test_palette_png_agrees_with_pillow():
    image_module = pytest.importorskip("PIL.Image", reason="Pillow gives a second reference")
    import io

    indices = RNG.integers(0, 21, (37, 50), dtype=np.uint8)
    indices[:3] = 255
    data = palette_png_bytes(indices, VOC_COLOURS, 8, (4, 2, 1))
    from_pillow = np.array(image_module.open(io.BytesIO(data)))
    np.testing.assert_array_equal(decode_palette_png(data)[0], from_pillow)


def test_corrupt_palette_png_names_the_file(tmp_path):
    data = bytearray(palette_png_bytes(np.zeros((4, 4), np.uint8), VOC_COLOURS))
    data[-20] ^= 0xFF  # inside the last IDAT chunk: its CRC no longer matches
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"broken\.png.*CRC"):
        read_label_file(path)


# ------------------------------------------------------------------ CamVid


def test_camvid_reads_images_and_maps_void_11_to_255(tmp_path):
    written = {}
    for split in ("train", "val"):
        for name in ("0001TP_006690", "Seq05VD_f00000"):
            image = random_image()
            mask = RNG.integers(0, 12, (5, 6), dtype=np.uint8)  # 0-10 classes, 11 void
            mask[0, :2] = (10, 11)
            write_rgb(tmp_path / split / f"{name}.png", image)
            write_grey(tmp_path / f"{split}annot" / f"{name}.png", mask)
            written[split, name] = image, mask

    dataset = read_camvid(tmp_path, "val")

    assert dataset.classes == list(CAMVID_CLASSES) and dataset.num_classes == 11
    assert dataset.palette.shape == (11, 3) and tuple(dataset.palette[0]) == (128, 128, 128)
    assert len(dataset) == 2 and dataset.split == "val"
    for index, name in enumerate(sorted(("0001TP_006690", "Seq05VD_f00000"))):
        image, label = dataset[index]
        expected_image, mask = written["val", name]
        np.testing.assert_array_equal(image, expected_image)
        assert image.dtype == np.uint8 and label.dtype == np.uint8
        np.testing.assert_array_equal(label, np.where(mask == 11, 255, mask))
        assert dataset.sample_paths(index) == (
            tmp_path / "val" / f"{name}.png",
            tmp_path / "valannot" / f"{name}.png",
        )


# ------------------------------------------------------------------ Cityscapes

# labelIds of the 19 train classes, in trainId order (cityscapesScripts helpers/labels.py).
TRAIN_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    names = [("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")]
    written = []
    for city, stem in names:
        image = random_image(4, 9)
        label_ids = np.arange(36, dtype=np.uint8).reshape(4, 9) % 34  # every labelId 0-33
        label_ids[0, :3] = (7, 26, 0)  # road, car, unlabeled
        write_rgb(tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", image)
        write_grey(tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", label_ids)
        written.append((image, label_ids))
    (tmp_path / "leftImg8bit" / "train").mkdir()
    (tmp_path / "gtFine" / "train").mkdir()

    dataset = read_cityscapes(tmp_path, "val")

    assert len(dataset) == 2 and dataset.num_classes == 19
    assert dataset.classes[0] == "road" and dataset.classes[13] == "car"
    assert tuple(dataset.palette[13]) == (0, 0, 142) and len(CITYSCAPES_CLASSES) == 19
    expected_map = {label_id: train for train, label_id in enumerate(TRAIN_LABEL_IDS)}
    for index, (image, label_ids) in enumerate(written):
        got_image, label = dataset[index]
        np.testing.assert_array_equal(got_image, image)
        expected = np.vectorize(lambda v: expected_map.get(int(v), 255))(label_ids)
        np.testing.assert_array_equal(label, expected)
        assert tuple(label[0, :3]) == (0, 13, 255)


def test_cityscapes_reads_16_bit_instance_ids_beside_the_labels(tmp_path):
    stem = "aachen_000000_000019"
    masks = tmp_path / "gtFine" / "val" / "aachen"
    write_rgb(tmp_path / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png",
              random_image(4, 9))
    label_ids = np.full((4, 9), 7, np.uint8)
    label_ids[1:3, 2:5] = 26
    write_grey(masks / f"{stem}_gtFine_labelIds.png", label_ids)
    instance_ids = label_ids.astype(np.uint16)
    instance_ids[1:3, 2:4] = 26000  # car 0, and car 17 beside it
    instance_ids[1:3, 4] = 26017
    instance_ids[3, 8] = 33999  # beyond 8 bits: the file must be read as 16 bits
    assert cv2.imwrite(str(masks / f"{stem}_gtFine_instanceIds.png"), instance_ids)

    dataset = read_cityscapes(tmp_path, "val")

    assert dataset.instance_ids_path(0) == masks / f"{stem}_gtFine_instanceIds.png"
    got = dataset.read_instance_ids(0)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, instance_ids)
    # dataset[i] is unchanged: (image, trainIds).
    image, label = dataset[0]
    assert image.shape == (4, 9, 3) and label.dtype == np.uint8 and label[1, 2] == 13

    (masks / f"{stem}_gtFine_instanceIds.png").unlink()
    assert not dataset.has_instance_ids()
    with pytest.raises(DataError, match=r"gtFine/val/aachen/.*_instanceIds\.png does not exist"):
        dataset.read_instance_ids(0)


# ------------------------------------------------------------------ Pascal VOC


def _voc_tree(root, masks):
    for image_id, indices in masks.items():
        image = np.zeros((*indices.shape, 3), np.uint8)
        image[:] = (40, 120, 200)  # flat colour: JPEG keeps it to within a few levels
        write_rgb(root / "JPEGImages" / f"{image_id}.jpg", image)
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", indices, VOC_COLOURS)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    ids = sorted(masks)
    (lists / "train.txt").write_text(ids[0] + "\n")
    (lists / "val.txt").write_text("\n".join(ids[1:]) + "\n")
    (lists / "trainval.txt").write_text("\n".join(ids) + "\n")


def test_voc_reads_palette_indices_not_colours(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    first = np.zeros((9, 12), np.uint8)
    first[2:7, 3:9] = 15  # person
    first[2, 3:9] = first[6, 3:9] = 255  # the white border
    second = RNG.integers(0, 21, (9, 12), dtype=np.uint8)
    _voc_tree(root, {"2007_000032": first, "2007_000039": second})

    dataset = read_voc(tmp_path, "trainval")  # the parent of VOCdevkit is accepted too

    assert dataset.classes == list(VOC_CLASSES) and dataset.num_classes == 21
    assert tuple(dataset.palette[15]) == (192, 128, 128)  # person, from the VOC devkit
    assert [p.stem for p, _ in dataset.samples] == ["2007_000032", "2007_000039"]
    image, label = dataset[0]
    assert np.abs(image.astype(int) - (40, 120, 200)).max() <= 3
    np.testing.assert_array_equal(label, first)
    np.testing.assert_array_equal(dataset[1][1], second)
    assert len(read_voc(root, "train")) == 1 and len(read_voc(root, "val")) == 1


def test_voc_colour_and_grey_masks_map_to_the_same_labels(tmp_path):
    indices = RNG.integers(0, 21, (6, 7), dtype=np.uint8)
    indices[0] = 255
    _voc_tree(tmp_path, {"a": indices})
    write_rgb(tmp_path / "SegmentationClass" / "a.png", VOC_COLOURS[indices])  # saved as RGB
    np.testing.assert_array_equal(read_voc(tmp_path, "train")[0][1], indices)
    write_grey(tmp_path / "SegmentationClassAug" / "a.png", indices)  # SBD-augmented style
    np.testing.assert_array_equal(
        read_voc(tmp_path, "train", "SegmentationClassAug")[0][1], indices
    )


# ------------------------------------------------------------------ plain folder


def _folder_tree(root, names, subdir="", classes=("bg", "cat", "dog"), **extra):
    written = {}
    for name in names:
        image = random_image()
        mask = RNG.integers(0, len(classes), (5, 6), dtype=np.uint8)
        mask[0, 0] = len(classes)  # the ignore value given in classes.json
        write_rgb(root / "images" / subdir / f"{name}.png", image)
        write_grey(root / "masks" / subdir / f"{name}.png", mask)
        written[name] = image, mask
    spec = {"classes": list(classes), "ignore_index": len(classes), **extra}
    (root / "classes.json").write_text(json.dumps(spec))
    return written


def test_folder_with_split_lists(tmp_path):
    written = _folder_tree(tmp_path, ["a", "b", "c"], palette=[[0, 0, 0], [9, 9, 9], [7, 7, 7]])
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("c\na.png\n")
    (tmp_path / "splits" / "val.txt").write_text("b\n")

    dataset = read_folder(tmp_path, "train")

    assert dataset.classes == ["bg", "cat", "dog"] and dataset.palette[1].tolist() == [9, 9, 9]
    assert [p.stem for p, _ in dataset.samples] == ["c", "a"]
    for index, name in enumerate(["c", "a"]):
        image, label = dataset[index]
        np.testing.assert_array_equal(image, written[name][0])
        np.testing.assert_array_equal(label, np.where(written[name][1] == 3, 255, written[name][1]))
    with pytest.raises(DataError, match=r"no test\.txt \(found: train, val\)"):
        read_folder(tmp_path, "test")


def test_folder_with_split_subfolders_and_flat(tmp_path):
    _folder_tree(tmp_path / "sub", ["a", "b"], subdir="train")
    _folder_tree(tmp_path / "sub", ["c"], subdir="val")
    assert [p.stem for p, _ in read_folder(tmp_path / "sub", "val").samples] == ["c"]
    assert len(read_folder(tmp_path / "sub", "train")) == 2

    flat = _folder_tree(tmp_path / "flat", ["x", "y"])
    for split in ("train", "val"):  # no split information: every image in every split
        dataset = read_folder(tmp_path / "flat", split)
        assert len(dataset) == 2
        np.testing.assert_array_equal(dataset[1][0], flat["y"][0])


def test_folder_colour_masks_through_the_palette(tmp_path):
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    _folder_tree(tmp_path, ["a"], palette=palette)
    indices = np.array([[0, 1, 2, 1, 0, 2]] * 5, dtype=np.uint8)
    write_rgb(tmp_path / "masks" / "a.png", np.array(palette, np.uint8)[indices])
    np.testing.assert_array_equal(read_folder(tmp_path)[0][1], indices)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not readable JSON"),
        ('{"names": ["a"]}', '"classes": a non-empty list'),
        ('{"classes": ["a", "b"], "ignore_index": 1}', "is the index of class 'b'"),
        ('{"classes": ["a", "b"], "palette": [[1, 2, 3]]}', "one \\[r, g, b\\]"),
    ],
)
def test_folder_bad_classes_json(tmp_path, content, message):
    _folder_tree(tmp_path, ["a"])
    (tmp_path / "classes.json").write_text(content)
    with pytest.raises(DataError, match=message):
        read_folder(tmp_path)
