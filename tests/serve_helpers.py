"""Shared by the serve tests: an indexed folder of real photos with a copy and a near-duplicate."""
from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

from PIL import Image


def make_folder(root: Path, photo_paths) -> Path:
    """Six photos, a byte-identical copy and a smaller re-encoded one, under root."""
    root.mkdir(parents=True, exist_ok=True)
    for p in photo_paths:
        shutil.copy(p, root / p.name)
    (root / "copies").mkdir(exist_ok=True)
    shutil.copy(root / "astronaut.jpg", root / "copies" / "astronaut (1).jpg")
    with Image.open(root / "coffee.jpg") as im:
        im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(root / "copies" / "coffee-small.jpg", quality=75)
    return root


def index(root: Path, model_dir, backend: str = "torch") -> None:
    """`btembed index root` with a model folder (None: the embedded default), on torch (no ONNX export)."""
    from btembed.search.apply import IndexOptions, index_folder

    index_folder(root, IndexOptions(model=None if model_dir is None else str(model_dir), workers=0,
                                    backend=backend))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))
