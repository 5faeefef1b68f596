"""Keep the derived FAISS file in step with the catalog: load it, apply the rows changed since, or rebuild."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from .ann import AnnConfig, AnnIndex, build, needs_rebuild
from .catalog import Catalog
from .store import INDEX_FILE


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


def saved_tier(store: Path) -> str:
    """The tier recorded in STORE/index.faiss ('' when there is none)."""
    return (AnnIndex.read_header(store / INDEX_FILE) or {}).get("tier", "")


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
    if ann is not None and ann.tier == "ondisk" and not save:
        # Updating on-disk lists means writing a new .ivfdata, which a reader that may not write cannot do; the
        # saved index serves: gone rows drop out of results, changed ones are re-scored with their new vectors.
        say("the on-disk search index predates the catalog's last changes; searching it as it is")
        return ann
    n = catalog.count()
    if ann is not None:
        changed, gone = catalog.changed_since(head["generation"])
        ann.apply_changes(np.concatenate([changed, gone]), catalog.chunks(min_gen=head["generation"]), store)
        if needs_rebuild(ann, n, cfg) or ann.ntotal != n:
            ann = None
    if ann is None:
        say(f"building the search index over {n} vectors")
        ann = build(CatalogSource(catalog), cfg, progress=say, folder=store if save else None)
    if save:
        ann.save(path, want)
        if not catalog.read_only:  # a search leaves them for the next index run: it never writes the catalog
            catalog.prune_tombstones(want["generation"])
        for stale in [*store.glob(f"{INDEX_FILE}.tmp-*"), *store.glob(f"{INDEX_FILE}.json.tmp-*")]:
            stale.unlink(missing_ok=True)  # left by a killed writer; we hold the lock, so none is in use
    return ann
