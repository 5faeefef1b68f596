"""FAISS tiering: the tier chosen for a size and memory budget, and its recall@10 against exact search."""
from __future__ import annotations

import numpy as np
import pytest

from btembed.search.ann import (AnnConfig, AnnIndex, ArraySource, build, choose_nlist, choose_tier, exact_knn,
                         needs_rebuild, parse_size, recall_at_k)


def clustered(n, dim, clusters, seed, spread=0.35):
    """L2-normalized Gaussian-mixture vectors, like embeddings of photos of a few hundred kinds of things."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).standard_normal((clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def held_out_recall(ann, source, queries, k=10):
    """recall@k of ann on queries that are not in the index, against brute force over the source."""
    _, truth = exact_knn(source, queries, k)
    _, found = ann.search(queries, k, fetch=source.fetch)
    return recall_at_k(found, truth, k)


def test_tier_selection_by_size_and_memory():
    cfg = AnnConfig(flat_max_floats=1 << 20, max_memory=1 << 30)
    assert choose_tier(1000, 512, cfg) == "flat"
    assert choose_tier(10_000, 512, cfg) == "ivf"
    assert choose_tier(1_000_000, 512, cfg) == "ivfpq"  # 2 GB of float32 > 1 GiB budget
    assert choose_tier(1_000_000, 512, AnnConfig(max_memory=None)) == "ivf"
    n = 1_000_000
    assert 4 * n ** 0.5 <= choose_nlist(n, AnnConfig()) <= 16 * n ** 0.5
    assert choose_nlist(3000, AnnConfig()) == 100  # capped so each list still gets ~30 training vectors
    assert parse_size("512M") == 512 << 20 and parse_size("1.5GiB") == int(1.5 * (1 << 30))


def test_flat_tier_is_exact():
    x = clustered(2000, 64, 20, seed=0)
    src = ArraySource(np.arange(100, 2100), x)
    ann = build(src, AnnConfig())
    assert ann.tier == "flat" and ann.ntotal == 2000
    q = clustered(50, 64, 20, seed=1)
    assert held_out_recall(ann, src, q) == 1.0


@pytest.mark.parametrize("tier, cfg", [
    ("ivf", AnnConfig(flat_max_floats=1 << 16)),
    ("ivfpq", AnnConfig(flat_max_floats=1 << 16, max_memory=20_000 * 16)),
])
def test_approximate_tiers_reach_recall_target(tier, cfg):
    n, dim = 20_000, 64
    x = clustered(n, dim, 200, seed=0)
    src = ArraySource(np.arange(n) * 3 + 7, x)  # ids are not row numbers, as with catalog rows
    ann = build(src, cfg)
    assert ann.tier == tier
    assert ann.info["nlist"] == choose_nlist(n, cfg)
    assert 1 <= ann.nprobe < ann.info["nlist"]  # tuning stopped before scanning everything
    assert ann.info["recall_at_10"] >= 0.95
    if tier == "ivfpq":
        assert ann.info["pq_m"] * n + 8 * n <= cfg.max_memory
    recall = held_out_recall(ann, src, clustered(300, dim, 200, seed=99))
    assert recall >= 0.95, f"{tier} recall@10 {recall:.3f} on held-out queries"


def test_update_remove_and_save_roundtrip(tmp_path):
    x = clustered(3000, 32, 30, seed=0)
    src = ArraySource(np.arange(3000), x)
    ann = build(src, AnnConfig(flat_max_floats=1 << 14))
    assert ann.tier == "ivf"
    assert ann.remove(np.arange(0, 3000, 2)) == 1500
    _, ids = ann.search(x[:10], 5)
    assert not np.any(ids[ids >= 0] % 2 == 0)  # removed ids are gone
    path = tmp_path / "index.faiss"
    ann.save(path, {"generation": 7})
    assert AnnIndex.read_header(path)["generation"] == 7
    loaded, header = AnnIndex.load(path)
    assert header["tier"] == "ivf" and loaded.ntotal == 1500 and loaded.nprobe == ann.nprobe
    assert not list(tmp_path.glob("*.tmp-*"))
    assert needs_rebuild(loaded, 1500, AnnConfig(flat_max_floats=1 << 14)) is False
    assert needs_rebuild(loaded, 100, AnnConfig(flat_max_floats=1 << 14)) is True  # now small enough for flat
