"""The indexing loop: walk → stat → compare with the catalog → reuse or embed → write per batch → FAISS."""
from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .ann import AnnConfig, parse_size
from .catalog import CATALOG_FILE, Catalog, DamagedCatalog, content_hash, set_aside
from .errors import CatalogError, ModelError
from .images import find_images
from .index import index_is_current, locate_store, sync_ann
from .lock import WriterLock

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
    wait: float = 0.0  # seconds to wait for another writer
    batch_size: int = 64
    workers: int | None = None
    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    vector_dtype: str = "float16"  # how vectors are stored in the catalog (new catalogs only)
    progress: bool | None = None


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
    failures: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # [{path, reason}] of files the catalog cannot hold
    store: str = ""
    model: str = ""
    tier: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready mapping."""
        return asdict(self)


def default_max_memory() -> int:
    """Half of physical memory: the FAISS index should leave room for everything else."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def model_identity(spec: str | None, revision: str | None) -> dict:
    """What identifies a model in the catalog, read from its config.json (no torch needed)."""
    from .config import ModelConfig
    from .hub import WEIGHTS_FILE, load_registry, resolve_model

    if spec is None:
        spec = load_registry().get("default")
    folder = resolve_model(spec, revision=revision)
    config = ModelConfig.load(folder)
    local = Path(os.fspath(spec)).expanduser().is_dir() if spec else False
    return {"model_id": config.name or folder.name, "model_source": str(folder.resolve()) if local else spec,
            "model_revision": revision, "model_sha256": config.files.get(WEIGHTS_FILE, ""),
            "dim": config.embedding_dim}


def _same_model(meta: dict, ident: dict) -> bool:
    if int(meta["dim"]) != ident["dim"]:
        return False
    if meta.get("model_sha256") and ident["model_sha256"]:
        return meta["model_sha256"] == ident["model_sha256"]
    return (meta.get("model_id"), meta.get("model_revision")) == (ident["model_id"], ident["model_revision"])


def _stat(path: Path) -> tuple[int, int, str | None]:
    """(size, mtime_ns, error) — errors keep the link's own lstat so a fixed link counts as changed."""
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns, None
    except OSError as e:
        try:
            lst = os.lstat(path)
            size, mtime = lst.st_size, lst.st_mtime_ns
        except OSError:
            size, mtime = 0, 0
        if e.errno == errno.ELOOP:
            return size, mtime, "symbolic link loop"
        if isinstance(e, FileNotFoundError):
            return size, mtime, "broken symbolic link (its target does not exist)"
        if isinstance(e, PermissionError):
            return size, mtime, "permission denied"
        return size, mtime, f"cannot stat ({e.strerror or e})"


def _utf8(name: str) -> bool:
    """Whether SQLite can store the name: bytes that are not UTF-8 come out of os.walk as lone surrogates."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _printable(name: str) -> str:
    """The name with its undecodable bytes written as \\xNN escapes (valid text for logs and JSON)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _hash(path: Path, size: int) -> tuple[str | None, str | None]:
    """(content hash, error)."""
    if size == 0:
        return None, "empty file (0 bytes)"
    try:
        return content_hash(path), None
    except PermissionError:
        return None, "permission denied"
    except IsADirectoryError:
        return None, "is a folder, not an image"
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"


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


def _check_model(catalog: Catalog, opts: IndexOptions, say) -> dict:
    """Resolve the model to use and refuse a different one than the catalog's unless rebuilding."""
    meta = catalog.meta()
    spec = opts.model if opts.model is not None else meta.get("model_source")
    revision = opts.revision if opts.model is not None else (opts.revision or meta.get("model_revision"))
    try:
        ident = model_identity(spec, revision)
    except ModelError as e:
        if opts.model is not None:
            raise
        folder = meta.get("root") or catalog.path.parent
        raise ModelError(f"the model {folder} was indexed with cannot be loaded any more ({e}); pass "
                         "--model with the same weights, or --rebuild --model M to re-embed with another") from None
    if "dim" in meta and not _same_model(meta, ident):
        if not opts.rebuild:
            raise CatalogError(
                f"{catalog.path.parent} was indexed with model {meta.get('model_id')} ({meta['dim']}-d, weights "
                f"{meta.get('model_sha256', '?')[:12]}), not {ident['model_id']} ({ident['dim']}-d, weights "
                f"{ident['model_sha256'][:12]}); pass --rebuild to re-embed everything with the new model, "
                "or --db to keep a separate index")
        say(f"--rebuild: discarding {catalog.count() + catalog.count('error')} cataloged files of model "
            f"{meta.get('model_id')}")
    return ident


def index_folder(folder: str | os.PathLike, opts: IndexOptions | None = None,
                 say: Callable[[str], None] | None = None) -> IndexReport:
    """Bring the catalog and FAISS index of folder up to date; the single writer holds the lock throughout."""
    t0 = time.perf_counter()
    opts = opts or IndexOptions()
    say = say or (lambda _m: None)
    folder = Path(folder)
    if not folder.is_dir():
        raise CatalogError(f"{folder} is not a folder; give the folder of images to index")
    store = open_store(folder, opts.db)
    with WriterLock(store).acquire(wait=opts.wait):
        catalog = _open_for_writing(store / CATALOG_FILE, opts, say)
        try:
            report = _run(folder, store, catalog, opts, say)
        finally:
            catalog.close()
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _open_for_writing(path: Path, opts: IndexOptions, say) -> Catalog:
    """Open (or create) the catalog; with --rebuild a damaged one is set aside (kept for inspection) and replaced."""
    try:
        return Catalog.open(path, create=True)
    except DamagedCatalog:
        if not opts.rebuild:
            raise
    aside = set_aside(path)
    say(f"--rebuild: the damaged catalog was moved to {aside}; indexing the folder from scratch")
    return Catalog.open(path, create=True)


def _run(folder: Path, store: Path, catalog: Catalog, opts: IndexOptions, say) -> IndexReport:
    root = str(folder.resolve())
    recorded_root = catalog.get("root")
    if opts.db is not None and recorded_root and recorded_root != root and not opts.rebuild:
        raise CatalogError(f"the index {store} belongs to folder {recorded_root}, not {root}; pass --rebuild to "
                           "start it over for this folder, or another --db")
    ident = _check_model(catalog, opts, say)
    report = IndexReport(store=str(store), model=ident["model_id"])
    if opts.rebuild:
        catalog.clear()
        catalog.bump_generation()
    max_memory = parse_size(opts.max_memory) if opts.max_memory is not None else None
    cfg = AnnConfig.from_dict(json.loads(catalog.get("ann_config", "{}")))
    if max_memory is not None or cfg.max_memory is None:
        cfg.max_memory = max_memory or default_max_memory()
    meta = {**ident, "root": root, "ann_config": json.dumps(asdict(cfg))}
    if catalog.get("vector_dtype") is None or opts.rebuild:
        meta["vector_dtype"] = opts.vector_dtype
    if any(catalog.get(k) != (None if v is None else str(v)) for k, v in meta.items()):
        catalog.set_many(meta)

    # Walk and stat: an unchanged file costs one stat, no open.
    rows = catalog.rows()
    seen: dict[str, tuple[Path, int, int, str | None]] = {}
    for path in find_images(folder):
        rel = path.relative_to(folder).as_posix()
        if not _utf8(rel):
            report.skipped.append({"path": _printable(rel), "reason": "file name is not valid UTF-8; rename the "
                                   "file to index it"})
            continue
        seen[rel] = (path, *_stat(path))
    todo = []
    unhashed = []  # unchanged good files whose hash an older catalog held only partially (forgotten on upgrade)
    for rel, (path, size, mtime, err) in seen.items():
        row = rows.get(rel)
        if row is not None and (row.size, row.mtime_ns) == (size, mtime) and (
                row.status == "ok" or not opts.retry_errors):
            report.unchanged += row.status == "ok"
            if row.status == "ok" and row.phash is None and size:
                unhashed.append(rel)
            continue
        if row is None:
            report.new += 1
        elif (row.size, row.mtime_ns) == (size, mtime):
            report.retried += 1  # an unchanged file that failed before, tried again (--retry-errors)
        else:
            report.updated += 1
        todo.append(rel)
    gone = [row.id for rel, row in rows.items() if rel not in seen]
    report.deleted = len(gone)

    _hash_unchanged(catalog, unhashed, seen)

    gen = catalog.bump_generation() if todo or gone else catalog.generation
    # Hash new/changed files and reuse vectors of identical files (copies, renames) before forgetting the
    # vanished ones, since a renamed file's vector lives in its old row.
    to_embed: list[str] = []
    hashes: dict[str, str] = {}
    first_of: dict[tuple[int, str], str] = {}  # (size, hash) → the file of this run that will be embedded
    copies: dict[str, str] = {}  # a later identical file of this run → that first one
    for start in range(0, len(todo), WRITE_BATCH):
        with catalog.transaction():
            for rel in todo[start:start + WRITE_BATCH]:
                path, size, mtime, err = seen[rel]
                phash = None
                if err is None:
                    phash, err = _hash(path, size)
                if err is not None:
                    catalog.put(rel, size, mtime, phash, gen, error=err)
                    continue
                blob = catalog.vector_for_hash(size, phash)
                if blob is not None:
                    catalog.put(rel, size, mtime, phash, gen, vector=blob)
                    report.reused += 1
                elif (size, phash) in first_of:
                    copies[rel] = first_of[size, phash]
                else:
                    first_of[size, phash] = rel
                    to_embed.append(rel)
                    hashes[rel] = phash
    if gone:
        with catalog.transaction():
            catalog.delete(gone, gen)

    if to_embed:
        _embed(catalog, {rel: (*seen[rel][:3], hashes[rel]) for rel in to_embed}, ident, opts, gen, report)
    if copies:
        _copy_from_first(catalog, copies, seen, gen, report)

    report.total = catalog.count()
    report.failures = catalog.failures()
    report.failed = len(report.failures)
    if not index_is_current(catalog, store):
        ann = sync_ann(catalog, store, save=True, say=say)
        report.tier = ann.tier
    else:
        from .ann import AnnIndex

        report.tier = (AnnIndex.read_header(store / "index.faiss") or {}).get("tier", "")
    return report


def _hash_unchanged(catalog: Catalog, rels: list, seen: dict) -> None:
    """Hash good files that have none yet (once, after an upgrade), so they serve as copies' sources again."""
    for start in range(0, len(rels), WRITE_BATCH):
        with catalog.transaction():
            for rel in rels[start:start + WRITE_BATCH]:
                path, size, _, _ = seen[rel]
                content, err = _hash(path, size)
                if err is None:  # vectors and generations stay: nothing about the file itself changed
                    catalog.conn.execute("UPDATE files SET phash = ? WHERE path = ?", (content, rel))


def _copy_from_first(catalog: Catalog, copies: dict, seen: dict, gen: int, report: IndexReport) -> None:
    """Give each identical copy met in this run the outcome of its first file (embedded once, not N times)."""
    pairs = list(copies.items())
    for start in range(0, len(pairs), WRITE_BATCH):
        with catalog.transaction():
            for rel, first in pairs[start:start + WRITE_BATCH]:
                _, size, mtime, _ = seen[rel]
                row = catalog.conn.execute("SELECT phash, status, error, vector FROM files WHERE path = ?",
                                           (first,)).fetchone()
                if row is None:  # the first file was never embedded (interrupted): the next run does both
                    continue
                content, status, error, vector = row
                catalog.put(rel, size, mtime, content, gen, vector=vector, error=error if status != "ok" else None)
                report.reused += status == "ok"


def _embed(catalog: Catalog, files: dict, ident: dict, opts: IndexOptions, gen: int, report: IndexReport) -> None:
    """Run the model over files (rel → (path, size, mtime_ns, phash)); one committed transaction per batch."""
    from .embedder import Embedder

    # load_async: the ONNX session is built while the decode threads fill the first batches (cold start).
    embedder = Embedder.from_pretrained(ident["model_source"], revision=ident["model_revision"],
                                        device=opts.device, backend=opts.backend, precision=opts.precision,
                                        load_async=True)
    if embedder.dim != ident["dim"]:
        raise CatalogError(f"model {ident['model_id']} produced {embedder.dim}-d vectors, its config says "
                           f"{ident['dim']}")
    by_path = {str(v[0]): rel for rel, v in files.items()}
    for batch in embedder.embed_batches([v[0] for v in files.values()], batch_size=opts.batch_size,
                                        num_workers=opts.workers, progress=opts.progress):
        with catalog.transaction():
            for item, vector, error in zip(batch.items, batch.vectors, batch.errors):
                rel = by_path[str(item)]
                _, size, mtime, phash = files[rel]
                if error is not None:
                    catalog.put(rel, size, mtime, phash, gen, error=error.cause)
                else:
                    catalog.put(rel, size, mtime, phash, gen, vector=catalog.encode(vector))
                    report.embedded += 1
