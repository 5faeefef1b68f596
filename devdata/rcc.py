"""Read Qt binary resource bundles (.rcc files) without Qt."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Iterator

MAGIC = b"qres"

# Node flags as stored in the tree; Qt defines zstd as a separate bit from zlib.
FLAG_ZLIB = 0x01
FLAG_DIR = 0x02
FLAG_ZSTD = 0x04

# Before format version 2 a node had no trailing 64-bit modification time.
_NODE_SIZE_V1 = 14
_NODE_SIZE_V2 = 22


class RccError(ValueError):
    """Raised when a file is not a readable .rcc bundle."""


def _u16(buf: bytes, off: int) -> int:
    """Big-endian u16 at off, with a bounds check."""
    if off < 0 or off + 2 > len(buf):
        raise RccError(f"truncated bundle: u16 at {off} past end {len(buf)}")
    return struct.unpack_from(">H", buf, off)[0]


def _u32(buf: bytes, off: int) -> int:
    """Big-endian u32 at off, with a bounds check."""
    if off < 0 or off + 4 > len(buf):
        raise RccError(f"truncated bundle: u32 at {off} past end {len(buf)}")
    return struct.unpack_from(">I", buf, off)[0]


def _name(buf: bytes, names_off: int, rel: int) -> str:
    """Decode one entry name (u16 length in UTF-16 units, u32 hash, UTF-16BE text)."""
    off = names_off + rel
    length = _u16(buf, off)
    start = off + 6  # the hash is only for Qt's own lookups; skip it
    end = start + 2 * length
    if end > len(buf):
        raise RccError(f"truncated name at {off}")
    return buf[start:end].decode("utf-16-be")


def _zstd_decompress(blob: bytes) -> bytes:
    """Decompress a zstd payload; the dependency is optional because few bundles use it."""
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RccError("bundle has zstd-compressed entries; `pip install zstandard` to read them") from exc
    # Qt writes frames that may lack a content size, so allow a streaming decode.
    return zstandard.ZstdDecompressor().decompressobj().decompress(blob)


def _payload(buf: bytes, data_off: int, rel: int, flags: int) -> bytes:
    """Return the decoded bytes of one file entry."""
    off = data_off + rel
    size = _u32(buf, off)
    blob = buf[off + 4 : off + 4 + size]
    if len(blob) != size:
        raise RccError(f"truncated payload at {off}")
    if flags & FLAG_ZSTD:
        return _zstd_decompress(blob)
    if flags & FLAG_ZLIB:
        # qCompress layout: expected length first, then a plain zlib stream.
        expected = _u32(blob, 0)
        out = zlib.decompress(blob[4:])
        if len(out) != expected:
            raise RccError(f"zlib payload at {off}: got {len(out)} bytes, header says {expected}")
        return out
    return blob


def parse_rcc(buf: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield (inner_path, data) for every file in an in-memory bundle."""
    if buf[:4] != MAGIC:
        raise RccError("not a Qt resource bundle (missing 'qres' magic)")
    version = _u32(buf, 4)
    if version not in (1, 2, 3):
        raise RccError(f"unsupported rcc format version {version}")
    tree_off, data_off, names_off = _u32(buf, 8), _u32(buf, 12), _u32(buf, 16)
    node_size = _NODE_SIZE_V1 if version == 1 else _NODE_SIZE_V2

    def node(index: int) -> int:
        """Byte offset of tree node number index."""
        return tree_off + index * node_size

    # Walk iteratively so hostile nesting cannot hit the recursion limit; `seen` stops cycles.
    stack: list[tuple[int, str]] = [(0, "")]
    seen: set[int] = set()
    while stack:
        index, prefix = stack.pop()
        if index in seen:
            raise RccError(f"tree node {index} visited twice (corrupt bundle)")
        seen.add(index)
        off = node(index)
        flags = _u16(buf, off + 4)
        # The root node's name is empty in practice; everything below it gets a real name.
        name = "" if index == 0 else _name(buf, names_off, _u32(buf, off))
        path = f"{prefix}/{name}" if prefix else name
        if flags & FLAG_DIR:
            count, first = _u32(buf, off + 6), _u32(buf, off + 10)
            # Push in reverse so children come out in stored (sorted-by-hash) order.
            for child in range(first + count - 1, first - 1, -1):
                stack.append((child, path))
        else:
            # Bytes 6..10 hold territory and language, which only matter for localised variants.
            yield path, _payload(buf, data_off, _u32(buf, off + 10), flags)


def iter_rcc(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Yield (inner_path, data) for every file in the .rcc bundle at path."""
    yield from parse_rcc(Path(path).read_bytes())
