"""Build a reproducible set of hi-res JPEGs for throughput benchmarks from the allowed Debian wallpapers.

python bench/make_photo_set.py OUT [--count 300] [--cache DIR]
Per ../shared/DATA.md: random crops covering 60–100 % of each side, re-encoded at quality 75–95, 4:4:4 or 4:2:0,
about 30 % progressive; every wallpaper of 9 MP or more is also kept once at full size so decode cost is honest.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devdata.debpkg import DebCache  # noqa: E402  (fetches with apt-get download + dpkg -x)

WALLPAPER_PACKAGES = {
    "lomiri-wallpapers-16.04": "usr/share/backgrounds",
    "lomiri-wallpapers-20.04": "usr/share/backgrounds",
    "mate-backgrounds": "usr/share/backgrounds",
    "plasma-workspace-wallpapers": "usr/share/wallpapers",
    "ukui-wallpapers": "usr/share/backgrounds",
}
MIN_PIXELS = 1_300_000  # only photos at real-photo sizes
FULL_SIZE_PIXELS = 9_000_000
Image.MAX_IMAGE_PIXELS = 200_000_000


def wallpaper_sources(cache: Path) -> list[Path]:
    """Distinct multi-megapixel wallpaper files (plasma: */contents/images/* only), deduped by content hash."""
    debs, seen, found = DebCache(cache), set(), []
    for name, base in WALLPAPER_PACKAGES.items():
        root = debs.get(name).root / base
        for f in sorted(root.rglob("*")):
            if not f.is_file() or f.is_symlink() or f.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            if name == "plasma-workspace-wallpapers" and "/contents/images/" not in f.as_posix():
                continue
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            with Image.open(f) as im:
                big = im.size[0] * im.size[1] >= MIN_PIXELS
            if big and digest not in seen:
                seen.add(digest)
                found.append(f)
    return found


def main(argv=None) -> int:
    """Write OUT/*.jpg and OUT/set.json (sources, sizes, encodings)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--cache", type=Path, default=Path("../data/.debcache"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    sources = wallpaper_sources(args.cache)
    if not sources:
        sys.exit("no wallpapers found: is apt-get available and the package archive reachable?")
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    plan = [(s, True) for s in sources if Image.open(s).size[0] * Image.open(s).size[1] >= FULL_SIZE_PIXELS]
    while len(plan) < args.count:
        plan.append((rng.choice(sources), False))
    for i, (src, full) in enumerate(plan[: args.count]):
        with Image.open(src) as im:
            im = im.convert("RGB")
            w, h = im.size
            if not full:
                cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
                x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
                im = im.crop((x, y, x + cw, y + ch))
            quality, subsampling = rng.randint(75, 95), rng.choice([0, 2])  # 0 = 4:4:4, 2 = 4:2:0
            progressive = rng.random() < 0.3
            path = args.out / f"photo_{i:04d}.jpg"
            im.save(path, quality=quality, subsampling=subsampling, progressive=progressive, optimize=progressive)
            records.append({"file": path.name, "source": src.name, "size": list(im.size), "quality": quality,
                            "subsampling": ["4:4:4", None, "4:2:0"][subsampling], "progressive": progressive,
                            "full_size": full})
    mp = sorted(r["size"][0] * r["size"][1] / 1e6 for r in records)
    summary = {"count": len(records), "sources": len(sources), "median_mp": mp[len(mp) // 2], "max_mp": mp[-1],
               "progressive": sum(r["progressive"] for r in records),
               "bytes": sum((args.out / r["file"]).stat().st_size for r in records), "files": records}
    (args.out / "set.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(records)} JPEGs from {len(sources)} wallpapers, median {summary['median_mp']:.1f} MP, "
          f"max {summary['max_mp']:.1f} MP, {summary['bytes'] / 1e6:.0f} MB → {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
