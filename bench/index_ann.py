"""Benchmark the FAISS tiers side by side on synthetic clustered vectors: build time, memory, recall@10 against
exact search on held-out queries, single-thread query latency p50/p99.

    python bench/index_ann.py                 # 200k × 2048-d (the machine's budget; see --n)
    python bench/index_ann.py --n 1000000     # the issue's 1M, needs ~3× 8 GB of RAM and much longer

Every tier is built by btembed.search.ann.build, the same code `btembed index` runs. IVF-PQ re-scores its candidates
exactly from stored vectors; here those come from RAM, so a separate row times fetching them from a real SQLite
catalog (what `btembed search` pays on top).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btembed.search.ann import AnnConfig, ArraySource, build, exact_knn, recall_at_k  # noqa: E402
from btembed.search.catalog import CATALOG_FILE, Catalog  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def mixture(n: int, dim: int, clusters: int, seed: int, center_seed: int = 7) -> np.ndarray:
    """L2-normalized Gaussian mixture: cluster centres with per-cluster spread (tight and loose kinds)."""
    crng = np.random.default_rng(center_seed)
    centers = crng.standard_normal((clusters, dim)).astype(np.float32)
    spread = crng.uniform(0.4, 1.0, clusters).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 20000):
        lab = rng.integers(0, clusters, min(20000, n - s))
        x = centers[lab] + spread[lab, None] * rng.standard_normal((len(lab), dim), dtype=np.float32)
        out[s:s + len(lab)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latency(ann, queries, fetch, repeat: int) -> tuple[float, float]:
    """p50/p99 milliseconds of one-query-at-a-time search on one thread."""
    times = []
    for q in queries[:repeat]:
        t = time.perf_counter()
        ann.search(q[None], 10, fetch=fetch)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def catalog_fetch_ms(dim: int, rows: int, per_query: int, repeat: int = 200) -> float:
    """Median ms to fetch per_query random vectors by id from an on-disk float16 catalog of `rows` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        cat = Catalog.open(Path(tmp) / CATALOG_FILE, create=True)
        cat.set_many({"dim": dim, "vector_dtype": "float16"})
        rng = np.random.default_rng(0)
        with cat.transaction():
            for i in range(rows):
                cat.put(f"f{i}.jpg", i, 0, None, 1, vector=cat.encode(rng.standard_normal(dim, dtype=np.float32)))
        times = []
        for _ in range(repeat):
            ids = rng.choice(rows, per_query, replace=False) + 1
            t = time.perf_counter()
            cat.fetch(ids)
            times.append((time.perf_counter() - t) * 1000)
        cat.close()
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=500, help="held-out queries for recall")
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--pq-fraction", type=float, default=1 / 32, help="IVF-PQ max-memory as a share of raw size")
    args = ap.parse_args()
    import faiss

    n, dim = args.n, args.dim
    t = time.perf_counter()
    base = mixture(n, dim, args.clusters, seed=1)
    queries = mixture(args.queries, dim, args.clusters, seed=2)  # same mixture, not in the index
    print(f"data: {n} × {dim} clustered vectors ({base.nbytes / 2**30:.2f} GiB) in {time.perf_counter() - t:.1f} s",
          flush=True)
    src = ArraySource(np.arange(n, dtype=np.int64), base)
    t = time.perf_counter()
    _, truth = exact_knn(src, queries, 10)
    exact_s = time.perf_counter() - t

    raw = n * (dim * 4 + 8)
    configs = [("flat (exact)", AnnConfig(flat_max_floats=n * dim)),
               ("ivf", AnnConfig(flat_max_floats=0)),
               ("ivfpq", AnnConfig(flat_max_floats=0, max_memory=int(raw * args.pq_fraction)))]
    rows = []
    for name, cfg in configs:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        t = time.perf_counter()
        ann = build(src, cfg, progress=lambda m: print("  " + m, flush=True))
        build_s = time.perf_counter() - t
        index_bytes = len(faiss.serialize_index(ann.index))  # what the index holds in RAM, ids included
        _, found = ann.search(queries, 10, fetch=src.fetch)
        recall = recall_at_k(found, truth, 10)
        faiss.omp_set_num_threads(1)
        reps = args.latency_queries if ann.tier != "flat" else min(args.latency_queries, 50)
        p50, p99 = latency(ann, queries, src.fetch, reps)
        row = {"tier": ann.tier, "name": name, "build_s": round(build_s, 2), "index_mib": round(index_bytes / 2**20, 1),
               "recall_at_10": round(recall, 4),
               "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "nlist": ann.info.get("nlist"),
               "nprobe": ann.info.get("nprobe"), "pq_m": ann.info.get("pq_m"), "rerank": ann.info.get("rerank"),
               "tuned_recall_at_10": ann.info.get("recall_at_10"), "latency_queries": reps}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del ann

    pq = next(r for r in rows if r["tier"] == "ivfpq")
    fetch_ms = catalog_fetch_ms(dim, 20_000, 10 * pq["rerank"])
    result = {"n": n, "dim": dim, "clusters": args.clusters, "held_out_queries": args.queries,
              "exact_ground_truth_s": round(exact_s, 2), "rows": rows,
              "ivfpq_catalog_fetch_ms_per_query": round(fetch_ms, 3),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "faiss": faiss.__version__}}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"index_ann_{n // 1000}k"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"FAISS tiers on {n:,} × {dim}-d clustered vectors ({args.clusters} clusters), "
             f"recall@10 vs exact on {args.queries} held-out queries, latency 1 thread, one query at a time",
             "", "| tier | build s | index MiB | recall@10 | p50 ms | p99 ms | nlist | nprobe | PQ bytes | rerank |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['build_s']} | {r['index_mib']} | {r['recall_at_10']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['nlist'] or '-'} | {r['nprobe'] or '-'} | {r['pq_m'] or '-'} | "
                     f"{r['rerank'] or '-'} |")
    lines.append("")
    lines.append(f"IVF-PQ re-scores {10 * pq['rerank']} candidates per query exactly; fetching them from an "
                 f"on-disk float16 catalog adds a median {fetch_ms:.2f} ms per query (not in the p50/p99 above).")
    text = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
