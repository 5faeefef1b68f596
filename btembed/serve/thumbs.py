"""Thumbnails as JPEG bytes, cached under the index folder (STORE/thumbs/SIZE/…): the photos are never written."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from ..images import open_image

SIZES = (64, 128, 256, 512, 1024)  # served sizes; others round up to the next one (a bounded cache)
MAX_SIZE = SIZES[-1]  # the API refuses larger requests (422)


def snap_size(size: int) -> int:
    """The smallest served size at least `size` (the largest one above them all)."""
    return next((s for s in SIZES if s >= size), SIZES[-1])


def cache_path(store: Path, rel: str, size: int, st: os.stat_result) -> Path:
    """Where the thumbnail of one file version lives: a changed file gets a new name."""
    key = hashlib.sha1(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    return store / "thumbs" / str(size) / key[:2] / f"{key}.jpg"


def render(path: Path, size: int) -> bytes:
    """A JPEG of the upright image, its longer side at most `size` pixels, never enlarged (raises ImageError)."""
    image = open_image(path, min_size=size)
    image.thumbnail((size, size))  # only ever shrinks: a smaller photo keeps its own size
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def thumbnail(store: Path, root: Path, rel: str, size: int) -> bytes:
    """The cached thumbnail of root/rel, rendering and caching it when missing (no cache in a read-only store)."""
    path = root / rel
    target = cache_path(store, rel, size, os.stat(path))
    try:
        return target.read_bytes()
    except OSError:
        pass
    data = render(path, size)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # concurrent renders of one thumbnail: the last rename wins, both are whole
    except OSError:
        pass  # a read-only index folder still serves, uncached
    return data
