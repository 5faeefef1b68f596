"""btembed probe: linear probe and kNN accuracy of frozen features on a labeled image folder; --save a classifier."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import BtembedError
from . import add_model_args, count_at_least, load_embedder, print_json, say


def register(sub) -> None:
    """Add the probe subcommand."""
    p = sub.add_parser(
        "probe", help="linear-probe and kNN accuracy on a labeled folder (DIR/<class>/*)",
        description="Measure how well frozen embeddings separate labeled classes: a logistic-regression probe "
                    "(L-BFGS, standardized features, weight decay picked on an inner split) and cosine kNN "
                    "(weighted k=20, T=0.07; majority k=5). DIR/<class>/* uses stratified k-fold; "
                    "DIR/train/<class>/* + DIR/val/<class>/* uses that split.")
    p.add_argument("folder", help="DIR/<class>/* or DIR/{train,val}/<class>/*")
    p.add_argument("--folds", type=count_at_least(2), default=5, help="stratified folds for DIR/<class>/* (default 5)")
    p.add_argument("--features", choices=("model", "raw32", "random-init"), default="model",
                   help="model: the --model embeddings (default); raw32: 32x32 RGB pixels (baseline); "
                        "random-init: the --model architecture with random weights (baseline)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds, inner split and random init")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="fix the weight decay instead of searching the grid on an inner split")
    p.add_argument("--max-iter", type=int, default=500, help="L-BFGS iterations per fit")
    p.add_argument("--save", metavar="CLASSIFIER_DIR", default=None,
                   help="also fit on all images (train/ in the train/val layout) and save the classifier here")
    p.add_argument("--no-catalog", action="store_true",
                   help="embed every image even when DIR/.btembed (from btembed index) holds its vectors")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="also draw the linear probe's confusion matrix into this PNG "
                        "(needs matplotlib: pip install 'btembed[plot]')")
    add_model_args(p)
    p.set_defaults(run=run)


def feature_source(args):
    """The object that turns files into features, and how predict can load it again (None: nothing to load)."""
    from ..probe.data import RawPixels, random_init_embedder

    if args.features == "raw32":
        return RawPixels(), {"features": "raw32"}
    if args.features == "random-init":
        from ..modelfolder import ModelFolder

        config = ModelFolder.resolve(args.model, revision=args.revision).config
        precision = "fp32" if args.precision == "auto" else args.precision  # a random trunk has no int8 file
        return random_init_embedder(config, args.seed, args.device, precision), None
    embedder = load_embedder(args)
    ref = args.model
    if ref is not None and Path(ref).expanduser().is_dir():
        ref = str(Path(ref).expanduser().resolve())  # predict may run from another working directory
    return embedder, {"features": "model", "model": ref, "revision": args.revision}


def run(args) -> int:
    """Scan, embed (skipping bad files), evaluate, optionally save, report."""
    import numpy as np

    from ..names import path_fields, shown
    from ..probe import ProbeConfig, evaluate, format_confusion
    from ..probe.data import (catalog_vectors, class_check, extract_features, feature_identity,
                              scan_labeled_folder)

    if args.plot:
        from ..plotting import check_plot_target

        check_plot_target(args.plot)  # before the embedding, not after it
    if args.save:
        from ..probe.classifier import check_save_target

        check_save_target(args.save)
    if args.save and args.features == "random-init":
        raise BtembedError("--save with --features random-init is not supported: a random-init classifier is a "
                           "baseline number, not something to predict with")
    data = scan_labeled_folder(args.folder)
    source, ref = feature_source(args)
    identity = feature_identity(source)
    cached, note = ({}, "") if args.no_catalog else catalog_vectors(data.root, identity, data.paths)
    if note:
        say(note)
    t0 = time.perf_counter()
    features, kept, failures = extract_features(source, data.paths, args.batch_size, args.workers, cached)
    say(f"features: {len(kept)} images → {identity['dim']}-d ({identity['model']}) in "
        f"{time.perf_counter() - t0:.1f} s; {len(failures)} skipped")
    skipped = [{**path_fields(data.relative(p)), "error": cause} for p, cause in data.unreadable + failures]
    for s in skipped:
        say(f"skipped {s['path']}: {s['error']}")
    labels = [data.labels[i] for i in kept]
    splits = [data.splits[i] for i in kept] if data.splits else None
    classes, excluded = class_check(labels, splits, args.folds)
    for name, reason in excluded.items():
        say(f"class {name!r} left out: {reason}")
    if len(classes) < 2:
        why = f"{len(excluded)} left out, as listed above" if excluded else "one class only"
        raise BtembedError(f"{args.folder}: fewer than 2 classes have enough usable images ({why})")
    use = np.array([lab in classes for lab in labels], bool)
    index = {c: i for i, c in enumerate(classes)}
    x = features[use]
    y = np.array([index[lab] for lab, u in zip(labels, use) if u], np.int64)
    train_mask = np.array([s == "train" for s, u in zip(splits, use) if u]) if splits else None
    if train_mask is not None and train_mask.all():
        raise BtembedError(f"{args.folder}/val has no usable images of the training classes; nothing to score")
    grid = (args.weight_decay,) if args.weight_decay is not None else ProbeConfig.weight_decay_grid
    config = ProbeConfig(folds=args.folds, seed=args.seed, weight_decay_grid=tuple(grid), max_iter=args.max_iter,
                         device=probe_device(args.device))
    t0 = time.perf_counter()
    result = evaluate(x, y, classes, config, train_mask)
    say(f"probe: {result.layout}, {len(classes)} classes, {result.n} scored images in "
        f"{time.perf_counter() - t0:.1f} s")
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    doc = {"dataset": {"path": shown(args.folder), "layout": data.layout, "images": len(data.paths),
                       "used": int(use.sum()), "from_catalog": len(cached), "per_class": counts, "skipped": skipped,
                       "excluded_classes": [{"class": k, "reason": v} for k, v in excluded.items()],
                       "ignored_files": [shown(data.relative(p)) for p in data.ignored]},
           "features": identity, **result.to_dict(), "saved": None}
    if args.save:
        doc["saved"] = str(save_classifier(args, x, y, train_mask, classes, config, identity, ref, doc))
        left_out = f"; not in it, as not scored: {', '.join(map(repr, excluded))}" if excluded else ""
        say(f"classifier saved to {doc['saved']} ({len(classes)} classes{left_out})")
    if args.plot:
        from ..probe.plot import plot_confusion

        title = f"{doc['dataset']['path']}: linear probe, {doc['n']} images, top-1 {doc['linear']['top1']:.1%}"
        say(f"confusion matrix drawn to {plot_confusion(classes, doc['linear']['confusion'], args.plot, title)}")
    if args.json:
        print_json(doc)
    else:
        print(render_text(doc, format_confusion))
    return 0


def probe_device(device: str) -> str:
    """Where the L-BFGS fits run: the GPU when one is asked for (or 'auto' finds one), else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device if device.startswith("cuda") else "cpu"


def save_classifier(args, x, y, train_mask, classes, config, identity, ref, doc):
    """Fit the final head on every usable training image and write the classifier folder."""
    from ..probe.classifier import SavedClassifier
    from ..probe import LinearClassifier

    if train_mask is not None:
        x, y = x[train_mask], y[train_mask]
    head = LinearClassifier.fit(x, y, len(classes), config)
    info = {"trained_on": {"dataset": str(Path(args.folder).resolve()), "images": int(len(y)),
                           "layout": doc["dataset"]["layout"]},
            "protocol": doc["protocol"],
            "probe": {"linear_top1": doc["linear"]["top1"], "knn_top1": doc["knn"]["top1"]}}
    return SavedClassifier(head, classes, {**identity, "ref": ref}, info).save(args.save)


def render_text(doc: dict, format_confusion) -> str:
    """The human report: headline numbers, per-class accuracy, confusion matrix of the linear probe."""
    lin, knn, ds = doc["linear"], doc["knn"], doc["dataset"]
    proto = doc["protocol"]
    how = f"{proto['folds']}-fold stratified" if doc["layout"] == "folds" else "train/ → val/"
    k5 = lin["top5_k"]
    lines = [f"{ds['path']}: {len(doc['classes'])} classes, {doc['n']} images scored ({how}), "
             f"features {doc['features']['model']} ({doc['features']['dim']}-d)", "",
             f"{'':<22}{'top-1':>8}{f'top-{k5}':>8}{'balanced':>10}",
             f"{'linear (L-BFGS)':<22}{lin['top1']:>8.1%}{lin['top5']:>8.1%}{lin['balanced_accuracy']:>10.1%}",
             f"{'kNN weighted k=20':<22}{knn['top1']:>8.1%}{knn['top5']:>8.1%}{knn['balanced_accuracy']:>10.1%}",
             f"{'kNN majority k=5':<22}{knn['majority5_top1']:>8.1%}{'':>8}"
             f"{knn['majority5_balanced_accuracy']:>10.1%}",
             "", "weight decay per fold: " + ", ".join(f"{w:g}" for w in lin["weight_decay"]), "",
             f"{'class':<24}{'images':>7}{'linear':>9}{'kNN':>9}"]
    for c in doc["classes"]:
        a, b = lin["per_class"][c], knn["per_class"][c]
        lines.append(f"{c[:23]:<24}{ds['per_class'][c]:>7}{'-' if a is None else f'{a:.1%}':>9}"
                     f"{'-' if b is None else f'{b:.1%}':>9}")
    lines += ["", "confusion (linear; rows true, columns predicted):",
              format_confusion(doc["classes"], lin["confusion"])]
    if ds["excluded_classes"]:
        lines += ["", "classes left out:"] + [f"  {e['class']}: {e['reason']}" for e in ds["excluded_classes"]]
    if ds["skipped"]:
        lines += ["", f"skipped {len(ds['skipped'])} unreadable image(s):"]
        lines += [f"  {s['path']}: {s['error']}" for s in ds["skipped"]]
    return "\n".join(lines)
