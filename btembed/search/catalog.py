"""SQLite catalog of one photo folder: a row per file (stat, content hash, vector, status), the source of truth."""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import CatalogError
from .stamp import ModelStamp

SCHEMA_VERSION = 2  # 2: vectors may live in vector files (vec_file, vec_row), which schema-1 readers cannot read
CATALOG_FILE = "catalog.sqlite"
# What the phash column holds; catalogs without this meta value hold a partial hash (size + both 64-KiB ends),
# which is not enough to reuse a vector: same-size files with equal ends (uncompressed frames, scans,
# an edit in the middle of a BMP) collided.
HASH_KIND = "blake2b-128 of all bytes"
_DTYPES = {"float16": np.float16, "float32": np.float32}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: FAISS ids are row ids
    path TEXT NOT NULL UNIQUE,              -- relative to the photo folder, '/' separators; a BLOB of the raw
                                            -- bytes when the name is not UTF-8 (SQLite text must be)
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    phash TEXT,                             -- content hash (HASH_KIND), equal only for identical bytes
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT,
    vector BLOB,
    vec_gen INTEGER NOT NULL,               -- catalog generation in which this row last changed
    vec_file INTEGER,                       -- set when the vector lives outside SQLite (vector is NULL):
    vec_row INTEGER                         -- row vec_row of the vector file vec_file (see vector_files)
);
-- Per-shard vector files of big catalogs (search/shardfile.py), named relative to the catalog's folder.
CREATE TABLE IF NOT EXISTS vector_files (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, dtype TEXT NOT NULL,
                                         dim INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS files_by_hash ON files (size, phash);
CREATE INDEX IF NOT EXISTS files_by_gen ON files (vec_gen);
-- Rows removed since the FAISS file was last saved, so an index can be updated instead of rebuilt.
CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
"""


class DamagedCatalog(CatalogError):
    """The catalog file is there but is not a readable SQLite database (overwritten, truncated, corrupted)."""

    @classmethod
    def of(cls, path: Path, error: Exception) -> "DamagedCatalog":
        """The one message, for writers and readers alike."""
        return cls(f"the catalog {path} is damaged ({error}); `btembed index --rebuild` on the folder sets it aside "
                   "and indexes it again")


def _damaged(error: Exception) -> bool:
    """SQLite's 'file is not a database' / 'malformed' errors, as opposed to permission or locking ones."""
    return type(error) is sqlite3.DatabaseError


_ROW_COLUMNS = "id, path, size, mtime_ns, phash, status, error"


def _stored(path: str):
    """A relative path as the path column holds it: text, or the raw bytes of a name that is not UTF-8."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape")


def _read(value) -> str:
    """A path column value back as Python carries file names (lone surrogates for undecodable bytes)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _row(r) -> "Row":
    return Row(r[0], _read(r[1]), *r[2:])


@dataclass
class Row:
    """What the indexer needs to know about a cataloged file, without its vector."""

    id: int
    path: str
    size: int
    mtime_ns: int
    phash: str | None
    status: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the file has a vector."""
        return self.status == "ok"


@dataclass(frozen=True)
class VectorRef:
    """A vector kept outside SQLite: row `row` of the vector file with id `file`."""

    file: int
    row: int


def _vector(blob, file, row):
    """The vector column(s) as put() takes them: a blob, a VectorRef, or None."""
    return VectorRef(file, row) if blob is None and file is not None else blob


@dataclass
class Outcome:
    """A file's stored result: its vector (blob or VectorRef), or the error that kept it from having one."""

    phash: str | None
    vector: bytes | VectorRef | None
    error: str | None


class Catalog:
    """One SQLite file in WAL mode; writers commit per batch, so a crash loses at most the batch in flight."""

    def __init__(self, path: Path, conn: sqlite3.Connection, read_only: bool = False):
        self.path = path
        self.conn = conn
        self.read_only = read_only
        # Schema-1 catalogs opened read-only have no vec_file/vec_row columns: read them as NULL.
        has = {r[1] for r in conn.execute("PRAGMA table_info(files)")} >= {"vec_file", "vec_row"}
        self._vec = "vector, vec_file, vec_row" if has else "vector, NULL, NULL"
        self._mapped: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, create: bool = False, read_only: bool = False) -> "Catalog":
        """Open (or create) a catalog file; a missing one without create is a CatalogError.

        read_only: for searching; nothing is ever written, and a folder this process cannot write still opens.
        """
        path = Path(path)
        if not create and not path.is_file():
            raise CatalogError(f"{path} does not exist; run `btembed index` on the folder first")
        if read_only and not create:
            return cls._open_read_only(path)
        try:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a killed process loses nothing committed; only power loss can drop the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            if _damaged(e):
                raise DamagedCatalog.of(path, e) from None
            raise CatalogError(f"cannot open the catalog {path} ({e}); check permissions, or pass --db with a "
                               "writable place") from None
        catalog = cls(path, conn)
        version = catalog.get("schema_version")
        if version is None:
            catalog.set_many({"schema_version": SCHEMA_VERSION, "catalog_uuid": uuid.uuid4().hex,
                              "generation": 0, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        elif int(version) > SCHEMA_VERSION:
            raise CatalogError(f"{path} was written by a newer btembed (schema {version}); upgrade btembed")
        elif int(version) < SCHEMA_VERSION:
            with catalog.transaction():
                if catalog._vec.endswith("NULL"):
                    conn.execute("ALTER TABLE files ADD COLUMN vec_file INTEGER")
                    conn.execute("ALTER TABLE files ADD COLUMN vec_row INTEGER")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            catalog._vec = "vector, vec_file, vec_row"
        if catalog.get("hash_kind") != HASH_KIND:
            # Older partial hashes cannot vouch for identical bytes: forget them (the indexer hashes those
            # unchanged files in full on its next run, without re-embedding them).
            with catalog.transaction():
                catalog.conn.execute("UPDATE files SET phash = NULL")
            catalog.set_many({"hash_kind": HASH_KIND})
        return catalog

    @classmethod
    def _open_read_only(cls, path: Path) -> "Catalog":
        """A connection that cannot change the catalog (no pragma, no schema, no meta writes)."""
        # A WAL reader needs the -wal/-shm companions. While a writer has them (running, or killed), share them
        # read-only (mode=ro) to see its commits. Otherwise a query_only connection makes its own and deletes
        # them on close, leaving nothing behind; where it cannot (a read-only folder or mount) no writer can
        # exist either, so the file is opened as immutable: SQLite then needs no companion files at all.
        uri = path.resolve().as_uri()
        wal = path.with_name(path.name + "-wal").exists()
        attempts = [f"{uri}?mode=ro"] if wal else [f"{uri}?mode=rw", f"{uri}?mode=ro&immutable=1"]
        for i, attempt in enumerate(attempts):
            conn = None
            try:
                conn = sqlite3.connect(attempt, uri=True, timeout=60, isolation_level=None)
                conn.execute("PRAGMA query_only=ON")
                version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                break
            except sqlite3.Error as e:
                if conn is not None:
                    conn.close()
                cannot_write = "readonly" in str(e) or "unable to open" in str(e)
                if cannot_write and i + 1 < len(attempts):
                    continue
                why = (" (an index run left its -wal file; run `btembed index` on the folder once with write "
                       "access to fold it in)") if wal and cannot_write else ""
                if _damaged(e):
                    raise DamagedCatalog.of(path, e) from None
                raise CatalogError(f"cannot read the catalog {path} ({e}){why}; run `btembed index` on the "
                                   "folder to (re)create it") from None
        if version is None:
            conn.close()
            raise CatalogError(f"{path} is not a btembed catalog (no schema version); run `btembed index` on "
                               "the folder first")
        if int(version[0]) > SCHEMA_VERSION:
            conn.close()
            raise CatalogError(f"{path} was written by a newer btembed (schema {version[0]}); upgrade btembed")
        return cls(path, conn, read_only=True)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # --- meta -------------------------------------------------------------------------------------------------
    def get(self, key: str, default=None):
        """A meta value as text, or default."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_many(self, values: dict) -> None:
        """Write meta values in one transaction."""
        with self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                  [(k, str(v)) for k, v in values.items() if v is not None])
            self.conn.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k, v in values.items() if v is None])

    def meta(self) -> dict:
        """All meta values."""
        return dict(self.conn.execute("SELECT key, value FROM meta"))

    def model_stamp(self) -> ModelStamp | None:
        """The model recorded for the vectors, or None for a new catalog."""
        return ModelStamp.from_meta(self.meta())

    @property
    def generation(self) -> int:
        """Bumped once by every index run that changes rows; the FAISS file is stamped with it."""
        return int(self.get("generation", 0))

    @property
    def dim(self) -> int | None:
        """Vector width recorded with the model, or None for a new catalog."""
        value = self.get("dim")
        return int(value) if value else None

    @property
    def dtype(self):
        """numpy dtype of the stored vector blobs."""
        return _DTYPES[self.get("vector_dtype", "float16")]

    def bump_generation(self) -> int:
        """Start a new generation (committed at once) and return it."""
        gen = self.generation + 1
        self.set_many({"generation": gen})
        return gen

    def transaction(self):
        """A context manager: BEGIN IMMEDIATE … COMMIT (or ROLLBACK on error)."""
        return _Transaction(self.conn, self.path)

    # --- rows -------------------------------------------------------------------------------------------------
    def rows(self) -> dict[str, Row]:
        """relative path → Row, for every cataloged file."""
        cur = self.conn.execute(f"SELECT {_ROW_COLUMNS} FROM files")
        return {row.path: row for row in map(_row, cur)}

    def outcome(self, path: str) -> Outcome | None:
        """The stored vector (or error) of one relative path, or None when it has no row."""
        row = self.conn.execute(f"SELECT phash, {self._vec}, error FROM files WHERE path = ?",
                                (_stored(path),)).fetchone()
        return Outcome(row[0], _vector(*row[1:4]), row[4]) if row else None

    def set_content_hash(self, path: str, phash: str) -> None:
        """Record a file's content hash, leaving its vector and generation alone; call inside a transaction."""
        self.conn.execute("UPDATE files SET phash = ? WHERE path = ?", (phash, _stored(path)))

    def identical_groups(self) -> list[list[Row]]:
        """Good rows that share size and content hash with another good row, grouped (copies of one file)."""
        cur = self.conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM files WHERE status = 'ok' AND (size, phash) IN "
            "(SELECT size, phash FROM files WHERE status = 'ok' GROUP BY size, phash HAVING COUNT(*) > 1) "
            "ORDER BY size, phash, id")
        groups: dict[tuple, list[Row]] = {}
        for row in map(_row, cur):
            groups.setdefault((row.size, row.phash), []).append(row)
        return list(groups.values())

    def vector_for_hash(self, size: int, phash: str) -> bytes | VectorRef | None:
        """The stored vector of any good file with this size and content hash (a copy or a rename)."""
        row = self.conn.execute(f"SELECT {self._vec} FROM files WHERE size = ? AND phash = ? AND status = 'ok' "
                                "LIMIT 1", (size, phash)).fetchone()
        return _vector(*row) if row else None

    def encode(self, vector: np.ndarray) -> bytes:
        """A float vector → blob in the catalog's dtype."""
        return np.ascontiguousarray(vector, dtype=self.dtype).tobytes()

    def put(self, path: str, size: int, mtime_ns: int, phash: str | None, gen: int, *,
            vector: bytes | VectorRef | None = None, error: str | None = None) -> None:
        """Insert or replace one file's row (keeps its id when the path is known); call inside a transaction."""
        status = "ok" if error is None else "error"
        file, row = (vector.file, vector.row) if isinstance(vector, VectorRef) else (None, None)
        self.conn.execute(
            "INSERT INTO files (path, size, mtime_ns, phash, status, error, vector, vec_gen, vec_file, vec_row) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET size=excluded.size, "
            "mtime_ns=excluded.mtime_ns, phash=excluded.phash, status=excluded.status, error=excluded.error, "
            "vector=excluded.vector, vec_gen=excluded.vec_gen, vec_file=excluded.vec_file, vec_row=excluded.vec_row",
            (_stored(path), size, mtime_ns, phash, status, error, None if file is not None else vector, gen, file, row))

    def delete(self, ids: list[int], gen: int) -> None:
        """Forget rows, leaving tombstones so a saved FAISS index can drop them; call inside a transaction."""
        self.conn.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in ids])
        self.conn.executemany("INSERT OR REPLACE INTO tombstones (id, gen) VALUES (?, ?)", [(i, gen) for i in ids])

    def clear(self) -> None:
        """Drop every row (for --rebuild); generation keeps counting so old FAISS files are seen as stale."""
        with self.transaction():
            self.conn.execute("DELETE FROM files")
            self.conn.execute("DELETE FROM tombstones")

    def count(self, status: str = "ok") -> int:
        """Number of rows with this status."""
        return self.conn.execute("SELECT COUNT(*) FROM files WHERE status = ?", (status,)).fetchone()[0]

    def failures(self) -> list[dict]:
        """[{path, error}] of every file that could not be embedded, by path."""
        cur = self.conn.execute("SELECT path, error FROM files WHERE status = 'error' ORDER BY path")
        return [{"path": _read(p), "error": e} for p, e in cur]

    def paths(self, ids) -> dict[int, str]:
        """id → relative path for the given ids."""
        out = {}
        for chunk in _chunks(list(map(int, ids)), 500):
            q = f"SELECT id, path FROM files WHERE id IN ({','.join('?' * len(chunk))})"
            out.update((i, _read(p)) for i, p in self.conn.execute(q, chunk))
        return out

    def rows_by_id(self, ids) -> dict[int, Row]:
        """id → Row for the given ids."""
        out = {}
        for chunk in _chunks(list(map(int, ids)), 500):
            q = f"SELECT {_ROW_COLUMNS} FROM files WHERE id IN ({','.join('?' * len(chunk))})"
            out.update((row.id, row) for row in map(_row, self.conn.execute(q, chunk)))
        return out

    def lookup(self, path: str) -> Row | None:
        """The row of one relative path, or None."""
        r = self.conn.execute(f"SELECT {_ROW_COLUMNS} FROM files WHERE path = ?", (_stored(path),)).fetchone()
        return _row(r) if r else None

    # --- vectors ----------------------------------------------------------------------------------------------
    # --- vector files -----------------------------------------------------------------------------------------
    def add_vector_file(self, name: str, dtype: str, dim: int) -> int:
        """Register a vector file (relative to the catalog's folder) and return its id; call inside a transaction."""
        self.conn.execute("INSERT OR IGNORE INTO vector_files (name, dtype, dim) VALUES (?, ?, ?)", (name, dtype, dim))
        return self.conn.execute("SELECT id FROM vector_files WHERE name = ?", (name,)).fetchone()[0]

    def vector_files(self, unused: bool = False) -> dict[int, str]:
        """id → name of the registered vector files (only those no row points to any more, when unused)."""
        where = " WHERE id NOT IN (SELECT DISTINCT vec_file FROM files WHERE vec_file IS NOT NULL)" if unused else ""
        return dict(self.conn.execute(f"SELECT id, name FROM vector_files{where}"))

    def forget_vector_files(self, ids) -> None:
        """Unregister vector files (their rows gone); call inside a transaction."""
        self.conn.executemany("DELETE FROM vector_files WHERE id = ?", [(int(i),) for i in ids])

    def _mapped_file(self, file: int) -> np.ndarray:
        """A vector file, memory-mapped once per connection."""
        from .shardfile import open_vectors

        if file not in self._mapped:
            name, dtype, dim = self.conn.execute("SELECT name, dtype, dim FROM vector_files WHERE id = ?",
                                                 (file,)).fetchone()
            self._mapped[file] = open_vectors(self.path.parent / name, dtype, dim)
        return self._mapped[file]

    def _decode(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors) of (id, blob, vec_file, vec_row) rows."""
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        out = np.empty((len(rows), self.dim or 0), np.float32)
        blobs = [k for k, r in enumerate(rows) if r[1] is not None]
        if blobs:
            out[blobs] = np.frombuffer(b"".join(rows[k][1] for k in blobs), dtype=self.dtype).reshape(len(blobs), -1)
        by_file: dict[int, list[int]] = {}
        for k, r in enumerate(rows):
            if r[1] is None:
                by_file.setdefault(r[2], []).append(k)
        for file, ks in by_file.items():
            out[ks] = self._mapped_file(file)[[rows[k][3] for k in ks]]
        return ids, out

    def fetch(self, ids) -> np.ndarray:
        """float32 vectors of the given row ids, in the given order (rows must exist and be ok)."""
        ids = [int(i) for i in ids]
        found: dict[int, np.ndarray] = {}
        for chunk in _chunks(ids, 500):
            q = f"SELECT id, {self._vec} FROM files WHERE status = 'ok' AND id IN ({','.join('?' * len(chunk))})"
            got_ids, vecs = self._decode(self.conn.execute(q, chunk).fetchall())
            found.update(zip(got_ids.tolist(), vecs))
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"catalog rows {missing[:5]} have no vector")
        return np.stack([found[i] for i in ids]) if ids else np.zeros((0, self.dim or 0), np.float32)

    def chunks(self, size: int = 8192, min_gen: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream (ids, float32 vectors) of good rows by id; with min_gen only rows changed after it."""
        last, gen = -1, -1 if min_gen is None else min_gen
        while True:
            rows = self.conn.execute(
                f"SELECT id, {self._vec} FROM files WHERE status = 'ok' AND id > ? AND vec_gen > ? ORDER BY id "
                "LIMIT ?",
                (last, gen, size)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield self._decode(rows)

    def changed_since(self, gen: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids whose rows changed (any status) or vanished after generation gen: they leave a saved index."""
        changed = [r[0] for r in self.conn.execute("SELECT id FROM files WHERE vec_gen > ?", (gen,))]
        gone = [r[0] for r in self.conn.execute("SELECT id FROM tombstones WHERE gen > ?", (gen,))]
        return np.array(changed, dtype=np.int64), np.array(gone, dtype=np.int64)

    def prune_tombstones(self, upto_gen: int) -> None:
        """Forget tombstones already applied to a saved index of generation upto_gen."""
        with self.transaction():
            self.conn.execute("DELETE FROM tombstones WHERE gen <= ?", (upto_gen,))

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A uniform random sample of n good rows (ids, vectors), for training and tuning."""
        all_ids = np.array([r[0] for r in self.conn.execute("SELECT id FROM files WHERE status = 'ok'")],
                           dtype=np.int64)
        if n < len(all_ids):
            all_ids = np.sort(np.random.default_rng(seed).choice(all_ids, n, replace=False))
        return all_ids, self.fetch(all_ids)


def _disk_trouble(error: BaseException) -> bool:
    """A full or failing disk (SQLITE_FULL, SQLITE_IOERR, a file size limit): a user's problem, not a bug."""
    name = getattr(error, "sqlite_errorname", "")
    return isinstance(error, sqlite3.OperationalError) and (
        name.startswith(("SQLITE_FULL", "SQLITE_IOERR")) or "disk is full" in str(error) or "disk I/O" in str(error))


class _Transaction:
    def __init__(self, conn, path: Path):
        self.conn, self.path = conn, path

    def _failed(self, error: Exception) -> CatalogError:
        # What was committed before stays, and the next run continues from it.
        return CatalogError(f"cannot write the catalog {self.path} ({error}); free disk space (or check the disk) "
                            "and run `btembed index` again: everything committed so far is kept")

    def __enter__(self):
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if _disk_trouble(e):
                raise self._failed(e) from None
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        except sqlite3.Error as e:
            if exc_type is None:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                if _disk_trouble(e):
                    raise self._failed(e) from None
                raise
            # SQLite already rolled back after the error in flight (e.g. the disk is full): report that one.
        if exc is not None and _disk_trouble(exc):
            raise self._failed(exc) from None
        return False


def _chunks(seq: list, n: int):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
