"""btembed models: every registry entry and where it can be had (embedded / local cache / hub / unreleased)."""
from __future__ import annotations

from . import print_json

# Where a registry model is available, best first.
EMBEDDED, CACHED, HUB, UNRELEASED = "embedded", "cached", "hub", "unreleased"
WHERE = {EMBEDDED: "embedded in the package", CACHED: "in the local Hugging Face cache",
         HUB: "on the Hub only (downloads on first use)", UNRELEASED: "not released yet"}


def register(sub) -> None:
    """Add the models subcommand."""
    p = sub.add_parser("models", help="list known models and where each is available")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def cached_folder(repo_id: str, revision: str | None) -> str | None:
    """The snapshot folder holding repo_id's config.json and weights in the local HF cache, or None (no network)."""
    import os

    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(repo_id, name, revision=revision or "main")
             for name in ("config.json", "model.safetensors")]
    if all(isinstance(f, str) for f in found):
        return os.path.dirname(found[0])
    return None


def availability(name: str, entry: dict) -> tuple[str, str | None]:
    """(status, local folder or None) of one registry entry, checked offline."""
    from ..modelfiles import embedded_dir

    if entry.get("embedded"):
        folder = embedded_dir() / entry["embedded"]
        if (folder / "config.json").is_file():
            return EMBEDDED, str(folder)
    # an unreleased name may still sit in the cache (pre-filled by hand); the resolver uses it then
    folder = cached_folder(entry["repo_id"], entry.get("revision"))
    if folder:
        return CACHED, folder
    return (HUB, None) if entry.get("released") else (UNRELEASED, None)


def run(args) -> int:
    """Print the registry with availability."""
    from ..sources import load_registry

    registry = load_registry()
    rows = []
    for name, entry in registry.get("models", {}).items():
        status, folder = availability(name, entry)
        rows.append({"name": name, "status": status, "where": WHERE[status], "folder": folder,
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
