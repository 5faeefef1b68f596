"""Near-duplicate groups that never chain: every copy joins the kept image it is closest to.

The rule (nearest kept image): images are visited in the keep rule's order (largest first, or oldest first); an
image becomes a kept image when no kept image before it is within the threshold; every other image joins the kept
image most similar to it. So each member is within the threshold of its group's kept image, two kept images are
never within the threshold of each other, and a chain a~b~c cannot pull a and c together. Byte-identical files
always join each other, whatever the threshold. Blank images (one flat colour, e.g. transparent clip-art composited
on white) look alike to any model: they are reported apart instead of forming one huge group at 1.0.

The pixel check (search/pixel_check.py, on by default) is the second stage: a pair the embedding puts within the
threshold is a duplicate only when the two small pictures agree too (one photo, edited), so two different photos
the model sees as one kind of thing (two textures, an apple and an orange) stay apart.

Which copy is kept (the keep rules): largest = most pixels, then most bytes; oldest = oldest modification time, then
most pixels and bytes. Ties (byte-identical copies above all) go to the likely original, always the same way: the
older modification time, then the name without a copy marker (" copy", "-copy", "Copy of ", " (1)", "_1" ...),
then the shorter path, then path order.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from ..errors import BtembedError
from ..modelfiles import sha256_file
from ..names import path_fields, shown
from . import pixel_check as pixels
from .search import ImageIndex

DEFAULT_THRESHOLD = 0.95  # for a model folder whose config records no calibrated duplicate_threshold
KEEP_RULES = ("largest", "oldest")
BLANK_RANGE = 2  # an image whose every channel spans at most this many levels is one flat colour
# what file managers and downloads add to a copy's name: "a copy", "a-copy 2", "Copy of a", "a (1)", "a_1"
COPY_MARKER = re.compile(r"^copy of |[ _-]copy(?:[ _-]?\d+)?$|[ _-]?\(\d+\)$|[ _-]\d{1,2}$", re.IGNORECASE)


@dataclass
class Member:
    """One image of a group: its path (relative to the folder), cosine to the kept image, byte-identity, sizes."""

    path: str
    score: float
    exact: bool
    kept: bool
    id: int = -1
    bytes: int = 0
    width: int = 0
    height: int = 0
    mtime_ns: int = 0

    def __post_init__(self):
        self.score = min(1.0, float(self.score))  # float16 vectors can give 1.0001: one clip for text and JSON

    def to_dict(self, root: str | os.PathLike | None = None) -> dict:
        """{path, score, exact, kept}; the path is made absolute under root when given."""
        path = os.path.join(root, self.path) if root is not None else self.path
        return {**path_fields(path), "score": round(self.score, 6), "exact": self.exact, "kept": self.kept}


@dataclass
class Duplicates:
    """Groups (kept image first, then by score), blank images apart, and the threshold that made them."""

    groups: list[list[Member]]
    blank: list[str]
    threshold: float
    threshold_source: str
    keep: str = "largest"
    pixel_check: bool = True

    def to_dict(self, root: str | os.PathLike | None = None) -> dict:
        """The one document of `btembed dedup --json` and `GET /api/duplicates`."""
        def where(p):  # a name that is not UTF-8 as text (U+FFFD); members keep path_bytes (btembed.names)
            return shown(os.path.join(root, p) if root is not None else p)
        return {"groups": [{"members": [m.to_dict(root) for m in g]} for g in self.groups],
                "blank": [where(p) for p in self.blank], "threshold": self.threshold, "keep": self.keep,
                "pixel_check": self.pixel_check}

    def actions(self, root: str | os.PathLike | None = None) -> dict:
        """What to keep and what could be removed, per group (a list to act on: nothing is deleted here)."""
        def where(p):
            return os.path.join(root, p) if root is not None else p
        plan = [{"keep": where(g[0].path), "remove": [where(m.path) for m in g[1:]]} for g in self.groups]
        return {"rule": f"keep-{self.keep}", "threshold": self.threshold, "groups": plan,
                "remove_count": sum(len(g) - 1 for g in self.groups),
                "remove_bytes": sum(m.bytes for g in self.groups for m in g[1:])}


@dataclass
class NeighbourGraph:
    """Symmetric edges id → {id: cosine} at or above a floor, and the pairs of byte-identical files."""

    edges: dict[int, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    exact: set[frozenset] = field(default_factory=set)

    def add(self, a: int, b: int, score: float) -> None:
        """Record one edge both ways (the higher score wins when it is seen twice)."""
        if a != b:
            s = max(score, self.edges[a].get(b, -1.0))
            self.edges[a][b] = self.edges[b][a] = s

    def linked(self, a: int, b: int, score: float, threshold: float) -> bool:
        """True when a and b count as duplicates at this threshold."""
        return score >= threshold or frozenset((a, b)) in self.exact

    def only(self, threshold: float, passed: set[frozenset]) -> "NeighbourGraph":
        """The graph of the pairs within the threshold that passed a check, and of the byte-identical ones."""
        out = NeighbourGraph(exact=set(self.exact))
        for a, nb in self.edges.items():
            for b, s in nb.items():
                if frozenset((a, b)) in self.exact or (s >= threshold and frozenset((a, b)) in passed):
                    out.add(a, b, s)
        return out


def neighbour_graph(index: ImageIndex, k: int = 16, floor: float = 0.0, chunk: int = 4096) -> NeighbourGraph:
    """Every image's k nearest neighbours at or above floor, from the search index (memory O(N·k), never N×N)."""
    graph = NeighbourGraph()
    for ids in identical_files(index):
        for a in ids:
            for b in ids:
                if a < b:
                    graph.add(a, b, 1.0)
                    graph.exact.add(frozenset((a, b)))
    k = min(k + 1, index.ann.ntotal)  # +1: a vector finds itself
    if k > 1:
        for ids, vecs in index.catalog.chunks(chunk):
            scores, found = index.ann.search(vecs, k, fetch=index.catalog.fetch)
            for src, srow, frow in zip(ids, scores, found):
                for s, j in zip(srow, frow):
                    if j >= 0 and s >= floor:
                        graph.add(int(src), int(j), float(s))
    return graph


def identical_files(index: ImageIndex) -> list[list[int]]:
    """Row ids of files with identical bytes, grouped: same size and content hash, confirmed by sha256."""
    # The confirmation matters for a catalog opened only read-only since an older btembed: it still holds partial
    # hashes (a writable open forgets them).
    out = []
    for members in index.catalog.identical_groups():
        by_sha = defaultdict(list)
        for row in members:
            try:
                by_sha[sha256_file(index.root / row.path)].append(row.id)
            except OSError:
                continue  # vanished since indexing
        out.extend(ids for ids in by_sha.values() if len(ids) > 1)
    return out


def nearest_kept_groups(graph: NeighbourGraph, threshold: float, keep_key: Callable[[int], tuple],
                        skip: set = frozenset()) -> list[list[int]]:
    """The grouping rule of this module's docstring: [[kept, member, ...], ...] in keep order."""
    nodes = [n for n, nb in graph.edges.items() if n not in skip
             and any(m not in skip and graph.linked(n, m, s, threshold) for m, s in nb.items())]
    order = sorted(nodes, key=keep_key)
    kept: dict[int, list[int]] = {}
    for n in order:
        if not any(m in kept and graph.linked(n, m, s, threshold) for m, s in graph.edges[n].items()):
            kept[n] = [n]
    rank = {n: i for i, n in enumerate(kept)}
    for n in order:
        if n not in kept:
            # an exact copy of a kept image counts as 1.0, its closest possible match; ties go to the earlier kept
            best = max((1.0 if frozenset((n, m)) in graph.exact else s, -rank[m], m) for m, s in graph.edges[n].items()
                       if m in kept and graph.linked(n, m, s, threshold))
            kept[best[2]].append(n)
    return [g for g in kept.values() if len(g) > 1]


@dataclass
class FileFacts:
    """What the keep rules, the blank test and the pixel check need to know about one file."""

    width: int = 0
    height: int = 0
    blank: bool = False
    thumb: object = None  # pixel_check.thumbnail of the picture (64 x 64 RGB uint8), None when unreadable


def inspect_file(path: str | os.PathLike) -> FileFacts:
    """Pixel size (from the header) and whether the picture is one flat colour (from a small decode)."""
    from PIL import Image

    from ..images import open_image

    if not os.path.isfile(path):
        return FileFacts()  # gone, or replaced by something that is no file (a pipe would block the read)
    try:
        with Image.open(path) as im:
            width, height = im.size
        small = open_image(path, min_size=64)
        small.thumbnail((128, 128))
        blank = all(hi - lo <= BLANK_RANGE for lo, hi in small.getextrema())
        return FileFacts(width, height, blank, pixels.thumbnail(small))
    except (OSError, ValueError, BtembedError, Image.DecompressionBombError):
        return FileFacts()


def has_copy_marker(path: str) -> bool:
    """True when the file name looks like a copy's ("a copy.jpg", "a (1).jpg", "Copy of a.jpg", "a_1.jpg")."""
    return bool(COPY_MARKER.search(os.path.splitext(os.path.basename(path))[0]))


def keep_key(rule: str, rows: dict, facts: dict) -> Callable[[int], tuple]:
    """Sort key putting the image to keep first (the rule of this module's docstring, ties to the likely original)."""
    if rule not in KEEP_RULES:
        raise BtembedError(f"unknown keep rule {rule!r}; use one of: {', '.join(KEEP_RULES)}")

    def original_first(r) -> tuple:
        return (has_copy_marker(r.path), len(r.path), r.path)

    def largest(i):
        f, r = facts[i], rows[i]
        return (-f.width * f.height, -r.size, r.mtime_ns, *original_first(r))

    def oldest(i):
        f, r = facts[i], rows[i]
        return (r.mtime_ns, -f.width * f.height, -r.size, *original_first(r))
    return largest if rule == "largest" else oldest


def model_threshold(index: ImageIndex, pixel_check: bool = True) -> tuple[float, str]:
    """The calibrated duplicate threshold of the model the folder was indexed with, or 0.95 and why.

    With the pixel check the model's `duplicate_threshold` holds; without it, `duplicate_threshold_embedding_only`
    (a threshold calibrated with the check sits lower, where the embedding alone groups distinct photos).
    """
    from ..modelfolder import ModelFolder

    key = "duplicate_threshold" if pixel_check else "duplicate_threshold_embedding_only"
    value = None
    try:
        if index._embedder is not None:
            config = index._embedder.config
        else:
            meta = index.catalog.meta()
            config = ModelFolder.resolve(meta.get("model_source"), revision=meta.get("model_revision")).config
        value = getattr(config, key)
    except (BtembedError, OSError):
        value = None
    if value is None:
        return DEFAULT_THRESHOLD, (f"threshold {DEFAULT_THRESHOLD}: the folder's model records no calibrated {key} "
                                   "(--threshold sets one)")
    return float(value), f"threshold {value}: the model's calibrated {key}"


def find_duplicates(index: ImageIndex, threshold: float | None = None, *, k: int = 16, keep: str = "largest",
                    graph: NeighbourGraph | None = None, facts: dict | None = None,
                    leave_out: set[str] = frozenset(), pixel_check: bool = True,
                    checks: dict | None = None) -> Duplicates:
    """Groups of near-duplicate images of an indexed folder (see the module docstring for the rule).

    threshold: cosine to the kept image; None takes the model's calibrated value (0.95 when it has none).
    graph/facts: reuse a neighbour graph built at a lower floor and per-file facts across calls (the server does).
    leave_out: relative paths to treat as absent (the server's images that a symlink leads out of the folder).
    pixel_check: a pair within the threshold must also pass the pixel check (search/pixel_check.py) to group.
    checks: pixel-check results by pair, reused across calls (a pair's result does not depend on the threshold).
    """
    source = "--threshold"
    if threshold is None:
        threshold, source = model_threshold(index, pixel_check)
    if not -1.0 <= threshold <= 1.0:
        raise BtembedError(f"the threshold is a cosine similarity between -1 and 1, not {threshold}")
    graph = graph if graph is not None else neighbour_graph(index, k=k, floor=min(threshold, 1.0))
    facts = facts if facts is not None else {}
    candidates = [n for n, nb in graph.edges.items() if any(graph.linked(n, m, s, threshold) for m, s in nb.items())]
    paths = index.catalog.paths(candidates)
    rows = {i: index.catalog.lookup(p) for i, p in paths.items()}
    rows = {i: r for i, r in rows.items() if r is not None and r.ok and r.path not in leave_out}  # or gone since
    for i in rows:
        if i not in facts:
            facts[i] = inspect_file(index.root / rows[i].path)
    blank = {i for i in rows if facts[i].blank}
    gone = set(candidates) - set(rows)
    skip = blank | gone
    if pixel_check:
        graph = graph.only(threshold, checked_pairs(graph, threshold, facts, skip, checks))
    groups = nearest_kept_groups(graph, threshold, keep_key(keep, rows, facts), skip=skip)
    out = []
    for g in groups:
        vecs = index.catalog.fetch(g)
        sims = vecs @ vecs[0]
        members = [Member(rows[i].path, 1.0 if j == 0 else float(s), j > 0 and frozenset((g[0], i)) in graph.exact,
                          j == 0, i, rows[i].size, facts[i].width, facts[i].height, rows[i].mtime_ns)
                   for j, (i, s) in enumerate(zip(g, sims))]
        members[1:] = sorted(members[1:], key=lambda m: (-m.exact, -m.score, m.path))
        out.append(members)
    out.sort(key=lambda g: (-len(g), g[0].path))
    return Duplicates(out, sorted(rows[i].path for i in blank), float(threshold), source, keep, pixel_check)


def checked_pairs(graph: NeighbourGraph, threshold: float, facts: dict, skip: set,
                  checks: dict | None = None) -> set[frozenset]:
    """The pairs within the threshold (byte-identical ones aside) whose pictures pass the pixel check.

    A picture that cannot be read now passes with nobody: what cannot be looked at is not called a copy.
    """
    checks = {} if checks is None else checks
    pairs = [(a, b) for a, nb in graph.edges.items() for b, s in nb.items()
             if a < b and s >= threshold and a not in skip and b not in skip
             and frozenset((a, b)) not in graph.exact
             and facts.get(a) is not None and facts[a].thumb is not None
             and facts.get(b) is not None and facts[b].thumb is not None]
    new = [pair for pair in pairs if frozenset(pair) not in checks]
    passed = pixels.passing_pairs(new, {n: facts[n].thumb for pair in new for n in pair})
    checks.update({frozenset(pair): frozenset(pair) in passed for pair in new})
    return {frozenset(pair) for pair in pairs if checks[frozenset(pair)]}
