"""kill -9 of a whole `btembed index` process group (decode workers too) at random moments: the next run must
complete at once (no dead lock to wait on), the catalog must hold each file exactly once, and search must work."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from btembed.images import find_images
from btembed.search import ImageIndex


def add_images(folder: Path, start: int, count: int, seed: int) -> None:
    """Small Pillow-made images (noise over a colour ramp), spread over a few subfolders."""
    rng = np.random.default_rng(seed)
    for i in range(start, start + count):
        sub = folder / f"d{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        base = np.linspace(0, 255, 48, dtype=np.float32)[None, :, None] * rng.random(3, dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(sub / f"img{i:04d}.{'png' if i % 3 else 'jpg'}")


def group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """True once no process of the group is left (orphaned workers die with it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def cataloged_rows(db: Path) -> int:
    """Rows committed so far (0 before the catalog exists)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # created but schema not written yet


def test_kill_9_at_random_moments_then_next_run_completes(tmp_path, tiny_model_dir):
    folder = tmp_path / "photos"
    add_images(folder, 0, 300, seed=0)
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    cmd = [sys.executable, "-m", "btembed", "index", str(folder), "--model", str(tiny_model_dir),
           "--batch-size", "8", "--workers", "2", "--json"]
    db = folder / ".btembed" / "catalog.sqlite"
    rng = random.Random(2024)
    killed, rows_seen = 0, []
    # Trial 0 dies at a random moment of start-up; the others when the catalog has reached a random share of
    # the files, i.e. mid-embedding with decode workers busy, or right around the last commit and the FAISS write.
    targets = [None, rng.uniform(0.1, 0.5), rng.uniform(0.5, 0.9), 1.0]
    for trial, share in enumerate(targets):
        n_files = sum(1 for _ in find_images(folder))
        p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if share is None:
            time.sleep(rng.uniform(0.3, 2.0))
        else:
            while p.poll() is None and cataloged_rows(db) < share * n_files:
                time.sleep(0.02)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            killed += 1
        p.wait()
        assert group_gone(p.pid), "decode workers outlived the kill"
        rows_seen.append(cataloged_rows(db))
        # Change the folder between trials so every run has new work, renames and deletions to do.
        add_images(folder, 300 + 40 * trial, 40, seed=trial + 1)
        victims = sorted((folder / "d1").glob("*.png"))[:3]
        victims[0].unlink()
        victims[1].rename(victims[1].with_name(f"renamed{trial}.png"))
    assert killed >= 3, f"only {killed} of 4 runs were killed; rows after each trial: {rows_seen}"

    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "being written" not in done.stderr and time.monotonic() - t0 < 120
    report = json.loads(done.stdout)

    on_disk = sorted(p.relative_to(folder).as_posix() for p in find_images(folder))
    with sqlite3.connect(folder / ".btembed" / "catalog.sqlite") as conn:
        cataloged = sorted(r[0] for r in conn.execute("SELECT path FROM files"))
        ok = conn.execute("SELECT COUNT(*) FROM files WHERE status = 'ok'").fetchone()[0]
    assert cataloged == on_disk  # each file exactly once, nothing vanished still listed
    assert report["total"] == ok == len(on_disk) - 1 and report["failed"] == 1

    index = ImageIndex.open(folder)
    try:
        assert len(index) == ok
        query = folder / on_disk[len(on_disk) // 2]
        top = index.search(query, k=3)[0]
        assert Path(top.path) == query and top.score > 0.999
    finally:
        index.close()
