"""ImageIndex: search an indexed folder. The FAISS file is derived from the catalog and rebuilt when stale."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .ann import AnnConfig, AnnIndex, build, needs_rebuild
from .catalog import CATALOG_FILE, Catalog
from .errors import CatalogError, ModelError
from .lock import WriterLock

STORE_DIR = ".btembed"
INDEX_FILE = "index.faiss"


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
        """JSON-ready {path, score}."""
        return {"path": self.path, "score": round(self.score, 6)}


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


class CatalogSource:
    """The catalog's good rows as an ann.VectorSource."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.count = catalog.count()
        self.dim = catalog.dim or 0

    def chunks(self):
        return self.catalog.chunks()

    def sample(self, n, seed=0):
        return self.catalog.sample(n, seed)

    def fetch(self, ids):
        return self.catalog.fetch(ids)


def ann_config(catalog: Catalog) -> AnnConfig:
    """The tiering settings recorded in the catalog (set by `btembed index --max-memory`)."""
    return AnnConfig.from_dict(json.loads(catalog.get("ann_config", "{}")))


def _header(catalog: Catalog) -> dict:
    return {"catalog_uuid": catalog.get("catalog_uuid"), "generation": catalog.generation,
            "dim": catalog.dim, "model_sha256": catalog.get("model_sha256", "")}


def index_is_current(catalog: Catalog, store: Path) -> bool:
    """True when STORE/index.faiss was built from exactly this catalog generation (reads the header only)."""
    head = AnnIndex.read_header(store / INDEX_FILE)
    return head is not None and all(head.get(k) == v for k, v in _header(catalog).items())


def sync_ann(catalog: Catalog, store: Path, save: bool, say: Callable[[str], None] | None = None) -> AnnIndex:
    """Load STORE/index.faiss, bring it up to the catalog's generation (update or rebuild), save when asked."""
    say = say or (lambda _m: None)
    path, want, cfg = store / INDEX_FILE, _header(catalog), ann_config(catalog)
    head = AnnIndex.read_header(path)
    ann = None
    same_base = head is not None and all(head.get(k) == want[k] for k in ("catalog_uuid", "dim", "model_sha256"))
    if same_base and head["generation"] <= want["generation"]:
        try:
            ann, head = AnnIndex.load(path)
        except (OSError, ValueError) as e:
            say(f"rebuilding the search index: {e}")
    if ann is not None and head["generation"] == want["generation"]:
        return ann
    n = catalog.count()
    if ann is not None:
        changed, gone = catalog.changed_since(head["generation"])
        ann.remove(np.concatenate([changed, gone]))
        for ids, vecs in catalog.chunks(min_gen=head["generation"]):
            ann.add(ids, vecs)
        if needs_rebuild(ann, n, cfg) or ann.ntotal != n:
            ann = None
    if ann is None:
        say(f"building the search index over {n} vectors")
        ann = build(CatalogSource(catalog), cfg, progress=say)
    if save:
        ann.save(path, want)
        if not catalog.read_only:  # a search leaves them for the next index run: it never writes the catalog
            catalog.prune_tombstones(want["generation"])
        for stale in store.glob(f"{INDEX_FILE}.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a killed writer; we hold the lock, so none is in use
    return ann


class ImageIndex:
    """An indexed folder opened for search: `ImageIndex.open(DIR).search("query.jpg", k=10)`."""

    def __init__(self, store: Path, catalog: Catalog, ann: AnnIndex, embedder=None, root: Path | None = None):
        self.store, self.catalog, self.ann = store, catalog, ann
        self.root = Path(root or catalog.get("root", store.parent))
        self._embedder = embedder

    @classmethod
    def open(cls, path: str | os.PathLike, *, db: str | os.PathLike | None = None, embedder=None) -> "ImageIndex":
        """Open the index of a photo folder (or an index folder / --db); a stale FAISS file is brought up to date."""
        store = locate_store(path, db)
        if not (store / CATALOG_FILE).is_file():
            raise CatalogError(f"{path} has no btembed index (no {store / CATALOG_FILE}); run `btembed index "
                               f"{path}` first" + (" with the same --db" if db is not None else ""))
        catalog = Catalog.open(store / CATALOG_FILE, read_only=True)
        if catalog.dim is None:
            raise CatalogError(f"{store} holds no indexed images yet; run `btembed index` on the folder first")
        recorded = catalog.get("root")
        if db is not None and recorded and Path(recorded) != Path(path).resolve():
            catalog.close()
            raise CatalogError(f"the index {store} belongs to folder {recorded}, not {path}; give that folder, or "
                               "the --db this folder was indexed with")
        ann = None
        if index_is_current(catalog, store):
            try:
                ann, _ = AnnIndex.load(store / INDEX_FILE)
            except (OSError, ValueError):
                ann = None  # damaged after its header: rebuilt below
        if ann is None:
            # Save the refreshed index only when no writer is busy; otherwise just use it in memory.
            lock = WriterLock(store)
            try:
                owned = lock.try_acquire()
            except OSError:
                owned = False  # a read-only index folder
            try:
                ann = sync_ann(catalog, store, save=owned)
            finally:
                lock.release()
        # PHOTOS/.btembed travels with its folder: paths are relative to where it is now, not where it was indexed.
        root = Path(path) if db is None and store == Path(path) / STORE_DIR else None
        return cls(store, catalog, ann, embedder, root)

    def __len__(self) -> int:
        return self.ann.ntotal

    @property
    def embedder(self):
        """The model the folder was indexed with (loaded on first use; needs torch)."""
        if self._embedder is None:
            from .embedder import Embedder

            meta = self.catalog.meta()
            try:
                self._embedder = Embedder.from_pretrained(meta.get("model_source"),
                                                          revision=meta.get("model_revision"))
            except ModelError as e:
                raise ModelError(f"the model {self.root} was indexed with cannot be loaded any more ({e}); "
                                 "re-index the folder with `btembed index --rebuild --model M`") from None
            sha = meta.get("model_sha256", "")
            got = self._embedder.config.files.get("model.safetensors", "")
            if sha and got and sha != got:
                raise CatalogError(f"the model at {meta.get('model_source')} changed since {self.root} was indexed; "
                                   "re-run `btembed index --rebuild` or pass the original model")
        return self._embedder

    def _stored_vector(self, item) -> np.ndarray | None:
        """The catalog's vector for a path inside the folder that has not changed since indexing, else None."""
        if not isinstance(item, (str, os.PathLike)):
            return None
        try:
            rel = Path(os.path.abspath(item)).relative_to(os.path.abspath(self.root)).as_posix()
            st = os.stat(item)
        except (ValueError, OSError):
            return None
        row = self.catalog.lookup(rel)
        if row is None or row[4] != "ok" or (row[1], row[2]) != (st.st_size, st.st_mtime_ns):
            return None
        return self.catalog.fetch([row[0]])[0]

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
        """Close the catalog connection."""
        self.catalog.close()
