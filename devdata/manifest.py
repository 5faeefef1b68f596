"""The output folder of the pool and dev-set builders: clearing it safely, manifest.json, MANIFEST.md, licences."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from devdata.debpkg import DebCache, PrepError


def prepare_out(out: Path, what: list[str]) -> None:
    """Clear previous outputs of this tool, but refuse to wipe a folder it did not create."""
    out.mkdir(parents=True, exist_ok=True)
    ours = (out / "manifest.json").exists()
    others = [p for p in out.iterdir() if p.name not in what + ["manifest.json", "MANIFEST.md", "licenses"]]
    if not ours and any(out.iterdir()):
        raise PrepError(f"{out} is not empty and has no manifest.json from a previous run; pick an empty folder")
    if others:
        raise PrepError(f"{out} holds unexpected entries {[p.name for p in others][:5]}; refusing to overwrite")
    for name in what + ["licenses"]:
        shutil.rmtree(out / name, ignore_errors=True)


def default_cache(out: Path) -> Path:
    """Default package cache: beside the output folder, so it stays outside any git checkout of the data."""
    return out.resolve().parent / ".debcache"


def write_licences(debs: DebCache, out: Path) -> None:
    """Keep each package's copyright file next to the data, for attribution."""
    lic = out / "licenses"
    lic.mkdir(exist_ok=True)
    for pkg in debs.fetched():
        text = pkg.copyright_text()
        if text:
            (lic / f"{pkg.name}.copyright").write_text(text, encoding="utf-8")


def summary_md(title: str, manifest: dict, first_column: str = "source") -> str:
    """A human-readable table of what a manifest holds."""
    lines = [f"# {title}", "", f"Built by `{manifest['command']}` in {manifest['seconds']:.0f} s; "
             f"{manifest['total_files']} files, {manifest['total_mb']:.1f} MB.", "",
             f"| {first_column} | package | version | licence | files | skipped | MB |",
             "|---|---|---|---|---|---|---|"]
    for name, s in manifest["sources"].items():
        skipped = ", ".join(f"{k} {v}" for k, v in s["stats"].items()
                            if k not in ("written", "tiles_written") and v) or "-"
        lines.append(f"| {name} | {s.get('package', '')} | {s.get('version', '')} | {s['licence']} | "
                     f"{s['file_count']} | {skipped} | {s['mb']:.1f} |")
    notes = [(n, s["notes"]) for n, s in manifest["sources"].items() if s.get("notes")]
    if notes:
        lines += ["", "## Notes", ""] + [f"- **{n}**: {t}" for n, t in notes]
    lines += ["", "Per-file paths, original inner paths, sha256 and licences are in `manifest.json`; the "
              "packages' copyright files are in `licenses/`.", ""]
    return "\n".join(lines)


def build_manifest(kind: str, command: str, sources: dict[str, dict], rows: list[dict], out: Path,
                   t0: float, extra: dict | None = None) -> dict:
    """Assemble the manifest dict from per-source metadata and file rows."""
    by_src: dict[str, list[dict]] = {}
    for r in rows:
        by_src.setdefault(r["source"], []).append(r)
    total = 0
    for name, s in sources.items():
        files = by_src.get(name, [])
        s["file_count"] = len(files)
        s["mb"] = sum((out / r["path"]).stat().st_size for r in files) / 1e6
        lic: dict[str, int] = {}
        for r in files:
            lic[r["licence"]] = lic.get(r["licence"], 0) + 1
        s["licence_counts"] = dict(sorted(lic.items(), key=lambda kv: -kv[1]))
        s["files"] = files
        total += s["mb"]
    return {"kind": kind, "command": command, "seconds": round(time.time() - t0, 1), "total_files": len(rows),
            "total_mb": round(total, 2),
        **(extra or {}), "sources": sources}


def write_manifest(out: Path, manifest: dict, title: str, first_column: str = "source") -> None:
    """out/manifest.json for programs and out/MANIFEST.md for people."""
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    (out / "MANIFEST.md").write_text(summary_md(title, manifest, first_column), encoding="utf-8")
