"""Files that appear whole or not at all, JSON as edgeseg writes it, and the ``WxH`` size parser.

Every file edgeseg writes (checkpoints, exports, sidecars, reports, caches, frames) goes through
:func:`atomic_path`: the content is written under a temporary name in the destination's folder
(the same file system) and renamed onto the destination in one ``os.replace``, so a reader, or a
run killed half-way, sees the old file or the new one, never a part of one. Light: NumPy is the
only import beyond the standard library.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "parse_size",
    "read_json",
    "save_keras_atomic",
    "to_json",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) that is renamed onto ``path`` on success.

    The caller writes a file (or, with ``folder``, a folder) at the yielded path; when the block
    ends without an exception it replaces ``path`` (a folder there is removed first), and on any
    exception the temporary is removed and ``path`` is left as it was. The file gets the usual
    permissions (the umask's), not ``mkstemp``'s 0600.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix or ".tmp",
                                    dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    if folder:
        temporary.unlink()
    try:
        yield temporary
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically, flushed to disk before the rename."""
    path = Path(path).expanduser()
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def _json_ready(value: Any) -> Any:
    """NaN and infinities as None (JSON has no NaN), NumPy scalars and arrays as Python values,
    tuples and paths as lists and strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return _json_ready(value.tolist())
    return value


def to_json(data: Any, indent: int | None = 2) -> str:
    """``data`` as JSON text, NaN written as null (see ``_json_ready``)."""
    return json.dumps(_json_ready(data), indent=indent, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Writes ``data`` as JSON atomically; NaN is written as null."""
    return write_text_atomic(path, to_json(data, indent) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The JSON in ``path``, or a ValueError naming the file when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {path} is not valid JSON: {error}") from None


def save_keras_atomic(model, path: str | os.PathLike) -> Path:
    """``model.save(path)`` atomically (Keras writes only names ending in .keras, which the
    temporary name keeps)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        model.save(temporary)
    return path


def parse_size(text: str, what: str = "size") -> tuple[int, int]:
    """``"640x360"`` -> ``(640, 360)``: width by height, both positive integers.

    Raises:
        ValueError: naming ``what`` and the text received.
    """
    parts = str(text).strip().lower().split("x")
    try:
        width, height = (int(part) for part in parts)
    except ValueError:
        raise ValueError(
            f"{what} must be WIDTHxHEIGHT in pixels, such as 640x360; got {text!r}"
        ) from None
    if width < 1 or height < 1:
        raise ValueError(f"{what} must be positive, such as 640x360; got {text!r}")
    return width, height
