"""btembed export: a model → one ONNX file (uint8 NHWC in, L2-normalized vectors out), fp32 or int8."""
from __future__ import annotations

from . import print_json, say


def register(sub) -> None:
    """Add the export subcommand."""
    p = sub.add_parser("export", help="export a model to ONNX (preprocessing and L2 norm inside the graph)")
    p.add_argument("model", nargs="?", default=None,
                   help="model folder, registry name or hub repo id (default: the embedded model)")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="where to write the ONNX file")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantization (QDQ) that keeps the fp32 neighbours, needs --calibration")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="folder of real images (at least 200): three quarters calibrate int8, a quarter is held "
                        "apart to measure its parity (recorded beside the file); without --int8, the parity check")
    p.add_argument("--max-images", "--max-calibration", dest="max_images", type=int, default=None, metavar="N",
                   help="read at most N images of DIR, spread over it (default 400)")
    p.add_argument("--calibration-method", dest="methods", action="append", default=None,
                   choices=("MinMax", "Entropy", "Percentile"),
                   help="try only this calibration method (repeatable; default: all three, the best measured wins)")
    p.add_argument("--sweep", default="auto", choices=("auto", "stage", "block", "layer"),
                   help="granularity of the sensitivity sweep that keeps the most damaging parts in fp32 (default "
                        "auto: the finest with at most 10 parts, i.e. blocks of a ResNet-18, stages of a ResNet-50)")
    p.add_argument("--max-fp32", type=int, default=None, metavar="N",
                   help="keep at most N sweep parts in fp32, even where that loses the parity bar (default: as many as "
                        "the bar needs; 0 = no sweep)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18; 17 or newer)")
    p.add_argument("--revision", default=None, help="hub revision to pin")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(run=run, parser=p)


def run(args) -> int:
    """Export, check parity, report."""
    if args.int8 and not args.calibration:
        args.parser.error("--int8 needs --calibration DIR (a folder of real images)")
    if args.calibration and not args.int8:
        say("note: --calibration without --int8 only feeds the parity check")
    from ..backends.int8 import CALIBRATION_METHODS, MIN_IMAGES
    from ..backends.onnx_check import DEFAULT_MAX_IMAGES, export
    from ..backends.onnx_export import DEFAULT_OPSET

    max_images = DEFAULT_MAX_IMAGES if args.max_images is None else args.max_images
    if args.int8 and max_images < MIN_IMAGES:
        args.parser.error(f"--max-images must be at least {MIN_IMAGES} for --int8 (a quarter is held apart)")
    if max_images < 1:
        args.parser.error("--max-images must be at least 1")
    if args.max_fp32 is not None and args.max_fp32 < 0:
        args.parser.error("--max-fp32 must be 0 or more")
    report = export(args.model, args.onnx, int8=args.int8, calibration=args.calibration, revision=args.revision,
                    opset=args.opset or DEFAULT_OPSET, max_images=max_images,
                    methods=tuple(dict.fromkeys(args.methods or CALIBRATION_METHODS)), sweep=args.sweep,
                    max_kept=args.max_fp32, say=say)
    if args.json:
        print_json(report)
        return 0
    kind = "int8" if args.int8 else "fp32"
    say(f"wrote {report['onnx']} ({kind}, {report['bytes'] / 1e6:.1f} MB, opset {report['opset']}), "
        f"input uint8 {report['input']['shape']}")
    if "parity_vs_torch" in report:
        p = report["parity_vs_torch"]
        say(f"parity vs torch fp32 on {p['images']} images: max relative difference {p['max_relative_diff']:.2e}")
    else:
        p, q = report["parity_vs_fp32"], report["quantization"]
        kept = ", ".join(q["kept_fp32"]) or "nothing"
        say(f"int8: {q['method']} calibration on {report['calibration_images']} images, kept in fp32: {kept}")
        say(f"parity vs fp32 on {p['images']} held-apart images: recall@10 {p['recall_at_10']:.4f}, mean cosine "
            f"{p['mean_cosine']:.5f} (min {p['min_cosine']:.4f}) under {report['runtime']}")
        verdict = ("clears the bar: precision='auto' runs it" if report["passes_bar"] else
                   "below the bar (recall@10 and mean cosine ≥ 0.99): precision='auto' keeps fp32")
        say(f"recorded in {report['parity_record']}; {verdict}")
    return 0
