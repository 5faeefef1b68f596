"""Build the labeled development set (class folders) used to evaluate encoders with kNN / linear probes."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from devdata.debpkg import DebCache, PrepError, lookup_licence, parse_dep5
from devdata.holdout import openclipart_split, ufoai_split
from devdata.manifest import build_manifest, default_cache, prepare_out, write_licences, write_manifest
from devdata.pictures import Skip, decode, flatten, safe_rel, sha256, shrink
from devdata.sources import (FASHION_CLASSES, FASHION_DIR, Context, fashion_split, openclipart_candidates,
                             openclipart_root, ufoai_candidates, ufoai_zip)

DEV_SEED = 0
# Evaluation runs at <= 160 px; 256 px on the short side keeps crops honest and the set small.
DEV_SHORT_SIDE = 256
FASHION_PER_CLASS = 100
FASHION_SIZE = 64

TASK_NOTES = {
    "fashion": "Fashion-MNIST TEST split (t10k), 100 per class, seeded; the training pool only samples the TRAIN "
    "split, so there is no overlap. Upscaled 28->64 px bicubic, grey replicated to RGB.",
    "openclipart": "12 semantic top-level categories (shapes/special/unsorted/logos/... left out as not semantic or "
    "too small), up to 60 per class. Files identical to a file in another category are dropped (ambiguous label). "
    "The training pool excludes every dev file and every byte-identical copy of one.",
    "ufoai": "texture folders with >= 30 colour textures as classes; per class min(60, half the folder) so the "
    "training pool keeps the other half. Folders are texture sets (some by theme, some by author/map), so labels "
    "are coarse; textures of one family (wall023a/b/c) can sit on both sides of a kNN split. The training pool "
    "excludes every dev file and byte-identical copies.",
    "stellarium": "skipped: file names are catalogue designations (M31, NGC 7000, IC 434, Sh2-..., Abell ...), "
    "not object types. The types live only in the binary, gzip-compressed catalog.dat, and guessing them from "
    "prefixes would label ~80% of files (the M/NGC/IC ones) by catalogue rather than by type.",
}


class DevWriter:
    """Writes PNGs into task/class folders and collects manifest rows."""

    def __init__(self, out: Path):
        self.out = out
        self.rows: list[dict] = []

    def add(self, task: str, cls: str, name: str, im: Image.Image, inner: str, sha: str, licence: str,
            stats: dict, copyright: str = "") -> None:
        """Save one labeled image."""
        path = self.out / task / cls / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, "PNG", compress_level=6)
        self.rows.append({"path": path.relative_to(self.out).as_posix(), "source": task, "class": cls,
                          "inner_path": inner, "sha256": sha, "size": list(im.size), "licence": licence,
                          **({"copyright": copyright} if copyright else {})})
        stats["written"] = stats.get("written", 0) + 1


def build_fashion(ctx: Context, w: DevWriter, stats: dict) -> dict:
    """100 test-split images per class, 64 px RGB."""
    pkg, x, y = fashion_split(ctx, "t10k")
    rng = np.random.default_rng(ctx.seed)
    for c, cname in enumerate(FASHION_CLASSES):
        idx = sorted(rng.permutation((y == c).nonzero()[0])[:FASHION_PER_CLASS].tolist())
        for i in idx:
            a = x[i]
            im = Image.fromarray(a, "L").resize((FASHION_SIZE, FASHION_SIZE), Image.Resampling.BICUBIC)
            w.add("fashion", cname, f"test_{i:05d}", im.convert("RGB"),
                  f"{FASHION_DIR}/t10k-images-idx3-ubyte.gz#{i}", sha256(a.tobytes()), "Expat", stats)
    return {"package": pkg.name, "version": pkg.version, "licence": "Expat (MIT)"}


def _decoded(data: bytes, background: tuple[int, int, int], stats: dict) -> Image.Image | None:
    """Decode and flatten for the dev set, counting refusals."""
    try:
        im = decode(data, DEV_SHORT_SIDE)
    except Skip as s:
        stats[s.reason] = stats.get(s.reason, 0) + 1
        return None
    im = shrink(flatten(im, background), DEV_SHORT_SIDE).convert("RGB")
    if float(np.asarray(im.convert("L")).std()) < 1.0:  # flat colour: nothing to recognise
        stats["blank"] = stats.get("blank", 0) + 1
        return None
    return im


def build_openclipart(ctx: Context, w: DevWriter, stats: dict) -> dict:
    """Clip-art from 12 categories, composited on white."""
    pkg, root = openclipart_root(ctx)
    split = openclipart_split(openclipart_candidates(root), ctx.seed, lambda p: (root / p).read_bytes())
    for p, cls in tqdm_items(split.chosen.items(), "openclipart"):
        im = _decoded((root / p).read_bytes(), (255, 255, 255), stats)
        if im is not None:
            w.add("openclipart", cls, safe_rel(p).replace("/", "__"), im, f"usr/share/openclipart/png/{p}",
                  split.sha[p], "public-domain", stats)
    return {"package": pkg.name, "version": pkg.version, "licence": "public-domain"}


def build_ufoai(ctx: Context, w: DevWriter, stats: dict) -> dict:
    """Colour textures, folder = class."""
    pkg, z = ufoai_zip(ctx)
    rules = parse_dep5(pkg.copyright_text())
    split = ufoai_split(ufoai_candidates(z.namelist()), ctx.seed, z.read)
    for n, cls in tqdm_items(split.chosen.items(), "ufoai"):
        im = _decoded(z.read(n), (255, 255, 255), stats)
        if im is not None:
            rule = lookup_licence(rules, "base/" + n)
            w.add("ufoai", cls, safe_rel(n.rsplit("/", 1)[1]), im,
                  f"usr/share/games/ufoai/base/0textures.pk3:{n}", split.sha[n],
                  rule.licence if rule else "GPL-2+", stats, rule.copyright if rule else "")
    return {"package": pkg.name, "version": pkg.version,
            "licence": "mostly GPL-2+/GPL-2; some public-domain, Expat, CC-BY(-SA)-3.0 (per file)"}


def tqdm_items(items, desc: str):
    """Progress bar on stderr over a sized iterable."""
    items = list(items)
    return tqdm(items, desc=f"{desc:>12}", unit="img", file=sys.stderr, mininterval=1.0)


TASKS = {"fashion": build_fashion, "openclipart": build_openclipart, "ufoai": build_ufoai}


def run(out: Path, cache: Path, tasks: list[str], seed: int, command: str) -> dict:
    """Build out/<task>/<class>/*.png, out/manifest.json and out/MANIFEST.md."""
    t0 = time.time()
    prepare_out(out, list(TASKS) + ["stellarium"])
    ctx = Context(DebCache(cache), seed, 0, 0)
    w = DevWriter(out)
    sources: dict[str, dict] = {}
    for task in tasks:
        stats: dict[str, int] = {}
        meta = TASKS[task](ctx, w, stats)
        classes: dict[str, int] = {}
        for r in w.rows:
            if r["source"] == task:
                classes[r["class"]] = classes.get(r["class"], 0) + 1
        sources[task] = {**meta, "stats": stats, "classes": classes, "notes": TASK_NOTES[task]}
    sources["stellarium"] = {"licence": "GPL-2+", "stats": {}, "classes": {}, "notes": TASK_NOTES["stellarium"]}
    write_licences(ctx.debs, out)
    manifest = build_manifest("dev-set", command, sources, w.rows, out, t0, {
        "seed": seed, "layout": "<task>/<class>/*.png (RGB)", "short_side": DEV_SHORT_SIDE,
        "sha256_note": "sha256 is of the original file bytes; for fashion of the 28x28 uint8 array",
        "train_pool_overlap": "none by construction: the pool calls the same split functions and also "
        "drops byte-identical copies of dev files",
    })
    write_manifest(out, manifest, "Labeled development set", first_column="task")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m devdata.devset", description=__doc__)
    ap.add_argument("out", type=Path, help="output folder for <task>/<class>/*.png and manifest.json")
    ap.add_argument("--cache", type=Path,
                    help="where .deb files are downloaded and unpacked (default OUT/../.debcache)")
    ap.add_argument("--tasks", nargs="*", choices=list(TASKS), help="subset of tasks (default: all)")
    ap.add_argument("--seed", type=int, default=DEV_SEED,
                    help="changing it also changes what devdata.pool holds out: use the same seed for both")
    args = ap.parse_args(argv)
    tasks = args.tasks or list(TASKS)
    try:
        m = run(args.out, args.cache or default_cache(args.out), tasks, args.seed,
                " ".join(["python -m devdata.devset", *(argv or sys.argv[1:])]))
    except PrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, s in m["sources"].items():
        print(f"{name:>12}: {s['file_count']:5d} files in {len(s['classes']):2d} classes {s['mb']:6.1f} MB",
              file=sys.stderr)
    print(f"total {m['total_files']} files, {m['total_mb']:.1f} MB in {m['seconds']:.0f} s -> {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
