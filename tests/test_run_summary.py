"""training.run_summary turns metrics.jsonl into the log table of the default model's docs."""

import json

from training.run_summary import read_metrics, summary


def test_summary_rows_knn_and_torn_line(tmp_path):
    recs = [{"step": 0, "epoch": 0, "knn_top1": 0.25, "time": 0.0}]
    for s in range(10, 110, 10):
        recs.append({"step": s, "epoch": s // 50, "loss": 1000.0 - s, "on_diag": 1.0, "off_diag": 2.0, "lr": 0.1,
                     "samples_per_s": 60.0, "feat_std": 0.7, "rankme": 100.0 + s, "rankme_max": 512,
                     "time": 6.0 * s, "alarm": ["collapse"] if s == 50 else []})
    recs.append({"step": 60, "epoch": 1, "knn_top1": 0.4, "time": 361.0})
    text = "\n".join(json.dumps(r) for r in recs) + '\n{"step": 11'  # a killed run's torn last line
    (tmp_path / "metrics.jsonl").write_text(text)
    table = summary(read_metrics(tmp_path), n_rows=4)
    body = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[0] for line in body] == ["| 10", "| 40", "| 70", "| 100"]
    assert "40.0 % (step 60)" in body[2] and "25.0 % (step 0)" in body[1]
    assert "collapse alarms: 1" in table and "loss 990 → 900" in table and "10.0 min" in table


def test_summary_shows_whatever_parts_the_objective_logged(tmp_path):
    recs = [{"step": s, "epoch": 0, "loss": 2.0 - s / 10, "invariance": 0.5, "variance": 0.25, "covariance": 0.125,
             "parts": ["invariance", "variance", "covariance"], "lr": 0.1, "samples_per_s": 60.0, "feat_std": 0.7,
             "rankme": 10.0, "rankme_max": 64, "time": 6.0 * s, "alarm": []} for s in range(1, 4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    table = summary(read_metrics(tmp_path)).splitlines()
    assert "| invariance | variance | covariance |" in table[0] and "on_diag" not in table[0]
    rows = [line for line in table if line.startswith("|")]
    assert len({line.count("|") for line in rows}) == 1  # header, separator and rows have the same columns
    assert "| 0.5 | 0.25 | 0.125 |" in rows[2]
