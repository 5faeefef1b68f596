"""python -m training fit | export | linear-eval | plot  (multi-GPU: torchrun --nproc_per_node=8 -m training fit)."""
from __future__ import annotations

import argparse
import json
import signal
import sys

from btembed.cli import with_closable_stdout
from btembed.errors import BtembedError
from btembed.preprocess import INTERPOLATIONS


def _fit(args) -> int:
    from .config import apply_overrides, load_recipe
    from .loop import Interrupted, fit

    config = None
    if args.recipe:
        config = apply_overrides(load_recipe(args.recipe), args.overrides)
    elif args.overrides:
        # Resuming without --recipe: overrides apply to the saved config (only runtime keys may differ).
        from .checkpoint import load_checkpoint
        from .config import TrainConfig

        ck = load_checkpoint(args.out)
        if ck is not None:
            config = apply_overrides(TrainConfig.from_dict(ck["config"]), args.overrides)
    try:
        record = fit(config, args.data, args.out, device=args.device,
                     progress=False if args.no_progress else None)
    except Interrupted as e:
        print(f"training: {e}", file=sys.stderr)
        return 128 + e.signum
    if args.json:
        print(json.dumps(record))
    return 0


def _export(args) -> int:
    from .export import describe, export_run

    folder = export_run(args.run, args.out, name=args.name, license=args.license, input_size=args.input_size,
                        resize_size=args.resize_size, interpolation=args.interpolation,
                        say=lambda message: print(message, file=sys.stderr),
                        calibrate_dedup=not args.no_dedup_calibration, dedup_photos=args.dedup_photos)
    print(f"exported {describe(folder)}", file=sys.stderr)
    return 0


def _plot(args) -> int:
    from .plot import plot_run

    print(f"wrote {plot_run(args.run, args.out)}", file=sys.stderr)
    return 0


def _linear_eval(args) -> int:
    from .linear_eval import LinearEvalConfig, linear_eval

    config = LinearEvalConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              weight_decay=args.weight_decay, num_workers=args.workers, augment=not args.no_augment,
                              val_fraction=args.val_fraction, seed=args.seed)
    result = linear_eval(args.model, args.data, val=args.val, config=config, device=args.device,
                         record=args.record)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"top-1 {result['top1']:.2%}  top-5 {result['top5']:.2%}  "
              f"({result['val_images']} val images, {result['classes']} classes)")
    return 0


def number(kind: type = int, at_least: float | None = None, inside: tuple | None = None):
    """An argparse type: an int (or float) no smaller than `at_least`, or strictly inside the range `inside`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'a whole number' if kind is int else 'a number'}: "
                                             f"{text!r}") from None
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least}, not {value}")
        if inside is not None and not inside[0] < value < inside[1]:
            raise argparse.ArgumentTypeError(f"must be between {inside[0]} and {inside[1]} (exclusive), not {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line of python -m training."""
    p = argparse.ArgumentParser(prog="python -m training",
                                description="Self-supervised training for btembed (Barlow Twins and its peers).")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="train (or resume) a run; launch under torchrun for several GPUs/nodes")
    f.add_argument("--recipe", help="bundled recipe name (imagenet-r50, cpu-default, cpu-tiny) or a YAML file; "
                                    "optional when resuming")
    f.add_argument("--data", required=True, help="folder of images (recursive; labels are ignored)")
    f.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.jsonl; resumes if present")
    f.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.add_argument("--json", action="store_true", help="print the last health record as JSON on stdout")
    f.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. epochs=100, objective=vicreg, objective.sim_coeff=10")
    f.set_defaults(func=_fit)

    e = sub.add_parser("export", help="write a run's trunk as a btembed model folder")
    e.add_argument("run", help="run folder (the --out of fit)")
    e.add_argument("--out", required=True, help="model folder to write")
    e.add_argument("--name", default="", help="model id recorded in config.json (default: folder name)")
    e.add_argument("--license", default="", help="license recorded in the card (e.g. apache-2.0)")
    e.add_argument("--input-size", type=int, default=0, help="inference crop size (default: the recipe's)")
    e.add_argument("--resize-size", type=int, default=0,
                   help="short side before the centre crop (default: the recipe's, or input size x 256/224)")
    e.add_argument("--interpolation", default="", choices=INTERPOLATIONS,
                   help="resize filter of inference preprocessing (default: the recipe's export_interpolation)")
    dedup = e.add_mutually_exclusive_group()
    dedup.add_argument("--no-dedup-calibration", action="store_true",
                       help="do not calibrate the model's `btembed dedup` threshold (which takes seconds)")
    dedup.add_argument("--dedup-photos", default=None, metavar="DIR",
                       help="calibrate the dedup threshold on these photos (default: a sample of the run's "
                            "training images)")
    e.set_defaults(func=_export)

    le = sub.add_parser("linear-eval", help="paper protocol linear evaluation of a frozen trunk")
    le.add_argument("model", help="model folder, registry name or hub repo")
    le.add_argument("--data", required=True, help="labeled folder: class subfolders, or train/ and val/ inside")
    le.add_argument("--val", help="separate labeled validation folder")
    le.add_argument("--epochs", type=number(at_least=1), default=100)
    le.add_argument("--batch-size", type=number(at_least=1), default=256)
    le.add_argument("--lr", type=float, default=0.3)
    le.add_argument("--weight-decay", type=float, default=1e-6)
    le.add_argument("--workers", type=number(at_least=0), default=4)
    le.add_argument("--val-fraction", type=number(float, inside=(0, 1)), default=0.2,
                    help="held-out fraction per class when there is no val/ folder")
    le.add_argument("--no-augment", action="store_true",
                    help="center crops only, features computed once (fast; not the paper protocol)")
    le.add_argument("--seed", type=int, default=0)
    le.add_argument("--device", default="auto")
    le.add_argument("--record", action="store_true", help="store the result in the model folder's config.json")
    le.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    le.set_defaults(func=_linear_eval)

    pl = sub.add_parser("plot", help="draw a run's health log as one PNG: loss and its parts, lr, RankMe, feature "
                                     "std, online kNN (needs pip install 'btembed[plot]')")
    pl.add_argument("run", help="run folder (the --out of fit; may still be training)")
    pl.add_argument("-o", "--out", default=None, help="PNG to write (default: RUN/curves.png)")
    pl.set_defaults(func=_plot)
    return p


def main(argv=None) -> int:
    """Entry point; user errors print one line and exit 1."""
    parser = build_parser()
    # key=value overrides may come before or after the options: argparse leaves the later ones unparsed.
    args, extra = parser.parse_known_args(argv)
    late = [x for x in extra if "=" in x and not x.startswith("-")]
    if len(late) != len(extra) or (late and args.command != "fit"):
        parser.error(f"unrecognized arguments: {' '.join(x for x in extra if x not in late) or ' '.join(late)}")
    if late:
        args.overrides = [*args.overrides, *late]
    try:
        return with_closable_stdout(lambda: args.func(args))  # `| head` ends it quietly
    except BtembedError as e:
        print(f"training: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
