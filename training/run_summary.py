"""Summarize a run's metrics.jsonl as the markdown table of docs/default-model-training.md.

python -m training.run_summary RUN_DIR [--rows 16]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_metrics(run: Path) -> list[dict]:
    """The health records of a run, in order (a torn last line from a killed run is skipped)."""
    rows = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def part_names(record: dict) -> list[str]:
    """The objective's parts a record holds (logs from before objectives: Barlow Twins' two terms)."""
    return record.get("parts", [k for k in ("on_diag", "off_diag") if k in record])


def summary(rows: list[dict], n_rows: int = 16) -> str:
    """Evenly spaced training rows (always the first and last), each with the latest kNN seen so far."""
    train = [r for r in rows if "loss" in r]
    if not train:
        raise SystemExit("no training records in metrics.jsonl")
    picks = sorted({round(i * (len(train) - 1) / max(1, n_rows - 1)) for i in range(n_rows)})
    knn = [(r["step"], r["knn_top1"]) for r in rows if "knn_top1" in r]
    parts = part_names(train[0])
    lines = ["| step | epoch | loss | " + "".join(f"{name} | " for name in parts) + "lr | samples/s | feature std | "
             "RankMe (of {}) | kNN top-1 | alarm |".format(train[0].get("rankme_max", "")),
             "|---" * (9 + len(parts)) + "|"]
    for i in picks:
        r = train[i]
        seen = [(s, k) for s, k in knn if s <= r["step"]]
        knn_cell = f"{100 * seen[-1][1]:.1f} % (step {seen[-1][0]})" if seen else ""
        lines.append(f"| {r['step']} | {r['epoch']} | {r['loss']:.5g} | "
                     + "".join(f"{r[name]:.5g} | " for name in parts)
                     + f"{r['lr']:.4f} | {r['samples_per_s']:.1f} | {r['feat_std']:.3f} | {r['rankme']:.1f} | "
                     f"{knn_cell} | {', '.join(r.get('alarm') or []) or 'none'} |")
    alarms = sum(bool(r.get("alarm")) for r in train)
    minutes = (train[-1]["time"] - rows[0]["time"]) / 60
    lines += ["", f"Records: {len(train)}; wall time first → last record {minutes:.1f} min; "
              f"collapse alarms: {alarms}; loss {train[0]['loss']:.5g} → {train[-1]['loss']:.5g}; "
              f"RankMe {train[0]['rankme']:.0f} → "
              f"min {min(r['rankme'] for r in train):.0f} → {train[-1]['rankme']:.0f}"
              + (f"; kNN {100 * knn[0][1]:.1f} % → {100 * knn[-1][1]:.1f} %" if knn else "") + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the summary table of one run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--rows", type=int, default=16)
    args = ap.parse_args(argv)
    print(summary(read_metrics(args.run), args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
