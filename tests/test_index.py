"""btembed index / search: incremental updates, bad files, model checks, locking, stale FAISS files."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from btembed.search.catalog import Catalog
from btembed.errors import CatalogError, ModelError
from btembed.search import ImageIndex
from btembed.search.store import INDEX_FILE
from btembed.search import IndexOptions, index_folder
from btembed.search.lock import WriterLock

from conftest import make_model_dir


def run_index(folder, model, **kw):
    """Index in-process (no torch import per run), decoding inline to keep tests quick."""
    return index_folder(folder, IndexOptions(model=str(model), workers=0, batch_size=4, **kw))


def cli(*args, check=True):
    """Run the btembed command in a subprocess; returns (returncode, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "btembed", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def folder(tmp_path, photo_paths):
    """A fresh copy of the six photos, two of them in a subfolder."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i, p in enumerate(photo_paths):
        shutil.copy(p, root / ("sub" if i % 2 else "") / p.name)
    return root


def tiny_png_bomb(path, width=40_000, height=40_000):
    """A valid PNG header claiming 1.6 gigapixels (a decompression bomb) in a few dozen bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_incremental_copy_rename_delete_change(folder, tiny_model_dir):
    first = run_index(folder, tiny_model_dir)
    assert (first.total, first.new, first.embedded, first.failed, first.tier) == (6, 6, 6, 0, "flat")
    again = run_index(folder, tiny_model_dir)
    assert (again.new, again.updated, again.deleted, again.embedded, again.unchanged) == (0, 0, 0, 0, 6)

    shutil.copy(folder / "astronaut.jpg", folder / "sub" / "astronaut-copy.jpg")  # a copy
    (folder / "coffee.jpg").rename(folder / "sub" / "mug.jpg")  # a rename
    (folder / "sub" / "chelsea.jpg").unlink()  # a deletion
    Image.fromarray(np.full((80, 120, 3), 200, np.uint8)).save(folder / "sub" / "rocket.jpg")  # changed content
    r = run_index(folder, tiny_model_dir)
    # the renamed file counts as new + deleted, its vector reused; the copy is new + reused
    assert (r.new, r.reused, r.deleted, r.updated, r.embedded, r.total) == (2, 2, 2, 1, 1, 6)

    index = ImageIndex.open(folder)
    try:
        hits = index.search(folder / "sub" / "mug.jpg", k=6)
        paths = [Path(h.path).relative_to(folder).as_posix() for h in hits]
        assert paths[0] == "sub/mug.jpg" and hits[0].score > 0.999
        assert "sub/chelsea.jpg" not in paths and "coffee.jpg" not in paths
        assert len(paths) == 6 and len(set(paths)) == 6
    finally:
        index.close()
    assert run_index(folder, tiny_model_dir).embedded == 0



def framed_bmp(path, seed):
    """A 400x400 BMP whose first and last 64 KiB are black bars and whose middle rows are this seed's noise."""
    pixels = np.zeros((400, 400, 3), np.uint8)
    pixels[120:280] = np.random.default_rng(seed).integers(0, 256, (160, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def vector_of(folder, rel):
    """The catalog's stored vector for one file."""
    catalog = Catalog.open(folder / ".btembed" / "catalog.sqlite", read_only=True)
    try:
        row_id = catalog.lookup(rel).id
        return catalog.fetch([row_id])[0]
    finally:
        catalog.close()


def test_identical_new_files_are_embedded_once(folder, tiny_model_dir):
    for i in range(3):
        shutil.copy(folder / "astronaut.jpg", folder / f"astronaut-{i}.jpg")
    (folder / "empty-1.jpg").write_bytes(b"")
    (folder / "empty-2.jpg").write_bytes(b"")
    for i in range(2):  # identical broken files: the copy gets the first one's error, not a second decode
        (folder / f"broken-{i}.jpg").write_bytes(b"text, not a JPEG")
    r = run_index(folder, tiny_model_dir)
    assert (r.new, r.embedded, r.reused, r.failed, r.total) == (13, 6, 3, 4, 9)
    errors = {f["path"]: f["error"] for f in r.failures}
    assert errors["broken-1.jpg"] == errors["broken-0.jpg"] and errors["broken-0.jpg"]
    want = vector_of(folder, "astronaut.jpg")
    for i in range(3):
        np.testing.assert_array_equal(vector_of(folder, f"astronaut-{i}.jpg"), want)


def test_only_byte_identical_files_share_a_vector(tmp_path, tiny_model_dir):
    """Same size and same 64-KiB ends (video frames, scans) used to pass for a copy and reuse a wrong vector."""
    folder = tmp_path / "frames"
    folder.mkdir()
    framed_bmp(folder / "a.bmp", seed=0)
    assert run_index(folder, tiny_model_dir).embedded == 1
    framed_bmp(folder / "b.bmp", seed=1)  # another frame: same size, same first and last 64 KiB
    a, b = (folder / "a.bmp").read_bytes(), (folder / "b.bmp").read_bytes()
    assert len(a) == len(b) and a[:65536] == b[:65536] and a[-65536:] == b[-65536:] and a != b
    r = run_index(folder, tiny_model_dir)
    assert (r.new, r.reused, r.embedded) == (1, 0, 1)
    # an edit in the middle of an indexed file (same size) is embedded again, not given its old vector
    before = vector_of(folder, "a.bmp")
    framed_bmp(folder / "a.bmp", seed=2)
    os.utime(folder / "a.bmp", ns=(1, 1))  # a new mtime, whatever the clock's resolution
    r = run_index(folder, tiny_model_dir)
    assert (r.updated, r.reused, r.embedded) == (1, 0, 1)
    assert not np.allclose(vector_of(folder, "a.bmp"), before)
    # a true copy still reuses
    shutil.copy(folder / "b.bmp", folder / "b-copy.bmp")
    r = run_index(folder, tiny_model_dir)
    assert (r.new, r.reused, r.embedded) == (1, 1, 0)
    np.testing.assert_array_equal(vector_of(folder, "b-copy.bmp"), vector_of(folder, "b.bmp"))


def test_hashes_of_an_older_catalog_are_forgotten(folder, tiny_model_dir):
    """A catalog from before full-content hashes holds partial ones: they are forgotten, then recomputed in full."""
    run_index(folder, tiny_model_dir)
    db = folder / ".btembed" / "catalog.sqlite"
    catalog = Catalog.open(db)
    with catalog.transaction():
        catalog.conn.execute("UPDATE files SET phash = 'partial'")
    catalog.set_many({"hash_kind": None})  # as an older btembed wrote it
    catalog.close()
    catalog = Catalog.open(db)
    try:
        assert catalog.conn.execute("SELECT COUNT(*) FROM files WHERE phash IS NOT NULL").fetchone()[0] == 0
        assert catalog.get("hash_kind")
    finally:
        catalog.close()
    # The next run hashes the unchanged files once (reading, not embedding them), so a copy reuses again.
    r = run_index(folder, tiny_model_dir)
    assert (r.unchanged, r.embedded, r.reused) == (6, 0, 0)
    shutil.copy(folder / "astronaut.jpg", folder / "astronaut-copy.jpg")
    r = run_index(folder, tiny_model_dir)
    assert (r.new, r.reused, r.embedded, r.unchanged) == (1, 1, 0, 6)


def test_a_file_name_that_is_not_utf8_is_indexed_and_searchable(folder, tiny_model_dir):
    """Issue 28 (3): such names were skipped by index, and crashed search and probe (UnicodeEncodeError); now
    every output keeps them by one rule: `path` as text (U+FFFD) plus `path_bytes` (base64 of the raw name)."""
    import base64

    raw = os.fsencode(folder) + b"/caf\xe9.jpg"
    shutil.copy(folder / "coffee.jpg", raw)
    Image.fromarray(np.full((70, 70, 3), 30, np.uint8)).save(os.fsencode(folder) + b"/sub/\xff\xfe.png")
    code, out, err = cli("index", folder, "--model", tiny_model_dir, "--json")
    assert code == 0 and "Traceback" not in err
    report = json.loads(out)
    assert (report["total"], report["skipped"], report["failed"]) == (8, [], 0)
    code, out, err = cli("search", folder, os.fsdecode(raw), "-k", "2", "--json")
    assert code == 0 and "Traceback" not in err
    result = json.loads(out)
    assert result["query_bytes"] == base64.b64encode(raw).decode() and result["query"].endswith("caf\ufffd.jpg")
    top = {h["path"]: h for h in result["results"]}
    assert set(top) == {str(folder / "caf\ufffd.jpg"), str(folder / "coffee.jpg")}
    assert base64.b64decode(top[str(folder / "caf\ufffd.jpg")]["path_bytes"]) == raw
    assert "path_bytes" not in top[str(folder / "coffee.jpg")]
    text = subprocess.run([sys.executable, "-m", "btembed", "search", str(folder), os.fsdecode(raw), "-k", "1"],
                          capture_output=True, timeout=300)  # text output: the raw name, as ls prints it
    assert text.returncode == 0 and text.stdout.split(b"  ", 1)[1].strip() == raw
    assert run_index(folder, tiny_model_dir).unchanged == 8  # stored under its real name: not new again


def test_a_damaged_catalog_is_named_and_rebuild_sets_it_aside(folder, tiny_model_dir):
    run_index(folder, tiny_model_dir)
    store = folder / ".btembed"
    for companion in store.glob("catalog.sqlite-*"):
        companion.unlink()
    (store / "catalog.sqlite").write_bytes(b"not a database" * 512)
    with pytest.raises(CatalogError, match=r"is damaged \(file is not a database\); `btembed index --rebuild`"):
        run_index(folder, tiny_model_dir)
    with pytest.raises(CatalogError, match="is damaged"):
        ImageIndex.open(folder)
    said = []
    r = index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0, batch_size=4, rebuild=True),
                     say=said.append)
    assert (r.total, r.embedded) == (6, 6)
    (aside,) = store.glob("catalog.sqlite.damaged-*")
    assert aside.read_bytes().startswith(b"not a database") and any(str(aside) in m for m in said)


def test_query_image_finds_its_own_file_first(folder, tiny_model_dir, tmp_path):
    run_index(folder, tiny_model_dir)
    outside = tmp_path / "query.jpg"
    shutil.copy(folder / "sub" / "chelsea.jpg", outside)
    index = ImageIndex.open(folder)
    try:
        assert index._stored_vector(outside) is None  # outside the folder: goes through the model
        for query, want in ((folder / "retina.jpg", "retina.jpg"), (outside, "sub/chelsea.jpg")):
            top = index.search(query, k=3)[0]
            assert Path(top.path).relative_to(folder).as_posix() == want
            assert top.score > 0.999
        # vectors and batches: the catalog's own vector of each file finds that file
        ids, vecs = next(index.catalog.chunks())
        batch = index.search_batch(vecs, k=1)
        assert [h[0].id for h in batch] == ids.tolist()
    finally:
        index.close()


def test_cli_json_search_and_bad_files(folder, tiny_model_dir):
    data = (folder / "astronaut.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image at all")
    tiny_png_bomb(folder / "bomb.png")
    (folder / "broken.jpg").symlink_to(folder / "missing.jpg")
    (folder / "loop-a.jpg").symlink_to(folder / "loop-b.jpg")
    (folder / "loop-b.jpg").symlink_to(folder / "loop-a.jpg")
    locked = folder / "locked.jpg"
    shutil.copy(folder / "retina.jpg", locked)
    locked.chmod(0)
    causes = {"truncated.jpg": "truncated", "empty.jpg": "empty", "notes.png": "not an image",
              "bomb.png": "bomb", "broken.jpg": "broken symbolic link", "loop-a.jpg": "loop",
              "loop-b.jpg": "loop"}
    if os.geteuid() != 0:  # root reads any file
        causes["locked.jpg"] = "permission denied"
    try:
        code, out, err = cli("index", folder, "--model", tiny_model_dir, "--json")
        report = json.loads(out)
        assert set(report) >= {"total", "new", "updated", "deleted", "unchanged", "reused", "failed", "failures"}
        failures = {f["path"]: f["error"] for f in report["failures"]}
        for name, cause in causes.items():
            assert cause in failures[name], (name, failures.get(name))
        good = 6 + ("locked.jpg" not in causes)  # as root, the unreadable file is readable after all
        assert report["total"] == good
        assert report["failed"] == len(causes) and report["new"] == report["total"] + report["failed"]
        for name in causes:
            assert name in err  # each bad file is named in the human summary too

        # not retried while unchanged; retried on request; a fixed file is picked up
        again = run_index(folder, tiny_model_dir)
        assert again.embedded == 0 and again.updated == 0 and again.failed == len(causes)
        retry = run_index(folder, tiny_model_dir, retry_errors=True)
        assert (retry.retried, retry.updated, retry.failed) == (len(causes), 0, len(causes))
        shutil.copy(folder / "coffee.jpg", folder / "empty.jpg")
        fixed = run_index(folder, tiny_model_dir)
        assert fixed.updated == 1 and fixed.reused == 1 and "empty.jpg" not in {f["path"] for f in fixed.failures}

        code, out, _ = cli("search", folder, folder / "sub" / "rocket.jpg", "-k", "2", "--json")
        result = json.loads(out)
        assert result["query"].endswith("rocket.jpg") and len(result["results"]) == 2
        assert result["results"][0]["path"].endswith("sub/rocket.jpg")
    finally:
        locked.chmod(0o644)


def test_other_model_refused_unless_rebuild(folder, tiny_model_dir, tmp_path):
    run_index(folder, tiny_model_dir)
    other = make_model_dir(tmp_path / "other", seed=1)
    with pytest.raises(CatalogError, match="--rebuild"):
        run_index(folder, other)
    r = run_index(folder, other, rebuild=True)
    assert r.embedded == 6 and r.total == 6
    assert run_index(folder, other).embedded == 0
    # without --model, the model recorded in the catalog is used
    assert index_folder(folder, IndexOptions(workers=0)).unchanged == 6
    # the recorded model moved away: both commands say it is the folder's model, and how to go on
    moved = other.rename(tmp_path / "moved")
    with pytest.raises(ModelError, match=f"the model {folder.resolve()} was indexed with cannot be loaded any "
                                         "more .*pass --model with the same weights"):
        index_folder(folder, IndexOptions(workers=0))
    outside = shutil.copy(folder / "astronaut.jpg", tmp_path / "query.jpg")  # not in the index: needs the model
    index = ImageIndex.open(folder)
    try:
        with pytest.raises(ModelError, match="was indexed with cannot be loaded any more .*--rebuild --model M"):
            index.search(outside, k=1)
    finally:
        index.close()
    assert index_folder(folder, IndexOptions(model=str(moved), workers=0)).unchanged == 6


def test_rebuild_deletes_the_old_generations_vector_files_once_unread(folder, tiny_model_dir, tmp_path):
    """The first --rebuild deleted the index folder's own catalog and FAISS file but left its vectors/ behind."""
    run_index(folder, tiny_model_dir, vector_files_above=0)
    store = folder / ".btembed"
    assert any((store / "vectors").iterdir())  # the live generation keeps its vectors in files
    reader = ImageIndex.open(folder)  # pins the index folder's own generation
    try:
        other = make_model_dir(tmp_path / "other", seed=1)
        assert run_index(folder, other, rebuild=True, vector_files_above=0).embedded == 6
        assert (store / "vectors").is_dir()  # still read: kept
        assert len(reader.search(folder / "astronaut.jpg", k=6)) == 6
    finally:
        reader.close()
    assert run_index(folder, other, vector_files_above=0).unchanged == 6  # the next writer collects it
    left = sorted(p.name for p in store.iterdir())
    assert "vectors" not in left and "catalog.sqlite" not in left and "gen-1" in left, left
    assert any((store / "gen-1" / "vectors").iterdir())
    # an index folder an earlier version left with only its vectors/ behind loses them on the next run
    (store / "vectors").mkdir()
    (store / "vectors" / "old.f16").write_bytes(b"\0" * 1024)
    run_index(folder, other, vector_files_above=0)
    assert not (store / "vectors").exists()
    index = ImageIndex.open(folder)
    try:
        assert index.search(folder / "astronaut.jpg", k=1)[0].path.endswith("astronaut.jpg")
    finally:
        index.close()
    # a second rebuild drops the whole first generation folder, vectors and all, when nothing reads it
    assert run_index(folder, tiny_model_dir, rebuild=True, vector_files_above=0).embedded == 6
    assert sorted(p.name for p in store.iterdir() if p.name.startswith("gen-") or p.name == "vectors") == ["gen-2"]


def test_db_elsewhere_and_stale_faiss_rebuilt(folder, tiny_model_dir, tmp_path):
    db = tmp_path / "store"
    run_index(folder, tiny_model_dir, db=str(db))
    assert not (folder / ".btembed").exists() and (db / INDEX_FILE).is_file()
    (db / INDEX_FILE).unlink()
    index = ImageIndex.open(folder, db=db)  # missing FAISS file: rebuilt from the catalog, saved again
    try:
        assert len(index) == 6 and (db / INDEX_FILE).is_file()
    finally:
        index.close()
    (db / INDEX_FILE).write_bytes(b"garbage")
    index = ImageIndex.open(db)  # the index folder itself also opens
    try:
        assert len(index) == 6 and Path(index.search(folder / "coffee.jpg", 1)[0].path).name == "coffee.jpg"
    finally:
        index.close()
    with pytest.raises(CatalogError, match="belongs to folder"):
        run_index(tmp_path, tiny_model_dir, db=str(db))
    with pytest.raises(CatalogError, match=f"belongs to folder {folder.resolve()}, not {tmp_path}"):
        ImageIndex.open(tmp_path, db=db)  # searching another folder with this --db would answer for the wrong one


def test_second_writer_exits_clearly_and_stale_lock_is_taken_over(folder, tiny_model_dir):
    store = folder / ".btembed"
    # The holder keeps the lock until its stdin closes, not for a fixed time: a slow start of the second
    # process on a loaded machine must not find the lock already free.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from btembed.search.lock import WriterLock; "
         "WriterLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()", str(store)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli("index", folder, "--model", tiny_model_dir, check=False)
        assert code == 1 and f"being written by process {holder.pid}" in err and "--wait" in err
        # --wait queues behind the running writer instead: the holder lets go a moment after the wait starts
        threading.Timer(1.0, holder.stdin.close).start()
        assert run_index(folder, tiny_model_dir, wait=60).total == 6
    finally:
        holder.kill()
        holder.wait()
    # a lock file left by a dead process does not block
    (store / "lock").write_text("999999 somehost 2020-01-01T00:00:00\n")
    assert run_index(folder, tiny_model_dir).unchanged == 6
    with WriterLock(store):
        assert not WriterLock(store).try_acquire()  # one writer per process too


def _file_state(path: Path) -> tuple:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns


def test_search_never_writes_the_catalog(folder, tiny_model_dir):
    import sqlite3

    run_index(folder, tiny_model_dir)
    store = folder / ".btembed"
    db, before, listing = store / "catalog.sqlite", _file_state(store / "catalog.sqlite"), sorted(os.listdir(store))
    index = ImageIndex.open(folder)
    try:
        assert index.catalog.read_only and Path(index.search(folder / "coffee.jpg", 1)[0].path).name == "coffee.jpg"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            index.catalog.set_many({"touched": 1})
    finally:
        index.close()
    assert _file_state(db) == before and sorted(os.listdir(store)) == listing  # no -wal/-shm left behind
    # While a writer has the catalog open (its -wal exists), a search shares it and sees its commits.
    writer = Catalog.open(db)
    try:
        writer.set_many({"note": "committed by a writer"})
        index = ImageIndex.open(folder)
        try:
            assert index.catalog.get("note") == "committed by a writer" and len(index) == 6
        finally:
            index.close()
    finally:
        writer.close()


def _without_write_access(cmd: list) -> list:
    """cmd run so that file permissions apply to it: root ignores them, so its DAC capabilities are dropped."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot run a command that chmod applies to")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", *cmd]


def test_search_works_in_a_read_only_index_folder(folder, tiny_model_dir):
    run_index(folder, tiny_model_dir)
    store = folder / ".btembed"
    db, before = store / "catalog.sqlite", _file_state(store / "catalog.sqlite")
    search = [sys.executable, "-m", "btembed", "search", str(folder), str(folder / "sub" / "rocket.jpg"), "-k", "2",
              "--json"]
    subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
    try:
        probe = subprocess.run(_without_write_access([sys.executable, "-c", f"open({str(store / 'x')!r}, 'w')"]),
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "Permission denied" in probe.stderr  # the setup really is read-only
        for case in ("current FAISS file", "FAISS file missing: rebuilt in memory"):
            if case.startswith("FAISS file missing"):
                store.chmod(0o755)
                (store / INDEX_FILE).unlink()
                store.chmod(0o555)
            listing = sorted(os.listdir(store))
            p = subprocess.run(_without_write_access(search), capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, (case, p.stderr)
            assert json.loads(p.stdout)["results"][0]["path"].endswith("sub/rocket.jpg"), case
            assert sorted(os.listdir(store)) == listing and _file_state(db) == before, case
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)


def test_exit_status_empty_folder_is_0_with_a_note_and_all_unreadable_is_1(tiny_model_dir, tmp_path, capsys):
    from btembed.cli import main

    empty, bad = tmp_path / "empty", tmp_path / "bad"
    empty.mkdir()
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    (bad / "b.png").write_bytes(b"")
    common = ["--model", str(tiny_model_dir), "--workers", "0", "--backend", "torch"]
    assert main(["index", str(empty), *common]) == 0
    assert f"no image files found in {empty}" in capsys.readouterr().err
    assert main(["index", str(bad), *common, "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["failed"] == 2  # the summary still lists what failed
    assert captured.err.strip().splitlines()[-1] == (f"btembed index: error: nothing in {bad} could be indexed: all 2 "
                                                     "failed (listed above); fix or remove them and run again")
    # One good image makes it a completed run with failures listed: 0.
    Image.new("RGB", (64, 64), (200, 30, 30)).save(bad / "good.png")
    assert main(["index", str(bad), *common]) == 0
    assert "no image files found" not in capsys.readouterr().err
