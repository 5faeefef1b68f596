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
                                   "row per embedded file) and OUT.json (the paths of those rows, and failures). "
                                   "Started by torchrun (`torchrun --nproc_per_node=N -m btembed embed ...`), each "
                                   "rank embeds the files whose path hashes to it on its own GPU (cuda:LOCAL_RANK; "
                                   "gloo on CPU) into OUT.rankR.npy + OUT.rankR.json, and OUT.json is a manifest "
                                   "of those files in rank order.")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("-o", "--output", required=True, help="output .npy file")
    p.add_argument("--no-normalize", action="store_true", help="keep raw (not L2-normalized) features")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_model_args(p)
    p.set_defaults(run=run)


def collect_paths(inputs, failures: list) -> list[Path]:
    """Expand folders recursively into image files; keep files as given. What cannot be read at all (a folder
    that cannot be listed, a named pipe, a path whose folder cannot be entered) goes to failures as {path, error}."""
    from ..images import os_cause, scan_folder

    paths: list[Path] = []
    for text in inputs:
        p = Path(text)
        try:
            os.lstat(p)
            is_dir = p.is_dir()
        except FileNotFoundError:
            raise BtembedError(f"{text}: no such file or folder") from None
        except OSError as e:
            failures.append({"path": text, "error": f"{os_cause(e)} (a folder on its way cannot be entered)"})
            continue
        if not is_dir:
            paths.append(p)
            continue
        scan = scan_folder(p)
        paths.extend(scan.files)
        failures += [{"path": str(f), "error": f"cannot list this folder ({why})"} for f, why in scan.failed.items()]
        failures += [{"path": str(f), "error": why} for f, why in scan.skipped.items()]
    return paths


def run(args) -> int:
    """Embed, write outputs atomically, summarise; exit 1 when not one image could be embedded."""
    from ..names import shown
    from ..search.ranks import torchrun_ranks

    out = Path(args.output)
    if out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")
    ranks = torchrun_ranks()
    main_rank = ranks is None or ranks[0] == 0  # the walk is the same on every rank: rank 0 alone speaks of it
    failures: list[dict] = []
    try:
        paths = collect_paths(args.paths, failures)
    except BtembedError:
        if not main_rank:
            return 1
        raise
    for f in failures if main_rank else []:
        say(f"skipped {shown(f['path'])}: {f['error']}")
    if not paths:
        if not main_rank:
            return 1
        what = "nothing readable" if failures else "no image files found"
        raise BtembedError(f"{what} in " + ", ".join(map(shown, args.paths)))
    if ranks is not None:
        return _run_ranked(args, out, paths, failures)
    embedder = load_embedder(args)
    summary = embed_to(out, paths, failures, embedder, args)
    if not summary["embedded"]:
        raise BtembedError(f"none of the {len(paths)} image file(s) could be embedded (causes above)")
    say(f"embedded {summary['embedded']} images ({embedder.dim}-d, model {embedder.model_id}) → {shown(out)}; "
        f"{len(failures)} failed")
    if args.json:
        print_json(summary)
    return 0


def embed_to(out: Path, paths: list, failures: list, embedder, args) -> dict:
    """Embed paths into OUT.npy (rows of the files that could be embedded) + OUT.json; returns that summary."""
    import numpy as np

    from ..names import is_text, path_fields, raw, shown

    rows, kept = [], []
    for path, result in embedder.embed_files(paths, batch_size=args.batch_size, num_workers=args.workers,
                                             normalize=not args.no_normalize):
        if isinstance(result, BtembedError):
            failures.append({"path": str(path), "error": result.cause})
            say(f"skipped {shown(path)}: {result.cause}")
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
    # Names that are not UTF-8 (btembed.names): text in "paths", the raw bytes by row in "paths_bytes".
    undecodable = {str(i): path_fields(p)["path_bytes"] for i, p in enumerate(kept) if not is_text(raw(p))}
    summary = {"output": shown(out), "sidecar": shown(sidecar), "model": embedder.model_id, "dim": embedder.dim,
               "precision": embedder.backend.precision, "embedded": len(kept), "failed": len(failures),
               "paths": [shown(p) for p in kept],
               **({"paths_bytes": undecodable} if undecodable else {}),
               "failures": [{**f, **path_fields(f["path"])} for f in failures]}
    sidecar.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _run_ranked(args, out: Path, paths: list, failures: list) -> int:
    """Under torchrun: each rank embeds the files whose path hashes to it into OUT.rankR.npy (+ .json); rank 0
    then writes OUT.json, the manifest naming every rank's files in rank order."""
    from ..names import shown
    from ..search.plan import shard_of
    from ..search.ranks import RankGroup

    group = RankGroup.join(args.device)
    try:
        args.device = group.device
        args.precision = shared_precision(group, args)
        if args.precision is None:  # rank 0 could not load the model, and says why
            return 1
        mine = [p for p in paths if shard_of(str(p), group.world) == group.rank]
        part = out.with_name(f"{out.stem}.rank{group.rank}.npy")
        try:  # failures of the walk (the same on every rank) are reported once, by rank 0
            s = embed_to(part, mine, failures if group.is_main else [], load_embedder(args), args)
            result = {"rank": group.rank, "vectors": part.name, "sidecar": Path(s["sidecar"]).name,
                      "rows": s["embedded"], "failed": s["failed"], "model": s["model"], "dim": s["dim"],
                      "precision": s["precision"]}
        except Exception as e:  # noqa: BLE001 - rank 0 reports it in one line; this rank keeps its place
            why = str(e) if isinstance(e, BtembedError) else f"{type(e).__name__}: {e}"
            result = {"rank": group.rank, "error": why}
        results = group.gather(result)
        if not group.is_main:
            return 0
        bad = [r for r in results if "error" in r]
        if bad:
            raise BtembedError(f"rank {bad[0]['rank']} failed: {bad[0]['error']}")
        embedded = sum(r["rows"] for r in results)
        if not embedded:
            raise BtembedError(f"none of the {len(paths)} image file(s) could be embedded (causes above)")
        manifest = {"output": shown(out.with_suffix(".json")), "model": results[0]["model"], "dim": results[0]["dim"],
                    "precision": results[0]["precision"], "ranks": group.world, "embedded": embedded,
                    "failed": sum(r["failed"] for r in results),
                    "shards": [{k: r[k] for k in ("vectors", "sidecar", "rows")} for r in results]}
        out.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
        say(f"embedded {embedded} images on {group.world} ranks ({manifest['dim']}-d, model {manifest['model']}) → "
            f"{group.world} files {shown(out.stem)}.rankR.npy, manifest {shown(out.with_suffix('.json'))}")
        if args.json:
            print_json(manifest)
        return 0
    finally:
        group.leave()


def shared_precision(group, args) -> str | None:
    """Rank 0's precision for every rank (None on the others when rank 0 could not load the model): under 'auto'
    each rank could judge alone (another onnxruntime, CPU or cache on another node) and one output would mix int8
    and fp32 vectors."""
    if args.precision != "auto":
        return args.precision
    message = None
    if group.is_main:
        from ..backends.precision import choose_precision
        from ..modelfolder import ModelFolder

        try:
            folder = ModelFolder.resolve(args.model, revision=args.revision)
            message = {"precision": choose_precision(folder.path, "auto", device=args.device,
                                                     backend=args.backend).precision}
        except BtembedError as e:
            message = {"error": str(e)}
    message = group.broadcast(message)
    if "error" in message and group.is_main:
        raise BtembedError(message["error"])
    return message.get("precision")
