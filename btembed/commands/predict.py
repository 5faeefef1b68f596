"""btembed predict: classify images with a classifier saved by `btembed probe --save`."""
from __future__ import annotations

from ..errors import BtembedError, ModelError
from . import add_model_args, count_at_least, print_json, say


def register(sub) -> None:
    """Add the predict subcommand."""
    p = sub.add_parser("predict", help="classify images with a classifier saved by btembed probe --save",
                       description="Embed images with the model the classifier was trained on (recorded in the "
                                   "classifier folder, or --model) and print the most probable classes.")
    p.add_argument("classifier", help="folder written by btembed probe --save")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top", type=count_at_least(1), default=3, help="classes to show per image (default 3)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON on stdout")
    add_model_args(p)
    p.set_defaults(run=run)


def feature_source(args, saved):
    """Load what makes the classifier's features: raw pixels, or the recorded (or given) model."""
    from ..embedder import Embedder
    from ..probe.data import RawPixels

    want = saved.features
    if want.get("kind") == "raw32":
        return RawPixels()
    if want.get("kind") != "model":
        raise BtembedError(f"{args.classifier}: classifiers on {want.get('kind')!r} features cannot predict")
    name = args.model if args.model is not None else (want.get("ref") or {}).get("model")
    revision = args.revision if args.revision is not None else (want.get("ref") or {}).get("revision")
    try:
        return Embedder.from_pretrained(name, revision=revision, device=args.device, backend=args.backend,
                                        precision=args.precision)
    except ModelError as e:
        if args.model is not None:
            raise
        raise ModelError(f"the model this classifier was trained on ({want.get('model')}) could not be loaded: "
                         f"{e} — pass it with --model") from None


def run(args) -> int:
    """Load the classifier, check the model matches, embed, print top classes."""
    from ..names import path_fields, shown
    from ..probe.classifier import SavedClassifier
    from ..probe.data import extract_features, feature_identity
    from .embed import collect_paths

    saved = SavedClassifier.load(args.classifier)
    unreadable: list[dict] = []
    paths = collect_paths(args.images, unreadable)
    if not paths and not unreadable:
        raise BtembedError("no image files found in " + ", ".join(map(shown, args.images)))
    source = feature_source(args, saved)
    saved.check_features(feature_identity(source))
    features, kept, failures = extract_features(source, paths, args.batch_size, args.workers)
    tops = saved.top(features, args.top) if len(kept) else []
    predictions = [{**path_fields(paths[i]), "label": top[0][0], "probability": top[0][1],
                    "top": [{"label": c, "probability": p} for c, p in top]} for i, top in zip(kept, tops)]
    failed = unreadable + [{"path": p, "error": cause} for p, cause in failures]
    for f in failed:
        say(f"skipped {shown(f['path'])}: {f['error']}")
    if args.json:
        print_json({"classifier": shown(args.classifier), "model": saved.features.get("model"),
                    "predictions": predictions, "failures": [{**f, **path_fields(f["path"])} for f in failed]})
    else:
        for i, p in zip(kept, predictions):
            print(f"{paths[i]}\t" + "  ".join(f"{t['label']} {t['probability']:.1%}" for t in p["top"]))
    if not predictions:
        raise BtembedError(f"none of the {len(paths) + len(unreadable)} image(s) could be read")
    return 0
