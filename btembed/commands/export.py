"""btembed export: a model → one ONNX file (uint8 NHWC in, L2-normalized vectors out), fp32 or int8."""
from __future__ import annotations

from . import print_json, say


def register(sub) -> None:
    """Add the export subcommand."""
    p = sub.add_parser("export", help="export a model to ONNX (preprocessing and L2 norm inside the graph)")
    p.add_argument("model", nargs="?", default=None,
                   help="model folder, registry name or hub repo id (default: the embedded model)")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="where to write the ONNX file")
    p.add_argument("--int8", action="store_true", help="static int8 quantization (QDQ), needs --calibration")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="folder of real images to calibrate int8 on (also used for the parity check)")
    p.add_argument("--max-calibration", type=int, default=128, metavar="N",
                   help="use at most N calibration images (default 128)")
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
    if args.max_calibration < 1:
        args.parser.error("--max-calibration must be at least 1")
    from ..backends.onnx_check import export
    from ..backends.onnx_export import DEFAULT_OPSET

    report = export(args.model, args.onnx, int8=args.int8, calibration=args.calibration, revision=args.revision,
                    opset=args.opset or DEFAULT_OPSET, max_images=args.max_calibration)
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
        p = report["agreement_vs_fp32"]
        say(f"int8 vs fp32 on {p['images']} calibration images: min cosine {p['min_cosine']:.4f}")
    return 0
