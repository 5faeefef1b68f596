"""FAISS past RAM (issue 30): the on-disk IVF-PQ tier at a small size (forced), incremental updates, a moved index
folder, plain FAISS files, and index folders of older btembed still opening."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from btembed.search import ImageIndex, IndexOptions, index_folder
from btembed.search.ann import AnnConfig, AnnIndex, ArraySource, build, exact_knn, recall_at_k
from btembed.search.annfile import LEGACY_MAGIC, sidecar_of
from btembed.search.catalog import CATALOG_FILE, Catalog, VectorRef
from btembed.search.store import INDEX_FILE


def clustered(n, dim, seed, clusters=40):
    """L2-normalised vectors around shared centres (overlapping, like embeddings of a few kinds of things)."""
    centres = np.random.default_rng(99).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ivfdata_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.ivfdata"))


def test_ondisk_tier_adds_removes_and_opens_after_a_move(tmp_path):
    x = clustered(4000, 32, seed=0)
    src = ArraySource(np.arange(4000) * 2 + 1, x)
    folder = tmp_path / "a"
    folder.mkdir()
    ann = build(src, AnnConfig(on_disk=True), folder=folder)
    assert ann.tier == "ondisk" and ann.ntotal == 4000 and ann.info["recall_at_10"] >= 0.95
    ann.save(folder / INDEX_FILE, {"generation": 1})
    assert ivfdata_files(folder) == [ann.info["ivfdata"]]
    queries = clustered(50, 32, seed=1)
    _, truth = exact_knn(src, queries, 10)
    _, before = ann.search(queries, 10, fetch=src.fetch)
    assert recall_at_k(before, truth, 10) >= 0.9
    assert faiss.read_index(str(folder / INDEX_FILE)).ntotal == 4000  # plain FAISS, .ivfdata found in place

    moved = tmp_path / "elsewhere" / "b"
    shutil.move(folder, moved)
    ann, head = AnnIndex.load(moved / INDEX_FILE)
    assert head["generation"] == 1 and ann.tier == "ondisk"
    assert np.array_equal(ann.search(queries, 10, fetch=src.fetch)[1], before)

    # Incremental: 300 new vectors, 100 gone; written into a new .ivfdata, the mapped one untouched.
    new = clustered(300, 32, seed=2)
    gone = src.ids[:100]
    ann.apply_changes(gone, [(np.arange(300) + 100_000, new)], moved)
    assert ann.ntotal == 4200
    everything = ArraySource(np.concatenate([src.ids[100:], np.arange(300) + 100_000]),
                             np.concatenate([x[100:], new]))
    _, found = ann.search(new[:50], 10, fetch=everything.fetch)
    assert (found == (np.arange(50) + 100_000)[:, None]).any(axis=1).mean() >= 0.95  # each finds itself
    _, found = ann.search(x[:100], 10, fetch=everything.fetch)
    assert not np.isin(found, gone).any()
    first = ivfdata_files(moved)
    assert len(first) == 2  # written, not yet named by the saved FAISS file
    first = [f for f in first if f != ann.info["ivfdata"]]
    ann.save(moved / INDEX_FILE, {"generation": 2})
    assert len(ivfdata_files(moved)) == 2  # the live one + the one a reader may still map
    ann.apply_changes(np.array([], np.int64), [(np.array([555_555]), new[:1])], moved)
    ann.save(moved / INDEX_FILE, {"generation": 3})
    assert len(ivfdata_files(moved)) == 2 and first[0] not in ivfdata_files(moved)  # the oldest went
    assert AnnIndex.load(moved / INDEX_FILE)[0].ntotal == 4201


@pytest.fixture
def folder(tmp_path, photo_paths):
    """The six photos and six crops of them."""
    root = tmp_path / "photos"
    root.mkdir()
    for p in photo_paths:
        shutil.copy2(p, root / p.name)
        with Image.open(p) as img:
            img.crop((0, 0, img.width // 2, img.height // 2)).save(root / f"half-{p.stem}.png")
    return root


def test_index_on_disk_with_vector_files_incremental_and_moved(folder, tiny_model_dir, tmp_path, photo_paths):
    opts = dict(model=str(tiny_model_dir), workers=0, batch_size=4, on_disk=True, vector_files_above=0)
    report = index_folder(folder, IndexOptions(**opts))
    assert report.tier == "ondisk" and report.total == 12
    store = folder / ".btembed"
    assert list((store / "vectors").glob("*.f16")) and ivfdata_files(store)
    catalog = Catalog.open(store / CATALOG_FILE, read_only=True)
    assert isinstance(catalog.outcome("coffee.jpg").vector, VectorRef)  # the catalog points into a vector file
    catalog.close()

    (folder / "rocket.jpg").unlink()
    with Image.open(photo_paths[0]) as img:
        img.rotate(90, expand=True).save(folder / "turned.png")
    report = index_folder(folder, IndexOptions(**opts))
    assert (report.tier, report.total, report.embedded, report.deleted) == ("ondisk", 12, 1, 1)
    index = ImageIndex.open(folder)
    try:
        assert len(index) == 12
        assert Path(index.search(folder / "turned.png", k=1)[0].path).name == "turned.png"
        assert all(Path(h.path).name != "rocket.jpg" for h in index.search(folder / "coffee.jpg", k=12))
    finally:
        index.close()

    moved = tmp_path / "moved" / "photos"
    shutil.move(folder, moved)
    assert faiss.read_index(str(moved / ".btembed" / INDEX_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR).ntotal == 12
    index = ImageIndex.open(moved)
    try:
        hits = index.search(moved / "coffee.jpg", k=3)
        assert Path(hits[0].path) == moved / "coffee.jpg" and hits[0].score > 0.999
    finally:
        index.close()


def test_index_folders_of_older_btembed_still_open(folder, tiny_model_dir):
    index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0, batch_size=4))
    store = folder / ".btembed"
    head = json.loads(sidecar_of(store / INDEX_FILE).read_text())
    assert faiss.read_index(str(store / INDEX_FILE)).ntotal == 12  # the FAISS file is plain FAISS
    # The older layout: one file, a JSON header glued before the FAISS bytes; a schema-1 catalog without
    # vector-file columns.
    data = faiss.serialize_index(faiss.read_index(str(store / INDEX_FILE)))
    text = json.dumps(head).encode()
    (store / INDEX_FILE).write_bytes(LEGACY_MAGIC + len(text).to_bytes(8, "little") + text + data.tobytes())
    sidecar_of(store / INDEX_FILE).unlink()
    catalog = Catalog.open(store / CATALOG_FILE)
    catalog.conn.execute("ALTER TABLE files DROP COLUMN vec_file")
    catalog.conn.execute("ALTER TABLE files DROP COLUMN vec_row")
    catalog.set_many({"schema_version": 1})
    catalog.close()
    index = ImageIndex.open(folder)  # read-only: nothing migrated, nothing rewritten
    try:
        assert index.ann.tier == "flat" and len(index) == 12
        assert Path(index.search(folder / "coffee.jpg", k=1)[0].path).name == "coffee.jpg"
    finally:
        index.close()
    assert (store / INDEX_FILE).read_bytes().startswith(LEGACY_MAGIC)
    (folder / "coffee.jpg").unlink()
    report = index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0, batch_size=4))
    assert report.total == 11 and report.deleted == 1
    assert faiss.read_index(str(store / INDEX_FILE)).ntotal == 11  # rewritten as plain FAISS + sidecar
    catalog = Catalog.open(store / CATALOG_FILE, read_only=True)
    assert catalog.get("schema_version") == "2"
    catalog.close()
