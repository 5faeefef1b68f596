"""Benchmark re-indexing an unchanged folder of 10,000 small files (goal ≤ 2 s), side by side with what a run
that must embed costs (`import torch` alone, one changed file, the first full index).

    python bench/reindex.py [--files 10000] [--data ../data/bench_reindex]

Uses a random-init resnet18 at 64 px: the model only matters for the first run and the one-changed-file run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def make_folder(folder: Path, files: int) -> None:
    """files small PNGs (32×32 noise) spread over 100 subfolders; kept between runs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(files):
        path = folder / f"d{i % 100:02d}" / f"img{i:05d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


def make_model(folder: Path) -> None:
    """A random-init resnet18 model folder at 64 px input."""
    if (folder / "config.json").exists():
        return
    sys.path.insert(0, str(ROOT))
    import torch

    from btembed import Encoder

    torch.manual_seed(0)
    Encoder.from_config({"architecture": "resnet18", "name": "bench/resnet18-64",
                         "preprocess": {"input_size": 64, "resize_size": 72}}).save_pretrained(folder)


def timed(cmd: list[str]) -> tuple[float, str]:
    """Wall seconds of a subprocess (must succeed) and its stdout."""
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    return time.perf_counter() - t, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--data", default="../data/bench_reindex")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = Path(args.data)
    folder, model = data / f"photos{args.files}", data / "model"
    make_folder(folder, args.files)
    make_model(model)
    py = sys.executable
    index = [py, "-m", "btembed", "index", str(folder), "--json"]

    first_s, out = timed(index + ["--model", str(model), "--rebuild"])
    first = json.loads(out)
    print(f"first index: {first['total']} files, {first['embedded']} embedded in {first_s:.1f} s", flush=True)

    unchanged = []
    for _ in range(args.repeat):
        s, out = timed(index)
        report = json.loads(out)
        assert report["embedded"] == 0 and report["unchanged"] == args.files, report
        unchanged.append(s)
    probe = ("import sys, time; t = time.perf_counter(); from btembed.search import index_folder; "
             "r = index_folder(sys.argv[1]); print(time.perf_counter() - t, r.unchanged, 'torch' in sys.modules)")
    inproc, torch_loaded = [], None
    for _ in range(args.repeat):
        _, out = timed([py, "-c", probe, str(folder)])
        secs, count, torch_loaded = out.split()
        inproc.append(float(secs))
    torch_s = [timed([py, "-c", "import torch"])[0] for _ in range(3)]
    one = folder / "d00" / "img00000.png"
    one.write_bytes(one.read_bytes() + b"\0")  # new bytes, new mtime: one file to re-embed
    changed_s, out = timed(index)
    changed = json.loads(out)

    result = {
        "files": args.files, "first_index_s": round(first_s, 2), "first_embedded": first["embedded"],
        "unchanged_cli_s": {"median": round(statistics.median(unchanged), 3), "all": [round(s, 3) for s in unchanged]},
        "unchanged_in_process_s": {"median": round(statistics.median(inproc), 3), "all": [round(s, 3) for s in inproc]},
        "unchanged_run_imported_torch": torch_loaded == "True",
        "import_torch_s": round(statistics.median(torch_s), 3),
        "one_changed_file_cli_s": round(changed_s, 3), "one_changed_file_report": {
            k: changed[k] for k in ("updated", "embedded", "unchanged")},
        "goal_s": 2.0,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reindex.json").write_text(json.dumps(result, indent=2) + "\n")
    u, i = result["unchanged_cli_s"]["median"], result["unchanged_in_process_s"]["median"]
    text = "\n".join([
        f"Re-index of a folder of {args.files:,} files (median of {args.repeat}; goal ≤ 2 s)", "",
        "| run | seconds | vs unchanged CLI |", "|---|---|---|",
        f"| unchanged, `btembed index` (whole process) | {u} | 1.0× |",
        f"| unchanged, index_folder() in a warm process | {i} | {i / u:.2f}× |",
        f"| `python -c 'import torch'` alone | {result['import_torch_s']} | {result['import_torch_s'] / u:.1f}× |",
        f"| one file changed (loads the model) | {result['one_changed_file_cli_s']} | "
        f"{result['one_changed_file_cli_s'] / u:.1f}× |",
        f"| first index, {first['embedded']} files embedded | {result['first_index_s']} | "
        f"{result['first_index_s'] / u:.0f}× |", "",
        f"The unchanged run imported torch: {result['unchanged_run_imported_torch']}.", ""])
    (RESULTS / "reindex.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
