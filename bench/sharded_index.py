"""`btembed index` as one process vs spread over torchrun ranks (gloo, CPU) on the same photos, side by side in one
run: whole-command wall time, images/s and the ratio.

    python bench/make_photo_set.py /tmp/photos          # 300 hi-res JPEGs (Debian wallpapers, cropped)
    nice python bench/sharded_index.py /tmp/photos [--ranks 2] [--repeat 2]

Each run indexes the photos into a fresh index folder (--db), so every run embeds every photo; the runs alternate
(one process, ranks, one process, ...) so drifting load from other jobs hits both alike, and the photos are read
once beforehand so both read them from the page cache. Both use the same defaults (decode workers, batch size);
torchrun gives each rank OMP_NUM_THREADS=1, so on a 2-core machine two ranks share the cores one process has.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_io import machine, write_result  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def index_command(photos: Path, db: Path, ranks: int, extra: list) -> list:
    """The command line of one run: the same `btembed index`, under torchrun when ranks > 1."""
    args = ["-m", "btembed", "index", str(photos), "--db", str(db), "--json", *extra]
    if ranks == 1:
        return [sys.executable, *args]
    launcher = Path(sys.executable).with_name("torchrun")
    return [str(launcher), "--standalone", f"--nproc_per_node={ranks}", *args]


def timed_run(cmd: list) -> tuple[float, float, dict]:
    """Wall seconds of the whole command (process start to exit), the CPU seconds it and every process it
    started used, and its JSON summary."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return wall, cpu, json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--model", default=None, help="default: the embedded default model")
    args = ap.parse_args()
    files = [p for p in args.photos.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    megabytes = sum(p.stat().st_size for p in files) / 2**20
    for p in files:  # into the page cache, for every run alike
        p.read_bytes()
    extra = ["--model", args.model] if args.model else []
    runs: dict[int, list] = {1: [], args.ranks: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for ranks in (1, args.ranks):
                db = Path(tmp) / f"db-{ranks}-{r}"
                wall, cpu, summary = timed_run(index_command(args.photos, db, ranks, extra))
                shutil.rmtree(db, ignore_errors=True)
                runs[ranks].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 1), "indexed": summary["total"],
                                    "embedded": summary["embedded"], "inside_s": summary["seconds"]})
                print(json.dumps({"ranks": ranks, **runs[ranks][-1]}), flush=True)
    rows = []
    for ranks, got in runs.items():
        wall = float(np.median([g["wall_s"] for g in got]))
        rows.append({"ranks": ranks, "median_wall_s": round(wall, 2), "images_per_s": round(len(files) / wall, 2),
                     "median_inside_s": round(float(np.median([g["inside_s"] for g in got])), 2),
                     "median_cpu_s": round(float(np.median([g["cpu_s"] for g in got])), 1), "runs": got})
    ratio = rows[0]["median_wall_s"] / rows[1]["median_wall_s"]
    result = {"photos": len(files), "megabytes": round(megabytes, 1), "ranks": args.ranks,
              "speedup_ranks_over_one": round(ratio, 3), "rows": rows,
              "machine": machine(omp_num_threads_per_rank=1, cpu_count=os.cpu_count())}
    result["speedup_inside"] = round(rows[0]["median_inside_s"] / rows[1]["median_inside_s"], 3)
    write_result(RESULTS / "sharded_index.json", result)
    print(f"\n{len(files)} photos ({megabytes:.0f} MB), whole `btembed index` command, median of {args.repeat}\n")
    print("| processes | wall s | images/s | inside index_folder (rank 0) s | CPU s, all processes |\n"
          "|---|---|---|---|---|")
    for r in rows:
        print(f"| {'1 process' if r['ranks'] == 1 else str(r['ranks']) + ' gloo ranks'} | {r['median_wall_s']} | "
              f"{r['images_per_s']} | {r['median_inside_s']} | {r['median_cpu_s']} |")
    print(f"\n{args.ranks} ranks / 1 process: {ratio:.2f}× the throughput")


if __name__ == "__main__":
    main()
