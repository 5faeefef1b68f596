"""Carry out a Plan: record errors, copy reusable vectors, forget vanished files, embed the rest — one committed
transaction per batch — then bring the FAISS file up to date. `index_folder` is the whole `btembed index` run."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..errors import CatalogError, ModelError
from ..images import os_cause
from ..names import path_fields, shown
from .ann import AnnConfig, parse_size
from .catalog import CATALOG_FILE, Catalog, DamagedCatalog
from .lock import WriterLock
from .plan import Plan, hash_entries, hash_file, make_plan
from .refresh import index_is_current, saved_tier, sync_ann
from .shardfile import VECTOR_DIR
from .shards import ShardedEmbed, hash_across, keeps_vector_files
from .stamp import ModelStamp
from .store import collect_old, live_folder, new_generation, open_store, prepare, set_aside, switch_to

# Rows written per transaction while hashing/reusing (embedding commits once per model batch).
WRITE_BATCH = 512


@dataclass
class IndexOptions:
    """Everything `btembed index` can be asked to do, as data."""

    model: str | None = None  # None: the model recorded in the catalog, else the embedded default
    revision: str | None = None
    db: str | None = None  # index folder; default PHOTOS/.btembed
    max_memory: str | int | None = None  # FAISS RAM budget; default half the machine's memory
    retry_errors: bool = False
    rebuild: bool = False
    prune: bool = False  # forget cataloged files even when all of them look gone (an unmounted disk?)
    wait: float = 0.0  # seconds to wait for another writer
    batch_size: int = 64
    workers: int | None = None
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"  # auto: a new catalog's precision by choose_precision, an existing one's kept
    vector_dtype: str = "float16"  # how vectors are stored in the catalog (new catalogs only)
    progress: bool | None = None
    ranks: object = None  # a RankGroup under torchrun: the embedding is spread over its ranks (search/shards.py)
    vector_files_above: int | None = None  # catalog vector bytes above which vectors stay in shard files
    on_disk: bool = False  # build the search index with on-disk inverted lists whatever its size (kept after)


@dataclass
class IndexReport:
    """What one run did; `new` counts paths not cataloged before (copies/renames too), `reused` those of them
    (and changed files) whose vector was copied from an identical file instead of embedded."""

    total: int = 0
    new: int = 0
    updated: int = 0
    retried: int = 0
    deleted: int = 0
    unchanged: int = 0
    reused: int = 0
    embedded: int = 0
    failed: int = 0
    failures: list = field(default_factory=list)  # [{path, error}] per file, [{folder, error, kept}] per folder
    skipped: list = field(default_factory=list)  # [{path, reason}]: not read (special files) or read again later
    kept: int = 0  # cataloged files that all looked gone and were kept (no --prune)
    store: str = ""
    model: str = ""
    precision: str = ""  # what the catalog's vectors were embedded at
    tier: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready mapping; names that are not UTF-8 follow btembed.names (path + path_bytes)."""
        d = asdict(self)
        d["failures"], d["skipped"] = [_named(f) for f in self.failures], [_named(f) for f in self.skipped]
        return {**d, **path_fields(self.store, "store")}


def _named(entry: dict) -> dict:
    """A {path|folder, ...} entry with its name as text (+ _bytes when it is not UTF-8)."""
    key = "folder" if "folder" in entry else "path"
    return {**entry, **path_fields(entry[key], key)}


def default_max_memory() -> int:
    """Half of physical memory: the FAISS index should leave room for everything else."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _resolve_model(catalog: Catalog | None, opts: IndexOptions, say):
    """Resolve the run's model (once: the ModelFolder is passed down) and refuse another one than the catalog's
    unless rebuilding -> (ModelFolder, its stamp)."""
    from ..modelfolder import ModelFolder

    recorded = catalog.model_stamp() if catalog is not None else None
    meta = catalog.meta() if catalog is not None else {}
    spec = opts.model if opts.model is not None else meta.get("model_source")
    revision = opts.revision if opts.model is not None else (opts.revision or meta.get("model_revision"))
    try:
        model = ModelFolder.resolve(spec, revision=revision)
    except ModelError as e:
        if opts.model is not None or recorded is None:
            raise
        folder = meta.get("root") or catalog.path.parent
        raise ModelError(f"the model {folder} was indexed with cannot be loaded any more ({e}); pass "
                         "--model with the same weights, or --rebuild --model M to re-embed with another") from None
    stamp = ModelStamp(**model.identity(), precision=_precision(model, recorded, opts, say))
    if recorded is not None and not recorded.same_model(stamp):
        if not opts.rebuild:
            raise CatalogError(
                f"{catalog.path.parent} was indexed with model {recorded.model_id} ({recorded.dim}-d, weights "
                f"{(recorded.model_sha256 or '?')[:12]}), not {stamp.model_id} ({stamp.dim}-d, weights "
                f"{stamp.model_sha256[:12]}); pass --rebuild to re-embed everything with the new model, "
                "or --db to keep a separate index")
        say(f"--rebuild: discarding {catalog.count() + catalog.count('error')} cataloged files of model "
            f"{recorded.model_id}")
    return model, stamp


def _precision(model, recorded: ModelStamp | None, opts: IndexOptions, say) -> str:
    """The precision this run embeds at: 'auto' keeps the one a catalog holds; a forced other one needs --rebuild."""
    from ..backends.precision import choose_precision

    same = recorded is not None and not opts.rebuild and recorded.same_model(ModelStamp(**model.identity()))
    if same and opts.precision == "auto":
        return recorded.precision
    choice = choose_precision(model.path, opts.precision, device=opts.device, backend=opts.backend)
    if same and choice.precision != recorded.precision:
        raise CatalogError(f"{recorded.model_id} vectors in this index are {recorded.precision}, this run would add "
                           f"{choice.precision} ones; pass --rebuild to re-embed everything in {choice.precision}, "
                           f"or --precision {recorded.precision}")
    if opts.precision == "auto":
        say(f"precision: {choice.precision} ({choice.reason})")
    return choice.precision


def index_folder(folder: str | os.PathLike, opts: IndexOptions | None = None,
                 say: Callable[[str], None] | None = None) -> IndexReport:
    """Bring the catalog and FAISS index of folder up to date; the single writer holds the lock throughout."""
    t0 = time.perf_counter()
    opts = opts or IndexOptions()
    say = say or (lambda _m: None)
    folder = Path(folder)
    try:
        is_dir = folder.is_dir()
    except OSError as e:  # e.g. a parent folder that cannot be traversed
        raise CatalogError(f"cannot reach the folder {shown(folder)} ({os_cause(e)})") from None
    if not is_dir:
        why = "does not exist" if not os.path.lexists(folder) else "is not a folder"
        raise CatalogError(f"{shown(folder)} {why}; give the folder of images to index")
    store = open_store(folder, opts.db)
    with WriterLock(store).acquire(wait=opts.wait):
        collect_old(store)  # generations of earlier rebuilds that no search pins any more, or killed rebuilds
        live = live_folder(store)
        catalog = _open_for_writing(live / CATALOG_FILE, opts, say)
        try:
            report = _run(folder, store, live, catalog, opts, say)
        finally:
            if catalog is not None:
                catalog.close()
        if opts.rebuild:
            collect_old(store)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _open_for_writing(path: Path, opts: IndexOptions, say) -> Catalog | None:
    """Open (or create) the live catalog; with --rebuild a damaged one is set aside (kept for inspection): None."""
    if opts.rebuild and not path.exists():
        return None
    try:
        catalog = Catalog.open(path, create=True)
        prepare(path.parent)
        return catalog
    except DamagedCatalog:
        if not opts.rebuild:
            raise
    aside = set_aside(path)
    say(f"--rebuild: the damaged catalog was moved to {aside}; indexing the folder from scratch")
    return None


def _record_settings(catalog: Catalog, root: str, stamp: ModelStamp, opts: IndexOptions) -> None:
    """Write the model stamp, folder and FAISS settings into the catalog's meta (only when they changed)."""
    max_memory = parse_size(opts.max_memory) if opts.max_memory is not None else None
    cfg = AnnConfig.from_dict(json.loads(catalog.get("ann_config", "{}")))
    if max_memory is not None or cfg.max_memory is None:
        cfg.max_memory = max_memory or default_max_memory()
    cfg.on_disk = cfg.on_disk or opts.on_disk
    meta = {**stamp.to_meta(), "root": root, "ann_config": json.dumps(asdict(cfg))}
    if catalog.get("vector_dtype") is None or opts.rebuild:
        meta["vector_dtype"] = opts.vector_dtype
    if any(catalog.get(k) != (None if v is None else str(v)) for k, v in meta.items()):
        catalog.set_many(meta)


def _run(folder: Path, store: Path, live: Path, old: Catalog | None, opts: IndexOptions, say) -> IndexReport:
    root = str(folder.resolve())
    recorded_root = old.get("root") if old is not None else None
    if opts.db is not None and recorded_root and recorded_root != root and not opts.rebuild:
        raise CatalogError(f"the index {store} belongs to folder {recorded_root}, not {root}; pass --rebuild to "
                           "start it over for this folder, or another --db")
    model, stamp = _resolve_model(old, opts, say)
    opts = replace(opts, precision=stamp.precision)  # every embedder of this run (and every rank) uses this one
    if not opts.rebuild:
        return _update(folder, store, live, old, model, stamp, root, opts, say)
    # Built beside the live catalog and switched to when complete: searches meanwhile use the old one.
    target = new_generation(store)
    catalog = Catalog.open(target / CATALOG_FILE, create=True)
    try:
        if old is not None and old.get("ann_config"):
            catalog.set_many({"ann_config": old.get("ann_config")})
        report = _update(folder, store, target, catalog, model, stamp, root, opts, say)
    finally:
        catalog.close()
    switch_to(store, target)
    return report


def _update(folder: Path, store: Path, live: Path, catalog: Catalog, model, stamp: ModelStamp, root: str,
            opts: IndexOptions, say) -> IndexReport:
    """Plan and apply one run into catalog (in folder live), then bring its FAISS file up to date."""
    _record_settings(catalog, root, stamp, opts)
    hash_many = hash_across(opts.ranks, live / VECTOR_DIR) if opts.ranks is not None else hash_entries
    plan = make_plan(folder, catalog, opts.retry_errors, opts.prune, hash_many)
    report = IndexReport(store=str(store), model=stamp.model_id, precision=stamp.precision,
                         deleted=len(plan.vanished),
                         unchanged=plan.unchanged, skipped=list(plan.skipped), kept=plan.kept_vanished,
                         **plan.counts())
    if plan.kept_vanished:
        say(f"every one of the {plan.kept_vanished} cataloged files is gone from {shown(folder)} (an unmounted "
            "disk?); none is forgotten — pass --prune to forget them")
    apply_plan(plan, catalog, model, opts, report)
    report.total = catalog.count()
    report.failures = catalog.failures() + plan.unlisted
    report.failed = len(report.failures)
    if not index_is_current(catalog, live):
        report.tier = sync_ann(catalog, live, save=True, say=say).tier
    else:
        report.tier = saved_tier(live)
    return report


def _batches(items: list, size: int = WRITE_BATCH):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def apply_plan(plan: Plan, catalog: Catalog, model, opts: IndexOptions, report: IndexReport) -> None:
    """Write a plan (or one shard of it) into the catalog with the model (a ModelFolder); counts into report."""
    for batch in _batches(plan.rehash):
        with catalog.transaction():
            for entry in batch:
                phash, err = hash_file(entry.path, entry.size)
                if err is None:  # vectors and generations stay: nothing about the file itself changed
                    catalog.set_content_hash(entry.rel, phash)
    gen = catalog.bump_generation() if plan.changes_rows else catalog.generation
    # Errors and reuses before forgetting the vanished rows, since a renamed file's vector lives in its old row.
    for batch in _batches(plan.errors + plan.reuse):
        with catalog.transaction():
            for e in batch:
                blob = None if e.error is not None else catalog.vector_for_hash(e.size, e.phash)
                if e.error is None and (blob is None or _changed(e, report)):
                    continue  # its source went since planning, or it changed since hashed: the next run does it
                catalog.put(e.rel, e.size, e.mtime_ns, e.phash, gen, vector=blob, error=e.error)
                report.reused += e.error is None
    if plan.vanished:
        with catalog.transaction():
            catalog.delete([row.id for row in plan.vanished], gen)
    if plan.embed and (opts.ranks is not None or keeps_vector_files(catalog, len(plan.embed),
                                                                     opts.vector_files_above)):
        ShardedEmbed(opts.ranks).run(catalog, plan.embed, model, opts, gen, report)
    elif plan.embed:
        _embed(catalog, plan.embed, model, opts, gen, report)
    for batch in _batches(plan.copies):
        with catalog.transaction():
            for e in batch:
                first = catalog.outcome(e.same_as)
                if first is None:  # the first file was never embedded (interrupted): the next run does both
                    continue
                catalog.put(e.rel, e.size, e.mtime_ns, first.phash, gen, vector=first.vector, error=first.error)
                report.reused += first.error is None


def _changed(entry, report: IndexReport) -> bool:
    """True (and said in the report) when the file's size or mtime moved since it was planned: it was read while
    being written."""
    try:
        st = os.stat(entry.path)
        same = (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns)
    except OSError:
        same = False
    if not same:
        report.skipped.append({"path": entry.rel, "reason": "changed while being read; read again on the next run"})
    return not same


def _embed(catalog: Catalog, entries: list, model, opts: IndexOptions, gen: int, report: IndexReport) -> None:
    """Run the model over entries; one committed transaction per batch."""
    from ..embedder import Embedder

    # load_async: the ONNX session is built while the decode threads fill the first batches (cold start).
    embedder = Embedder.from_pretrained(model, device=opts.device, backend=opts.backend, precision=opts.precision,
                                        load_async=True)
    if embedder.dim != model.config.embedding_dim:
        raise CatalogError(f"model {model.display_name} produced {embedder.dim}-d vectors, its config says "
                           f"{model.config.embedding_dim}")
    by_path = {str(e.path): e for e in entries}
    for batch in embedder.embed_batches([e.path for e in entries], batch_size=opts.batch_size,
                                        num_workers=opts.workers, progress=opts.progress):
        with catalog.transaction():
            for item, vector, error in zip(batch.items, batch.vectors, batch.errors):
                e = by_path[str(item)]
                if _changed(e, report):
                    continue  # half old, half new bytes perhaps: its row stays as it was, so the next run retries
                if error is not None:
                    catalog.put(e.rel, e.size, e.mtime_ns, e.phash, gen, error=error.cause)
                else:
                    catalog.put(e.rel, e.size, e.mtime_ns, e.phash, gen, vector=catalog.encode(vector))
                    report.embedded += 1
