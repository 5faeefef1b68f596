"""Health of a run: loss and the objective's parts, lr, throughput, embedding spread, RankMe, collapse alarm → JSONL
and console."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import ConfigError

METRICS = "metrics.jsonl"


def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalized singular values of [M, D] features."""
    s = torch.linalg.svdvals(features.float())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def normalized_std(features: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalized features × √D: ≈ 1 for well-spread features, → 0 at collapse."""
    f = F.normalize(features.float(), dim=1)
    return float(f.std(dim=0).mean() * math.sqrt(f.shape[1]))


class HealthLog:
    """Collects per-step numbers, writes one JSONL record and one console line per interval."""

    def __init__(self, run_dir: Path | None, config, total_steps: int, write=print):
        self.path = Path(run_dir) / METRICS if run_dir else None
        self.config = config
        self.total_steps = total_steps
        self.write = write
        self.features: list[torch.Tensor] = []
        self._reset()

    def _reset(self):
        self.sums = {"loss": 0.0, "z_std": 0.0}
        self.parts: dict[str, float] = {}  # whatever named parts the objective returns, summed in its order
        self.steps = 0
        self.samples = 0
        self.bad = 0
        self.started = time.perf_counter()

    def truncate(self, step: int) -> None:
        """Drop records after `step` (left by a run that died after its last checkpoint)."""
        if self.path is None or not self.path.is_file():
            return
        keep = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{self.path} line {number} is not a JSON record; this --out folder holds "
                                  "something else than this run's log (pass another --out)") from None
            if record.get("step", 0) <= step:
                keep.append(line)
        self.path.write_text("".join(line + "\n" for line in keep))

    def update(self, loss: float, parts: dict, z: torch.Tensor, features: torch.Tensor, samples: int,
               bad: int) -> None:
        """Account one optimizer step (values already detached; `parts` are the objective's named numbers)."""
        self.sums["loss"] += loss
        for name, value in parts.items():
            self.parts[name] = self.parts.get(name, 0.0) + float(value)
        self.sums["z_std"] += float(z.float().std(dim=0).mean())
        self.steps += 1
        self.samples += samples
        self.bad += bad
        self.features.append(features.float().cpu())
        kept, limit = 0, self.config.rankme_samples
        for i in range(len(self.features) - 1, -1, -1):  # keep only the newest rankme_samples rows
            kept += self.features[i].shape[0]
            if kept >= limit:
                self.features = self.features[i:]
                break

    def note(self, record: dict) -> None:
        """Write a record that is not an interval summary (e.g. the kNN accuracy before training)."""
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps({**record, "time": time.time()}) + "\n")
        self.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))

    def emit(self, step: int, epoch: int, lr: float, extra: dict | None = None) -> dict:
        """Write the interval's record and console line; returns the record."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        feats = torch.cat(self.features)[-self.config.rankme_samples:]
        rank_max = min(feats.shape)
        steps = max(self.steps, 1)
        parts = {k: v / steps for k, v in self.parts.items()}
        record = {"step": step, "epoch": epoch, "loss": self.sums["loss"] / steps, **parts, "parts": list(parts),
                  "z_std": self.sums["z_std"] / steps,
                  "lr": lr, "samples_per_s": self.samples / elapsed, "feat_std": normalized_std(feats),
                  "rankme": rankme(feats), "rankme_max": rank_max, "bad_files": self.bad, "time": time.time()}
        record.update(extra or {})
        alarms = []
        if record["feat_std"] < self.config.alarm_std:
            alarms.append(f"feature std {record['feat_std']:.3f} < {self.config.alarm_std}")
        if record["rankme"] < self.config.alarm_rank * rank_max:
            alarms.append(f"RankMe {record['rankme']:.1f} < {self.config.alarm_rank} x {rank_max}")
        if not math.isfinite(record["loss"]):
            alarms.append("loss is not finite")
        record["alarm"] = alarms
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        shown = " ".join(f"{k} {v:.5g}" for k, v in parts.items())
        line = (f"step {step}/{self.total_steps} ep {epoch} loss {record['loss']:.5g}"
                + (f" ({shown})" if shown else "") + f" lr {lr:.3g} "
                f"{record['samples_per_s']:.1f} samples/s feat-std {record['feat_std']:.3f} "
                f"RankMe {record['rankme']:.1f}/{rank_max}")
        if "knn_top1" in record:
            line += f" kNN {record['knn_top1']:.1%}"
        if self.bad:
            line += f" bad-files {self.bad}"
        if alarms:
            line += "  COLLAPSE ALARM: " + "; ".join(alarms)
        self.write(line)
        self._reset()
        return record
