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


def registry_only(name: str, entry: dict) -> dict:
    """What the registry says of a model that is not on this machine yet (nothing is downloaded to say it)."""
    source = entry.get("source") or {}
    return {"name": name, "folder": None, "state": "downloadable (fetched on first use)",
            "architecture": entry.get("architecture"), "embedding_dim": entry.get("embedding_dim"),
            "license": entry.get("license"), "source": source, "files": {}, "metrics": entry.get("metrics", {})}


def run(args) -> int:
    """Resolve the model folder and print its config summary (a source entry not cached yet: the registry's)."""
    from ..modelfolder import ModelFolder
    from ..sources import registry_entry
    from .models import DOWNLOADABLE, availability

    entry = registry_entry(args.model) if args.model else None
    if entry and entry.get("source") and availability(args.model, entry)[0] == DOWNLOADABLE:
        return show(registry_only(args.model, entry), args)
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
    from ..backends.precision import choose_precision

    choice = choose_precision(folder)  # what `precision="auto"` runs on this machine, and why
    info["precision"] = {"runs": choice.precision, "why": choice.reason}
    return show(info, args)


def show(info: dict, args) -> int:
    """Print the summary: JSON with --json, else aligned lines."""
    if args.json:
        print_json(info)
        return 0
    lines = [f"name:          {info['name']}", f"folder:        {info['folder'] or '(not on this machine)'}"]
    if info.get("state"):
        lines.append(f"state:         {info['state']}")
    lines += [f"architecture:  {info['architecture']}", f"embedding dim: {info['embedding_dim']}"]
    if info.get("preprocess"):
        pre = info["preprocess"]
        lines.append(f"preprocess:    resize {pre['resize_size']} ({pre['interpolation']}), {pre['crop']} crop "
                     f"{pre['input_size']}, mean {list(pre['mean'])}, std {list(pre['std'])}")
    lines.append(f"license:       {info['license'] or '(not set)'}")
    if info.get("precision"):
        lines.append(f"precision:     {info['precision']['runs']} under auto: {info['precision']['why']}")
    source = info.get("source") or {}
    if source.get("url"):
        how = ("pinned in the registry" if source.get("sha256_pinned", bool(source.get("sha256")))
               else "trusted on first use" if source.get("sha256") else "none pinned: trusted on first use")
        lines += [f"source:        {source['url']} ({source.get('format', '')})",
                  f"source sha256: {source.get('sha256') or '-'}  [{how}]"]
    verified = info.get("verified", {})
    lines += [f"file:          {name}  sha256 {digest}" + (f"  [{verified[name]}]" if name in verified else "")
              for name, digest in info["files"].items()]
    print("\n".join(lines))
    return 0
