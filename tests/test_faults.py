"""Fault injection (issue 28): a hostile folder through every command, run without root's override capabilities.

Each row of COMMANDS is one command line: adding a command to the suite is adding a row. Asserted for every row:
no traceback, the documented exit status (0: completed, bad inputs listed; 1: nothing could be done), the line
that names the problem; and for the index: every good file indexed, nothing indexed before lost.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from btembed.search import IndexOptions, index_folder
from btembed.search.catalog import CATALOG_FILE, Catalog

from hostile import make_hostile

HERE = Path(__file__).resolve().parent

# (name, entry point, argv, exit status, words stderr must hold); {dir} is the hostile folder, {out} a scratch
# folder, {model} the tiny test model.
COMMANDS = [
    ("index", "btembed", ["index", "{dir}", "--json"], 0, ["could not list folder private", "loop", "named pipe"]),
    ("search", "btembed", ["search", "{dir}", "{dir}/cats/0.png", "--json"], 0, []),
    ("search a loop", "btembed", ["search", "{dir}", "{dir}/loop-a.jpg"], 1, ["symbolic link loop"]),
    ("search a locked folder's file", "btembed", ["search", "{dir}", "{dir}/private/0.png"], 1,
     ["permission denied"]),
    ("search a pipe", "btembed", ["search", "{dir}", "{dir}/dogs/pipe.jpg"], 1, ["named pipe"]),
    ("search no folder", "btembed", ["search", "{out}/nowhere", "{dir}/cats/0.png"], 1, ["does not exist"]),
    ("dedup", "btembed", ["dedup", "{dir}", "--json"], 0, []),
    ("embed", "btembed", ["embed", "{dir}", "-o", "{out}/vectors.npy", "--model", "{model}", "--workers", "0"], 0,
     ["cannot list this folder", "named pipe", "permission denied"]),
    ("embed a locked folder", "btembed", ["embed", "{dir}/private", "-o", "{out}/none.npy", "--model", "{model}"],
     1, ["cannot list this folder (permission denied)"]),
    ("probe", "btembed", ["probe", "{dir}", "--folds", "2", "--save", "{out}/clf", "--model", "{model}",
                          "--workers", "0", "--json"], 0, ["cannot list this folder", "truncated"]),
    ("predict", "btembed", ["predict", "{out}/clf", "{dir}", "--workers", "0", "--json"], 0, ["named pipe"]),
    ("export --calibration", "btembed", ["export", "{model}", "--onnx", "{out}/m.onnx", "--calibration", "{dir}",
                                         "--max-calibration", "8"], 0, []),
    ("training fit", "training", ["fit", "--recipe", "cpu-tiny", "--data", "{dir}", "--out", "{out}/run",
                                  "--no-progress", "epochs=1"], 0, []),
    ("export-index", "btembed", ["export-index", "{dir}", "--out", "{out}/exported", "--format", "jsonl"], 0, []),
    ("models fetch --from a pipe", "btembed", ["models", "fetch", "btembed/r50", "--from", "{dir}/dogs/pipe.jpg"], 1,
     ["pipe.jpg"]),
    ("models fetch --from a locked file", "btembed", ["models", "fetch", "btembed/r50", "--from",
                                                      "{dir}/cats/locked.png"], 1, ["permission denied"]),
]


def without_overrides(cmd: list) -> list:
    """cmd run so that file permissions apply to it: the tests run as root, whose DAC capabilities are dropped."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv"):
        return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", *cmd]
    if shutil.which("capsh"):
        return ["capsh", "--drop=cap_dac_override,cap_dac_read_search,cap_fowner", "--", "-c",
                " ".join(map(repr, cmd))]
    pytest.skip("running as root with neither setpriv nor capsh: cannot make a file unreadable to the test")


def cataloged(folder: Path) -> dict:
    """relative path -> status of every catalog row."""
    catalog = Catalog.open(folder / ".btembed" / CATALOG_FILE, read_only=True)
    try:
        return {p: r.status for p, r in catalog.rows().items()}
    finally:
        catalog.close()


def test_every_command_survives_a_hostile_folder(tmp_path, tiny_model_dir):
    h = make_hostile(tmp_path / "hostile")
    out = tmp_path / "out"
    out.mkdir()
    first = index_folder(h.root, IndexOptions(model=str(tiny_model_dir), workers=0))  # all readable (as root)
    before = cataloged(h.root)
    assert {p for p, s in before.items() if s == "ok"} == h.good, first.failures
    assert first.total == len(h.good) and not set(before) & h.special
    subs = {"{dir}": str(h.root), "{out}": str(out), "{model}": str(tiny_model_dir)}
    table = [{"name": name, "entry": entry, "argv": [_fill(a, subs) for a in argv]}
             for name, entry, argv, _, _ in COMMANDS]
    (tmp_path / "table.json").write_text(json.dumps(table))
    h.lock()
    try:
        proc = subprocess.run(without_overrides([sys.executable, str(HERE / "fault_worker.py"),
                                                 str(tmp_path / "table.json"), str(tmp_path / "results.json")]),
                              capture_output=True, text=True, timeout=600, cwd=HERE.parent)
        results = json.loads((tmp_path / "results.json").read_text())
        after = cataloged(h.root)
    finally:
        h.unlock()
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, _, _, status, words in COMMANDS:
        got = results[name]
        assert got["traceback"] is None, (name, got["traceback"])
        assert "Traceback" not in got["stderr"], (name, got["stderr"][-2000:])
        assert got["status"] == status, (name, got["status"], got["stderr"][-2000:])
        for word in words:
            assert word in got["stderr"], (name, word, got["stderr"][-2000:])
    report = json.loads(results["index"]["stdout"])
    assert {p for p, s in after.items() if s == "ok"} >= h.good  # every good file indexed ...
    assert set(after) >= set(before) and report["deleted"] == 0  # ... nothing indexed before lost
    assert {"folder": "private", "error": "permission denied", "kept": 2} in report["failures"]
    assert json.loads(results["probe"]["stdout"])["classes"] == ["cats", "dogs"]  # dir-loop/up/ is cut at once
    predictions = json.loads(results["predict"]["stdout"])["predictions"]
    assert len(predictions) == len(h.good) - 3  # locked.png and private/ are unreadable to it


def _fill(arg: str, subs: dict) -> str:
    for key, value in subs.items():
        arg = arg.replace(key, value)
    return arg


# ---------------------------------------------------------------------------- the findings, one test each

def _photos(root: Path, photo_paths, where=("", "sub")) -> Path:
    """The six photos, alternating between the folders named in where."""
    for i, p in enumerate(photo_paths):
        (root / where[i % len(where)]).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / where[i % len(where)] / p.name)
    return root


def _cli(*args, drop=False, **kw):
    cmd = [sys.executable, "-m", "btembed", *map(str, args)]
    return subprocess.run(without_overrides(cmd) if drop else cmd, capture_output=True, text=True, timeout=300,
                          **kw)


def test_1_an_unlistable_folder_keeps_its_files_and_an_empty_mount_forgets_nothing(tmp_path, photo_paths,
                                                                                    tiny_model_dir):
    """Its files were counted as deleted and vanished from search; now they stay, and the folder is named."""
    folder = _photos(tmp_path / "photos", photo_paths)
    index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0))
    (folder / "sub").chmod(0)
    try:
        p = _cli("index", folder, "--json", drop=True)
    finally:
        (folder / "sub").chmod(0o755)
    assert p.returncode == 0 and "Traceback" not in p.stderr
    report = json.loads(p.stdout)
    assert (report["deleted"], report["total"]) == (0, 6)
    assert report["failures"] == [{"folder": "sub", "error": "permission denied", "kept": 3}]
    assert "could not list folder sub: permission denied; its 3 indexed files are kept" in p.stderr
    assert len(cataloged(folder)) == 6

    # Every indexed file gone (an unmounted disk leaves an empty mount point): nothing forgotten unless --prune.
    aside = tmp_path / "aside"
    shutil.move(folder / "sub", aside / "sub")
    for p in folder.glob("*.jpg"):
        shutil.move(p, aside / p.name)
    said = []
    r = index_folder(folder, IndexOptions(workers=0), say=said.append)
    assert (r.deleted, r.kept, r.total) == (0, 6, 6) and any("--prune" in m for m in said)
    r = index_folder(folder, IndexOptions(workers=0, prune=True))
    assert (r.deleted, r.total) == (6, 0)


def test_2_a_file_behind_an_untraversable_folder_is_one_line(tmp_path, photo_paths, tiny_model_dir):
    """search, embed and predict ended in a PermissionError traceback; index in one on catalog.sqlite."""
    folder = _photos(tmp_path / "photos", photo_paths, where=("", "locked/inner"))
    index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0))
    inside = next((folder / "locked" / "inner").glob("*.jpg"))
    (folder / "locked").chmod(0)
    script = ("import sys; from btembed.cli import main; d, f, m = sys.argv[1:]; "
              "codes = [main(['search', d, f]), main(['embed', f, '-o', d + '/../v.npy', '--model', m]), "
              "main(['predict', d + '/../nowhere', f]), main(['index', d + '/locked/inner'])]; print(codes)")
    try:
        p = subprocess.run(without_overrides([sys.executable, "-c", script, str(folder), str(inside),
                                              str(tiny_model_dir)]), capture_output=True, text=True, timeout=300)
    finally:
        (folder / "locked").chmod(0o755)
    assert "Traceback" not in p.stderr and p.stdout.strip() == "[1, 1, 1, 1]", p.stderr
    lines = p.stderr.strip().splitlines()
    assert f"btembed search: error: {inside}: permission denied (a folder on its way cannot be entered)" in lines
    assert f"btembed embed: error: nothing readable in {inside}" in lines
    assert any(line.startswith("btembed index: error: cannot reach the folder") for line in lines)


def test_3_names_that_are_not_utf8_in_probe_and_embed(tmp_path, photo_paths, tiny_model_dir, capsys):
    """probe of an indexed folder ended in UnicodeEncodeError; embed's JSON stored lone surrogates."""
    import base64

    from btembed.cli import main

    folder = _photos(tmp_path / "labeled", photo_paths, where=("a", "b"))
    raw = os.fsencode(folder) + b"/a/\xe9t\xe9.jpg"
    shutil.copy(photo_paths[0], raw)
    assert main(["index", str(folder), "--model", str(tiny_model_dir), "--workers", "0"]) == 0
    assert main(["probe", str(folder), "--folds", "2", "--model", str(tiny_model_dir), "--workers", "0",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dataset"]["from_catalog"] == 7 and doc["n"] == 7
    assert main(["dedup", str(folder), "--json"]) == 0  # the copy and its original are one group
    members = [m for g in json.loads(capsys.readouterr().out)["groups"] for m in g["members"]]
    assert [base64.b64decode(m["path_bytes"]) for m in members if "path_bytes" in m] == [raw]
    assert main(["embed", str(folder), "-o", str(tmp_path / "v.npy"), "--model", str(tiny_model_dir),
                 "--workers", "0"]) == 0
    sidecar = json.loads((tmp_path / "v.json").read_text())
    (row, b64), = sidecar["paths_bytes"].items()
    assert base64.b64decode(b64) == raw and sidecar["paths"][int(row)] == os.fsdecode(raw).encode(
        "utf-8", "surrogateescape").decode("utf-8", "replace")


def test_4_a_closed_stdout_ends_quietly(tmp_path):
    """`python -m hub registry show | head` ended in a BrokenPipeError traceback."""
    for cmd in ([sys.executable, "-m", "hub", "registry", "show"], [sys.executable, "-m", "btembed", "models"]):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE.parent)
        proc.stdout.close()  # the reader is gone before the first line is written
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0 and err == "", (cmd, err)


def test_5_a_search_during_rebuild_sees_the_whole_old_index(tmp_path, photo_paths, tiny_model_dir, monkeypatch):
    """--rebuild emptied the catalog first: a search meanwhile saw an empty or partial index."""
    from conftest import make_model_dir

    from btembed.embedder import Embedder
    from btembed.search import ImageIndex

    folder = _photos(tmp_path / "photos", photo_paths)
    index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0))
    seen, held = [], []
    real = Embedder.embed_batches

    def look_first(self, *args, **kw):
        index = ImageIndex.open(folder)  # a concurrent reader, mid-rebuild
        seen.append((len(index), index.search(folder / "coffee.jpg", k=1)[0].score))
        held.append(index)  # still open when the rebuild switches over
        yield from real(self, *args, **kw)

    monkeypatch.setattr(Embedder, "embed_batches", look_first)
    other = make_model_dir(tmp_path / "other", seed=3)
    r = index_folder(folder, IndexOptions(model=str(other), workers=0, rebuild=True))
    assert r.embedded == 6 and seen == [(6, pytest.approx(1.0, abs=1e-3))]
    old = held[0]
    assert len(old.search(folder / "coffee.jpg", k=6)) == 6  # the pinned old generation still reads
    old_sha = old.catalog.get("model_sha256")
    old.close()
    monkeypatch.undo()
    fresh = ImageIndex.open(folder)
    try:
        assert len(fresh) == 6 and fresh.catalog.model_stamp().model_sha256 != old_sha
    finally:
        fresh.close()
    index_folder(folder, IndexOptions(workers=0))  # the next writer deletes the old generation, now unpinned
    assert [p.name for p in (folder / ".btembed").iterdir() if p.name.startswith("gen-") or
            p.name == "catalog.sqlite"] == ["gen-1"]


def test_6_the_onnx_example_survives_bad_files_and_explains_itself(tmp_path, photo_paths, tiny_model_dir):
    """It stopped on the first symlink loop and wrote nothing; with no arguments it raised ValueError."""
    from btembed.cli import main

    example = [sys.executable, str(HERE.parent / "examples" / "onnx_serve.py")]
    usage = subprocess.run(example, capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: python onnx_serve.py")
    onnx = tmp_path / "m.onnx"
    assert main(["export", str(tiny_model_dir), "--onnx", str(onnx)]) == 0
    folder = _photos(tmp_path / "photos", photo_paths)
    (folder / "loop-a.jpg").symlink_to("loop-b.jpg")
    (folder / "loop-b.jpg").symlink_to("loop-a.jpg")
    (folder / "sub" / "up").symlink_to("..")
    (folder / "empty.png").write_bytes(b"")
    os.mkfifo(folder / "pipe.jpg")
    p = subprocess.run([*example, str(onnx), str(folder), str(tmp_path / "v.npy")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert json.loads(p.stdout)["images"] == 6
    sidecar = json.loads((tmp_path / "v.json").read_text())
    assert len(sidecar["paths"]) == 6 and {Path(f["path"]).name for f in sidecar["failures"]} == {
        "loop-a.jpg", "loop-b.jpg", "empty.png", "pipe.jpg"}


def test_7_a_loop_query_and_a_missing_folder_say_what_they_are(tmp_path, photo_paths, tiny_model_dir, capsys):
    """A symlink-loop query said "no such file"; a missing folder was told to run `btembed index` on it."""
    from btembed.cli import main

    folder = _photos(tmp_path / "photos", photo_paths)
    index_folder(folder, IndexOptions(model=str(tiny_model_dir), workers=0))
    (tmp_path / "q-a.jpg").symlink_to("q-b.jpg")
    (tmp_path / "q-b.jpg").symlink_to("q-a.jpg")
    assert main(["search", str(folder), str(tmp_path / "q-a.jpg")]) == 1
    assert capsys.readouterr().err.strip().endswith("q-a.jpg: symbolic link loop")
    assert main(["search", str(tmp_path / "nowhere"), str(folder / "coffee.jpg")]) == 1
    err = capsys.readouterr().err
    assert f"the folder {tmp_path / 'nowhere'} does not exist" in err and "btembed index" not in err
