"""FAISS indexes tiered by size (exact flat → IVF → IVF-PQ → IVF-PQ on disk), nprobe tuned for recall; saved as a
plain FAISS file with a JSON sidecar (annfile)."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from ..errors import CatalogError
from . import annfile, ondisk
# Probe ladder (~1.5x steps): fine enough that the chosen nprobe is not twice what the recall target needs.
_LADDER = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
           4096, 6144, 8192]


@dataclass
class AnnConfig:
    """How the FAISS tier is chosen and tuned; stored in the index header so rebuilds repeat the choice."""

    flat_max_floats: int = 1 << 24  # N·d up to this → exact IndexFlatIP (≈ 8k vectors of 2048-d, ≈ 5 ms/query)
    max_memory: int | None = None  # bytes the index may hold in RAM; vectors above it → IVF-PQ (None = no limit)
    target_recall: float = 0.95  # recall@10 the approximate tiers are tuned to reach
    tune_margin: float = 0.01  # tune a little above target: the tuning queries are a sample
    nlist_per_sqrt: float = 4.0  # nlist ≈ this · √N (autofaiss-like 4–16)
    train_per_list: int = 50  # training vectors per inverted list (faiss warns below 39)
    kmeans_iters: int = 10
    tune_queries: int = 256
    rerank: int = 8  # IVF-PQ: candidates per wanted hit, re-scored exactly from stored vectors
    opq: bool = False  # IVF-PQ: learn a rotation first (better codes, slower training)
    on_disk: bool = False  # force the on-disk tier (tests, or an archive that should not be held in RAM)
    # On-disk IVF-PQ code size: RAM does not bound it, search time and disk do. bench/ann_scale.py: at 1 M × 512-d
    # embedding-like vectors d/8 bytes reach recall@10 0.949 with every list scanned, d/4 (128 B) 0.95 at nprobe 24;
    # at 2048-d 256 B reach 0.96 and scan twice as fast as 512 B (p99 3.5 vs 6.2 ms of CPU per query).
    ondisk_bytes_per_dim: float = 1 / 4
    ondisk_max_bytes: int = 256
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict | None) -> "AnnConfig":
        """Build from a mapping, ignoring unknown keys."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


class VectorSource(Protocol):
    """Where vectors come from when building: the catalog, or arrays (tests, benchmarks)."""

    count: int
    dim: int

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]: ...

    def fetch(self, ids) -> np.ndarray: ...


@dataclass
class ArraySource:
    """A VectorSource over in-memory arrays."""

    ids: np.ndarray
    vectors: np.ndarray
    chunk: int = 65536
    count: int = field(init=False)
    dim: int = field(init=False)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.count, self.dim = self.vectors.shape
        self._row = {int(i): r for r, i in enumerate(self.ids)} if self.count else {}

    def chunks(self):
        for s in range(0, self.count, self.chunk):
            yield self.ids[s:s + self.chunk], self.vectors[s:s + self.chunk]

    def sample(self, n, seed=0):
        rows = np.arange(self.count) if n >= self.count else np.sort(
            np.random.default_rng(seed).choice(self.count, n, replace=False))
        return self.ids[rows], self.vectors[rows]

    def fetch(self, ids):
        return self.vectors[[self._row[int(i)] for i in ids]]


def parse_size(text: str | int | None) -> int | None:
    """'16G', '512MiB', '1.5GB', 1000 → bytes (binary units); None stays None."""
    if text is None or isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    try:
        value = float(s[:-1] if scale > 1 else s)
    except ValueError:
        raise CatalogError(f"cannot read the size {text!r}; write it like 512M or 16G") from None
    if value <= 0:
        raise CatalogError(f"a size must be more than 0, not {text!r}; write it like 512M or 16G")
    return int(value * scale)


def choose_tier(n: int, dim: int, cfg: AnnConfig) -> str:
    """'flat' for small sets, 'ivf' while the raw vectors fit max_memory, 'ivfpq' while codes of at least d/16
    bytes do (coarser ones lose too much recall), else 'ondisk' (or whenever cfg.on_disk)."""
    if cfg.on_disk and n >= 2:  # k-means needs two points
        return "ondisk"
    if n * dim <= cfg.flat_max_floats:
        return "flat"
    if cfg.max_memory is None or n * (dim * 4 + 8) <= cfg.max_memory:
        return "ivf"
    return "ivfpq" if n * (max(1, dim // 16) + 8) <= cfg.max_memory else "ondisk"


def choose_nlist(n: int, cfg: AnnConfig) -> int:
    """nlist ≈ k·√N, but never so many lists that each gets fewer than ~30 training vectors."""
    return max(1, min(int(cfg.nlist_per_sqrt * math.sqrt(n)), n // 30))


def choose_pq_m(n: int, dim: int, cfg: AnnConfig) -> int:
    """The most PQ bytes per vector (a divisor of dim) that fit max_memory next to the 8-byte ids."""
    budget = cfg.max_memory / max(n, 1) - 8
    options = [m for m in range(1, dim // 2 + 1) if dim % m == 0 and m <= budget]
    if not options:
        raise CatalogError(f"--max-memory {cfg.max_memory} bytes is too small for {n} vectors even compressed "
                           f"(need ≥ {(n * 9) >> 20} MiB); raise --max-memory")
    return max(options)


def choose_ondisk_m(dim: int, cfg: AnnConfig) -> int:
    """PQ bytes per vector of the on-disk tier: the largest divisor of dim up to dim·ondisk_bytes_per_dim (at most
    ondisk_max_bytes)."""
    cap = max(1, min(int(dim * cfg.ondisk_bytes_per_dim), cfg.ondisk_max_bytes))
    return max(m for m in range(1, cap + 1) if dim % m == 0)


def choose_nbits(n_train: int) -> int:
    """Bits per PQ code: 8 (256 centroids per sub-vector), fewer only when too few vectors exist to train 256."""
    return max(1, min(8, int(math.log2(max(2, n_train // 39)))))


class AnnIndex:
    """A FAISS index whose ids are catalog row ids, plus the tier facts needed to search it well."""

    def __init__(self, index, tier: str, info: dict | None = None):
        self.index = index
        self.tier = tier
        self.info = dict(info or {})
        if tier != "flat":
            self.nprobe = int(self.info.get("nprobe", 1))

    @property
    def ntotal(self) -> int:
        """Number of vectors held."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Vector width."""
        return int(self.index.d)

    @property
    def nprobe(self) -> int:
        """Inverted lists visited per query (approximate tiers)."""
        import faiss

        return int(faiss.extract_index_ivf(self.index).nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        import faiss

        faiss.extract_index_ivf(self.index).nprobe = int(value)
        self.info["nprobe"] = int(value)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under the given ids."""
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))

    def remove(self, ids) -> int:
        """Remove ids (absent ones are ignored); returns how many went."""
        import faiss

        ids = np.asarray(ids, dtype=np.int64)
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids))) if len(ids) else 0

    def search(self, queries: np.ndarray, k: int, fetch: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best inner products per query; ids -1 pad when fewer exist."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, int(k))
        rerank = int(self.info.get("rerank", 1)) if self.tier in PQ_TIERS and fetch is not None else 1
        scores, ids = self.index.search(queries, k * rerank)
        if rerank > 1:
            scores, ids = _rescore(queries, ids, k, fetch)
        return scores[:, :k], ids[:, :k]

    def apply_changes(self, remove_ids: np.ndarray, chunks, folder: Path | None) -> None:
        """Drop remove_ids, then add the chunks' (ids, vectors); an on-disk index is rewritten into a new .ivfdata
        in folder (never the mapped one), an in-memory one changed in place."""
        if self.tier != "ondisk":
            self.remove(remove_ids)
            for ids, vecs in chunks:
                self.add(ids, vecs)
            return
        nprobe = self.nprobe
        self.index, self.info["ivfdata"] = ondisk.update(self.index, remove_ids, chunks, Path(folder))
        self.nprobe = nprobe

    # --- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, header: dict) -> None:
        """Write a plain FAISS file + its JSON sidecar, each by rename; an on-disk tier keeps its .ivfdata and
        the one it replaced (a reader may have opened it just before), older ones go."""
        path = Path(path)
        previous = (annfile.read_header(path) or {}).get("info", {}).get("ivfdata")
        annfile.write(self.index, path, {**header, "tier": self.tier, "info": self.info})
        ondisk.collect_data_files(path.parent, {self.info.get("ivfdata"), previous})

    @staticmethod
    def read_header(path: str | os.PathLike) -> dict | None:
        """The settings of a saved index, or None when missing or not ours."""
        return annfile.read_header(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["AnnIndex", dict]:
        """(index, header) of a saved file (on-disk lists memory-mapped read-only); ValueError when damaged."""
        header = annfile.read_header(path) or {}
        index, header = annfile.read(path, on_disk=header.get("tier") == "ondisk")
        return cls(index, header["tier"], header.get("info")), header


PQ_TIERS = ("ivfpq", "ondisk")  # approximate codes: candidates are re-scored exactly from stored vectors


def _rescore(queries, ids, k, fetch):
    """Exact inner products for candidate ids (IVF-PQ scores are approximate), best k per query."""
    uniq = np.unique(ids[ids >= 0])
    vecs = _fetch_present(fetch, uniq, queries.shape[1])
    pos = np.searchsorted(uniq, np.where(ids >= 0, ids, uniq[0] if len(uniq) else 0))
    exact = np.einsum("qd,qcd->qc", queries, vecs[pos]) if len(uniq) else np.zeros(ids.shape, np.float32)
    exact = np.where((ids >= 0) & ~np.isnan(exact), exact, -np.inf).astype(np.float32)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)


def _fetch_present(fetch, ids: np.ndarray, dim: int) -> np.ndarray:
    """fetch(ids), with NaN rows for ids that have no vector any more (an index older than its catalog)."""
    if not len(ids):
        return np.zeros((0, dim), np.float32)
    try:
        return fetch(ids)
    except KeyError:
        out = np.full((len(ids), dim), np.nan, np.float32)
        for row, i in enumerate(ids):
            try:
                out[row] = fetch([i])[0]
            except KeyError:
                pass
        return out


def exact_knn(source: VectorSource, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by brute force, streamed over the source's chunks (never all vectors at once)."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for ids, vecs in source.chunks():
        kk = min(k, len(ids))
        d, i = faiss.knn(queries, np.ascontiguousarray(vecs), kk, metric=faiss.METRIC_INNER_PRODUCT)
        mapped = np.where(i >= 0, ids[np.clip(i, 0, None)], -1)
        if kk < k:  # pad so every block has k columns
            d = np.pad(d, ((0, 0), (0, k - kk)), constant_values=-np.inf)
            mapped = np.pad(mapped, ((0, 0), (0, k - kk)), constant_values=-1)
        heap.add_result(np.ascontiguousarray(d, np.float32), np.ascontiguousarray(mapped, np.int64))
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int, exclude: np.ndarray | None = None) -> float:
    """Mean |found ∩ truth| / k over queries, ignoring each query's own id when exclude is given."""
    hits = 0
    for r in range(len(truth)):
        t = [i for i in truth[r] if i >= 0 and (exclude is None or i != exclude[r])][:k]
        f = [i for i in found[r] if i >= 0 and (exclude is None or i != exclude[r])][:k]
        hits += len(set(t) & set(f)) / max(1, len(t))
    return hits / max(1, len(truth))


def tune_nprobe(ann: AnnIndex, source: VectorSource, cfg: AnnConfig, k: int = 10) -> None:
    """Pick the smallest nprobe whose recall@k (vs exact search, own id excluded) reaches the target; IVF-PQ
    re-scores more candidates (up to 8× cfg.rerank) when its codes are too coarse for any nprobe to get there.
    Short of the target, the setting with the best recall (the cheapest of equals) is kept."""
    q_ids, queries = source.sample(min(cfg.tune_queries, source.count), seed=cfg.seed + 1)
    _, truth = exact_knn(source, queries, k + 1)
    nlist = int(ann.info["nlist"])
    goal = min(1.0, cfg.target_recall + cfg.tune_margin)
    reranks = [cfg.rerank * f for f in (1, 2, 4, 8)] if ann.tier in PQ_TIERS else [None]
    tried: list[tuple[float, int, int, int | None]] = []  # (recall, -cost, nprobe, rerank)
    for rerank in reranks:
        if rerank is not None:
            ann.info["rerank"] = rerank
        for nprobe in [p for p in _LADDER if p < nlist] + [nlist]:
            ann.nprobe = nprobe
            _, found = ann.search(queries, k + 1, fetch=source.fetch)
            recall = recall_at_k(found, truth, k, exclude=q_ids)
            tried.append((round(recall, 3), -nprobe * (rerank or 1), nprobe, rerank))
            if recall >= goal:
                break
            # PQ codes rank the candidates too coarsely: more lists bring no more true neighbours into the
            # re-scored few (two ladder steps without +0.002), so re-score more candidates instead.
            if rerank is not None and len(tried) >= 3 and tried[-1][3] == tried[-3][3] and (
                    tried[-1][0] < tried[-3][0] + 0.002):
                break
        if recall >= goal:
            break
    if recall < goal:
        recall, _, nprobe, rerank = max(tried)
        ann.nprobe = nprobe
        if rerank is not None:
            ann.info["rerank"] = rerank
    ann.info.update(recall_at_10=round(recall, 4), tune_queries=len(queries))


def build(source: VectorSource, cfg: AnnConfig, progress: Callable[[str], None] | None = None,
          folder: Path | None = None) -> AnnIndex:
    """Build the tier that fits source.count and cfg from scratch: train on a sample, add in chunks, tune.

    folder: where the on-disk tier writes its .ivfdata; without one (a reader that may not write) that tier is
    built as IVF-PQ in memory with the same codes.
    """
    import faiss

    n, d = source.count, source.dim
    tier = choose_tier(n, d, cfg)
    ondisk_codes = tier == "ondisk"
    if ondisk_codes and folder is None:
        tier = "ivfpq"
    say = progress or (lambda _msg: None)
    info: dict = {"trained_n": n, "config": asdict(cfg)}
    if tier == "flat":
        ann = AnnIndex(faiss.IndexIDMap2(faiss.IndexFlatIP(d)), tier, info)
    else:
        nlist = choose_nlist(n, cfg)
        info["nlist"] = nlist
        if tier == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            n_train = min(n, cfg.train_per_list * nlist)
        else:
            m = choose_ondisk_m(d, cfg) if ondisk_codes else choose_pq_m(n, d, cfg)
            n_train = min(n, max(cfg.train_per_list * nlist, 256 * 40))  # PQ codebooks need ~40·256 points
            nbits = choose_nbits(n_train)
            info.update(pq_m=m, pq_nbits=nbits, rerank=cfg.rerank, opq=cfg.opq)
            # "np": no polysemous training — it is slow (annealing) and only helps Hamming pre-filtering.
            spec = (f"OPQ{m}," if cfg.opq else "") + f"IVF{nlist},PQ{m}x{nbits}np"
            index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.niter = cfg.kmeans_iters
        ivf.cp.seed = cfg.seed
        if hasattr(ivf, "pq"):  # PQ codebooks: one k-means per sub-vector, 25 iterations by default
            ivf.pq.cp.niter = cfg.kmeans_iters
        say(f"training {tier} index ({nlist} lists) on {n_train} of {n} vectors")
        index.train(source.sample(n_train, seed=cfg.seed)[1])
        if tier == "ondisk":
            say(f"writing on-disk inverted lists of {n} vectors to {folder}")
            index, info["ivfdata"] = ondisk.build(index, source.chunks(), Path(folder), say=say)
        ann = AnnIndex(index, tier, info)
    if tier != "ondisk":
        for ids, vecs in source.chunks():
            ann.add(ids, vecs)
    if tier != "flat":
        say("tuning nprobe for recall@10")
        tune_nprobe(ann, source, cfg)
        if ann.info["recall_at_10"] < cfg.target_recall:
            fix = "raise --max-memory for better codes" if tier == "ivfpq" else "raise ondisk_bytes_per_dim"
            say(f"warning: the {tier} index reaches recall@10 {ann.info['recall_at_10']:.3f} at best, under the "
                f"{cfg.target_recall} target; {fix}")
    return ann


def needs_rebuild(ann: AnnIndex, n: int, cfg: AnnConfig) -> bool:
    """True when the set has grown or shrunk out of what this index was chosen and trained for."""
    if choose_tier(n, ann.dim, cfg) != ann.tier:
        return True
    if ann.tier == "flat":
        return False
    trained = int(ann.info.get("trained_n", n))
    return n > 4 * trained or n < trained // 4
