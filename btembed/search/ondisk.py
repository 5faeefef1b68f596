"""IVF-PQ past RAM: trained once on a sample, filled block by block (each block added to its own copy of the trained
empty index), merged into on-disk inverted lists (faiss.contrib.ondisk), searched memory-mapped.

An update never writes into the lists readers have mapped: it merges the old lists and the new block into a new
.ivfdata file, drops removed ids there, and the FAISS file that names it is swapped in by rename.
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

DATA_SUFFIX = ".ivfdata"
# Vectors per block while filling: each block's codes are held in RAM once (≈ 1M × (PQ bytes + 8)).
BLOCK_ROWS = 1 << 20


@contextmanager
def _quiet_stdout():
    """Send faiss' C-level printf (e.g. 'resizing … to N bytes') to /dev/null: stdout may carry --json."""
    sys.stdout.flush()
    saved, sink = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(sink)


def data_file_name() -> str:
    """A fresh name for an .ivfdata file (never the name of one a reader may have mapped)."""
    return f"index-{secrets.token_hex(4)}{DATA_SUFFIX}"


def empty_copy(index):
    """The trained index with no vectors and in-memory lists (of an on-disk index too), its lists not copied."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    blank = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    saved, owned, totals = ivf.invlists, ivf.own_invlists, (index.ntotal, ivf.ntotal)
    # Lend the index empty lists for the clone, so that the clone does not copy (or cannot copy) its real ones.
    ivf.own_invlists, ivf.invlists = False, blank
    index.ntotal = ivf.ntotal = 0
    try:
        return faiss.clone_index(index)
    finally:
        ivf.invlists, ivf.own_invlists = saved, owned
        index.ntotal, ivf.ntotal = totals


def fill_blocks(trained, chunks, workdir: Path, rows: int = BLOCK_ROWS,
                say: Callable[[str], None] | None = None) -> list[str]:
    """Add the chunks' vectors block by block, each block to its own copy of the trained empty index (only its
    codes are held, never its raw vectors); the filled blocks are written under workdir, their names returned."""
    import faiss

    names: list[str] = []
    part = None

    def flush() -> None:
        name = str(workdir / f"block-{len(names)}.faiss")
        faiss.write_index(part, name)
        names.append(name)
        if say:
            say(f"  block {len(names) - 1}: {part.ntotal} vectors encoded")

    for ids, vecs in chunks:
        if part is None:
            part = empty_copy(trained)
        part.add_with_ids(np.ascontiguousarray(vecs, np.float32), np.asarray(ids, np.int64))
        if part.ntotal >= rows:
            flush()
            part = None
    if part is not None:
        flush()
    return names


def merge(trained, sources: list, folder: Path) -> tuple[object, str]:
    """A new on-disk index: the trained quantizer and codebooks + the inverted lists of sources (filled block files,
    or faiss InvertedLists objects), merged into a fresh .ivfdata in folder -> (index, data file name)."""
    import faiss

    index = empty_copy(trained)
    ivf = faiss.extract_index_ivf(index)
    name = data_file_name()
    keep = []  # the sources' indexes own their lists: keep them alive until the merge is done
    lists = faiss.InvertedListsPtrVector()
    for src in sources:
        if isinstance(src, (str, os.PathLike)):
            part = faiss.read_index(str(src), faiss.IO_FLAG_MMAP)  # mapped, not read: blocks may exceed RAM
            keep.append(part)
            src = faiss.extract_index_ivf(part).invlists
        lists.push_back(src)
    on_disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(folder / name))
    with _quiet_stdout():
        total = on_disk.merge_from_multiple(lists.data(), lists.size(), False, False)
    ivf.replace_invlists(on_disk, True)
    on_disk.this.disown()
    ivf.ntotal = index.ntotal = total
    del keep
    return index, name


def build(trained, chunks, folder: Path, rows: int = BLOCK_ROWS,
          say: Callable[[str], None] | None = None) -> tuple[object, str]:
    """Fill and merge all chunks into a new on-disk index in folder -> (index, data file name)."""
    work = Path(folder) / f"ondisk-build-{secrets.token_hex(4)}"
    work.mkdir(parents=True)
    try:
        names = fill_blocks(trained, chunks, work, rows, say)
        return merge(trained, names, Path(folder))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def update(index, remove_ids: np.ndarray, chunks, folder: Path) -> tuple[object, str]:
    """A new on-disk index = the old lists + the chunks' vectors, without remove_ids; the old files are untouched."""
    import faiss

    fresh = empty_copy(index)
    for ids, vecs in chunks:
        fresh.add_with_ids(np.ascontiguousarray(vecs, np.float32), np.asarray(ids, np.int64))
    old_lists = faiss.extract_index_ivf(index).invlists
    new_lists = faiss.extract_index_ivf(fresh).invlists
    merged, name = merge(index, [old_lists, new_lists], Path(folder))
    if len(remove_ids):
        with _quiet_stdout():
            merged.remove_ids(faiss.IDSelectorBatch(np.asarray(remove_ids, np.int64)))
    return merged, name


def data_file(index) -> str | None:
    """The .ivfdata file name an on-disk index maps (None for in-memory lists)."""
    import faiss

    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    return Path(lists.filename).name if isinstance(lists, faiss.OnDiskInvertedLists) else None


def collect_data_files(folder: Path, keep: set[str]) -> list[Path]:
    """Delete .ivfdata files of folder not named in keep (the live one and the one it replaced, which a reader
    that opened just before the swap may still be mapping); returns what went."""
    gone = []
    for f in Path(folder).glob(f"index-*{DATA_SUFFIX}"):
        if f.name not in keep:
            f.unlink(missing_ok=True)
            gone.append(f)
    return gone
