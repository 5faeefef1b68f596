"""btembed info: what a model is (architecture, dim, preprocessing, source, hashes) without loading torch."""
from __future__ import annotations

from . import print_json


def register(sub) -> None:
    """Add the info subcommand."""
    p = sub.add_parser("info", help="describe a model (default: the embedded one)")
    p.add_argument("model", nargs="?", default=None, help="model folder, registry name or hub repo id")
    p.add_argument("--revision", default=None)
    p.add_argument("--verify", action="store_true", help="also check the sha256 of every recorded file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    """Resolve the model folder and print its config summary."""
    from ..modelfolder import ModelFolder

    model = ModelFolder.resolve(args.model, revision=args.revision)
    folder, config = model.path, model.config
    verified = {}
    if args.verify:
        for name in config.files:
            if (folder / name).exists():
                model.verify(name)
                verified[name] = "ok"
            else:
                verified[name] = "absent"
    info = {"name": config.name, "folder": str(folder), "architecture": config.architecture,
            "embedding_dim": config.embedding_dim, "preprocess": config.preprocess.to_dict(),
            "license": config.license, "source": config.source, "files": config.files,
            "btembed_version": config.btembed_version, "metrics": config.metrics}
    if args.verify:
        info["verified"] = verified
    if args.json:
        print_json(info)
        return 0
    pre = config.preprocess
    lines = [f"name:          {config.name}", f"folder:        {folder}",
             f"architecture:  {config.architecture}", f"embedding dim: {config.embedding_dim}",
             f"preprocess:    resize {pre.resize_size} ({pre.interpolation}), {pre.crop} crop {pre.input_size}, "
             f"mean {list(pre.mean)}, std {list(pre.std)}",
             f"license:       {config.license or '(not set)'}"]
    lines += [f"file:          {name}  sha256 {digest}" + (f"  [{verified[name]}]" if name in verified else "")
              for name, digest in config.files.items()]
    print("\n".join(lines))
    return 0
