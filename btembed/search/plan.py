"""Decide what an index run does: walk the folder, stat every image file, diff against the catalog -> a Plan.

Nothing here writes: a Plan is a plain value (what to embed, reuse, copy, record as an error, forget), so it
can be inspected, tested, and split into shards that separate processes apply.
"""
from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..errors import CatalogError
from ..images import not_regular, scan_folder
from ..names import shown
from .catalog import Catalog


class NotRegular(OSError):
    """The path is no longer a regular file (swapped for a named pipe or a device since the walk)."""


def content_hash(path: str | os.PathLike) -> str:
    """blake2b-128 of every byte of a regular file: a vector is reused only for a byte-identical file."""
    # O_NONBLOCK: a file swapped for a named pipe since the walk must not hang the run; fstat then refuses it.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        why = not_regular(os.fstat(fd).st_mode)
        if why:
            raise NotRegular(errno.EINVAL, why)
        h = hashlib.blake2b(digest_size=16)
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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
    except NotRegular as e:
        return None, e.strerror
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"


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
    vanished: list = field(default_factory=list)  # Row: cataloged files seen to be gone (folder listed, file absent)
    rehash: list = field(default_factory=list)  # Entry: unchanged good files whose full hash is unknown
    skipped: list = field(default_factory=list)  # {path, reason}: image-named entries never opened (pipes, devices)
    unlisted: list = field(default_factory=list)  # {folder, error, kept}: folders that could not be listed
    kept_vanished: int = 0  # every cataloged file looked gone (an unmounted disk?): kept, unless pruning
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
        file it copies; summary-only facts (counts, skipped files, unlisted folders) go to shard 0."""
        if not 0 <= i < n:
            raise ValueError(f"shard {i} of {n} does not exist")

        def mine(rel: str) -> bool:
            return shard_of(rel, n) == i

        first = i == 0
        return replace(self, embed=[e for e in self.embed if mine(e.rel)],
                       reuse=[e for e in self.reuse if mine(e.rel)],
                       copies=[e for e in self.copies if mine(e.same_as)],
                       errors=[e for e in self.errors if mine(e.rel)],
                       vanished=[r for r in self.vanished if mine(r.path)],
                       rehash=[e for e in self.rehash if mine(e.rel)],
                       skipped=list(self.skipped) if first else [], unlisted=list(self.unlisted) if first else [],
                       kept_vanished=self.kept_vanished if first else 0, unchanged=self.unchanged if first else 0)


def _seen_gone(rel: str, listed: set, unlisted: dict) -> bool:
    """True when the nearest ancestor folder the walk reached was listed (so the file is absent from it),
    False when that ancestor could not be listed (the file may well be there)."""
    parent = posixpath.dirname(rel)
    while parent not in listed and parent not in unlisted and parent:
        parent = posixpath.dirname(parent)
    return parent not in unlisted


def hash_entries(entries: list[Entry]) -> None:
    """Fill in the content hash (or the error) of every entry that has no error yet, in this process."""
    for entry in entries:
        if entry.error is None:
            entry.phash, entry.error = hash_file(entry.path, entry.size)


def make_plan(folder: Path, catalog: Catalog, retry_errors: bool = False, prune: bool = False,
              hash_many: Callable[[list[Entry]], None] = hash_entries) -> Plan:
    """Walk folder, stat each image file (an unchanged one is not opened), hash the new and changed ones.

    A cataloged file is forgotten only when its folder was listed in this walk and it is not there; when every
    cataloged file looks gone (an unmounted disk leaves an empty mount point), none is, unless prune.
    """
    plan = Plan()
    scan = scan_folder(folder)
    if folder in scan.failed:
        raise CatalogError(f"cannot list the folder {shown(folder)} ({scan.failed[folder]}); nothing was indexed "
                           "or forgotten")

    def rel(path: Path) -> str:
        return "" if path == folder else path.relative_to(folder).as_posix()

    listed = {rel(p) for p in scan.listed}
    unlisted = {rel(p): cause for p, cause in scan.failed.items()}
    plan.skipped = [{"path": rel(p), "reason": why} for p, why in scan.skipped.items()]
    rows = catalog.rows()
    seen: dict[str, Entry] = {}
    for path in scan.files:
        size, mtime_ns, error = stat_file(path)
        seen[rel(path)] = Entry(rel(path), path, size, mtime_ns, error=error)
    todo: list[Entry] = []
    for name, entry in seen.items():
        row = rows.get(name)
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
    absent = [row for name, row in rows.items() if name not in seen]
    plan.vanished = [row for row in absent if _seen_gone(row.path, listed, unlisted)]
    for folder_rel, cause in sorted(unlisted.items()):
        inside = sum(1 for row in absent if row.path.startswith(folder_rel + "/"))
        plan.unlisted.append({"folder": folder_rel, "error": cause, "kept": inside})
    if rows and len(plan.vanished) == len(rows) and not prune:
        plan.kept_vanished, plan.vanished = len(rows), []
    hash_many(todo)  # under torchrun every rank hashes its shard (search/shards.py)
    _sort_by_content(plan, todo, catalog)
    return plan


def _sort_by_content(plan: Plan, todo: list[Entry], catalog: Catalog) -> None:
    """Sort hashed new and changed files into errors, reuse (a cataloged copy), copies (a copy met earlier in
    this run) or embed. Vanished rows still count as sources: a renamed file's vector lives in its old row."""
    first_of: dict[tuple[int, str], str] = {}
    for entry in todo:
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
