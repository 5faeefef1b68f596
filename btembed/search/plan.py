"""Decide what an index run does: walk the folder, stat every image file, diff against the catalog -> a Plan.

Nothing here writes: a Plan is a plain value (what to embed, reuse, copy, record as an error, forget), so it
can be inspected, tested, and split into shards that separate processes apply.
"""
from __future__ import annotations

import errno
import os
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..images import is_image_path
from .catalog import Catalog, content_hash


@dataclass
class Listing:
    """What one walk saw: image files (relative path -> path), folders listed in full, folders it could not list."""

    files: dict = field(default_factory=dict)
    listed: set = field(default_factory=set)  # relative folder paths ('' is the root)
    failed: dict = field(default_factory=dict)  # relative folder path -> cause


def _cause(error: OSError) -> str:
    """A short, human cause of an OS error."""
    if isinstance(error, PermissionError):
        return "permission denied"
    if error.errno == errno.ELOOP:
        return "symbolic link loop"
    return error.strerror or str(error)


def walk(folder: Path, skip_hidden: bool = True) -> Listing:
    """Image files under folder, depth first in name order; hidden entries (such as .btembed/) skipped,
    symlinked folders followed once (loops cut by device and inode)."""
    out = Listing()
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[tuple[str, Path]] = [("", folder)]
    while stack:
        rel_dir, path = stack.pop()
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.failed[rel_dir] = _cause(e)
            continue
        out.listed.add(rel_dir)
        subdirs = []
        for entry in entries:
            if skip_hidden and entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append((rel, Path(entry.path)))
            elif is_image_path(entry.name):
                out.files[rel] = Path(entry.path)
        stack.extend(reversed(subdirs))
    return out


def stat_file(path: Path) -> tuple[int, int, str | None]:
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


def hash_file(path: Path, size: int) -> tuple[str | None, str | None]:
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


def _utf8(name: str) -> bool:
    """Whether SQLite can store the name: bytes that are not UTF-8 come out of the walk as lone surrogates."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(name: str) -> str:
    """The name with its undecodable bytes written as \\xNN escapes (valid text for logs and JSON)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class Entry:
    """One file the run writes: where it is, its stat and content hash (or why it has none)."""

    rel: str
    path: Path
    size: int
    mtime_ns: int
    phash: str | None = None
    error: str | None = None
    change: str = "new"  # new | updated | retried (a failed file tried again) | unchanged (rehash only)
    same_as: str | None = None  # copies: the file of this run with the same bytes, embedded in its place


def shard_of(rel: str, n: int) -> int:
    """The shard (0..n-1) of a relative path: a hash that is the same in every process and on every machine."""
    return zlib.crc32(rel.encode("utf-8", "surrogateescape")) % n


@dataclass
class Plan:
    """Everything one index run will write, decided before any of it is."""

    embed: list = field(default_factory=list)  # Entry: run the model (one per distinct content)
    reuse: list = field(default_factory=list)  # Entry: identical to a cataloged good file, its vector copied
    copies: list = field(default_factory=list)  # Entry: identical to an `embed` entry (same_as), takes its outcome
    errors: list = field(default_factory=list)  # Entry: cannot be read; recorded with its error
    vanished: list = field(default_factory=list)  # Row: cataloged files seen to be gone
    rehash: list = field(default_factory=list)  # Entry: unchanged good files whose full hash is unknown
    skipped: list = field(default_factory=list)  # {path, reason}: files the catalog cannot hold
    unchanged: int = 0

    def counts(self) -> dict:
        """How many files are new / updated / retried (each file counted once)."""
        out = {"new": 0, "updated": 0, "retried": 0}
        for entry in self.embed + self.reuse + self.copies + self.errors:
            out[entry.change] += 1
        return out

    @property
    def changes_rows(self) -> bool:
        """True when applying it adds, replaces or removes catalog rows (a new generation)."""
        return bool(self.embed or self.reuse or self.copies or self.errors or self.vanished)

    def shard(self, i: int, n: int) -> "Plan":
        """The part of the plan shard i of n applies: files by a stable hash of their path, each copy with the
        file it copies; summary-only facts (unchanged count, skipped files) go to shard 0."""
        if not 0 <= i < n:
            raise ValueError(f"shard {i} of {n} does not exist")

        def mine(rel: str) -> bool:
            return shard_of(rel, n) == i

        return replace(self, embed=[e for e in self.embed if mine(e.rel)],
                       reuse=[e for e in self.reuse if mine(e.rel)],
                       copies=[e for e in self.copies if mine(e.same_as)],
                       errors=[e for e in self.errors if mine(e.rel)],
                       vanished=[r for r in self.vanished if mine(r.path)],
                       rehash=[e for e in self.rehash if mine(e.rel)],
                       skipped=list(self.skipped) if i == 0 else [], unchanged=self.unchanged if i == 0 else 0)


def make_plan(folder: Path, catalog: Catalog, retry_errors: bool = False) -> Plan:
    """Walk folder, stat each image file (an unchanged one is not opened), hash the new and changed ones."""
    plan = Plan()
    listing = walk(folder)
    rows = catalog.rows()
    seen: dict[str, Entry] = {}
    for rel, path in listing.files.items():
        if not _utf8(rel):
            plan.skipped.append({"path": printable(rel), "reason": "file name is not valid UTF-8; rename the "
                                 "file to index it"})
            continue
        size, mtime_ns, error = stat_file(path)
        seen[rel] = Entry(rel, path, size, mtime_ns, error=error)
    todo: list[Entry] = []
    for rel, entry in seen.items():
        row = rows.get(rel)
        if row is not None and (row.size, row.mtime_ns) == (entry.size, entry.mtime_ns) and (
                row.ok or not retry_errors):
            plan.unchanged += row.ok
            if row.ok and row.phash is None and entry.size:
                entry.change = "unchanged"
                plan.rehash.append(entry)
            continue
        if row is None:
            entry.change = "new"
        elif (row.size, row.mtime_ns) == (entry.size, entry.mtime_ns):
            entry.change = "retried"
        else:
            entry.change = "updated"
        todo.append(entry)
    plan.vanished = [row for rel, row in rows.items() if rel not in seen]
    _sort_by_content(plan, todo, catalog)
    return plan


def _sort_by_content(plan: Plan, todo: list[Entry], catalog: Catalog) -> None:
    """Hash new and changed files; each goes to errors, reuse (a cataloged copy), copies (a copy met earlier in
    this run) or embed. Vanished rows still count as sources: a renamed file's vector lives in its old row."""
    first_of: dict[tuple[int, str], str] = {}
    for entry in todo:
        if entry.error is None:
            entry.phash, entry.error = hash_file(entry.path, entry.size)
        if entry.error is not None:
            plan.errors.append(entry)
        elif catalog.vector_for_hash(entry.size, entry.phash) is not None:
            plan.reuse.append(entry)
        elif (entry.size, entry.phash) in first_of:
            entry.same_as = first_of[entry.size, entry.phash]
            plan.copies.append(entry)
        else:
            first_of[entry.size, entry.phash] = entry.rel
            plan.embed.append(entry)
