"""Palette (indexed) PNG decoding to the palette indices, with zlib and struct only.

Label masks such as Pascal VOC's ``SegmentationClass`` are palette PNGs: each pixel stores a
class index and the palette only says how to draw it. OpenCV decodes such files to the palette
colours, and Pillow is not a dependency, so this module reads the indices directly (PNG
specification, ISO/IEC 15948, sections 7-9: chunks, filtering, Adam7 interlacing).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE_PALETTE = 3

# Adam7 passes: (x offset, y offset, x step, y step), PNG specification section 8.2.
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


class PngError(ValueError):
    """A PNG file is truncated, corrupt or uses a feature this decoder does not read."""


def is_palette_png(data: bytes) -> bool:
    """Whether ``data`` is a PNG file whose pixels are palette indices (colour type 3)."""
    # IHDR is always the first chunk: signature (8) + length (4) + type (4) + 9 header bytes.
    return (
        len(data) >= 33
        and data[:8] == PNG_SIGNATURE
        and data[12:16] == b"IHDR"
        and data[25] == _COLOUR_TYPE_PALETTE
    )


def _chunks(data: bytes):
    """Yield (type, body) of each chunk up to IEND, checking lengths and CRCs."""
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise PngError("the file ends before its IEND chunk (truncated)")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            raise PngError(f"chunk {kind!r} runs past the end of the file (truncated)")
        body = data[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(kind + body) != crc:
            raise PngError(f"chunk {kind!r} has a bad CRC (corrupt file)")
        yield kind, body
        if kind == b"IEND":
            return
        pos = end + 4


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw: memoryview, height: int, row_bytes: int) -> np.ndarray:
    """Undo the per-row filters of one (sub-)image whose pixels are one byte or less apart.

    Palette images have 1 byte per complete pixel for the filter's purposes (bpp = 1), so the
    Sub filter is a running sum; Average and Paeth need the reconstructed left neighbour and
    are done byte by byte (encoders rarely use them for palette images).
    """
    stride = row_bytes + 1
    if len(raw) < height * stride:
        raise PngError("the image data is shorter than its header says (truncated)")
    rows = np.frombuffer(raw, dtype=np.uint8, count=height * stride).reshape(height, stride)
    out = np.empty((height, row_bytes), dtype=np.uint8)
    prev = np.zeros(row_bytes, dtype=np.uint8)
    for y in range(height):
        kind = int(rows[y, 0])
        line = rows[y, 1:]
        if kind == 0:
            cur = line
        elif kind == 1:
            cur = np.cumsum(line, dtype=np.uint8)  # wraps modulo 256 as the filter requires
        elif kind == 2:
            cur = line + prev
        elif kind in (3, 4):
            cur = np.empty(row_bytes, dtype=np.uint8)
            left = 0
            up = prev.tolist()
            filtered = line.tolist()
            for x in range(row_bytes):
                if kind == 3:
                    value = (filtered[x] + ((left + up[x]) >> 1)) & 0xFF
                else:
                    upper_left = up[x - 1] if x else 0
                    value = (filtered[x] + _paeth(left, up[x], upper_left)) & 0xFF
                cur[x] = value
                left = value
        else:
            raise PngError(f"row {y} has unknown filter type {kind} (corrupt file)")
        out[y] = cur
        prev = out[y]
    return out


def _unpack(rows: np.ndarray, width: int, bit_depth: int) -> np.ndarray:
    """Split packed 1, 2 or 4 bit samples (most significant first) into one byte each."""
    if bit_depth == 8:
        return rows[:, :width]
    per_byte = 8 // bit_depth
    shifts = (8 - bit_depth) - bit_depth * np.arange(per_byte, dtype=np.uint8)
    values = (rows[:, :, None] >> shifts) & np.uint8((1 << bit_depth) - 1)
    return values.reshape(rows.shape[0], -1)[:, :width]


def decode_palette_png(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Decode a palette PNG to its pixel indices and its palette.

    Args:
        data: the bytes of a PNG file with colour type 3 and bit depth 1, 2, 4 or 8, interlaced
            or not.

    Returns:
        ``(indices, palette)``: indices a (height, width) uint8 array of palette indices,
        palette an (entries, 3) uint8 array of RGB colours from the PLTE chunk.

    Raises:
        PngError: the file is not a palette PNG, or it is truncated or corrupt.
    """
    if not is_palette_png(data):
        raise PngError("not a palette (colour type 3) PNG file")
    header = None
    palette = None
    compressed = []
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3).copy()
        elif kind == b"IDAT":
            compressed.append(body)
    width, height, bit_depth, _colour, _compression, _filter, interlace = header
    if bit_depth not in (1, 2, 4, 8):
        raise PngError(f"bit depth {bit_depth} is not valid for a palette PNG (1, 2, 4 or 8)")
    if palette is None:
        raise PngError("the palette PNG has no PLTE chunk")
    try:
        raw = memoryview(zlib.decompress(b"".join(compressed)))
    except zlib.error as error:
        raise PngError(f"the image data does not decompress ({error})") from None

    def row_bytes(w: int) -> int:
        return (w * bit_depth + 7) // 8

    if interlace == 0:
        rows = _unfilter(raw, height, row_bytes(width))
        return np.ascontiguousarray(_unpack(rows, width, bit_depth)), palette
    if interlace != 1:
        raise PngError(f"unknown interlace method {interlace}")
    indices = np.zeros((height, width), dtype=np.uint8)
    offset = 0
    for x0, y0, dx, dy in _ADAM7:
        pass_w = (width - x0 + dx - 1) // dx if width > x0 else 0
        pass_h = (height - y0 + dy - 1) // dy if height > y0 else 0
        if pass_w == 0 or pass_h == 0:
            continue  # empty passes have no filter bytes at all
        size = pass_h * (row_bytes(pass_w) + 1)
        rows = _unfilter(raw[offset : offset + size], pass_h, row_bytes(pass_w))
        indices[y0::dy, x0::dx] = _unpack(rows, pass_w, bit_depth)
        offset += size
    return indices, palette
