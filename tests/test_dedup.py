"""btembed dedup: groups never chain; exact copies, blank images apart, keep rules, report, actions, calibration."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from btembed.config import ModelConfig
from btembed.search.calibrate import (EDITS, best_point, calibrate_threshold, near_duplicate_families,
                                      pair_precision_recall)
from btembed.search.catalog import CATALOG_FILE, Catalog
from btembed.search.dedup import NeighbourGraph, find_duplicates, nearest_kept_groups
from btembed.search.search import ImageIndex
from tests.serve_helpers import index as index_with, make_folder


def names(found):
    """Groups as sorted lists of relative paths, order-free."""
    return sorted(sorted(m.path for m in g) for g in found.groups)


def test_groups_never_chain_and_members_join_the_closest_kept_image():
    graph = NeighbourGraph()
    for a, b, s in [(1, 2, 0.96), (2, 3, 0.96), (1, 3, 0.90)]:  # a chain 1~2~3 whose ends are apart
        graph.add(a, b, s)
    order = [1, 2, 3, 4].index  # the keep order
    # 1 is kept and takes 2; 3 is not within 0.95 of the kept 1, so it is not pulled in through 2
    assert nearest_kept_groups(graph, 0.95, order) == [[1, 2]]
    graph.add(4, 3, 0.99)
    graph.add(4, 1, 0.97)
    # 3 is kept (no kept image within 0.95 of it); 4 is within reach of both kept images and joins the closer, 3
    assert nearest_kept_groups(graph, 0.95, order) == [[1, 2], [3, 4]]
    graph.exact.add(frozenset((1, 3)))  # identical bytes always join, whatever the threshold
    assert nearest_kept_groups(graph, 0.95, order) == [[1, 2, 3, 4]] or \
        nearest_kept_groups(graph, 0.95, order) == [[1, 3, 2, 4]]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, photo_paths, tiny_model_dir):
    root = make_folder(tmp_path_factory.mktemp("dedup") / "photos", photo_paths)
    for i, size in enumerate([(40, 30), (80, 60), (20, 20)]):  # transparent clip-art: flat white once composited
        Image.new("RGBA", size, (10, 200, 10, 0)).save(root / f"blank-{i}.png")
    old = 1_600_000_000
    os.utime(root / "copies" / "coffee-small.jpg", (old, old))  # the smaller copy is the older one
    index_with(root, tiny_model_dir)
    return root


def test_exact_copy_near_duplicate_and_blank_images(indexed):
    index = ImageIndex.open(indexed)
    try:
        found = find_duplicates(index, threshold=0.995)
        assert names(found) == [["astronaut.jpg", "copies/astronaut (1).jpg"],
                                ["coffee.jpg", "copies/coffee-small.jpg"]]
        assert found.blank == ["blank-0.png", "blank-1.png", "blank-2.png"]
        for g in found.groups:
            assert g[0].kept and g[0].score == 1.0 and not any(m.kept for m in g[1:])
            assert all(m.score >= 0.995 for m in g)
        coffee = next(g for g in found.groups if g[0].path.startswith("coffee"))
        assert coffee[0].path == "coffee.jpg" and not coffee[1].exact  # largest kept by default
        astronaut = next(g for g in found.groups if "astronaut" in g[0].path)
        assert astronaut[1].exact
        oldest = find_duplicates(index, threshold=0.995, keep="oldest")
        assert next(g for g in oldest.groups if "coffee" in g[0].path)[0].path == "copies/coffee-small.jpg"
        # a threshold no similarity reaches still groups identical bytes
        assert names(find_duplicates(index, threshold=1.0)) == [["astronaut.jpg", "copies/astronaut (1).jpg"]]
    finally:
        index.close()


def run_cli(*args):
    p = subprocess.run([sys.executable, "-m", "btembed", "dedup", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return p


def test_cli_json_html_and_actions(indexed, tmp_path):
    p = run_cli(indexed, "--threshold", "0.995", "--json")
    doc = json.loads(p.stdout)
    assert sorted(sorted(Path(m["path"]).name for m in g["members"]) for g in doc["groups"]) == [
        ["astronaut (1).jpg", "astronaut.jpg"], ["coffee-small.jpg", "coffee.jpg"]]
    assert all(set(m) == {"path", "score", "exact", "kept"} for g in doc["groups"] for m in g["members"])
    assert [Path(b).name for b in doc["blank"]] == ["blank-0.png", "blank-1.png", "blank-2.png"]
    assert "threshold 0.995" in p.stderr and "no calibrated" not in p.stderr  # --threshold given: no note

    report = tmp_path / "report.html"
    actions = tmp_path / "actions.json"
    p = run_cli(indexed, "--threshold", "0.995", "--html", report, "--actions", "keep-oldest", "-o", actions)
    page = report.read_text()
    assert page.count('<section class="group">') == 2 and page.count("data:image/jpeg;base64,") == 4
    assert "src=\"http" not in page  # self-contained
    plan = json.loads(actions.read_text())
    assert plan["rule"] == "keep-oldest" and plan["remove_count"] == 2
    coffee = next(g for g in plan["groups"] if "coffee" in g["keep"])
    assert Path(coffee["keep"]).name == "coffee-small.jpg" and [Path(r).name for r in coffee["remove"]] == [
        "coffee.jpg"]
    assert (indexed / "coffee.jpg").exists() and (indexed / "copies" / "astronaut (1).jpg").exists()


def test_default_threshold_comes_from_the_model(indexed, tiny_model_dir, tmp_path):
    p = run_cli(indexed)
    assert "no calibrated duplicate_threshold" in p.stderr and "0.95" in p.stderr
    config = ModelConfig.load(tiny_model_dir)
    config.duplicate_threshold = 0.999
    model = tmp_path / "calibrated"
    shutil.copytree(tiny_model_dir, model)
    config.save(model)
    copy = tmp_path / "photos"
    shutil.copytree(indexed, copy, ignore=shutil.ignore_patterns(".btembed"))
    index_with(copy, model)
    p = run_cli(copy)
    assert "the model's calibrated duplicate_threshold" in p.stderr and "0.999" in p.stderr


def test_ivf_index_groups_without_chaining(tmp_path):
    """3000 vectors in an IVF index; 50 chains a~b~c (ends below the threshold): no group holds both ends."""
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
        found = find_duplicates(index, threshold=0.99, k=8, pixel_check=False)  # vectors only: no files to look at
        assert not find_duplicates(index, threshold=0.99, k=8).groups  # what cannot be looked at is not a copy
        # the files do not exist: equal pixel counts, so the larger file (the chain's last vector) is kept
        want = [[f"v{n_noise + 3 * c + 1:05d}.jpg", f"v{n_noise + 3 * c + 2:05d}.jpg"] for c in range(n_chains)]
        assert names(found) == sorted(want)
        assert all(g[0].path == w[1] for g, w in zip(sorted(found.groups, key=lambda g: g[0].path), want))
    finally:
        index.close()


def test_pair_precision_recall_counts_implied_pairs():
    families = {0: "a", 1: "a", 2: "a", 3: "b", 4: "b"}
    # one right pair (0,1), two wrong ones (0,3), (1,3); truth has 3 + 1 pairs
    assert pair_precision_recall([[0, 1, 3]], families) == (1 / 3, 1 / 4)
    assert pair_precision_recall([[0, 1, 2], [3, 4]], families) == (1.0, 1.0)
    assert best_point([(0.9, 0.5, 1.0), (0.95, 1.0, 0.9), (0.96, 1.0, 0.9), (0.97, 1.0, 0.9)])[0] == 0.96
    # precision weighs more than recall: 0.99/0.96 loses to 1.0/0.95
    assert best_point([(0.96, 0.99, 0.96), (0.965, 1.0, 0.95)])[0] == 0.965


def test_calibration_on_photos(photo_paths, tiny_model_dir):
    from btembed import Embedder

    photos = [Image.open(p).convert("RGB").resize((160, 120)) for p in photo_paths[:3]]
    images, families = near_duplicate_families(photos)
    assert len(images) == 3 * (1 + len(EDITS)) and families.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert images[2].size == (80, 60) and images[3].size == (136, 102)  # half size, 85 % crop
    result = calibrate_threshold(Embedder.from_pretrained(str(tiny_model_dir), backend="torch"), photos)
    assert 0.80 <= result.threshold <= 0.995 and result.photos == 3
    t, p, r = best_point(result.curve)
    assert (t, p, r) == (result.threshold, result.precision, result.recall) and 0 < p <= 1 and 0 < r <= 1
    assert result.embedding_only is not None and 0.80 <= result.embedding_only[0] <= 0.995
    assert set(result.metrics("3 photos")) == {"dedup_pair_precision", "dedup_pair_recall",
                                               "dedup_pair_precision_embedding_only", "dedup_pair_recall_embedding_only"}
    assert "pixel check" in result.metrics("3 photos")["dedup_pair_precision"]["protocol"]


def test_ties_keep_the_likely_original(tmp_path, photo_paths, tiny_model_dir):
    root = tmp_path / "photos"
    root.mkdir()
    for p in photo_paths[:3]:
        shutil.copy(p, root / p.name)
    shutil.copy(root / "coffee.jpg", root / "coffee-copy.jpg")  # byte-identical; sorts before coffee.jpg by path
    shutil.copy(root / "coffee.jpg", root / "Copy of coffee.jpg")
    same = 1_600_000_000
    for name in ("coffee.jpg", "coffee-copy.jpg", "Copy of coffee.jpg"):
        os.utime(root / name, (same, same))  # equal size and time: the copy markers in the names decide
    index_with(root, tiny_model_dir)
    index = ImageIndex.open(root)
    try:
        for keep in ("largest", "oldest"):
            (group,) = [g for g in find_duplicates(index, threshold=0.995, keep=keep).groups if "coffee" in g[0].path]
            assert group[0].path == "coffee.jpg", keep
            assert sorted(m.path for m in group[1:]) == ["Copy of coffee.jpg", "coffee-copy.jpg"]
    finally:
        index.close()
    os.utime(root / "coffee.jpg", (same + 60, same + 60))  # now the plain name is the newer file: older wins
    index_with(root, tiny_model_dir)
    index = ImageIndex.open(root)
    try:
        (group,) = [g for g in find_duplicates(index, threshold=0.995).groups if "coffee" in g[0].path]
        assert group[0].path == "coffee-copy.jpg"  # older than coffee.jpg, and a shorter path than "Copy of ..."
    finally:
        index.close()


def test_copy_markers():
    from btembed.search.dedup import has_copy_marker

    for name in ("a copy.jpg", "a-copy.jpg", "a copy 2.jpg", "Copy of a.jpg", "a (1).jpg", "a(2).png", "a_1.jpg"):
        assert has_copy_marker(name), name
    for name in ("a.jpg", "IMG_2034.jpg", "photocopy.jpg", "copies (1)/a.jpg"):
        assert not has_copy_marker(name), name


def test_scores_are_clipped_once_for_text_and_json():
    from btembed.search.dedup import Member

    member = Member("b.jpg", np.float16(1.0001) + np.float32(0.0001), exact=False, kept=False)
    assert member.score == 1.0 and f"{member.score:.4f}" == "1.0000" and member.to_dict()["score"] == 1.0


def test_keep_and_actions_that_disagree_are_refused(indexed, capsys):
    from btembed.cli import main

    assert main(["dedup", str(indexed), "--keep", "largest", "--actions", "keep-oldest"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--keep largest" in err and "--actions keep-oldest" in err
    assert main(["dedup", str(indexed), "--keep", "oldest", "--actions", "keep-oldest", "--threshold", "0.995"]) == 0
    assert json.loads(capsys.readouterr().out)["rule"] == "keep-oldest"
