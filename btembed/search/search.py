"""ImageIndex: search an indexed folder; stored_vectors: the catalog's vectors for other readers (probe)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CatalogError, ModelError
from ..names import path_fields, shown
from .ann import AnnIndex
from .catalog import CATALOG_FILE, Catalog
from .lock import WriterLock
from .refresh import index_is_current, sync_ann
from .stamp import ModelStamp
from .store import INDEX_FILE, STORE_DIR, ReaderPin, locate_store


@dataclass
class Hit:
    """One search result: the file's path (under the indexed folder), its cosine score and catalog row id."""

    path: str
    score: float
    id: int

    def __post_init__(self):
        # float16 storage can put a self-match a hair above 1; cosines live in [-1, 1].
        self.score = min(1.0, max(-1.0, float(self.score)))

    def to_dict(self) -> dict:
        """JSON-ready {path, score} (+ path_bytes for a name that is not UTF-8, see btembed.names)."""
        return {**path_fields(self.path), "score": round(self.score, 6)}


class ImageIndex:
    """An indexed folder opened for search: `ImageIndex.open(DIR).search("query.jpg", k=10)`."""

    def __init__(self, store: Path, catalog: Catalog, ann: AnnIndex, embedder=None, root: Path | None = None,
                 pin: ReaderPin | None = None):
        self.store, self.catalog, self.ann = store, catalog, ann
        self.root = Path(root or catalog.get("root", store.parent))
        self._embedder = embedder
        self._pin = pin

    @classmethod
    def open(cls, path: str | os.PathLike, *, db: str | os.PathLike | None = None, embedder=None) -> "ImageIndex":
        """Open the index of a photo folder (or an index folder / --db); a stale FAISS file is brought up to date.

        The live generation is pinned while open: a `--rebuild` that finishes meanwhile switches later readers to
        its new catalog but deletes this one only after close().
        """
        store = locate_store(path, db)
        pin = ReaderPin(store)
        try:
            return cls._open(path, db, store, pin, embedder)
        except BaseException:
            pin.release()
            raise

    @classmethod
    def _open(cls, path, db, store: Path, pin: ReaderPin, embedder) -> "ImageIndex":
        live = pin.folder
        if not (live / CATALOG_FILE).is_file():
            if db is None and not _is_dir(path):
                what = f"{shown(path)} is a file, not a folder" if os.path.lexists(path) else \
                    f"the folder {shown(path)} does not exist"
                raise CatalogError(f"{what}; give an indexed folder")
            raise CatalogError(f"{shown(path)} has no btembed index (no {shown(store / CATALOG_FILE)}); run "
                               f"`btembed index {shown(path)}` first" + (" with the same --db" if db is not None
                                                                          else ""))
        catalog = Catalog.open(live / CATALOG_FILE, read_only=True)
        try:
            ann = cls._load_ann(path, db, store, live, catalog)
        except BaseException:
            catalog.close()
            raise
        # PHOTOS/.btembed travels with its folder: paths are relative to where it is now, not where it was indexed.
        root = Path(path) if db is None and store == Path(path) / STORE_DIR else None
        return cls(store, catalog, ann, embedder, root, pin)

    @staticmethod
    def _load_ann(path, db, store: Path, live: Path, catalog: Catalog) -> AnnIndex:
        """Check the catalog suits the request and return its FAISS index, brought up to the catalog's rows."""
        if catalog.dim is None:
            raise CatalogError(f"{store} holds no indexed images yet; run `btembed index` on the folder first")
        recorded = catalog.get("root")
        if db is not None and recorded and Path(recorded) != Path(path).resolve():
            raise CatalogError(f"the index {store} belongs to folder {recorded}, not {path}; give that folder, or "
                               "the --db this folder was indexed with")
        if index_is_current(catalog, live):
            try:
                return AnnIndex.load(live / INDEX_FILE)[0]
            except (OSError, ValueError):
                pass  # damaged after its header: rebuilt below
        # Rows committed after the FAISS file was written (a run in progress, or killed) are applied in memory;
        # the file is saved again only when no writer is busy.
        lock = WriterLock(store)
        try:
            owned = lock.try_acquire()
        except OSError:
            owned = False  # a read-only index folder
        try:
            return sync_ann(catalog, live, save=owned)
        finally:
            lock.release()

    def __len__(self) -> int:
        return self.ann.ntotal

    @property
    def embedder(self):
        """The model the folder was indexed with (loaded on first use; needs torch)."""
        if self._embedder is None:
            self._embedder = indexed_model(self.catalog.model_stamp(), self.root)
        return self._embedder

    def _stored_vector(self, item) -> np.ndarray | None:
        """The catalog's vector for a path inside the folder that has not changed since indexing, else None."""
        if not isinstance(item, (str, os.PathLike)):
            return None
        try:
            rel = Path(os.path.abspath(item)).relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return None
        found = _unchanged_vectors(self.catalog, [(rel, item)])
        return found.get(0)

    def vectors(self, queries) -> np.ndarray:
        """Query vectors for images (paths, PIL images, uint8 arrays) or vectors [D] / [N, D]."""
        if isinstance(queries, np.ndarray) and queries.dtype.kind == "f":
            return np.atleast_2d(queries).astype(np.float32)
        items = list(queries)
        out: list = [self._stored_vector(q) for q in items]
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            embedded = self.embedder.embed([items[i] for i in todo])
            for i, v in zip(todo, embedded):
                out[i] = v
        return np.stack(out).astype(np.float32) if out else np.zeros((0, self.ann.dim), np.float32)

    def search_batch(self, queries, k: int = 10) -> list[list[Hit]]:
        """k best hits per query, best first; queries are images or a float array [N, D]."""
        vecs = self.vectors(queries)
        if vecs.shape[1] != self.ann.dim:
            raise CatalogError(f"query vectors have {vecs.shape[1]} dimensions, the index {self.ann.dim}")
        if not len(vecs) or not self.ann.ntotal:
            return [[] for _ in range(len(vecs))]
        scores, ids = self.ann.search(vecs, min(k, self.ann.ntotal), fetch=self.catalog.fetch)
        paths = self.catalog.paths(ids[ids >= 0])
        return [[Hit(str(self.root / paths[int(i)]), float(s), int(i)) for s, i in zip(srow, irow)
                 if i >= 0 and int(i) in paths] for srow, irow in zip(scores, ids)]

    def search(self, query, k: int = 10) -> list[Hit]:
        """k best hits for one image (path, PIL image, uint8 array) or one vector [D]."""
        if isinstance(query, np.ndarray) and query.dtype.kind == "f":
            return self.search_batch(np.atleast_2d(query), k)[0]
        return self.search_batch([query], k)[0]

    def close(self) -> None:
        """Close the catalog connection and unpin its generation."""
        self.catalog.close()
        if self._pin is not None:
            self._pin.release()


def _is_dir(path) -> bool:
    try:
        return Path(path).is_dir()
    except OSError:
        return True  # there, but not reachable: the catalog message names it


def indexed_model(recorded: ModelStamp, folder, **load):
    """The Embedder of the model a folder was indexed with, checked to hold the same weights (needs torch).

    load: backend, device ... as Embedder.from_pretrained takes them.
    """
    from ..embedder import Embedder

    load.setdefault("precision", recorded.precision)  # queries at the precision of the indexed vectors
    try:
        embedder = Embedder.from_pretrained(recorded.model_source, revision=recorded.model_revision, **load)
    except ModelError as e:
        raise ModelError(f"the model {folder} was indexed with cannot be loaded any more ({e}); "
                         "re-index the folder with `btembed index --rebuild --model M`") from None
    if not recorded.same_model(ModelStamp(**embedder.model_folder.identity())):
        raise CatalogError(f"the model at {recorded.model_source} changed since {folder} was indexed; "
                           "re-run `btembed index --rebuild`, or use the original model")
    return embedder


def _unchanged_vectors(catalog: Catalog, items: list) -> dict[int, np.ndarray]:
    """{position: vector} of (relative path, file) pairs whose good row still matches the file's size and mtime."""
    found: dict[int, int] = {}
    for i, (rel, path) in enumerate(items):
        row = catalog.lookup(rel)
        if row is None or not row.ok:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns):
            found[i] = row.id
    vectors = catalog.fetch(list(found.values())) if found else []
    return dict(zip(found, vectors))


def stored_vectors(folder: str | os.PathLike, paths: list, *, weights_sha256: str, dim: int,
                   model_id: str = "", precision: str | None = None) -> tuple[dict[int, np.ndarray], str]:
    """{position: vector} for the files of paths that `btembed index folder` holds unchanged, embedded by the
    model whose weights have this sha256 (at this precision, when one is given: never a mix of two).

    A file counts as unchanged when its size and mtime match its catalog row. Returns ({}, why) when the folder
    has no usable catalog (why is '' when it has none at all).
    """
    store = Path(folder) / STORE_DIR
    pin = ReaderPin(store)
    path = pin.folder / CATALOG_FILE
    try:
        if not path.is_file():
            return {}, ""
        catalog = Catalog.open(path, read_only=True)
    except (CatalogError, OSError) as e:
        pin.release()
        return {}, f"index catalog not used ({e})"
    model = ModelStamp(model_id, None, None, weights_sha256, dim)
    try:
        recorded = catalog.model_stamp()
        if not model.model_sha256 or recorded is None or not recorded.same_model(model):
            return {}, f"index catalog {path} was built with another model; embedding afresh"
        if precision is not None and recorded.precision != precision:
            return {}, (f"index catalog {path} holds {recorded.precision} vectors and this run embeds at "
                        f"{precision}; embedding afresh")
        items = [(Path(os.path.relpath(p, folder)).as_posix(), p) for p in paths]
        found = _unchanged_vectors(catalog, items)
        return found, f"reused {len(found)} vectors from the index catalog {path}"
    finally:
        catalog.close()
        pin.release()
