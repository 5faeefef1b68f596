"""Soak test of `btembed index` (issue 28; not in CI, minutes long): a hostile folder through every command,
20 kill -9 at random points of index runs (some of them --rebuild), then a full disk while the catalog is written.

    python bench/soak_index.py [--trials 20] [--files 300] [--seed 2024]

After every kill the next run must start at once (no stale lock), the catalog must pass SQLite's integrity check
and hold each path once; at the end a run must complete with the exact file count. Figures go to
bench/results/soak_index.json (and .md).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from PIL import Image  # noqa: E402

from btembed.images import find_images  # noqa: E402
from btembed.search.store import STORE_DIR, live_folder  # noqa: E402
from conftest import make_model_dir  # noqa: E402
from hostile import make_hostile, picture  # noqa: E402
from test_faults import COMMANDS, without_overrides  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def btembed(*args) -> list:
    return [sys.executable, "-m", "btembed", *map(str, args)]


def add_images(folder: Path, start: int, count: int) -> None:
    for i in range(start, start + count):
        sub = folder / f"d{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture(i)).save(sub / f"img{i:05d}.{'png' if i % 3 else 'jpg'}")


def catalog_state(store: Path) -> dict:
    """Integrity, rows, duplicate paths and statuses of the live catalog (plain SQL: this is a check from outside)."""
    db = live_folder(store) / "catalog.sqlite"
    if not db.exists():
        return {"integrity": "absent", "rows": 0, "duplicates": 0, "ok": 0, "paths": set()}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        paths = [r[0] for r in conn.execute("SELECT path FROM files")]
        ok = conn.execute("SELECT COUNT(*) FROM files WHERE status = 'ok'").fetchone()[0]
    return {"integrity": integrity, "rows": len(paths), "duplicates": len(paths) - len(set(paths)), "ok": ok,
            "paths": {p if isinstance(p, str) else os.fsdecode(p) for p in paths}}


def on_disk(folder: Path) -> set:
    return {p.relative_to(folder).as_posix() for p in find_images(folder)}


def hostile_phase(work: Path, model: Path) -> dict:
    """Every command of tests/test_faults.py over the hostile folder, without root's override capabilities."""
    h = make_hostile(work / "hostile")
    out = work / "hostile-out"
    out.mkdir()
    subprocess.run(btembed("index", h.root, "--model", model, "--workers", "0"), check=True, capture_output=True)
    before = catalog_state(h.root / STORE_DIR)
    subs = {"{dir}": str(h.root), "{out}": str(out), "{model}": str(model)}
    table = [{"name": n, "entry": e, "argv": [_fill(a, subs) for a in argv]} for n, e, argv, _, _ in COMMANDS]
    (work / "table.json").write_text(json.dumps(table))
    h.lock()
    try:
        subprocess.run(without_overrides([sys.executable, str(ROOT / "tests" / "fault_worker.py"),
                                          str(work / "table.json"), str(work / "results.json")]),
                       capture_output=True, timeout=1800, cwd=ROOT)
    finally:
        h.unlock()
    results = json.loads((work / "results.json").read_text())
    after = catalog_state(h.root / STORE_DIR)
    inputs = sum(1 for _ in h.root.rglob("*") if STORE_DIR not in _.parts)
    crashes = [n for n, r in results.items() if r["traceback"] or "Traceback" in r["stderr"]]
    wrong = [n for n, _, _, status, _ in COMMANDS if results.get(n, {}).get("status") != status]
    return {"inputs": inputs, "commands": len(COMMANDS), "tried": inputs * len(COMMANDS), "crashes": len(crashes),
            "wrong_status": wrong, "files_lost": len(before["paths"] - after["paths"])}


def kill_phase(work: Path, model: Path, trials: int, files: int, rng: random.Random) -> dict:
    """kill -9 of the whole index process group at random points; each next state must be consistent."""
    folder = work / "photos"
    add_images(folder, 0, files)
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    store = folder / STORE_DIR
    survived, killed, problems, next_id = 0, 0, [], files
    for trial in range(trials):
        rebuild = trial > 0 and rng.random() < 0.25
        cmd = btembed("index", folder, "--model", model, "--batch-size", "8", "--workers", "2",
                      "--backend", "torch", *(["--rebuild"] if rebuild else []))
        before = catalog_state(store)["rows"]
        todo = len(on_disk(folder)) if rebuild else max(1, len(on_disk(folder)) - before)
        p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rng.random() < 1 / 3:
            time.sleep(rng.uniform(0.5, 10.0))  # start-up, model load, planning
        else:  # mid-embedding, between batch commits, around the last commit and the FAISS write
            target = rng.uniform(0.05, 1.0) * todo
            while p.poll() is None and _written(store, rebuild, before) < target:
                time.sleep(0.02)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            killed += 1
        p.wait()
        at_kill = _written(store, rebuild, before)
        state = catalog_state(store)
        t0 = time.monotonic()
        probe = subprocess.run(btembed("index", folder, "--model", model, "--backend", "torch", "--json"),
                               capture_output=True, text=True, timeout=900)
        after = catalog_state(store)
        files_now = on_disk(folder)
        fine = (probe.returncode == 0 and "Traceback" not in probe.stderr and state["integrity"] in ("ok", "absent")
                and state["duplicates"] == 0 and after["duplicates"] == 0 and after["paths"] == files_now
                and "being written" not in probe.stderr)
        survived += fine
        if not fine:
            problems.append({"trial": trial, "rebuild": rebuild, "stderr": probe.stderr[-500:],
                             "state": {k: v for k, v in state.items() if k != "paths"}})
        print(f"trial {trial:2d} {'rebuild' if rebuild else 'update '} killed={p.returncode == -9} "
              f"after {at_kill} of {todo} rows written, "
              f"rows {state['rows']} -> {after['rows']} (on disk {len(files_now)}) next run "
              f"{time.monotonic() - t0:.1f} s {'ok' if fine else 'PROBLEM'}", flush=True)
        add_images(folder, next_id, 40)  # new work for the next trial, plus deletions and renames
        next_id += 40
        victims = sorted((folder / f"d{trial % 5}").glob("*.png"))[:3]
        victims[0].unlink()
        victims[1].rename(victims[1].with_name(f"renamed{trial}.png"))
    final = subprocess.run(btembed("index", folder, "--model", model, "--json"), capture_output=True, text=True)
    report = json.loads(final.stdout)
    state, files_now = catalog_state(store), on_disk(folder)
    return {"trials": trials, "killed": killed, "survived": survived, "problems": problems,
            "final_exact": state["paths"] == files_now and report["total"] == len(files_now) - 1,
            "final_duplicates": state["duplicates"], "files": len(files_now)}


def _written(store: Path, rebuild: bool, before: int) -> int:
    """Rows this run has committed so far: in the generation a rebuild builds, or added to the live catalog."""
    if not rebuild:
        return _rows(live_folder(store) / "catalog.sqlite") - before
    newest = max(store.glob("gen-*"), key=lambda p: int(p.name[4:]), default=None)
    if newest is None or newest == live_folder(store):
        return 0
    return _rows(newest / "catalog.sqlite")


def _rows(db: Path) -> int:
    """Committed rows of a catalog (0 while it does not exist or has no schema yet)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    except sqlite3.Error:
        return 0


def _no_bigger_than(limit: int):
    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return setup


def disk_full_phase(work: Path, model: Path) -> dict:
    """The catalog's disk fills up mid-run (a small tmpfs when mountable, else RLIMIT_FSIZE); then a run with
    room must complete with the exact count and no duplicate rows."""
    folder = work / "full-photos"
    add_images(folder, 50_000, 200)
    full = subprocess.run(btembed("index", folder, "--model", model, "--backend", "torch", "--db", work / "measure"),
                          capture_output=True, text=True)
    size = (work / "measure" / "catalog.sqlite").stat().st_size
    db = work / "full-db"
    db.mkdir()
    how = "tmpfs"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={max(64, size // 1024)}k", "tmpfs", str(db)],
                             capture_output=True).returncode == 0
    cmd = btembed("index", folder, "--model", model, "--backend", "torch", "--db", db)
    if mounted:
        first = subprocess.run(cmd, capture_output=True, text=True)
    else:
        how = "RLIMIT_FSIZE"
        first = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_no_bigger_than(size // 2))
    partial = catalog_state(db)
    if mounted:
        subprocess.run(["mount", "-o", "remount,size=256m", str(db)], check=True)
    second = subprocess.run([*cmd, "--json"], capture_output=True, text=True)
    state = catalog_state(db)
    outcome = {"how": how, "full_catalog_bytes": size, "first_status": first.returncode,
               "first_message": (first.stderr.strip().splitlines() or [""])[-1].replace(str(work), "<work>"),
               "first_traceback": "Traceback" in first.stderr, "rows_kept_after_full": partial["rows"],
               "integrity_after_full": partial["integrity"], "second_status": second.returncode,
               "second_exact": state["paths"] == on_disk(folder) and state["duplicates"] == 0,
               "reference_run_status": full.returncode}
    if mounted:
        subprocess.run(["umount", str(db)], capture_output=True)
    return outcome


def _fill(arg: str, subs: dict) -> str:
    for key, value in subs.items():
        arg = arg.replace(key, value)
    return arg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="btembed-soak-"))
    os.environ.setdefault("BTEMBED_CACHE", str(work / "cache"))
    t0 = time.time()
    try:
        model = make_model_dir(work / "model")
        result = {"hostile": hostile_phase(work, model)}
        print("hostile:", result["hostile"], flush=True)
        result["kill9"] = kill_phase(work, model, args.trials, args.files, rng)
        print("kill -9:", {k: v for k, v in result["kill9"].items() if k != "problems"}, flush=True)
        result["disk_full"] = disk_full_phase(work, model)
        print("disk full:", result["disk_full"], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["minutes"] = round((time.time() - t0) / 60, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak_index.json").write_text(json.dumps(result, indent=2) + "\n")
    h, k, d = result["hostile"], result["kill9"], result["disk_full"]
    (RESULTS / "soak_index.md").write_text(
        "| what | result |\n|---|---|\n"
        f"| hostile folder: inputs x commands tried | {h['inputs']} x {h['commands']} = {h['tried']} |\n"
        f"| crashes (tracebacks) / wrong exit status | {h['crashes']} / {len(h['wrong_status'])} |\n"
        f"| files indexed before and lost | {h['files_lost']} |\n"
        f"| kill -9 trials survived | {k['survived']} of {k['trials']} ({k['killed']} killed mid-run) |\n"
        f"| final run: exact file count, duplicate rows | {k['final_exact']}, {k['final_duplicates']} |\n"
        f"| disk full ({d['how']}) | status {d['first_status']}, traceback {d['first_traceback']}, "
        f"integrity {d['integrity_after_full']}; next run status {d['second_status']}, exact {d['second_exact']} |\n")
    print((RESULTS / "soak_index.md").read_text())


if __name__ == "__main__":
    main()
