"""The equal-compute table of training objectives, from the folder `bench/objectives_compare.sh` filled.

  python bench/objectives_table.py OUT [--json bench/results/objectives_compare.json]

Per objective: the steps its time budget bought (decided from the timed warm-up steps, so a neighbour slowing the
machine later stretches the wall time, not the compute), wall and CPU seconds, RankMe and feature std at the last
step, the online kNN of the monitor, and the dev-set probes (kNN and linear top-1, mean of 3 probe seeds, and the
spread of the seeds) — beside the random-init and raw-pixel baselines and what the papers report on ImageNet.
Prints a Markdown table; writes the JSON. Machine paths are written by role (POOL, DEV, OUT).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

NAMES = ("barlow_twins", "vicreg", "simclr", "byol", "simsiam", "directpred")
# ResNet-50 linear top-1 on ImageNet as the papers report it (not measured here): Barlow Twins' table 1 for the
# peers, VICReg's own paper; DirectPred's paper reports ImageNet runs shorter than the others', not set beside them.
REPORTED_IMAGENET = {"barlow_twins": 73.2, "vicreg": 73.2, "simclr": 69.3, "byol": 74.3, "simsiam": 71.3,
                     "directpred": None}
TASKS = ("fashion", "openclipart", "ufoai")


def records(path: Path) -> list[dict]:
    """The lines of a metrics.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def probe_rows(path: Path, features: str = "model") -> dict:
    """{task: {linear, knn, linear_seeds, knn_seeds}} of one devdata.evaluate JSON."""
    out = {}
    for row in json.loads(path.read_text())["rows"]:
        if row["features"] == features:
            out[row["task"]] = {"linear": row["linear_top1"], "knn": row["knn_top1"],
                                "linear_seeds": row["per_seed"]["linear_top1"],
                                "knn_seeds": row["per_seed"]["knn_top1"]}
    return out


def run_row(out: Path, name: str) -> dict:
    """Everything the table says of one objective's run."""
    log = (out / f"{name}.fit.log").read_text()
    budget = re.search(r"time budget ([\d.]+) min: ([\d.]+) s per step .*lr schedule is (\d+) steps", log)
    metrics = records(out / "runs" / name / "metrics.jsonl")
    steps = [r for r in metrics if "loss" in r]
    knn = [r for r in metrics if "knn_top1" in r]
    last = steps[-1]
    row = {"objective": name, "budget_min": float(budget[1]) if budget else None,
           "timed_s_per_step": float(budget[2]) if budget else None,
           "schedule_steps": int(budget[3]) if budget else None, "steps_run": last["step"],
           "rankme": round(last.get("rankme", float("nan")), 1), "rankme_max": last.get("rankme_max"),
           "feat_std": round(last.get("feat_std", float("nan")), 3), "alarm": last.get("alarm", []),
           "final_loss": round(last["loss"], 4),
           "online_knn_first_last": [round(knn[0]["knn_top1"], 4), round(knn[-1]["knn_top1"], 4)] if knn else None}
    time_file = out / f"{name}.time.json"
    if time_file.exists() and time_file.stat().st_size:  # /usr/bin/time writes it when the run ends
        row["time"] = json.loads(time_file.read_text())
    dev = out / f"{name}.dev.json"
    row["probes"] = probe_rows(dev) if dev.exists() else {}
    return row


def cell(probe: dict | None, key: str) -> str:
    """'mean ± half the seed spread' in percent, or a dash."""
    if not probe:
        return "–"
    seeds = probe[f"{key}_seeds"]
    spread = (max(seeds) - min(seeds)) / 2 if len(seeds) > 1 else 0.0
    return f"{100 * probe[key]:.1f} ± {100 * spread:.1f}"


def markdown(rows: list[dict], baselines: dict) -> str:
    """The table of docs/objectives.md."""
    head = ("| objective | steps (s/step timed) | RankMe / 512 | " + " | ".join(f"{t} kNN | {t} linear" for t in TASKS)
            + " | mean linear | reported ImageNet R50 linear |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        probes = r["probes"]
        mean = (statistics.mean(100 * probes[t]["linear"] for t in TASKS if t in probes) if probes else None)
        reported = REPORTED_IMAGENET.get(r["objective"])
        lines.append(f"| `{r['objective']}` | {r['steps_run']} ({r['timed_s_per_step']}) | {r['rankme']} | "
                     + " | ".join(f"{cell(probes.get(t), 'knn')} | {cell(probes.get(t), 'linear')}" for t in TASKS)
                     + f" | {'–' if mean is None else f'{mean:.1f}'} | "
                     + (f"{reported} (reported)" if reported else "–") + " |")
    for features, probes in baselines.items():
        mean = statistics.mean(100 * probes[t]["linear"] for t in TASKS if t in probes)
        lines.append(f"| {features} (baseline) | – | – | "
                     + " | ".join(f"{cell(probes.get(t), 'knn')} | {cell(probes.get(t), 'linear')}" for t in TASKS)
                     + f" | {mean:.1f} | – |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the OUT folder of bench/objectives_compare.sh")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    rows = [run_row(args.out, n) for n in NAMES if (args.out / f"{n}.fit.log").exists()]
    baselines_file = args.out / "baselines.dev.json"
    baselines = ({f: probe_rows(baselines_file, f) for f in ("random-init", "raw32")} if baselines_file.exists()
                 else {})
    table = markdown(rows, baselines)
    print(table)
    if args.json:
        doc = {"benchmark": "objectives_compare", "command": "bash bench/objectives_compare.sh POOL DEV OUT 15",
               "rows": rows, "baselines": baselines, "reported_imagenet_r50_linear_top1": REPORTED_IMAGENET,
               "table": table}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
