"""Which package files the dev set takes: one seeded choice that the dev set writes and the training pool leaves out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

from devdata.pictures import fits_limit

OPENCLIPART_CLASSES = (
    "animals", "buildings", "computer", "food", "geography", "office", "people", "plants", "recreation",
    "signs_and_symbols", "tools", "transportation",
)
OPENCLIPART_PER_CLASS = 60
UFOAI_MIN_CLASS = 30
UFOAI_PER_CLASS = 60


def rank(seed: int, tag: str, key: str) -> str:
    """A seeded sort key that is stable across Python versions and platforms."""
    return hashlib.sha256(f"{seed}\0{tag}\0{key}".encode()).hexdigest()


@dataclass
class Split:
    """The dev-set choice for one task: member -> class, plus each chosen member's sha256."""

    chosen: dict[str, str] = field(default_factory=dict)
    sha: dict[str, str] = field(default_factory=dict)

    def held_sha(self) -> set[str]:
        """sha256 of every chosen file (the training pool drops any byte-identical copy)."""
        return {self.sha[k] for k in self.chosen}


def select(cands: Iterable[tuple[str, str]], seed: int, tag: str, classes: Iterable[str] | None,
           per_class: Callable[[int], int], read: Callable[[str], bytes], min_class: int = 1) -> Split:
    """Deterministic per-class sample shared by the dev set and the pool (so both agree on the hold-out)."""
    by_cls: dict[str, list[str]] = {}
    for key, cls in cands:
        by_cls.setdefault(cls, []).append(key)
    wanted = [c for c in (classes or sorted(by_cls)) if len(by_cls.get(c, [])) >= min_class]
    sha: dict[str, str] = {}
    owners: dict[str, set[str]] = {}
    for c in wanted:
        for k in by_cls[c]:
            sha[k] = hashlib.sha256(read(k)).hexdigest()
            owners.setdefault(sha[k], set()).add(c)
    split = Split(sha=sha)
    for c in wanted:
        keys = sorted(by_cls[c], key=lambda k: rank(seed, tag, k))
        quota = per_class(len(keys))
        seen: set[str] = set()
        for k in keys:
            if len(seen) >= quota:
                break
            h = sha[k]
            # A file that also sits in another class has no single true label; duplicates add nothing.
            if len(owners[h]) > 1 or h in seen or not fits_limit(read(k)):
                continue
            seen.add(h)
            split.chosen[k] = c
    return split


def ufoai_split(cands: list[tuple[str, str]], seed: int, read: Callable[[str], bytes]) -> Split:
    """Dev choice for UFO:AI textures: folders with >= 30 textures, min(60, half) each."""
    return select(cands, seed, "ufoai-dev", None, lambda n: min(UFOAI_PER_CLASS, n // 2), read,
                  min_class=UFOAI_MIN_CLASS)


def openclipart_split(cands: list[tuple[str, str]], seed: int, read: Callable[[str], bytes]) -> Split:
    """Dev choice for openclipart: 12 semantic categories, up to 60 each."""
    return select(cands, seed, "openclipart-dev", OPENCLIPART_CLASSES, lambda n: OPENCLIPART_PER_CLASS, read)
