"""The FAISS file of an index folder: plain FAISS (`faiss.read_index` opens it), btembed's settings beside it in a
JSON sidecar; files written by older btembed (a JSON header glued before the FAISS bytes) still open."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

LEGACY_MAGIC = b"BTEMBED-FAISS-1\n"
SIDECAR_SUFFIX = ".json"


def sidecar_of(path: str | os.PathLike) -> Path:
    """Where the settings of a FAISS file live: index.faiss -> index.faiss.json."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _replace_durably(tmp: Path, path: Path) -> None:
    """fsync tmp, then rename it over path: a reader opens the old file or the new one, never half of one."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write(index, path: str | os.PathLike, header: dict) -> None:
    """Write the FAISS file, then its sidecar, each by rename.

    The FAISS file goes first: a reader that meets the new file with the old sidecar takes it for the older
    generation and re-applies the catalog's changes since then, which leaves the same index (removals before
    additions, by id), so the pair is never wrong, at worst refreshed once more.
    """
    import faiss

    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    faiss.write_index(index, str(tmp))
    _replace_durably(tmp, path)
    side = sidecar_of(path)
    side_tmp = side.with_name(f"{side.name}.tmp-{os.getpid()}")
    side_tmp.write_text(json.dumps(header, indent=1) + "\n")
    _replace_durably(side_tmp, side)


def _legacy_header(path: Path) -> tuple[dict, int] | None:
    """(header, offset of the FAISS bytes) of a file written by older btembed, else None."""
    with open(path, "rb") as f:
        if f.read(len(LEGACY_MAGIC)) != LEGACY_MAGIC:
            return None
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size)), len(LEGACY_MAGIC) + 8 + size


def read_header(path: str | os.PathLike) -> dict | None:
    """The settings of a saved index (sidecar, or the header of an older file); None when missing or unreadable."""
    path = Path(path)
    try:
        if not path.is_file():
            return None
        side = sidecar_of(path)
        if side.is_file():
            return json.loads(side.read_text())
        legacy = _legacy_header(path)
        return legacy[0] if legacy else None
    except (OSError, ValueError):
        return None


def read(path: str | os.PathLike, on_disk: bool = False):
    """(faiss index, header) of a saved file; ValueError when it is damaged or its parts are missing.

    on_disk: the inverted lists live in an .ivfdata file beside it, memory-mapped read-only. FAISS stores that
    file's path inside index.faiss; it is re-pointed to the .ivfdata of the same name in this folder, so an index
    folder that was moved or copied still opens (what faiss' IO_FLAG_ONDISK_SAME_DIR does, without its printf).
    """
    import faiss

    path = Path(path)
    header = read_header(path)
    if header is None:
        raise ValueError(f"{path} has no settings sidecar ({sidecar_of(path).name})")
    try:
        legacy = _legacy_header(path)
        if legacy is not None:
            with open(path, "rb") as f:
                f.seek(legacy[1])
                return faiss.deserialize_index(np.fromfile(f, dtype=np.uint8)), legacy[0]
        if not on_disk:
            return faiss.read_index(str(path)), header
        index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
    except (RuntimeError, OSError) as e:
        raise ValueError(f"{path} is damaged ({str(e).splitlines()[0]})") from None
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    data = path.parent / Path(lists.filename).name
    if not data.is_file():
        raise ValueError(f"{path} needs {data.name}, which is not in {path.parent}")
    lists.filename = str(data)
    # One query touches a few lists already in the page cache; faiss' prefetch threads (32 by default) cost more
    # than they save there (bench/ann_scale.py: 0.4 → 0.1 ms per single query at 50k).
    lists.prefetch_nthread = 0
    try:
        lists.do_mmap()
    except RuntimeError as e:
        raise ValueError(f"cannot map {data} ({str(e).splitlines()[-1]})") from None
    return index, header
