"""Training-step throughput: our loop's step (channels_last + bf16 autocast) vs a naive fp32 NCHW step.

Same model (btembed Encoder trunk + 2048-2048-2048 projector), same Barlow Twins loss, same LARS, same
synthetic uint8 batches. Each (model, variant) runs in its own process so peak RSS is that variant's own;
variants alternate, rounds repeat, and the best round counts (the CPU is shared: noise only slows things down).

    python bench/train_step.py            # table on stdout, bench/results/train_step.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [("resnet18", 128, 64), ("resnet50", 128, 32)]
PROJECTOR = [2048, 2048, 2048]


def _config(arch: str, size: int, batch: int, compile: bool = False):
    from training.config import apply_overrides, load_recipe

    return apply_overrides(load_recipe("cpu-default"), [
        f"architecture={arch}", f"image_size={size}", f"batch_size={batch}", f"projector={PROJECTOR}",
        "num_workers=0", "amp=bf16", "channels_last=true", f"compile={str(compile).lower()}"])


def _batches(batch: int, size: int, n: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
             torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)) for _ in range(n)]


def ours(arch: str, size: int, batch: int, compile: bool = False):
    """training.loop.Trainer.train_step itself, on a Trainer built from the recipe."""
    import numpy as np
    from PIL import Image

    from training.loop import Trainer

    config = _config(arch, size, batch, compile)
    data = Path(tempfile.mkdtemp(prefix="bench-data-"))
    for i in range(batch):  # the Trainer wants a real folder; the timed steps get synthetic batches
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(data / f"{i}.png")
    trainer = Trainer(config, data, Path(tempfile.mkdtemp(prefix="bench-run-")), device="cpu", progress=False)
    return lambda x1, x2: trainer.train_step(x1, x2)


def naive(arch: str, size: int, batch: int):
    """The textbook step: fp32, NCHW, no autocast; same model, loss and optimizer."""
    import torch

    from training.lars import LARS, param_groups
    from training.model import TwinNetwork
    from training.objectives import Views, get

    config = _config(arch, size, batch)
    torch.manual_seed(0)
    objective = get(**config.objective)
    model = TwinNetwork(config, head=objective.head(config.embedding_dim))
    objective.attach(model)
    opt = LARS(param_groups(model, config.lr_weights, config.lr_biases), weight_decay=config.weight_decay,
               eta=config.lars_eta)
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)

    def step(x1, x2):
        x1 = (x1.float() / 255 - mean) / std
        x2 = (x2.float() / 255 - mean) / std
        z, p, _ = model(x1, x2)
        loss, _ = objective.loss(Views(z=z, p=p, inputs=(x1, x2)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        objective.after_step(model, 1, 2)
        return float(loss)

    return step


def worker(variant: str, arch: str, size: int, batch: int, steps: int) -> dict:
    """Build one variant, warm up, time `steps` steps; report 2-view samples/s and RSS."""
    import torch

    builders = {"ours": ours, "naive": naive, "ours+compile": lambda *a: ours(*a, compile=True)}
    step = builders[variant](arch, size, batch)
    batches = _batches(batch, size, 2)
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for i in range(3 if "compile" in variant else 2):  # torch.compile compiles during the first steps
        step(*batches[i % 2])
    started = time.perf_counter()
    for i in range(steps):
        step(*batches[i % 2])
    elapsed = time.perf_counter() - started
    return {"variant": variant, "arch": arch, "size": size, "batch": batch, "steps": steps,
            "samples_per_s": steps * batch / elapsed, "step_s": elapsed / steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_build_mb": rss_built, "threads": torch.get_num_threads()}


def run_worker(variant, arch, size, batch, steps) -> dict:
    """One variant in a fresh process (so its peak RSS is its own)."""
    cmd = [sys.executable, __file__, "--worker", variant, arch, str(size), str(batch), str(steps)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--with-compile", action="store_true", help="also time ours + torch.compile (slow to build)")
    p.add_argument("--worker", nargs=5, metavar=("VARIANT", "ARCH", "SIZE", "BATCH", "STEPS"))
    args = p.parse_args()
    if args.worker:
        v, arch, size, batch, steps = args.worker
        print(json.dumps(worker(v, arch, int(size), int(batch), int(steps))))
        return
    load_before = os.getloadavg()
    results = []
    for arch, size, batch in CASES:
        variants = ("naive", "ours") + (("ours+compile",) if args.with_compile else ())
        runs = {v: [] for v in variants}
        for _ in range(args.rounds):
            for variant in variants:
                r = run_worker(variant, arch, size, batch, args.steps)
                runs[variant].append(r)
                print(f"  {arch}@{size} b{batch} {variant}: {r['samples_per_s']:.1f} samples/s", file=sys.stderr)
        best = {v: max(rs, key=lambda r: r["samples_per_s"]) for v, rs in runs.items()}
        results.append({"arch": arch, "size": size, "batch": batch, **best,
                        "speedup": best["ours"]["samples_per_s"] / best["naive"]["samples_per_s"],
                        "all_rounds": runs})
        if "ours+compile" in best:
            results[-1]["speedup_compile"] = best["ours+compile"]["samples_per_s"] / best["naive"]["samples_per_s"]
    load_after = os.getloadavg()
    lines = ["| model | batch | naive fp32 NCHW samples/s | ours (channels_last + bf16) samples/s | speed-up "
             "| peak RSS naive / ours (MB) |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['arch']}@{r['size']} | {r['batch']} | {r['naive']['samples_per_s']:.1f} | "
                     f"{r['ours']['samples_per_s']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['naive']['peak_rss_mb']:.0f} / {r['ours']['peak_rss_mb']:.0f} |")
    for r in results:
        if "speedup_compile" in r:
            lines.append(f"| {r['arch']}@{r['size']} + torch.compile | {r['batch']} | | "
                         f"{r['ours+compile']['samples_per_s']:.1f} | {r['speedup_compile']:.2f}x | "
                         f"/ {r['ours+compile']['peak_rss_mb']:.0f} |")
    table = "\n".join(lines)
    print(table)
    print(f"(2-view samples/s, best of {args.rounds} alternating rounds of {args.steps} steps; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after on {os.cpu_count()} cores)")
    out = REPO / "bench" / "results" / "train_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "what": "Barlow Twins training step, 2-view samples/s and peak RSS: training.loop.Trainer.train_step "
                "(channels_last + bf16 autocast, LARS) vs naive fp32 NCHW step with the same model/loss/LARS",
        "projector": PROJECTOR, "results": results, "table": table,
        "load_average_before": load_before, "load_average_after": load_after, "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
