"""btembed dedup: exact copies always grouped, near-duplicates grouped transitively via a kNN graph."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from btembed.search.catalog import CATALOG_FILE, Catalog
from btembed.search.dedup import UnionFind, find_duplicates
from btembed.search import ImageIndex
from btembed.search import IndexOptions, index_folder


def names(groups, root):
    """Groups as sets of paths relative to root, order-free."""
    return sorted(sorted(Path(h.path).relative_to(root).as_posix() for h in g) for g in groups)


def test_union_find_merges_transitively():
    uf = UnionFind()
    for a, b in [(1, 2), (2, 3), (10, 11), (3, 1)]:
        uf.union(a, b)
    uf.find(99)  # a singleton is not a group
    assert sorted(sorted(g) for g in uf.groups()) == [[1, 2, 3], [10, 11]]


def test_exact_copy_and_near_duplicate_grouped(tmp_path, photo_paths, tiny_model_dir):
    root = tmp_path / "photos"
    root.mkdir()
    for p in photo_paths:
        shutil.copy(p, root / p.name)
    (root / "copies").mkdir()
    shutil.copy(root / "astronaut.jpg", root / "copies" / "astronaut (1).jpg")
    with Image.open(root / "coffee.jpg") as im:  # resized and re-encoded: same picture, other bytes
        im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(root / "copies" / "coffee-small.jpg", quality=75)
    index_folder(root, IndexOptions(model=str(tiny_model_dir), workers=0))
    index = ImageIndex.open(root)
    try:
        groups = find_duplicates(index, threshold=0.995)
        assert names(groups, root) == [["astronaut.jpg", "copies/astronaut (1).jpg"],
                                       ["coffee.jpg", "copies/coffee-small.jpg"]]
        for g in groups:
            assert g[0].score == 1.0 and all(0.995 <= h.score <= 1.0 + 1e-6 for h in g)
        # a threshold no similarity reaches still groups identical bytes
        assert names(find_duplicates(index, threshold=1.01), root) == [
            ["astronaut.jpg", "copies/astronaut (1).jpg"]]
    finally:
        index.close()

    p = subprocess.run([sys.executable, "-m", "btembed", "dedup", str(root), "--threshold", "0.995", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert sorted(sorted(Path(m["path"]).name for m in g) for g in doc["groups"]) == [
        ["astronaut (1).jpg", "astronaut.jpg"], ["coffee-small.jpg", "coffee.jpg"]]
    assert all(set(m) == {"path", "score"} for g in doc["groups"] for m in g)


def test_chains_found_through_approximate_index(tmp_path):
    """3000 synthetic vectors in an IVF index: chains a~b~c (a and c below threshold) form one group."""
    rng = np.random.default_rng(0)
    dim, n_chains, n_noise = 32, 50, 2800
    noise = rng.standard_normal((n_noise, dim)).astype(np.float32)
    chains = []
    for _ in range(n_chains):
        a = rng.standard_normal(dim).astype(np.float32)
        a /= np.linalg.norm(a)
        step = rng.standard_normal(dim).astype(np.float32)
        step -= (step @ a) * a
        step *= 0.1 / np.linalg.norm(step)
        chains.append([a, a + step, a + 2 * step])  # neighbours ≈ 0.995 apart, ends ≈ 0.98
    vecs = np.concatenate([noise, np.array(chains).reshape(-1, dim)])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = tmp_path / "store"
    catalog = Catalog.open(store / CATALOG_FILE, create=True)
    catalog.set_many({"dim": dim, "vector_dtype": "float32", "root": str(tmp_path),
                      "ann_config": json.dumps({"flat_max_floats": 1000})})
    gen = catalog.bump_generation()
    with catalog.transaction():
        for i, v in enumerate(vecs):
            catalog.put(f"v{i:05d}.jpg", 100 + i, 0, f"h{i}", gen, vector=catalog.encode(v))
    catalog.close()
    index = ImageIndex.open(store)
    try:
        assert index.ann.tier == "ivf"
        groups = find_duplicates(index, threshold=0.99, k=8)
        want = [sorted(f"v{n_noise + 3 * c + j:05d}.jpg" for j in range(3)) for c in range(n_chains)]
        assert names(groups, tmp_path) == sorted(want)
        ends = chains[0][0] @ chains[0][2] / np.linalg.norm(chains[0][2])
        assert ends < 0.99  # the group exists only through the middle link
    finally:
        index.close()
