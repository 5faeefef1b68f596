"""Where an index lives: PHOTOS/.btembed by default, or --db; created writable by the one writer."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CatalogError
from .catalog import CATALOG_FILE

STORE_DIR = ".btembed"
INDEX_FILE = "index.faiss"


def locate_store(path: str | os.PathLike, db: str | os.PathLike | None = None) -> Path:
    """The index folder of a photo folder (PHOTOS/.btembed), an index folder itself, or --db when given."""
    if db is not None:
        return Path(db)
    p = Path(path)
    if (p / CATALOG_FILE).is_file():
        return p
    if p.is_file() and p.name == CATALOG_FILE:
        return p.parent
    return p / STORE_DIR


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
