"""btembed export-index (issue 30): img_emb/*.npy + metadata/*.parquet|jsonl, rows aligned, round-tripping the
catalog's vectors and file facts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from btembed.search import IndexOptions, index_folder
from btembed.search.catalog import CATALOG_FILE, Catalog


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, photo_paths, tiny_model_dir):
    """The six photos (one in a subfolder, one twice) indexed, vectors kept in a shard file."""
    root = tmp_path_factory.mktemp("export") / "photos"
    (root / "sub").mkdir(parents=True)
    for i, p in enumerate(photo_paths):
        shutil.copy2(p, root / ("sub" if i == 1 else "") / p.name)
    shutil.copy2(photo_paths[2], root / "twin.jpg")
    index_folder(root, IndexOptions(model=str(tiny_model_dir), workers=0, batch_size=4, vector_files_above=0))
    return root


def read_export(out, fmt):
    """(vectors, metadata rows) of an export, pairs concatenated in file order."""
    pairs = sorted(os.listdir(out / "img_emb"), key=lambda n: int(n.split("_")[-1].split(".")[0]))
    vectors, rows = [], []
    for name in pairs:
        n = name.split("_")[-1].split(".")[0]
        vecs = np.load(out / "img_emb" / name)
        meta = out / "metadata" / f"metadata_{n}.{fmt}"
        if fmt == "parquet":
            import pyarrow.parquet as pq

            part = pq.read_table(meta).to_pylist()
        else:
            part = [json.loads(line) for line in meta.read_text().splitlines()]
        assert len(part) == len(vecs)  # every pair is aligned on its own
        vectors.append(vecs)
        rows += part
    return np.concatenate(vectors), rows


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_round_trips_the_catalog(indexed, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / "export"
    p = subprocess.run([sys.executable, "-m", "btembed", "export-index", str(indexed), "--out", str(out), "--format",
                        fmt, "--rows-per-file", "4", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["rows"] == 7 and len(summary["files"]) == 2 and summary["dtype"] == "float16"
    vectors, rows = read_export(out, fmt)
    assert vectors.dtype == np.float16 and vectors.shape == (7, 512)
    catalog = Catalog.open(indexed / ".btembed" / CATALOG_FILE, read_only=True)
    try:
        for vec, row in zip(vectors, rows):
            rel = os.path.relpath(row["image_path"], indexed)
            cat = catalog.lookup(rel)
            assert (row["size"], row["mtime_ns"], row["hash"]) == (cat.size, cat.mtime_ns, cat.phash)
            assert row["model"] == "test/resnet18" and os.path.isfile(row["image_path"])
            assert np.array_equal(vec.astype(np.float32), catalog.fetch([cat.id])[0])
    finally:
        catalog.close()
    by_path = {r["image_path"]: v for r, v in zip(rows, vectors)}
    assert np.array_equal(by_path[str(indexed / "twin.jpg")], by_path[str(indexed / "coffee.jpg")])


def test_export_refuses_a_folder_holding_an_export(indexed, tmp_path):
    out = tmp_path / "export"
    (out / "img_emb").mkdir(parents=True)
    (out / "img_emb" / "img_emb_0.npy").write_bytes(b"")
    p = subprocess.run([sys.executable, "-m", "btembed", "export-index", str(indexed), "--out", str(out), "--format",
                        "jsonl"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "is not empty; give --out a new or empty folder" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("target, message", [
    ("photos", "is not empty; give --out a new or empty folder"),  # the indexed folder itself
    ("ex.jsonl", "is a file; give --out a new or empty folder"),
    ("missing/out", "(the parent of --out) does not exist"),
])
def test_export_refuses_what_is_not_a_new_or_empty_folder(indexed, tmp_path, capsys, target, message):
    from btembed.cli import main

    out = indexed if target == "photos" else tmp_path / target
    if target == "ex.jsonl":
        out.write_text("kept\n")
    before = sorted(os.listdir(indexed))
    assert main(["export-index", str(indexed), "--out", str(out), "--format", "jsonl"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(os.listdir(indexed)) == before and not (tmp_path / "missing").exists()
    assert target != "ex.jsonl" or out.read_text() == "kept\n"



@pytest.mark.parametrize("name", ["ex.jsonl", "vectors.NPY", "meta.parquet", "out.json"])
def test_export_refuses_a_new_out_named_like_a_file(indexed, tmp_path, capsys, name):
    """--out ex.jsonl made a folder called ex.jsonl (holding img_emb/ and metadata/) instead of a file."""
    from btembed.cli import main

    out = tmp_path / name
    assert main(["export-index", str(indexed), "--out", str(out), "--format", "jsonl"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "writes a folder" in err and "img_emb/" in err and f"--out {out.with_suffix('')}" in err, err
    assert not out.exists()


def test_export_into_an_existing_empty_folder_with_a_dot_in_its_name(indexed, tmp_path):
    """A folder the user made is taken whatever its name; a dot that is no data-file suffix is no file name."""
    from btembed.cli import main

    made = tmp_path / "made.jsonl"
    made.mkdir()
    assert main(["export-index", str(indexed), "--out", str(made), "--format", "jsonl"]) == 0
    assert (made / "metadata" / "metadata_0.jsonl").is_file()
    dotted = tmp_path / "export.v2"
    assert main(["export-index", str(indexed), "--out", str(dotted), "--format", "jsonl"]) == 0
    assert (dotted / "img_emb" / "img_emb_0.npy").is_file()
