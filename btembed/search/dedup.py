"""Near-duplicate groups: a k-nearest-neighbour graph from the FAISS index + union-find (never an N×N matrix);
files with identical bytes are always grouped."""
from __future__ import annotations

from collections import defaultdict

from ..modelfiles import sha256_file
from .search import Hit, ImageIndex


class UnionFind:
    """Disjoint sets over arbitrary hashable keys, with path halving and union by size."""

    def __init__(self):
        self.parent: dict = {}
        self.size: dict = {}

    def find(self, x):
        """The representative of x's set."""
        self.parent.setdefault(x, x)
        self.size.setdefault(x, 1)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b) -> None:
        """Merge the sets of a and b."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self) -> list[list]:
        """Sets with more than one member."""
        out = defaultdict(list)
        for x in self.parent:
            out[self.find(x)].append(x)
        return [g for g in out.values() if len(g) > 1]


def exact_copy_pairs(index: ImageIndex) -> list[tuple[int, int]]:
    """(id, id) pairs of files with identical bytes: same size + hash, confirmed by a full sha256."""
    # The confirmation matters for a catalog opened only read-only since an older btembed: it still holds partial
    # hashes (a writable open forgets them).
    pairs = []
    for members in index.catalog.identical_groups():
        by_sha = defaultdict(list)
        for row in members:
            try:
                by_sha[sha256_file(index.root / row.path)].append(row.id)
            except OSError:
                continue  # vanished since indexing
        for ids in by_sha.values():
            pairs.extend((ids[0], other) for other in ids[1:])
    return pairs


def find_duplicates(index: ImageIndex, threshold: float = 0.95, k: int = 16,
                    chunk: int = 4096) -> list[list[Hit]]:
    """Groups of images whose cosine similarity is ≥ threshold (transitively), plus exact copies.

    Each group starts with its representative (first path) at score 1.0; the others carry their cosine to it.
    Memory is O(N·k): every vector asks the index for its k nearest neighbours, chunk by chunk.
    """
    uf = UnionFind()
    for a, b in exact_copy_pairs(index):
        uf.union(a, b)
    k = min(k + 1, index.ann.ntotal)  # +1: a vector finds itself
    if k > 1:
        for ids, vecs in index.catalog.chunks(chunk):
            scores, found = index.ann.search(vecs, k, fetch=index.catalog.fetch)
            for src, srow, frow in zip(ids, scores, found):
                for s, j in zip(srow, frow):
                    if j >= 0 and j != src and s >= threshold:
                        uf.union(int(src), int(j))
    groups = uf.groups()
    paths = index.catalog.paths([i for g in groups for i in g])
    out = []
    for g in groups:
        g = sorted(g, key=lambda i: paths[i])
        vecs = index.catalog.fetch(g)
        sims = vecs @ vecs[0]
        members = [Hit(str(index.root / paths[i]), float(min(1.0, s)), i) for i, s in zip(g, sims)]
        members[1:] = sorted(members[1:], key=lambda h: (-h.score, h.path))
        members[0].score = 1.0
        out.append(members)
    out.sort(key=lambda m: (-len(m), m[0].path))
    return out
