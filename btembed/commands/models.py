"""btembed models: every registry entry with its licence and state; `models fetch NAME` downloads or carries one in."""
from __future__ import annotations

from . import print_json, say

# Where a registry model is available, best first.
EMBEDDED, CACHED, DOWNLOADABLE, UNRELEASED = "embedded", "cached", "downloadable", "unreleased"
WHERE = {EMBEDDED: "embedded in the package", CACHED: "cached on this machine",
         DOWNLOADABLE: "downloadable (fetched on first use)", UNRELEASED: "not released yet"}


def register(sub) -> None:
    """Add the models subcommand and its fetch action."""
    p = sub.add_parser("models", help="list known models, their licences and where each is available",
                       description="List the registry's models with licence and state (embedded / cached / "
                                   "downloadable / not released). `btembed models fetch NAME` downloads one now; "
                                   "with --from FILE it verifies, converts and caches a file carried in by hand.")
    p.add_argument("--json", action="store_true")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    f = actions.add_parser("fetch", help="download (or --from FILE: carry in) a registry model into btembed's cache")
    f.add_argument("name", help="registry name, e.g. btembed/r50")
    f.add_argument("--from", dest="from_file", metavar="FILE", default=None,
                   help="the authors' file, downloaded elsewhere (air-gapped machines)")
    f.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def cached_folder(repo_id: str, revision: str | None) -> str | None:
    """The snapshot folder holding repo_id's config.json and weights in the local HF cache, or None (no network)."""
    import os

    from huggingface_hub import try_to_load_from_cache

    from ..modelfiles import CONFIG_FILE, WEIGHTS_FILE

    found = [try_to_load_from_cache(repo_id, name, revision=revision or "main")
             for name in (CONFIG_FILE, WEIGHTS_FILE)]
    if all(isinstance(f, str) for f in found):
        return os.path.dirname(found[0])
    return None


def availability(name: str, entry: dict) -> tuple[str, str | None]:
    """(state, local folder or None) of one registry entry, checked offline."""
    from ..modelfiles import CONFIG_FILE, embedded_dir
    from ..sources import cached_source_folder

    if entry.get("embedded"):
        folder = embedded_dir() / entry["embedded"]
        if (folder / CONFIG_FILE).is_file():
            return EMBEDDED, str(folder)
    # an unreleased name may still sit in the HF cache (pre-filled by hand); the resolver uses it then
    folder = cached_folder(entry["repo_id"], entry.get("revision"))
    if folder:
        return CACHED, folder
    if entry.get("source"):
        found = cached_source_folder(name, entry)
        return (CACHED, str(found)) if found else (DOWNLOADABLE, None)
    return (DOWNLOADABLE, None) if entry.get("released") else (UNRELEASED, None)


def fetch(args) -> int:
    """Download (or carry in) one registry model and say where it is."""
    from ..errors import ModelError
    from ..sources import fetch as fetch_source
    from ..sources import registry_entry

    entry = registry_entry(args.name)
    if entry is None:
        raise ModelError(f"{args.name} is not a registry name; `btembed models` lists them")
    folder = fetch_source(args.name, entry, from_file=args.from_file)
    if args.json:
        print_json({"name": args.name, "folder": str(folder)})
    say(f"{args.name}: ready in {folder}")
    return 0


def run(args) -> int:
    """Print the registry with licence and availability (or run the fetch action)."""
    from ..sources import load_registry

    if args.action == "fetch":
        return fetch(args)
    registry = load_registry()
    rows = []
    for name, entry in registry.get("models", {}).items():
        state, folder = availability(name, entry)
        rows.append({"name": name, "status": state, "where": WHERE[state], "folder": folder,
                     "default": name == registry.get("default"), **entry})
    if args.json:
        print_json({"default": registry.get("default"), "models": rows})
        return 0
    width = max([len(r["name"]) for r in rows] + [4])
    print(f"{'name':<{width}}  {'arch':<10} {'dim':>5}  {'license':<13} available")
    for r in rows:
        mark = " (default)" if r["default"] else ""
        print(f"{r['name']:<{width}}  {r['architecture']:<10} {r['embedding_dim']:>5}  "
              f"{(r.get('license') or '-'):<13} {r['where']}{mark}")
        if r.get("description"):
            print(f"{'':<{width}}  {r['description']}")
    return 0
