"""Build the unlabeled offline training pool from the allowed Debian packages and bundled PyPI images."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from devdata.debpkg import DebCache, PrepError
from devdata.manifest import build_manifest, default_cache, prepare_out, write_licences, write_manifest
from devdata.pictures import (MAX_PIXELS, MAX_SHORT_SIDE, NEAR_DUP_MAD, Skip, decode, encode, flatten,
                              pixel_hash, sha256, shrink, thumb)
from devdata.sources import GROUPS, PROCEDURAL, SOURCES, Context, Item, Source

DEFAULT_SEED = 0
# Caps keep non-photo sources from swamping the ~2k photo-like images (see POOL_NOTES).
DEFAULT_OPENCLIPART_CAP = 3000
DEFAULT_FASHION_CAP = 6000  # v5's pool; v3 had 3000
# Large photos also give 2x-zoom tiles: the few real photos are the pool's scarcest kind of picture.
TILE_ZOOM = 2


# --------------------------------------------------------------------------- pool writer


class Pool:
    """Writes deduplicated images below out/subdir and collects manifest rows."""

    def __init__(self, out: Path, subdir: str):
        self.out = out
        self.subdir = subdir
        self.raw_seen: dict[str, str] = {}
        self.pix_seen: dict[str, str] = {}
        self.rows: list[dict] = []
        self.thumbs: list[tuple[float, np.ndarray]] = []

    def add(self, src: Source, item: Item, stats: dict, exclude: set[str] | frozenset = frozenset()) -> bool:
        """Decode, dedupe, shrink and save one item; returns True when a file was written."""
        def skip(reason: str) -> bool:
            """Count a skipped item under reason."""
            stats[reason] = stats.get(reason, 0) + 1
            return False

        data = item.load() if item.array is None else b""
        raw_hash = item.prehashed or sha256(data)
        if raw_hash in exclude:
            return skip("dev_duplicate")
        if raw_hash in self.raw_seen:
            return skip("duplicate_bytes")
        if item.array is not None:
            im = Image.fromarray(item.array)
        else:
            try:
                # Tile sources keep twice the pool resolution so their tiles hold real detail.
                im = decode(data, MAX_SHORT_SIDE * TILE_ZOOM if src.tiles else MAX_SHORT_SIDE)
            except Skip as s:
                return skip(s.reason)
        self.raw_seen[raw_hash] = item.inner
        im = flatten(im, src.background)
        if min(im.size) < 8:
            return skip("too_small")
        # Pixel hash on the full-size decode (before shrinking) so only true re-encodes collapse.
        ph = pixel_hash(im) if im.width * im.height <= 4_000_000 else ""
        if ph and ph in self.pix_seen:
            return skip("duplicate_pixels")
        if ph:
            self.pix_seen[ph] = item.inner
        if src.near_dupes:
            ar, t = thumb(im)
            if any(abs(ar / ar2 - 1) < 0.02 and float(np.abs(t - t2).mean()) < NEAR_DUP_MAD
                   for ar2, t2 in self.thumbs):
                return skip("near_duplicate")
            self.thumbs.append((ar, t))
        orig_size = im.size
        full = im
        im = shrink(im)
        # Some clip-art is a single flat colour once composited (e.g. white strokes on transparency).
        if float(np.asarray(im.convert("L")).std()) < 1.0:
            return skip("blank")
        self._write(src, item, im, f"{self.subdir}/{src.name}/{item.rel}", raw_hash, orig_size, stats)
        if src.tiles:
            for k, tile in enumerate(tiles(full)):
                self._write(src, item, shrink(tile), f"{self.subdir}/{src.name}-tiles/{item.rel}-t{k}", raw_hash,
                            orig_size, stats, tile=True)
        return True

    def _write(self, src: Source, item: Item, im: Image.Image, rel: str, raw_hash: str,
               orig_size: tuple[int, int], stats: dict, tile: bool = False) -> None:
        """Encode one picture (or a tile of it) under a free name and record its manifest row."""
        path = self.out / f"{rel}.{src.fmt}"
        n = 1
        while path.exists():  # two inputs can map to one safe name (e.g. foo.png and foo.jpg)
            path = self.out / f"{rel}-{n}.{src.fmt}"
            n += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(im, src.fmt))
        self.rows.append({
            "path": path.relative_to(self.out).as_posix(), "source": src.name, "inner_path": item.inner,
            "sha256": raw_hash, "orig_size": list(orig_size), "size": list(im.size), "mode": im.mode,
            "licence": item.licence or src.licence, **({"copyright": item.copyright} if item.copyright else {}),
            **({"tile_of": item.inner} if tile else {}),
        })
        counter = "tiles_written" if tile else "written"
        stats[counter] = stats.get(counter, 0) + 1


def tiles(im: Image.Image) -> list[Image.Image]:
    """Four quadrants and the centre at 1/TILE_ZOOM of each side, when that keeps the pool's resolution."""
    w, h = im.size
    tw, th = w // TILE_ZOOM, h // TILE_ZOOM
    if min(tw, th) < MAX_SHORT_SIDE:
        return []
    corners = [(0, 0), (w - tw, 0), (0, h - th), (w - tw, h - th), ((w - tw) // 2, (h - th) // 2)]
    return [im.crop((x, y, x + tw, y + th)) for x, y in corners]


def run(out: Path, cache: Path, names: list[str], seed: int, openclipart_cap: int, fashion_cap: int,
        command: str = "python -m devdata.pool", procedural: int = 0) -> dict:
    """Build out/train, out/manifest.json and out/MANIFEST.md; return the manifest."""
    t0 = time.time()
    if procedural < 0:
        raise PrepError(f"--procedural must be 0 or more, got {procedural}")
    prepare_out(out, ["train"])
    ctx = Context(DebCache(cache), seed, openclipart_cap, fashion_cap, procedural)
    pool = Pool(out, "train")
    sources: dict[str, dict] = {}
    caps = {"openclipart": openclipart_cap, "fashion": fashion_cap}
    # Generated images come last, so every real picture's dedupe is the same with or without them.
    chosen = [SOURCES[name] for name in names] + ([PROCEDURAL] if procedural else [])
    for src in chosen:
        name = src.name
        stats: dict[str, int] = {}
        items = src.items(ctx)
        bar = tqdm(desc=f"{name:>13}", unit="img", file=sys.stderr, mininterval=1.0)
        for item in items:
            meta = ctx.meta.get(name, {})
            if name in caps and stats.get("written", 0) >= caps[name]:
                break
            pool.add(src, item, stats, meta.get("dev_held_out_sha256", set()))
            bar.update(1)
        bar.close()
        meta = dict(ctx.meta.get(name, {}))
        meta.pop("dev_held_out_sha256", None)
        sources[name] = {**meta, "licence": src.licence, "stats": stats,
                         **({"notes": src.notes} if src.notes else {})}
    write_licences(ctx.debs, out)
    manifest = build_manifest("train-pool", command, sources, pool.rows, out, t0, {
        "seed": seed, "max_short_side": MAX_SHORT_SIDE, "max_pixels": MAX_PIXELS,
        "dedupe": "sha256 of original bytes across all sources, then sha256 of decoded pixels (<= 4 MP)",
        "sha256_note": "sha256 is of the original file bytes; for array sources (fashion, skimage, procedural) "
                       "of the array",
        "tiles": f"photo sources with a short side >= {TILE_ZOOM * MAX_SHORT_SIDE} px also give 5 tiles (4 quadrants "
                 f"+ centre, 1/{TILE_ZOOM} of each side) under <source>-tiles/, rows marked tile_of; same licence",
    })
    write_manifest(out, manifest, "Offline training pool")
    return manifest


def parse_sources(text: list[str] | None) -> list[str]:
    """Expand --sources (names or groups, comma or space separated) in the fixed processing order."""
    if not text:
        return list(SOURCES)
    wanted: set[str] = set()
    for tok in ",".join(text).split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok in GROUPS:
            wanted.update(GROUPS[tok])
        elif tok in SOURCES:
            wanted.add(tok)
        else:
            raise PrepError(f"unknown source {tok!r}; choose from {', '.join([*SOURCES, *GROUPS])}")
    # Fixed order keeps dedupe (first copy wins) independent of how the user spelled the list.
    return [n for n in SOURCES if n in wanted]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m devdata.pool", description=__doc__)
    ap.add_argument("out", type=Path, help="output folder (train/, manifest.json, MANIFEST.md are written here)")
    ap.add_argument("--cache", type=Path,
                    help="where .deb files are downloaded and unpacked (default OUT/../.debcache)")
    ap.add_argument("--sources", nargs="*", help=f"subset of: {', '.join([*SOURCES, *GROUPS])} (default: all)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--openclipart-cap", type=int, default=DEFAULT_OPENCLIPART_CAP)
    ap.add_argument("--fashion-cap", type=int, default=DEFAULT_FASHION_CAP)
    ap.add_argument("--procedural", type=int, default=0, metavar="N",
                    help="also add N generated images (devdata/procedural.py; default 0: real pictures only)")
    args = ap.parse_args(argv)
    try:
        names = parse_sources(args.sources)
        m = run(args.out, args.cache or default_cache(args.out), names, args.seed, args.openclipart_cap,
                args.fashion_cap, " ".join(["python -m devdata.pool", *(argv or sys.argv[1:])]),
                args.procedural)
    except PrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, s in m["sources"].items():
        print(f"{name:>13}: {s['file_count']:5d} files {s['mb']:7.1f} MB  {s.get('version', '')}", file=sys.stderr)
    print(f"total {m['total_files']} files, {m['total_mb']:.1f} MB in {m['seconds']:.0f} s -> {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
