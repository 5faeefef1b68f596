"""Procedural pretraining images: deterministic per (seed, index), varied, and added to the pool only on request."""

import json

import numpy as np
from PIL import Image

from devdata import pool
from devdata.procedural import FAMILIES, leaf_radii, procedural_image


def test_each_image_depends_on_seed_and_index_only():
    first = [procedural_image(0, i, 64) for i in range(6)]
    assert [family for family, _ in first] == list(FAMILIES) * 2
    again = procedural_image(0, 4, 64)  # drawn on its own, without the four before it
    assert again[0] == first[4][0] and np.array_equal(again[1], first[4][1])
    assert not np.array_equal(procedural_image(1, 4, 64)[1], first[4][1])
    for _, image in first:
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert image.std() > 5  # never a flat canvas
    assert len({image.tobytes() for _, image in first}) == 6


def test_leaf_radii_follow_the_scale_invariant_law():
    r = leaf_radii(np.random.default_rng(0), 200_000, 100)
    assert r.min() >= 3.0 - 1e-9 and r.max() <= 40.0 + 1e-9
    # Density ~ r^-3: P(r > x) = (x^-2 - r_max^-2) / (r_min^-2 - r_max^-2).
    expected = (6.0 ** -2 - 40.0 ** -2) / (3.0 ** -2 - 40.0 ** -2)
    assert abs((r > 6.0).mean() - expected) < 0.01


def test_dead_leaves_cover_the_canvas():
    """Enough leaves that the background colour is mostly painted over."""
    _, image = procedural_image(3, 0, 128)  # index 0: plain dead leaves
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    assert len(colours) >= 3 and counts.max() / counts.sum() < 0.6


def test_offline_pool_adds_procedural_images_only_when_asked(tmp_path):
    out = tmp_path / "pool"
    manifest = pool.run(out, tmp_path / "cache", names=[], seed=0, openclipart_cap=0, fashion_cap=0,
                        procedural=5)
    source = manifest["sources"]["procedural"]
    assert source["file_count"] == 5 and manifest["total_files"] == 5
    assert source["licence"].startswith("CC0") and source["families"] == list(FAMILIES)
    assert "procedural" in (out / "MANIFEST.md").read_text()
    for row in source["files"]:
        with Image.open(out / row["path"]) as im:
            assert im.size == (256, 256)
        assert row["path"].startswith("train/procedural/")
    assert json.loads((out / "manifest.json").read_text())["sources"]["procedural"]["file_count"] == 5
    # The default pool has no generated images: without --procedural the source is not even listed.
    plain = pool.run(tmp_path / "plain", tmp_path / "cache", names=[], seed=0, openclipart_cap=0,
                     fashion_cap=0)
    assert "procedural" not in plain["sources"] and plain["total_files"] == 0
