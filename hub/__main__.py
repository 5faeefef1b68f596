"""`python -m hub convert-official | publish | registry | calibrate-dedup`: the maintainers' side of btembed's model
hub."""
from __future__ import annotations

import argparse
import json
import sys

from btembed.cli import with_closable_stdout
from btembed.errors import BtembedError


def _convert(args) -> int:
    """Convert an official Barlow Twins checkpoint into a model folder."""
    from .convert import convert_official

    out = convert_official(args.checkpoint, args.out, name=args.name, onnx=not args.no_onnx)
    print(f"wrote model folder {out}", file=sys.stderr)
    return 0


def _publish(args) -> int:
    """Validate a model folder, upload it, print the registry entry to add."""
    from .publish import publish

    entry = publish(args.model_dir, args.repo, revision=args.revision, tag=args.tag, dry_run=args.dry_run,
                    name=args.name, export_missing_onnx=not args.no_onnx, private=args.private,
                    allow_unfinished=args.allow_unfinished)
    if entry is not None:
        print("registry entry to add (python -m hub registry add ... writes it):", file=sys.stderr)
        print(json.dumps(entry, indent=2))
    return 0


def _registry(args) -> int:
    """Show, check or add registry entries."""
    from .registry_tools import (REGISTRY_PATH, check_registry, entry_from_folder, read_registry,
                                 set_entry)

    path = args.registry or REGISTRY_PATH
    if args.action == "show":
        print(json.dumps(read_registry(path), indent=2))
        return 0
    if args.action == "check":
        problems = check_registry(read_registry(path))
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        print(f"{path}: {'ok' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
        return 1 if problems else 0
    entry = entry_from_folder(args.model_dir, args.repo, args.revision, description=args.description or "",
                              embedded=args.embedded)
    set_entry(args.name, entry, make_default=args.default, path=path)
    print(f"registry {path}: wrote {args.name}" + (" (default)" if args.default else ""), file=sys.stderr)
    return 0


def _calibrate_dedup(args) -> int:
    """Calibrate a model's duplicate threshold; write it into its folder and, with --record, its registry entry."""
    from .calibrate_dedup import calibrate_dedup

    result = calibrate_dedup(args.model, args.photos, record=args.record, name=args.name, registry=args.registry,
                             count=args.count, seed=args.seed, say=lambda m: print(m, file=sys.stderr),
                             force=args.force)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Arguments of python -m hub."""
    parser = argparse.ArgumentParser(prog="python -m hub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert-official", help="official resnet50.pth / checkpoint.pth → model folder")
    p.add_argument("checkpoint", help="torch.hub resnet50.pth or the full checkpoint.pth")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--name", default=None, help="model id recorded in config.json (default: folder name)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.set_defaults(run=_convert)

    p = sub.add_parser("publish", help="validate a model folder, then upload it to the Hugging Face Hub")
    p.add_argument("model_dir")
    p.add_argument("--repo", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    p.add_argument("--tag", default=None, help="tag to put on the uploaded commit, e.g. v1.0")
    p.add_argument("--name", default=None, help="registry name of the printed entry (default: the repo id)")
    p.add_argument("--no-onnx", action="store_true", help="do not export model.onnx when it is missing")
    p.add_argument("--private", action="store_true")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="publish a model whose training run stopped part-way (refused otherwise)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the files; send nothing")
    p.set_defaults(run=_publish)

    p = sub.add_parser("registry", help="show, check or add entries of btembed/registry.json")
    p.add_argument("action", choices=("show", "check", "add"))
    p.add_argument("model_dir", nargs="?", help="model folder (for add)")
    p.add_argument("--name", help="registry name, e.g. btembed/r50 (for add)")
    p.add_argument("--repo", help="Hub repo id (for add)")
    p.add_argument("--revision", default=None, help="uploaded commit sha; omit for an unreleased entry")
    p.add_argument("--embedded", default=None, help="folder under btembed/weights when shipped in the package")
    p.add_argument("--description", default=None)
    p.add_argument("--default", action="store_true", help="make this the embedded default")
    p.add_argument("--registry", default=None, help="registry file (default: btembed/registry.json)")
    p.set_defaults(run=_registry)

    p = sub.add_parser("calibrate-dedup", help="calibrate a model's `btembed dedup` threshold on photos; write it "
                                               "into its folder (and, with --record, its registry entry)")
    p.add_argument("model", help="model folder, registry name or Hub repo id")
    p.add_argument("--photos", required=True, help="folder of distinct photos the model will meet (recursive)")
    p.add_argument("--record", action="store_true", help="also write it into the model's registry entry")
    p.add_argument("--name", default=None, help="registry entry for --record (default: MODEL, else its config name)")
    p.add_argument("--registry", default=None, help="registry file (default: btembed/registry.json)")
    p.add_argument("--count", type=int, default=40, help="photos sampled from --photos (default: 40)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument("--force", action="store_true",
                   help="record the threshold even below the quality floor (pair precision 0.9, recall 0.5)")
    p.set_defaults(run=_calibrate_dedup)
    return parser


def main(argv=None) -> int:
    """Entry point: user errors become one line on stderr and exit status 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "registry" and args.action == "add" and not (args.model_dir and args.name and args.repo):
        parser.error("registry add needs MODEL_DIR, --name and --repo")
    try:
        return with_closable_stdout(lambda: int(args.run(args) or 0))  # `| head` ends it quietly
    except BtembedError as e:
        print(f"python -m hub {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
