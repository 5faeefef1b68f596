"""`btembed index` spread over torchrun ranks (issue 30): two gloo ranks on CPU give what one process gives, and a
rank killed mid-run loses only what it had not written."""
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

from btembed.search import ImageIndex, IndexOptions, index_folder
from btembed.search.catalog import CATALOG_FILE, Catalog, VectorRef
from btembed.search.shardfile import VECTOR_DIR
from tests.conftest import pretend_torchrun_rank

HERE = Path(__file__).resolve().parent


def torchrun(*args) -> subprocess.CompletedProcess:
    """torchrun --standalone (a free port of its own) --nproc_per_node=2 ARGS, captured."""
    launcher = Path(sys.executable).with_name("torchrun")
    cmd = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, "--standalone", "--nproc_per_node=2", *map(str, args)], capture_output=True,
                          text=True, timeout=240, env=env)


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory, photo_paths):
    """Fourteen images in two folders: the photos, crops of them, a byte-identical copy and a broken file."""
    root = tmp_path_factory.mktemp("shard-photos") / "photos"
    (root / "sub").mkdir(parents=True)
    for i, p in enumerate(photo_paths):
        shutil.copy2(p, root / ("sub" if i % 2 else "") / p.name)
        with Image.open(p) as img:
            w, h = img.size
            img.crop((0, 0, w * 2 // 3, h * 2 // 3)).save(root / f"crop-{p.stem}.png")
    shutil.copy2(photo_paths[0], root / "sub" / "copy.jpg")
    (root / "broken.jpg").write_bytes(photo_paths[1].read_bytes()[:300])
    return root


def catalog_state(folder: Path) -> dict:
    """relative path -> (size, mtime_ns, hash, status, error, vector or None)."""
    store = folder / ".btembed"
    catalog = Catalog.open(store / CATALOG_FILE, read_only=True)
    try:
        rows = catalog.rows()
        return {p: (r.size, r.mtime_ns, r.phash, r.status, r.error, catalog.fetch([r.id])[0] if r.ok else None)
                for p, r in rows.items()}
    finally:
        catalog.close()


def search_results(folder: Path, queries: list) -> list:
    """Per query the top 5 scores (rounded) and the paths scoring above the 5th: a byte-identical copy ties with
    its twin, and which of the two a cut at k keeps depends on row ids, which differ between runs."""
    index = ImageIndex.open(folder)
    try:
        out = []
        for q in queries:
            hits = [(round(h.score, 5), os.path.relpath(h.path, folder)) for h in index.search(q, k=5)]
            last = min(score for score, _ in hits)
            out.append((sorted(score for score, _ in hits), sorted(path for score, path in hits if score > last)))
        return out
    finally:
        index.close()


def assert_same_catalog(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for path in a:
        assert a[path][:5] == b[path][:5], path
        if a[path][5] is not None:
            assert np.abs(a[path][5] - b[path][5]).max() <= 1e-6, path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, photo_set, tiny_model_dir):
    """The photo set indexed by one process (the reference)."""
    folder = tmp_path_factory.mktemp("one") / "photos"
    shutil.copytree(photo_set, folder)
    index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0, batch_size=2))
    return folder


def test_two_gloo_ranks_give_what_one_process_gives(tmp_path, photo_set, one_process, tiny_model_dir):
    folder = tmp_path / "photos"
    shutil.copytree(photo_set, folder)  # copy2: same sizes and mtimes, so the same rows
    p = torchrun("-m", "btembed", "index", folder, "--model", tiny_model_dir, "--workers", 0, "--batch-size", 2,
                 "--json")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("precision: fp32 (") == 1, p.stderr  # said by rank 0 only
    report = json.loads(p.stdout)
    assert (report["total"], report["embedded"], report["failed"]) == (13, 12, 1)  # the copy reuses its twin
    assert_same_catalog(catalog_state(one_process), catalog_state(folder))
    queries = [f for f in sorted(photo_set.rglob("*.jpg")) if f.name != "broken.jpg"][:4]
    assert search_results(one_process, queries) == search_results(folder, queries)
    assert not list((folder / ".btembed" / VECTOR_DIR).glob("*")), "merged shard files are removed"


def test_a_killed_rank_loses_only_what_it_had_not_written(tmp_path, photo_set, one_process, tiny_model_dir):
    folder = tmp_path / "photos"
    shutil.copytree(photo_set, folder)
    p = torchrun(HERE / "shard_kill_worker.py", "index", folder, "--model", tiny_model_dir, "--workers", 0,
                 "--batch-size", 2, "--vector-files-above", 0)
    assert p.returncode != 0
    # What the ranks wrote is kept: merged by rank 0 when the collective failed (if torchrun let it finish), or
    # left in shard files for the next run.
    pending = list((folder / ".btembed" / VECTOR_DIR).glob("*.jsonl"))
    catalog = Catalog.open(folder / ".btembed" / CATALOG_FILE, read_only=True)
    try:
        merged = catalog.count()
    finally:
        catalog.close()
    assert pending or merged
    # Another rank count re-plans and keeps what was written; vectors stay in shard files (forced by the flag).
    report = index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0, batch_size=2,
                                               vector_files_above=0))
    assert report.total == 13 and report.failed == 1
    assert report.embedded < 12, "the batch rank 1 wrote before it died was kept"
    state = catalog_state(folder)
    assert len(state) == len([f for f in folder.rglob("*") if f.is_file() and ".btembed" not in f.parts])
    assert_same_catalog(catalog_state(one_process), state)
    catalog = Catalog.open(folder / ".btembed" / CATALOG_FILE, read_only=True)
    try:
        assert isinstance(catalog.outcome("astronaut.jpg").vector, VectorRef)
    finally:
        catalog.close()
    assert not list((folder / ".btembed" / VECTOR_DIR).glob("*.jsonl")), "every leftover shard was merged"
    queries = [f for f in sorted(photo_set.rglob("*.jpg")) if f.name != "broken.jpg"][:4]
    assert search_results(one_process, queries) == search_results(folder, queries)


def test_index_help_says_how_to_use_torchrun():
    from btembed.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "torchrun --nproc_per_node=N -m btembed index DIR" in sub.choices["index"].format_help().replace("\n", " ")


def test_embed_under_torchrun_writes_a_file_per_rank_and_a_manifest(tmp_path, photo_set, tiny_model_dir):
    odd = tmp_path / "odd"
    odd.mkdir()
    os.mkfifo(odd / "pipe.jpg")  # a failure of the walk, the same on every rank: said once (every rank said it)
    p = torchrun("-m", "btembed", "embed", photo_set, odd, "-o", tmp_path / "ranked" / "v.npy", "--model",
                 tiny_model_dir, "--workers", 0)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("pipe.jpg") == 1 and p.stderr.count("broken.jpg") == 1, p.stderr
    manifest = json.loads((tmp_path / "ranked" / "v.json").read_text())
    assert (manifest["ranks"], manifest["embedded"], manifest["failed"]) == (2, 13, 2)
    assert manifest["precision"] == "fp32"  # the tiny model has no int8 file: rank 0 chose fp32 for both
    ranked = {}
    for shard in manifest["shards"]:
        vectors = np.load(tmp_path / "ranked" / shard["vectors"])
        paths = json.loads((tmp_path / "ranked" / shard["sidecar"]).read_text())["paths"]
        assert len(vectors) == len(paths) == shard["rows"]
        ranked.update(zip(paths, vectors))
    p = subprocess.run([sys.executable, "-m", "btembed", "embed", str(photo_set), "-o", str(tmp_path / "one.npy"),
                        "--model", str(tiny_model_dir), "--workers", "0"], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    single = dict(zip(json.loads((tmp_path / "one.json").read_text())["paths"], np.load(tmp_path / "one.npy")))
    assert sorted(single) == sorted(ranked)
    assert max(np.abs(single[k] - ranked[k]).max() for k in single) <= 1e-6


@pytest.mark.parametrize("rank", [0, 1])
def test_embed_under_torchrun_says_what_the_walk_found_once(tmp_path, capsys, monkeypatch, rank):
    """Every rank walks the same inputs; each said its failures (and a path that is not there), one line per rank."""
    from btembed.cli import main

    pretend_torchrun_rank(monkeypatch, rank)
    empty = tmp_path / "empty"
    empty.mkdir()
    os.mkfifo(empty / "pipe.jpg")
    for args, said in [([str(tmp_path / "missing")], "no such file or folder"),
                       ([str(empty)], "nothing readable in")]:
        assert main(["embed", *args, "-o", str(tmp_path / "v.npy")]) == 1
        err = capsys.readouterr().err
        if rank == 0:
            assert said in err and len(err.strip().splitlines()) == (2 if "nothing" in said else 1), err
        else:
            assert err == ""


class OneRankOfTwo:
    """A RankGroup stand-in: rank 0 sends what broadcast is given; rank 1 receives what rank 0 sent."""

    def __init__(self, rank: int, sent: dict | None = None):
        self.rank, self.sent, self.received = rank, sent, None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, message=None):
        self.received = message
        return message if self.is_main else self.sent


def test_embed_ranks_run_at_rank_0s_precision(tmp_path, tiny_model_dir):
    from argparse import Namespace

    from btembed.commands.embed import shared_precision
    from btembed.errors import BtembedError

    args = Namespace(precision="auto", model=str(tiny_model_dir), revision=None, device="cpu", backend="auto")
    main = OneRankOfTwo(0)
    assert shared_precision(main, args) == "fp32"  # no int8 file: rank 0 judges fp32 ...
    assert main.received == {"precision": "fp32"}  # ... and sends it
    other = OneRankOfTwo(1, sent={"precision": "int8"})
    assert shared_precision(other, args) == "int8" and other.received is None  # taken from rank 0, not judged
    assert shared_precision(OneRankOfTwo(1, sent={"error": "no such model"}), args) is None
    with pytest.raises(BtembedError, match="not a btembed model folder|no such|cannot"):
        shared_precision(OneRankOfTwo(0), Namespace(**{**vars(args), "model": str(tmp_path)}))
    forced = Namespace(**{**vars(args), "precision": "fp32"})
    assert shared_precision(OneRankOfTwo(1, sent=None), forced) == "fp32"  # a forced precision needs no message
