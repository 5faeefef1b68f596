"""The index run split in two: a Plan (decided, nothing written) and its application; shards; one model resolution."""
from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from btembed.search import IndexOptions, index_folder
from btembed.search.catalog import CATALOG_FILE, Catalog
from btembed.search.plan import make_plan, shard_of


def _photos(root: Path, photo_paths) -> Path:
    (root / "sub").mkdir(parents=True)
    for i, p in enumerate(photo_paths):
        shutil.copy(p, root / ("sub" if i % 2 else "") / p.name)
    return root


def _plan_after_changes(tmp_path, photo_paths, tiny_model_dir):
    """A folder indexed once, then given a copy, a rename, a deletion, a new file, a bad file and new twins."""
    folder = _photos(tmp_path / "photos", photo_paths)
    index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0))
    shutil.copy(folder / "astronaut.jpg", folder / "sub" / "astronaut-copy.jpg")
    (folder / "coffee.jpg").rename(folder / "sub" / "mug.jpg")
    (folder / "sub" / "chelsea.jpg").unlink()
    Image.fromarray(np.full((60, 90, 3), 90, np.uint8)).save(folder / "grey.png")
    for i in range(3):
        Image.fromarray(np.full((50, 50, 3), 200, np.uint8)).save(folder / f"twin-{i}.png")
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    catalog = Catalog.open(folder / ".btembed" / CATALOG_FILE)
    try:
        return make_plan(folder, catalog)
    finally:
        catalog.close()


def test_plan_sorts_every_change_before_writing(tmp_path, photo_paths, tiny_model_dir):
    plan = _plan_after_changes(tmp_path, photo_paths, tiny_model_dir)
    assert sorted(e.rel for e in plan.reuse) == ["sub/astronaut-copy.jpg", "sub/mug.jpg"]
    assert sorted(r.path for r in plan.vanished) == ["coffee.jpg", "sub/chelsea.jpg"]
    assert sorted(e.rel for e in plan.embed) == ["bad.jpg", "grey.png", "twin-0.png"]
    assert [(e.rel, e.same_as) for e in plan.copies] == [("twin-1.png", "twin-0.png"), ("twin-2.png", "twin-0.png")]
    assert plan.unchanged == 4 and plan.counts() == {"new": 7, "updated": 0, "retried": 0}


def test_shards_split_a_plan_without_loss_and_keep_copies_with_their_file(tmp_path, photo_paths, tiny_model_dir):
    plan = _plan_after_changes(tmp_path, photo_paths, tiny_model_dir)
    n = 3
    shards = [plan.shard(i, n) for i in range(n)]
    for name in ("embed", "reuse", "copies", "errors", "rehash"):
        got = sorted(e.rel for s in shards for e in getattr(s, name))
        assert got == sorted(e.rel for e in getattr(plan, name)), name
    assert sorted(r.id for s in shards for r in s.vanished) == sorted(r.id for r in plan.vanished)
    for i, s in enumerate(shards):
        assert all(shard_of(e.rel, n) == i for e in s.embed + s.reuse)
        embedded_here = {e.rel for e in s.embed}
        assert all(c.same_as in embedded_here for c in s.copies)  # a copy is applied where its file is embedded
    assert sum(s.unchanged for s in shards) == plan.unchanged
    assert [plan.shard(i, n) for i in range(n)] == shards  # the same split every time
    assert shard_of("sub/mug.jpg", 7) == 2  # a fixed hash (crc32), not Python's per-process hash()


def test_index_resolves_its_model_once_and_passes_it_down(tmp_path, photo_paths, tiny_model_dir, monkeypatch):
    from btembed.modelfolder import ModelFolder

    resolved = []
    real = ModelFolder.resolve.__func__

    def counting(cls, name_or_path=None, **kw):
        if not isinstance(name_or_path, ModelFolder):  # a ModelFolder passes through: no resolution
            resolved.append(name_or_path)
        return real(cls, name_or_path, **kw)

    monkeypatch.setattr(ModelFolder, "resolve", classmethod(counting))
    folder = _photos(tmp_path / "photos", photo_paths[:3])
    for backend in ("torch", "onnx"):  # onnx also exports the model to ONNX on first use
        resolved.clear()
        r = index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0, backend=backend, rebuild=True))
        assert r.embedded == 3 and resolved == [str(tiny_model_dir)], (backend, resolved)
    resolved.clear()
    assert index_folder(folder, IndexOptions(workers=0)).unchanged == 3  # the recorded model, still once
    assert len(resolved) == 1


# SQL as this project writes it: upper-case keywords in their usual company.
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                 r"CREATE\s+(TABLE|INDEX)|PRAGMA\s+\w+|BEGIN\s+IMMEDIATE)\b", re.S)


def test_only_the_catalog_module_holds_sql():
    root = Path(__file__).resolve().parents[1] / "btembed"
    found = []
    for path in root.rglob("*.py"):
        if path == root / "search" / "catalog.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == []


def test_a_file_that_changes_while_read_is_not_stored_and_is_read_again(tmp_path, photo_paths, tiny_model_dir,
                                                                       monkeypatch):
    from btembed.embedder import Embedder

    folder = _photos(tmp_path / "photos", photo_paths[:3])
    victim = folder / photo_paths[0].name
    real = Embedder.embed_batches

    def rewritten_meanwhile(self, *args, **kw):
        for batch in real(self, *args, **kw):
            os_utime(victim)  # written to while the run read it
            yield batch

    monkeypatch.setattr(Embedder, "embed_batches", rewritten_meanwhile)
    r = index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0))
    assert r.embedded == 2 and r.skipped == [{"path": victim.name,
                                              "reason": "changed while being read; read again on the next run"}]
    monkeypatch.undo()
    r = index_folder(folder, IndexOptions(workers=0))
    assert (r.new, r.embedded, r.total, r.skipped) == (1, 1, 3, [])


def os_utime(path: Path) -> None:
    """A new mtime, whatever the clock's resolution."""
    import os

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
