"""Model-only speed of the same ONNX files under several onnxruntime releases, side by side in one run.

    python bench/onnxruntime_versions.py [--versions 1.31.1 1.32.0] [--model ../data/bench-pipeline/r50]

Each release is pip-installed (no deps) into its own folder under --work and run in a fresh child process with
that folder first on sys.path; children alternate release by release, round by round, and the median round counts.
Inputs are random uint8 NHWC batches (a convolution's speed does not depend on pixel values). The model folder is
the one `bench/pipeline.py` builds (ResNet-50@224 random init, with its int8 file).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from results_io import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
CHILD = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, batch, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.intra_op_num_threads = threads
session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
size = session.get_inputs()[0].shape[1]
x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
session.run(None, {name: x})
t = time.perf_counter()
for _ in range(n // batch):
    session.run(None, {name: x})
seconds = time.perf_counter() - t
print(json.dumps({"version": ort.__version__, "file": ort.__file__, "img_per_s": (n // batch) * batch / seconds}))
"""


def install(version: str, work: Path) -> Path | None:
    """The folder to put first on sys.path for this release (None: the venv's own, already installed)."""
    import onnxruntime

    if version == onnxruntime.__version__:
        return None
    target = work / f"onnxruntime-{version}"
    if not (target / "onnxruntime").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        f"onnxruntime=={version}"], check=True)
    return target


def run(path: Path, target: Path | None, batch: int, n: int, threads: int) -> dict:
    env = dict(os.environ)
    if target:
        env["PYTHONPATH"] = str(target)
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(batch), str(n), str(threads)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def model_files(folder: Path) -> dict[str, Path]:
    """{precision: ONNX file} of the model folder: its fp32 export (cached, made once) and its int8 file."""
    sys.path.insert(0, str(ROOT))
    from btembed.backends.onnx import INT8_FILE, onnx_file
    from btembed.config import ModelConfig

    files = {"fp32": onnx_file(folder, ModelConfig.load(folder))}
    if (folder / INT8_FILE).is_file():
        files["int8"] = folder / INT8_FILE
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", nargs="+", default=["1.31.1", "1.32.0"])
    ap.add_argument("--model", type=Path, default=Path("../data/bench-pipeline/r50"))
    ap.add_argument("--work", type=Path, default=Path("../data/bench-onnxruntime"))
    ap.add_argument("--batch", type=int, default=64, help="`btembed index --batch-size` default")
    ap.add_argument("--images", type=int, default=320)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "onnxruntime_versions.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("BTEMBED_CACHE", str(args.model.parent / "cache"))
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model} is not a model folder; run `python bench/pipeline.py` first to build it")
    files = model_files(args.model)
    targets = {v: install(v, args.work) for v in args.versions}
    runs: dict = {(v, p): [] for v in args.versions for p in files}
    for r in range(args.rounds):
        for v in args.versions:
            for precision, path in files.items():
                got = run(path, targets[v], args.batch, args.images, args.threads)
                if got["version"] != v:
                    raise SystemExit(f"asked for onnxruntime {v}, the child ran {got['version']} ({got['file']})")
                runs[v, precision].append(got["img_per_s"])
                print(f"round {r + 1}: onnxruntime {v} {precision}: {got['img_per_s']:.1f} img/s", file=sys.stderr)
    rows = [{"onnxruntime": v, "precision": p, "img_per_s": statistics.median(runs[v, p]), "runs": runs[v, p]}
            for v in args.versions for p in files]
    base = {p: next(r["img_per_s"] for r in rows if r["precision"] == p and r["onnxruntime"] == args.versions[0])
            for p in files}
    for row in rows:
        row[f"vs_{args.versions[0]}"] = row["img_per_s"] / base[row["precision"]]
    print(f"\nmodel-only, {args.model.name}, batch {args.batch}, {args.threads} threads, median of {args.rounds}")
    print(f"{'onnxruntime':12} {'precision':9} {'img/s':>7} {'vs ' + args.versions[0]:>10}")
    for row in rows:
        print(f"{row['onnxruntime']:12} {row['precision']:9} {row['img_per_s']:7.1f} "
              f"{row[f'vs_{args.versions[0]}']:10.2f}")
    result = {"benchmark": "onnxruntime_versions", "model": str(args.model), "files": {k: str(v) for k, v in
              files.items()}, "batch": args.batch, "images": args.images, "threads": args.threads,
              "rounds": args.rounds, "rows": rows, "machine": machine()}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
