"""Evaluate a model on the labeled dev set with `btembed probe`: trained vs random init vs raw 32x32 pixels.

python -m training.dev_eval MODEL_DIR --dev /work/data/dev [--out RESULTS.json]
Every number comes from one `btembed probe` command, printed beside it so anyone can reproduce it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

FEATURES = ("model", "random-init", "raw32")


def probe(task_dir: Path, model: str, features: str, folds: int) -> tuple[dict, list[str]]:
    """Run `btembed probe --json` once; returns its JSON and the command line."""
    cmd = ["btembed", "probe", str(task_dir), "--model", model, "--features", features,
           "--folds", str(folds), "--no-catalog", "--json"]
    run = subprocess.run([sys.executable, "-m", "btembed", *cmd[1:]], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {run.stderr.strip()[-500:]}")
    return json.loads(run.stdout), cmd


def markdown(rows: list[dict]) -> str:
    """The results as a markdown table (accuracies in percent)."""
    lines = ["| task | classes / images | features | linear top-1 | kNN top-1 (w. k=20) | kNN majority k=5 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['classes']} / {r['images']} | {r['features']} | "
                     f"{100 * r['linear_top1']:.1f} | {100 * r['knn_top1']:.1f} | "
                     f"{100 * r['knn_majority5_top1']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Probe every task folder of the dev set with the three feature kinds; print and save the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--dev", type=Path, default=Path("/work/data/dev"))
    ap.add_argument("--tasks", nargs="*", default=None, help="task folders under --dev (default: all)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--features", nargs="*", default=list(FEATURES), choices=FEATURES)
    ap.add_argument("--out", type=Path, default=None, help="write the rows and commands as JSON here")
    args = ap.parse_args(argv)
    tasks = args.tasks or sorted(p.name for p in args.dev.iterdir() if p.is_dir() and p.name != "licenses")
    rows = []
    for task in tasks:
        for features in args.features:
            start = time.monotonic()
            result, cmd = probe(args.dev / task, args.model, features, args.folds)
            row = {"task": task, "features": features, "linear_top1": result["linear"]["top1"],
                   "linear_top5": result["linear"]["top5"], "knn_top1": result["knn"]["top1"],
                   "knn_majority5_top1": result["knn"]["majority5_top1"],
                   "classes": len(result.get("classes", [])) or result.get("dataset", {}).get("classes"),
                   "images": result.get("dataset", {}).get("images"), "command": " ".join(cmd),
                   "seconds": round(time.monotonic() - start, 1)}
            rows.append(row)
            print(f"{task:12s} {features:12s} linear {row['linear_top1']:.3f} knn {row['knn_top1']:.3f} "
                  f"({row['seconds']} s)", file=sys.stderr, flush=True)
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "dev": str(args.dev), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
