"""The folder's index as the server sees it: the last complete generation, swapped for a newer one without a restart.

SQLite connections belong to the thread that made them, so every use of the ImageIndex runs on one worker thread
(catalog look-ups and FAISS searches take milliseconds; decoding and embedding uploads happen outside it).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BtembedError
from ..search.search import ImageIndex
from ..search.store import INDEX_FILE, live_folder, locate_store

CHECK_EVERY = 0.5  # seconds between two looks at the index file; a look is one stat()


def index_version(store: Path) -> tuple:
    """What changes when an index run finishes: an incremental run replaces the live FAISS file (new inode and
    mtime) at its end; a --rebuild switches the pointer to a new generation folder."""
    folder = live_folder(store)
    try:
        st = os.stat(folder / INDEX_FILE)
    except OSError:
        return (folder.name,)
    return (folder.name, st.st_ino, st.st_mtime_ns, st.st_size)


def leading_out(root: str | os.PathLike, paths: list[str]) -> set[str]:
    """The relative paths that resolve outside root (through a symlinked file or folder)."""
    real_root = os.path.realpath(root)
    real_dirs: dict[str, str] = {}  # one realpath per folder; a file costs one lstat unless it is a link
    out = set()
    for rel in paths:
        folder, name = os.path.split(os.path.join(real_root, rel))
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        where = os.path.join(real_dirs[folder], name)
        if os.path.islink(where):
            where = os.path.realpath(where)
        if not where.startswith(real_root + os.sep):
            out.add(rel)
    return out


@dataclass
class Generation:
    """One opened index and what the server derives from it (built lazily, dropped with it)."""

    index: ImageIndex
    version: tuple
    paths: list[str] = field(default_factory=list)  # the good rows' relative paths inside the folder, sorted
    indexed: set[str] = field(default_factory=set)
    outside: set[str] = field(default_factory=set)  # indexed, but a symlink leads them out of the folder: not served
    cache: dict = field(default_factory=dict)  # per-generation memo: duplicate graph, file facts


class LiveIndex:
    """Holds the current Generation; `call(fn)` runs fn(generation) on the index thread."""

    def __init__(self, folder: str | os.PathLike, db: str | os.PathLike | None = None,
                 opener: Callable[..., ImageIndex] = ImageIndex.open):
        self.folder, self.db, self._open = Path(folder), db, opener
        self.store = locate_store(folder, db)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="btembed-index")
        self._checked = 0.0
        self.current: Generation = self._pool.submit(self._load).result()  # errors reach the caller here

    def _load(self) -> Generation:
        version = index_version(self.store)
        index = self._open(self.folder, db=self.db)
        rows = index.catalog.rows()
        good = sorted(p for p, r in rows.items() if r.ok)
        outside = leading_out(index.root, good)
        paths = [p for p in good if p not in outside]
        return Generation(index, version, paths, set(paths), outside)

    def _refresh(self) -> Generation:
        """Reopen when an index run has finished since the last look (at most every CHECK_EVERY seconds)."""
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY:
            return self.current
        self._checked = now
        if index_version(self.store) == self.current.version:
            return self.current
        try:
            fresh = self._load()
        except BtembedError:
            return self.current  # caught mid-swap or damaged: keep answering from the last good one
        old, self.current = self.current, fresh
        old.index.close()
        return fresh

    def call(self, fn: Callable[[Generation], object]):
        """fn(current generation) on the index thread; its exceptions reach the caller."""
        return self._pool.submit(lambda: fn(self._refresh())).result()

    def close(self) -> None:
        """Close the index and stop the thread."""
        self._pool.submit(lambda: self.current.index.close()).result()
        self._pool.shutdown()
