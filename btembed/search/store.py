"""Where an index lives: PHOTOS/.btembed by default, or --db; which generation of it is live; reader pins."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..errors import CatalogError
from .catalog import CATALOG_FILE
from .shardfile import VECTOR_DIR

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no pins, so old generations are deleted by the next rebuild only
    fcntl = None

STORE_DIR = ".btembed"
INDEX_FILE = "index.faiss"


def locate_store(path: str | os.PathLike, db: str | os.PathLike | None = None) -> Path:
    """The index folder of a photo folder (PHOTOS/.btembed), an index folder itself, or --db when given."""
    if db is not None:
        return Path(db)
    p = Path(path)
    if (p / CATALOG_FILE).is_file() or (p / POINTER).is_file():
        return p
    if p.is_file() and p.name == CATALOG_FILE:
        return p.parent
    return p / STORE_DIR


def set_aside(path: Path) -> Path:
    """Rename a damaged catalog (and its -wal/-shm companions) out of the way; returns the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.replace(companion, aside.with_name(aside.name + suffix))
    return aside


def open_store(folder: Path, db: str | None) -> Path:
    """The index folder for a photo folder, created if needed, with a clear message when it cannot be."""
    store = locate_store(folder, db)
    try:
        store.mkdir(parents=True, exist_ok=True)
        probe = store / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise CatalogError(f"cannot write the index folder {store} ({e.strerror or e}); "
                           "pass --db PATH to keep the index somewhere writable") from None
    return store


# --rebuild builds a new catalog + FAISS file in a generation folder beside the live one, then switches readers
# over by rewriting a pointer file (one atomic rename). A live SQLite file in WAL mode is never renamed.
POINTER = "current"  # names the live generation folder; absent: the index folder itself is live
READERS = "readers"  # readers hold a shared lock on it: a generation is deleted only when none does
_GENERATION = "gen-"


def live_folder(store: Path) -> Path:
    """The folder holding the live catalog.sqlite and index.faiss of an index folder."""
    try:
        name = (store / POINTER).read_text().strip()
    except OSError:
        return store
    return store / name if name.startswith(_GENERATION) and (store / name).is_dir() else store


def prepare(folder: Path) -> None:
    """Give a generation folder (or the index folder) its readers file, so readers never have to write one."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / READERS).touch()


def new_generation(store: Path) -> Path:
    """A fresh, empty generation folder for a rebuild."""
    numbers = [int(p.name[len(_GENERATION):]) for p in store.glob(_GENERATION + "*")
               if p.name[len(_GENERATION):].isdigit()]
    folder = store / f"{_GENERATION}{max(numbers, default=0) + 1}"
    prepare(folder)
    return folder


def switch_to(store: Path, folder: Path) -> None:
    """Make folder the live generation: readers opening from now on use it; open readers keep theirs."""
    tmp = store / f"{POINTER}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(folder.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, store / POINTER)
    fd = os.open(store, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


def _unpinned(folder: Path) -> int | None:
    """An exclusive lock on folder's readers file (a descriptor to close) when no reader holds it, else None."""
    try:
        fd = os.open(folder / READERS, os.O_RDONLY)
    except FileNotFoundError:
        return os.open(os.devnull, os.O_RDONLY)  # no reader could have pinned it
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


def _generation_files(folder: Path) -> list[Path]:
    """What a generation holds in the index folder itself (before the first rebuild): the catalog, the FAISS
    file with its sidecar and data files, the vectors/ folder (vector files, shards); never the lock, the
    pointer, set-aside damaged catalogs, thumbnails or gen-*/. The readers file comes last: while a deletion is
    unfinished, the next writer still finds the generation to finish it."""
    names = [CATALOG_FILE, CATALOG_FILE + "-wal", CATALOG_FILE + "-shm"]
    return [folder / n for n in names] + [p for p in folder.glob("*") if p.is_file() and (
        p.name.startswith(INDEX_FILE) or p.suffix == ".ivfdata")] + [folder / VECTOR_DIR, folder / READERS]


def _remove_vector_dir(folder: Path) -> None:
    """Delete the files of a vectors/ folder (vector files, shards, work lists: all btembed's, as
    collect_vector_files assumes) and the folder when that leaves it empty; a subfolder is no file of ours."""
    if folder.is_symlink() or not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # something not ours is in it: left alone


def collect_old(store: Path) -> list[Path]:
    """Delete generations that are not live and that no reader pins (killed rebuilds leave some); the writer
    calls this holding the lock. Returns what was deleted."""
    live = live_folder(store)
    candidates = [p for p in store.glob(_GENERATION + "*") if p.is_dir() and p != live]
    if live != store and any(p.exists() for p in _generation_files(store)):
        candidates.append(store)  # the index folder's own files, live before the first rebuild
    deleted = []
    for folder in candidates:
        fd = _unpinned(folder)
        if fd is None:
            continue  # a search still reads it: the next run tries again
        try:
            if folder == store:
                for path in _generation_files(store):
                    if path.name == VECTOR_DIR:
                        _remove_vector_dir(path)
                    else:
                        path.unlink(missing_ok=True)
            else:
                shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
        finally:
            os.close(fd)
    return deleted


class ReaderPin:
    """A shared lock on the live generation's readers file, held while a reader uses its files."""

    def __init__(self, store: Path):
        self.store, self.fd = store, None
        self.folder = live_folder(store)
        for _ in range(5):  # a rebuild may switch (and delete the old generation) between reading and pinning
            try:
                fd = os.open(self.folder / READERS, os.O_RDONLY)
            except FileNotFoundError:
                if (self.folder / CATALOG_FILE).exists():
                    return  # an index folder written before pins existed: no writer deletes it
                self.folder = live_folder(store)
                continue
            except OSError:
                return  # unreadable: nothing to pin, and no writer can work here either
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError:
                os.close(fd)
                return
            if live_folder(store) == self.folder and (self.folder / CATALOG_FILE).exists():
                self.fd = fd
                return
            os.close(fd)
            self.folder = live_folder(store)

    def release(self) -> None:
        """Let the writer delete this generation once it is no longer live."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
