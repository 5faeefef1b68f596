"""btembed embed: image files or folders → vectors.npy plus a JSON sidecar of paths and failures."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BtembedError
from . import add_model_args, load_embedder, print_json, say


def register(sub) -> None:
    """Add the embed subcommand."""
    p = sub.add_parser("embed", help="embed images (files or folders) into a .npy file",
                       description="Embed image files and folders (recursively). Writes OUT.npy (float32, one "
                                   "row per embedded file) and OUT.json (the paths of those rows, and failures).")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("-o", "--output", required=True, help="output .npy file")
    p.add_argument("--no-normalize", action="store_true", help="keep raw (not L2-normalized) features")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_model_args(p)
    p.set_defaults(run=run)


def collect_paths(inputs) -> list[Path]:
    """Expand folders recursively into image files; keep files as given."""
    from ..images import find_images

    paths: list[Path] = []
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            paths.extend(find_images(p))
        elif p.exists() or p.is_symlink():
            paths.append(p)
        else:
            raise BtembedError(f"{text}: no such file or folder")
    return paths


def run(args) -> int:
    """Embed, write outputs atomically, summarise."""
    import numpy as np

    out = Path(args.output)
    if out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")
    paths = collect_paths(args.paths)
    if not paths:
        raise BtembedError("no image files found in " + ", ".join(args.paths))
    embedder = load_embedder(args)
    rows, kept, failures = [], [], []
    for path, result in embedder.embed_files(paths, batch_size=args.batch_size, num_workers=args.workers,
                                             normalize=not args.no_normalize):
        if isinstance(result, BtembedError):
            failures.append({"path": str(path), "error": result.cause})
            say(f"skipped {result}")
        else:
            rows.append(result)
            kept.append(str(path))
    vectors = np.stack(rows) if rows else np.zeros((0, embedder.dim), np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, vectors)
    os.replace(tmp, out)
    sidecar = out.with_suffix(".json")
    summary = {"output": str(out), "sidecar": str(sidecar), "model": embedder.model_id, "dim": embedder.dim,
               "embedded": len(kept), "failed": len(failures), "paths": kept, "failures": failures}
    sidecar.write_text(json.dumps(summary, indent=2) + "\n")
    say(f"embedded {len(kept)} images ({embedder.dim}-d, model {embedder.model_id}) → {out}; "
        f"{len(failures)} failed")
    if args.json:
        print_json(summary)
    return 0
