"""Training-step throughput: our loop's step (channels_last + bf16 autocast) vs a naive fp32 NCHW step, per objective.

Same model (btembed Encoder trunk + 2048-2048-2048 projector, plus the objective's head and state), same loss, same
LARS, same synthetic uint8 batches. Each (model, objective, variant) runs in its own process so peak RSS is its own;
variants alternate, rounds repeat, and the best round counts (the CPU is shared: noise only slows things down).

    python bench/train_step.py            # Barlow Twins: table on stdout, bench/results/train_step.json
    python bench/train_step.py --objective all --arch resnet18 --variants ours
                                          # every objective: bench/results/train_step_objectives.json
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


def _config(arch: str, size: int, batch: int, compile: bool = False, objective: str = "barlow_twins"):
    from training.config import apply_overrides, load_recipe

    return apply_overrides(load_recipe("cpu-default"), [
        f"architecture={arch}", f"image_size={size}", f"batch_size={batch}", f"projector={PROJECTOR}",
        "num_workers=0", "amp=bf16", "channels_last=true", f"compile={str(compile).lower()}",
        f"objective={objective}"])


def _batches(batch: int, size: int, n: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
             torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)) for _ in range(n)]


def ours(arch: str, size: int, batch: int, objective: str, compile: bool = False):
    """training.loop.Trainer.train_step itself, on a Trainer built from the recipe."""
    import numpy as np
    from PIL import Image

    from training.loop import Trainer

    config = _config(arch, size, batch, compile, objective)
    data = Path(tempfile.mkdtemp(prefix="bench-data-"))
    for i in range(batch):  # the Trainer wants a real folder; the timed steps get synthetic batches
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(data / f"{i}.png")
    trainer = Trainer(config, data, Path(tempfile.mkdtemp(prefix="bench-run-")), device="cpu", progress=False)
    return lambda x1, x2: trainer.train_step(x1, x2)


def naive(arch: str, size: int, batch: int, objective: str):
    """The textbook step: fp32, NCHW, no autocast; same model, loss and optimizer."""
    import torch

    from training.lars import LARS, param_groups
    from training.model import build_network
    from training.objectives import Views, get

    config = _config(arch, size, batch, objective=objective)
    torch.manual_seed(0)
    objective = get(**config.objective)
    model = build_network(config, head=objective.head(config.embedding_dim))
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
        objective.after_step(model, 1, 1000)
        return float(loss)

    return step


def worker(variant: str, arch: str, size: int, batch: int, steps: int, objective: str = "barlow_twins") -> dict:
    """Build one variant, warm up, time `steps` steps; report 2-view samples/s and RSS."""
    import torch

    builders = {"ours": ours, "naive": naive, "ours+compile": lambda *a: ours(*a, compile=True)}
    step = builders[variant](arch, size, batch, objective)
    batches = _batches(batch, size, 2)
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for i in range(3 if "compile" in variant else 2):  # torch.compile compiles during the first steps
        step(*batches[i % 2])
    started = time.perf_counter()
    for i in range(steps):
        step(*batches[i % 2])
    elapsed = time.perf_counter() - started
    return {"variant": variant, "arch": arch, "size": size, "batch": batch, "steps": steps, "objective": objective,
            "samples_per_s": steps * batch / elapsed, "step_s": elapsed / steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_build_mb": rss_built, "threads": torch.get_num_threads()}


def run_worker(variant, arch, size, batch, steps, objective) -> dict:
    """One variant in a fresh process (so its peak RSS is its own)."""
    cmd = [sys.executable, __file__, "--worker", variant, arch, str(size), str(batch), str(steps), objective]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _objectives(names: list[str]) -> list[str]:
    """The objectives asked for ('all': every registered one)."""
    sys.path.insert(0, str(REPO))  # run as a script from bench/: the repository's training package
    from training.objectives import MEMBERS

    return list(MEMBERS) if names == ["all"] else names


def _table(results: list[dict], variants: tuple) -> str:
    """Markdown: one row per (model, objective), a column per variant, the speed-up when both were timed."""
    both = "naive" in variants and "ours" in variants
    lines = ["| model | objective | batch | " + " | ".join(f"{LABELS[v]} samples/s" for v in variants)
             + (" | speed-up" if both else "") + " | peak RSS " + " / ".join(variants) + " (MB) |",
             "|---" * (4 + len(variants) + both) + "|"]
    for r in results:
        lines.append(f"| {r['arch']}@{r['size']} | {r['objective']} | {r['batch']} | "
                     + " | ".join(f"{r[v]['samples_per_s']:.1f}" for v in variants)
                     + (f" | {r['speedup']:.2f}x" if both else "")
                     + " | " + " / ".join(f"{r[v]['peak_rss_mb']:.0f}" for v in variants) + " |")
    return "\n".join(lines)


LABELS = {"naive": "naive fp32 NCHW", "ours": "ours (channels_last + bf16)", "ours+compile": "ours + torch.compile"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--objective", nargs="+", default=["barlow_twins"], metavar="NAME",
                   help="objectives to time (training/objectives/), or 'all'")
    p.add_argument("--arch", nargs="+", default=[arch for arch, _, _ in CASES], choices=[a for a, _, _ in CASES])
    p.add_argument("--variants", nargs="+", default=["naive", "ours"], choices=list(LABELS))
    p.add_argument("--with-compile", action="store_true", help="also time ours + torch.compile (slow to build)")
    p.add_argument("--out", type=Path, help="JSON results (default: bench/results/train_step.json for Barlow "
                                            "Twins alone, else bench/results/train_step_objectives.json)")
    p.add_argument("--worker", nargs="+", metavar="ARG", help="VARIANT ARCH SIZE BATCH STEPS [OBJECTIVE]")
    args = p.parse_args()
    if args.worker:
        v, arch, size, batch, steps, *objective = args.worker
        print(json.dumps(worker(v, arch, int(size), int(batch), int(steps), *objective)))
        return
    objectives = _objectives(args.objective)
    variants = tuple(args.variants) + (("ours+compile",) if args.with_compile else ())
    load_before = os.getloadavg()
    results = []
    for arch, size, batch in [c for c in CASES if c[0] in args.arch]:
        for objective in objectives:
            runs = {v: [] for v in variants}
            for _ in range(args.rounds):
                for variant in variants:
                    r = run_worker(variant, arch, size, batch, args.steps, objective)
                    runs[variant].append(r)
                    print(f"  {arch}@{size} b{batch} {objective} {variant}: {r['samples_per_s']:.1f} samples/s",
                          file=sys.stderr)
            best = {v: max(rs, key=lambda r: r["samples_per_s"]) for v, rs in runs.items()}
            results.append({"arch": arch, "size": size, "batch": batch, "objective": objective, **best,
                            "all_rounds": runs})
            if "naive" in best and "ours" in best:
                results[-1]["speedup"] = best["ours"]["samples_per_s"] / best["naive"]["samples_per_s"]
    load_after = os.getloadavg()
    table = _table(results, variants)
    print(table)
    print(f"(2-view samples/s, best of {args.rounds} alternating rounds of {args.steps} steps; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after on {os.cpu_count()} cores)")
    default = "train_step.json" if objectives == ["barlow_twins"] else "train_step_objectives.json"
    out = args.out or REPO / "bench" / "results" / default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "what": "training step, 2-view samples/s and peak RSS per objective: training.loop.Trainer.train_step "
                "(channels_last + bf16 autocast, LARS) vs a naive fp32 NCHW step with the same model/loss/LARS",
        "projector": PROJECTOR, "objectives": objectives, "results": results, "table": table,
        "command": " ".join(["python", "bench/train_step.py", *sys.argv[1:]]),
        "load_average_before": load_before, "load_average_after": load_after, "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
