"""Ship a finished run as the embedded default model: btembed/weights/NAME in the hub layout, registered as default.

python -m hub.ship_default RUN --name btembed/default-r18 --eval DEV_EVAL.json --data-manifest MANIFEST.json
Weights are stored in fp16 (half the package size) only if embeddings stay within 1e-3 of fp32; the dev-set
table from `python -m devdata.evaluate` goes into config.json metrics and the card.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from btembed import Embedder, Encoder
from btembed.card import render_card
from btembed.config import ModelConfig
from btembed.modelfiles import embedded_dir
from btembed.preprocess import INTERPOLATIONS

from devdata.evaluate import markdown
from hub.registry_tools import REGISTRY_PATH, entry_from_folder, set_entry
from training.export import export_run

FP16_TOLERANCE = 1e-3


def description(images: int) -> str:
    """The registry's one-line description of the embedded default."""
    return (f"The embedded default: a small Barlow Twins ResNet-18 trained by btembed's training package on {images:,} "
            "public images on 2 CPU cores; use btembed/r50 for real work.")


def limits(images: int, hours: str, input_size: int) -> list[str]:
    """The card's limits, stated with this run's own figures."""
    return [
        f"A small ResNet-18 trained for {hours} on two CPU cores, on {images:,} public images (wallpapers, nebula "
        "photos, game textures, clip-art, Fashion-MNIST items, animal photos): useful for near-duplicates and visual "
        "similarity of colour, texture, shape and layout, far weaker on object semantics than btembed/r50 "
        "(ImageNet-scale training).",
        f"Input is {input_size} px: fine detail in large photos is not seen.",
    ]


def photo_sample() -> list[np.ndarray]:
    """Real photos for the fp16 check: scikit-image's bundled ones if installed, else synthetic gradients."""
    try:
        from skimage import data

        return [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")]
    except ImportError:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8) for _ in range(5)]


def data_summary(manifest: dict) -> dict:
    """Per-source counts, versions and licences from the devdata.pool manifest."""
    sources = manifest.get("sources", {})
    return {name: {"package": s.get("package"), "version": s.get("version"), "licence": s.get("licence"),
                   "count": s.get("file_count")} for name, s in sources.items()}


def seeds_note(row: dict) -> str:
    """How a dev-set number was obtained: one seed, or the mean over several."""
    seeds = row.get("seeds", [0])
    return f"mean of --seed {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"--seed {seeds[0]}"


def dev_metrics(rows: list[dict]) -> dict:
    """Dev-set rows → config.json metrics in the card's {value, dataset, protocol} form."""
    metrics = {}
    for r in rows:
        for key, label in (("linear_top1", "linear top-1"), ("knn_top1", "weighted kNN top-1")):
            metrics[f"dev/{r['task']}/{r['features']}/{key}"] = {
                "value": round(r[key], 4), "dataset": f"btembed dev set: {r['task']} ({r['images']} images)",
                "protocol": f"{label}, 5-fold stratified, {seeds_note(r)}; command: {r['command']}"}
    return metrics


def lead(model: dict, other: dict, key: str) -> str:
    """model − other in points, with the sd over seeds of the paired per-seed differences when there are several."""
    text = f"{100 * (model[key] - other[key]):+.1f}"
    a, b = model.get("per_seed", {}).get(key, []), other.get("per_seed", {}).get(key, [])
    if len(a) > 1 and len(a) == len(b) and model.get("seeds") == other.get("seeds"):
        text += f" ± {100 * statistics.stdev(x - y for x, y in zip(a, b)):.1f}"
    return text


def margins(rows: list[dict]) -> str:
    """One line per task: the trained model's lead over random init and raw pixels, in points."""
    by = {(r["task"], r["features"]): r for r in rows}
    lines = []
    for task in sorted({r["task"] for r in rows}):
        m, rnd, raw = by.get((task, "model")), by.get((task, "random-init")), by.get((task, "raw32"))
        if not (m and rnd and raw):
            continue
        lines.append(f"- {task}: linear {lead(m, rnd, 'linear_top1')} vs random init, "
                     f"{lead(m, raw, 'linear_top1')} vs raw pixels; kNN {lead(m, rnd, 'knn_top1')} vs random init, "
                     f"{lead(m, raw, 'knn_top1')} vs raw pixels")
    return "\n".join(lines)


def stage_from_run(run: Path, staging: Path, tmp: Path, args) -> None:
    """Export a finished run into staging, in fp16 when its embeddings stay within FP16_TOLERANCE of fp32."""
    fp32_dir = export_run(run, tmp / "fp32", name=args.name, license=args.license,
                          input_size=args.input_size, resize_size=args.resize_size,
                          interpolation=args.interpolation)
    photos = photo_sample()
    fp32 = Embedder.from_pretrained(fp32_dir, backend="torch").embed(photos)
    encoder = Encoder.from_pretrained(fp32_dir)
    encoder.save_pretrained(staging, dtype=torch.float16)
    half = Embedder.from_pretrained(staging, backend="torch").embed(photos)
    drift = float(np.abs(half - fp32).max())
    print(f"fp16 storage: max |Δ| of unit embeddings vs fp32 = {drift:.2e}", file=sys.stderr)
    if drift > FP16_TOLERANCE:
        print("fp16 drifts too far; storing fp32", file=sys.stderr)
        shutil.rmtree(staging)
        encoder.save_pretrained(staging)
    config = ModelConfig.load(staging)
    config.training["weights_storage"] = f"fp16 (max |Δ| vs fp32 embeddings {drift:.1e})" \
        if drift <= FP16_TOLERANCE else "fp32"
    config.save(staging)


def stage_from_folder(folder: Path, staging: Path) -> None:
    """Copy an already-shipped model folder into staging: same weights, its card and metrics to be redone."""
    config = ModelConfig.load(folder)
    if not config.training.get("weights_storage"):
        raise SystemExit(f"{folder} was not shipped by hub.ship_default (config.json has no "
                         "training.weights_storage); ship its run instead")
    shutil.copytree(folder, staging)
    # Export stopped copying the recipe's prose estimate (it went stale); a re-card drops it from older folders too.
    config.training.get("config", {}).pop("description", None)
    config.save(staging)


def main(argv=None) -> int:
    """Export (or reuse a shipped folder), write dev metrics, card and config, register as the embedded default."""
    ap = argparse.ArgumentParser(prog="python -m hub.ship_default", description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?", help="the training run's --out folder")
    ap.add_argument("--recard", type=Path, metavar="FOLDER",
                    help="instead of a run: an already-shipped model folder whose weights stay as they are; only "
                         "its dev-set metrics, card and registry entry are redone from --eval")
    ap.add_argument("--name", default="btembed/default-r18")
    ap.add_argument("--folder", default="default-r18", help="folder under btembed/weights")
    ap.add_argument("--eval", type=Path, required=True, help="JSON written by python -m devdata.evaluate --out")
    ap.add_argument("--data-manifest", type=Path, help="manifest.json of devdata.pool (required with "
                                                       "a run; with --recard the folder's own sources are kept)")
    ap.add_argument("--license", default="other")
    ap.add_argument("--input-size", type=int, default=0, help="inference crop size (default: the recipe's)")
    ap.add_argument("--resize-size", type=int, default=0, help="short side before the crop (default: x 256/224)")
    ap.add_argument("--interpolation", default="", choices=INTERPOLATIONS,
                    help="resize filter of inference preprocessing (default: the recipe's)")
    # Both default to this checkout's package; other values ship into a copy (tests, a release branch's tree).
    ap.add_argument("--weights-root", type=Path, default=embedded_dir(),
                    help="models folder (default: btembed/weights)")
    ap.add_argument("--registry", type=Path, default=REGISTRY_PATH, help="registry.json to update")
    args = ap.parse_args(argv)
    if (args.run is None) == (args.recard is None):
        ap.error("give either a training run or --recard FOLDER")
    if args.run is not None and args.data_manifest is None:
        ap.error("--data-manifest is required when shipping a run")
    if args.recard is not None and (args.input_size or args.resize_size or args.interpolation):
        ap.error("--recard keeps the folder's preprocessing; --input-size/--resize-size/--interpolation need a run")

    evaluation = json.loads(args.eval.read_text())
    target = args.weights_root / args.folder
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "ship"
        if args.run is not None:
            stage_from_run(args.run, staging, Path(tmp), args)
        else:
            stage_from_folder(args.recard, staging)
        config = ModelConfig.load(staging)
        config.name = args.name
        # Earlier dev-set numbers go: the card shows one evaluation, the one in --eval.
        config.metrics = {k: v for k, v in config.metrics.items() if not k.startswith("dev/")}
        config.metrics.update(dev_metrics(evaluation["rows"]))
        if args.data_manifest is not None:
            config.training["data_sources"] = data_summary(json.loads(args.data_manifest.read_text()))
        images = config.training["data_details"]["images"]  # what the run trained on, as export recorded it
        config.training["limits"] = limits(images, config.training["time"], config.preprocess.input_size)
        config.save(staging)
        (staging / "README.md").write_text(card_text(config, evaluation, args.name))
        if target.exists():  # after staging: --recard may name the target itself
            shutil.rmtree(target)
        shutil.copytree(staging, target)
    # Not uploaded anywhere (yet): an unreleased entry, embedded in the package and made the default.
    set_entry(args.name, entry_from_folder(target, repo_id=args.name, revision=None, embedded=args.folder,
                                           description=description(images)), make_default=True, path=args.registry)
    print(f"shipped {args.name} → {target}, registered as the default in {args.registry}", file=sys.stderr)
    return 0


def card_text(config: ModelConfig, evaluation: dict, name: str) -> str:
    """The model card: btembed's generic card plus the dev-set table, the leads and the training data."""
    seeds = evaluation.get("seeds", [0])
    spread_note = ", ± the sd over seeds" if len(seeds) > 1 else ""
    extra = ("\n## Development-set evaluation\n\nTrained model vs the same architecture at random init vs raw "
             f"32×32 pixels, same protocol (`btembed probe`, 5-fold stratified, {seeds_note(evaluation)}; "
             f"accuracies in %{spread_note}). The dev set "
             "is built by `python -m devdata.devset DEV` from allowed Debian packages and held out of training; "
             "the whole table is `python -m devdata.evaluate " + name + " --dev DEV --seeds "
             + " ".join(map(str, seeds)) + "`.\n\n"
             + markdown(evaluation["rows"]) + "\n\nLead of the trained model, in points:\n\n"
             + margins(evaluation["rows"])
             + "\n\n## Training data\n\n| source | package | version | licence | images |\n"
             "|---|---|---|---|---|\n"
             + "\n".join(f"| {k} | {v.get('package', '')} | {v.get('version', '')} | {v.get('licence', '')} | "
                         f"{v.get('count', '')} |" for k, v in config.training["data_sources"].items()) + "\n")
    return render_card(config).replace("\n## How to use\n", extra + "\n## How to use\n", 1)


if __name__ == "__main__":
    sys.exit(main())
