"""The pool's inputs: which files of which package become candidates (the dev set reads the same packages)."""

from __future__ import annotations

import fnmatch
import gzip
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from devdata import holdout
from devdata.debpkg import (DebCache, LicenceRule, Package, PrepError, lookup_licence, parse_dep5,
                            parse_gcompris_readme)
from devdata.pictures import safe_rel, sha256
from devdata.procedural import FAMILIES, LICENCE, procedural_image
from devdata.rcc import iter_rcc

GCOMPRIS_ACTIVITIES = ("erase", "explore_world_animals", "explore_farm_animals")
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "cell", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina", "rocket", "text",
)
# Normal, specular and glow maps are not pictures; only the colour textures are photo-like.
UFOAI_AUX_SUFFIXES = ("_nm", "_sm", "_gm")
FASHION_DIR = "usr/share/datasets/fashion-mnist"
FASHION_CLASSES = (
    "tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)

POOL_NOTES = {
    "openclipart": "clip-art, not photos: a capped random sample (minus dev-set files) adds shape/colour "
    "variety without letting 6.9k drawings outweigh the photos",
    "fashion": "real but tiny 28x28 grey product photos: a class-balanced capped sample of the TRAIN split only "
    "(the dev set uses the TEST split), kept at native size",
    "ufoai": "colour textures only (normal/specular/glow maps dropped); dev-set files held out",
    "procedural": "generated, not photos: dead leaves, coloured 1/f noise and textured dead leaves in turn "
    "(devdata/procedural.py), each image a function of (seed, index); only with --procedural N",
}


@dataclass
class Item:
    """One candidate picture: where it came from and how to get its bytes."""

    inner: str  # path inside the package/bundle, as shipped
    rel: str  # output path below the source folder, without extension
    load: Callable[[], bytes] | None
    licence: str = ""
    copyright: str = ""
    prehashed: str = ""  # for array sources: hash of the array instead of file bytes
    array: np.ndarray | None = None


@dataclass
class Source:
    """A named input: which package it is, how it lists items, and how outputs are encoded."""

    name: str
    package: str
    licence: str
    fmt: str = "jpg"
    near_dupes: bool = False  # also drop the same picture at another resolution (wallpaper packs)
    tiles: bool = False  # also write 2x-zoom tiles of large photos (more real-photo views from few photos)
    background: tuple[int, int, int] = (255, 255, 255)
    notes: str = ""
    items: Callable[["Context"], Iterable[Item]] | None = None


@dataclass
class Context:
    """Shared state for one run: cache, options, and what each source reported."""

    debs: DebCache
    seed: int
    openclipart_cap: int
    fashion_cap: int
    procedural: int = 0  # generated images to add (0: none, the default pool)
    meta: dict[str, dict] = field(default_factory=dict)


def _file_item(root: Path, rel_to: Path, f: Path, rules: list[LicenceRule], rel: str | None = None) -> Item:
    """An Item for an unpacked file, with its DEP-5 licence if one matches."""
    inner = f.relative_to(root).as_posix()
    rule = lookup_licence(rules, inner)
    return Item(inner=inner, rel=rel or safe_rel(f.relative_to(rel_to).as_posix()), load=f.read_bytes,
                licence=rule.licence if rule else "", copyright=rule.copyright if rule else "")


def _deb_meta(ctx: Context, source: str, pkg: Package) -> None:
    """Record package name and exact version for the manifest."""
    ctx.meta[source] = {"package": pkg.name, "version": pkg.version, "deb": pkg.deb.name}


def _package(ctx: Context, source: str, name: str) -> tuple[Package, list[LicenceRule]]:
    """The unpacked package called name, recorded for source, with the rules of its DEP-5 copyright file."""
    pkg = ctx.debs.get(name)
    _deb_meta(ctx, source, pkg)
    return pkg, parse_dep5(pkg.copyright_text())


def gcompris_items(ctx: Context) -> Iterator[Item]:
    """WebP animal photos from three GCompris activities, read out of their .rcc bundles."""
    pkg, rules = _package(ctx, "gcompris", "gcompris-qt-data")
    for act in GCOMPRIS_ACTIVITIES:
        bundle = pkg.root / "usr/share/gcompris-qt/rcc" / f"{act}.rcc"
        if not bundle.exists():
            raise PrepError(f"{bundle} missing: gcompris-qt-data {pkg.version} has a different layout")
        entries = dict(iter_rcc(bundle))
        readmes: dict[str, LicenceRule] = {}
        for p, data in entries.items():
            if p.endswith("/README"):
                readmes.update({f"{p.rsplit('/', 1)[0]}/{k}": v
                                for k, v in parse_gcompris_readme(data.decode("utf-8", "replace")).items()})
        for p in sorted(entries):
            if not p.lower().endswith((".webp", ".jpg", ".jpeg", ".png")):
                continue
            rule = readmes.get(p) or lookup_licence(rules, p)
            inner = f"usr/share/gcompris-qt/rcc/{act}.rcc:{p}"
            yield Item(inner=inner, rel=f"{act}/{safe_rel(p.rsplit('/', 1)[1])}",
                       load=(lambda d=entries[p]: d), licence=rule.licence if rule else "",
                       copyright=rule.copyright if rule else "")


def _wallpaper_items(package: str, source: str, pattern: str) -> Callable[[Context], Iterator[Item]]:
    """Items for a wallpaper package: every image file whose package path matches pattern."""
    def items(ctx: Context) -> Iterator[Item]:
        """Image files of the wallpaper package."""
        pkg, rules = _package(ctx, source, package)
        base = pkg.root / "usr/share"
        for f in sorted(base.rglob("*")):
            inner = f.relative_to(pkg.root).as_posix()
            # Plasma links each extra resolution name to one real file; list the real file once.
            if f.is_file() and not f.is_symlink() and f.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") \
                    and fnmatch.fnmatchcase(inner, pattern):
                yield _file_item(pkg.root, base, f, rules)
    return items


def stellarium_items(ctx: Context) -> Iterator[Item]:
    """The deep-sky object photos (nebulae/default); constellation art and UI textures are drawings."""
    pkg, rules = _package(ctx, "stellarium", "stellarium-data")
    d = pkg.root / "usr/share/stellarium/nebulae/default"
    for f in sorted(d.glob("*.png")):
        yield _file_item(pkg.root, d, f, rules)


def ufoai_zip(ctx: Context) -> tuple[Package, zipfile.ZipFile]:
    """The texture archive of ufoai-textures (a zip named .pk3)."""
    pkg = ctx.debs.get("ufoai-textures")
    pk3 = pkg.root / "usr/share/games/ufoai/base/0textures.pk3"
    if not pk3.exists():
        raise PrepError(f"{pk3} missing: ufoai-textures {pkg.version} has a different layout")
    return pkg, zipfile.ZipFile(pk3)


def ufoai_candidates(names: Iterable[str]) -> list[tuple[str, str]]:
    """(zip member, folder class) for every colour texture in the archive, sorted."""
    out = []
    for n in sorted(names):
        parts = n.split("/")
        if len(parts) != 3 or parts[0] != "textures" or not n.lower().endswith((".png", ".jpg", ".jpeg", ".tga")):
            continue
        if Path(parts[2]).stem.lower().endswith(UFOAI_AUX_SUFFIXES):
            continue
        out.append((n, parts[1]))
    return out


def ufoai_items(ctx: Context) -> Iterator[Item]:
    """Colour textures from the UFO:AI archive, minus the dev-set hold-out."""
    pkg, z = ufoai_zip(ctx)
    _deb_meta(ctx, "ufoai", pkg)
    rules = parse_dep5(pkg.copyright_text())
    cands = ufoai_candidates(z.namelist())
    split = holdout.ufoai_split(cands, ctx.seed, z.read)
    held = split.chosen
    ctx.meta["ufoai"]["dev_held_out"] = len(held)
    ctx.meta["ufoai"]["dev_held_out_sha256"] = split.held_sha()
    for n, _cls in cands:
        if n in held:
            continue
        # Licence paths in the copyright file are relative to the unpacked game tree (base/textures/...).
        rule = lookup_licence(rules, "base/" + n)
        yield Item(inner=f"usr/share/games/ufoai/base/0textures.pk3:{n}", rel=safe_rel(n.split("/", 1)[1]),
                   load=(lambda n=n: z.read(n)), licence=rule.licence if rule else "",
                   copyright=rule.copyright if rule else "")


def openclipart_root(ctx: Context) -> tuple[Package, Path]:
    """The unpacked openclipart PNG tree."""
    pkg = ctx.debs.get("openclipart-png")
    root = pkg.root / "usr/share/openclipart/png"
    if not root.is_dir():
        raise PrepError(f"{root} missing: openclipart-png {pkg.version} has a different layout")
    return pkg, root


def openclipart_candidates(root: Path) -> list[tuple[str, str]]:
    """(path relative to the png folder, top-level category) for every PNG, sorted."""
    return [(f.relative_to(root).as_posix(), f.relative_to(root).parts[0])
            for f in sorted(root.rglob("*.png")) if len(f.relative_to(root).parts) >= 2]


def openclipart_items(ctx: Context) -> Iterator[Item]:
    """A capped, seeded random sample of the clip-art, minus the dev-set hold-out."""
    pkg, root = openclipart_root(ctx)
    _deb_meta(ctx, "openclipart", pkg)
    cands = openclipart_candidates(root)
    split = holdout.openclipart_split(cands, ctx.seed, lambda p: (root / p).read_bytes())
    held = split.chosen
    ctx.meta["openclipart"]["dev_held_out"] = len(held)
    ctx.meta["openclipart"]["dev_held_out_sha256"] = split.held_sha()
    rest = [p for p, _ in cands if p not in held]
    # Hash order is a seeded shuffle that does not depend on Python's RNG implementation.
    rest.sort(key=lambda p: holdout.rank(ctx.seed, "openclipart-train", p))
    ctx.meta["openclipart"]["cap"] = ctx.openclipart_cap
    for p in rest:
        yield Item(inner=f"usr/share/openclipart/png/{p}", rel=safe_rel(p), load=(root / p).read_bytes,
                   licence="public-domain")


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX array (the MNIST file format)."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise PrepError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise PrepError(f"{path}: size does not match its IDX header {shape}")
    return data.reshape(shape)


def fashion_split(ctx: Context, split: str) -> tuple[Package, np.ndarray, np.ndarray]:
    """Images and labels of the Fashion-MNIST 'train' or 't10k' split."""
    pkg = ctx.debs.get("dataset-fashion-mnist")
    d = pkg.root / FASHION_DIR
    return pkg, read_idx(d / f"{split}-images-idx3-ubyte.gz"), read_idx(d / f"{split}-labels-idx1-ubyte.gz")


def fashion_items(ctx: Context) -> Iterator[Item]:
    """A class-balanced sample of the TRAIN split (the dev set draws from the test split)."""
    pkg, x, y = fashion_split(ctx, "train")
    _deb_meta(ctx, "fashion", pkg)
    rng = np.random.default_rng(ctx.seed)
    per_class = ctx.fashion_cap // len(FASHION_CLASSES)
    ctx.meta["fashion"]["cap"] = per_class * len(FASHION_CLASSES)
    for c, cname in enumerate(FASHION_CLASSES):
        idx = np.sort(rng.permutation(np.flatnonzero(y == c))[:per_class])
        for i in idx:
            a = x[i]
            yield Item(inner=f"{FASHION_DIR}/train-images-idx3-ubyte.gz#{i}", rel=f"{cname}/train_{i:05d}",
                       load=None, prehashed=sha256(a.tobytes()), array=a, licence="Expat")


def skimage_items(ctx: Context) -> Iterator[Item]:
    """Photos bundled in the scikit-image wheel; names that need a download are skipped."""
    import skimage
    import skimage.data

    ctx.meta["skimage"] = {"package": "scikit-image (PyPI)", "version": skimage.__version__, "unavailable": []}
    for name in SKIMAGE_PHOTOS + ("stereo_motorcycle",):
        try:
            a = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - any failure here means "not shipped in the wheel"
            ctx.meta["skimage"]["unavailable"].append(name)
            continue
        arrays = {"motorcycle_left": a[0], "motorcycle_right": a[1]} if name == "stereo_motorcycle" else {name: a}
        for n, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            yield Item(inner=f"skimage.data.{name}()" + (f"[{n}]" if n != name else ""), rel=n,
                       load=None, array=arr,
                       prehashed=sha256(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes()),
                       licence="see skimage.data docstring (BSD-3-Clause package)")


def sklearn_items(ctx: Context) -> Iterator[Item]:
    """The two sample photos that ship with scikit-learn."""
    import sklearn
    from sklearn.datasets import load_sample_images

    ctx.meta["sklearn"] = {"package": "scikit-learn (PyPI)", "version": sklearn.__version__}
    imgs = load_sample_images()
    for fname, arr in zip(imgs.filenames, imgs.images):
        base = Path(fname).name
        yield Item(inner=f"sklearn/datasets/images/{base}", rel=Path(base).stem, load=Path(fname).read_bytes,
                   licence="CC-BY-2.0", copyright="danielbuechele / vultilion (Flickr), see sklearn README")


PROCEDURAL_SIZE = 256  # px; training decodes at most 224 px and crops 112


def procedural_items(ctx: Context) -> Iterator[Item]:
    """ctx.procedural generated images (devdata/procedural.py) drawn from ctx.seed."""
    ctx.meta["procedural"] = {"package": "devdata.procedural (generated)", "version": f"seed {ctx.seed}",
                              "families": list(FAMILIES), "size": PROCEDURAL_SIZE}
    for i in range(ctx.procedural):
        family, a = procedural_image(ctx.seed, i, PROCEDURAL_SIZE)
        yield Item(inner=f"procedural_image(seed={ctx.seed}, index={i})", rel=f"{family}/{i:05d}", load=None,
                   array=a, prehashed=sha256(a.tobytes()), licence=LICENCE)


# Not in SOURCES: it is no package and joins the pool only when asked for (devdata.pool --procedural N).
PROCEDURAL = Source("procedural", "devdata.procedural", "CC0-1.0 (generated)", notes=POOL_NOTES["procedural"],
                    items=procedural_items)

SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("gcompris", "gcompris-qt-data", "CC-BY-SA / CC-BY / public domain (per-file README)",
           tiles=True, items=gcompris_items),
    Source("lomiri-16.04", "lomiri-wallpapers-16.04", "CC-BY-4.0 / CC-BY-SA-3.0 / CC-BY-SA-4.0 / CC0-1.0",
           near_dupes=True, tiles=True,
           items=_wallpaper_items("lomiri-wallpapers-16.04", "lomiri-16.04", "usr/share/backgrounds/*")),
    Source("lomiri-20.04", "lomiri-wallpapers-20.04", "CC-BY-4.0 / CC-BY-SA-3.0 / CC-BY-SA-4.0 / CC0-1.0",
           near_dupes=True, tiles=True,
           items=_wallpaper_items("lomiri-wallpapers-20.04", "lomiri-20.04", "usr/share/backgrounds/*")),
    Source("mate", "mate-backgrounds", "GPL-2+ / CC-BY-SA-4.0", near_dupes=True, tiles=True,
           items=_wallpaper_items("mate-backgrounds", "mate", "usr/share/backgrounds/*")),
    Source("plasma", "plasma-workspace-wallpapers", "GPL-2+", near_dupes=True, tiles=True,
           items=_wallpaper_items("plasma-workspace-wallpapers", "plasma",
                                  "usr/share/wallpapers/*/contents/images/*")),
    Source("ukui", "ukui-wallpapers", "CC-BY-SA-3.0", near_dupes=True, tiles=True,
           items=_wallpaper_items("ukui-wallpapers", "ukui", "usr/share/backgrounds/*")),
    Source("stellarium", "stellarium-data", "GPL-2+", background=(0, 0, 0), items=stellarium_items),
    Source("ufoai", "ufoai-textures", "mostly GPL-2+/GPL-2; some public-domain, Expat, CC-BY(-SA)-3.0 (per file)",
           notes=POOL_NOTES["ufoai"], items=ufoai_items),
    Source("skimage", "scikit-image", "BSD-3-Clause package; per-image terms in skimage.data docstrings",
           items=skimage_items),
    Source("sklearn", "scikit-learn", "CC-BY-2.0 (images, per sklearn/datasets/images/README.txt)",
           items=sklearn_items),
    Source("openclipart", "openclipart-png", "public-domain", fmt="png", notes=POOL_NOTES["openclipart"],
           items=openclipart_items),
    Source("fashion", "dataset-fashion-mnist", "Expat (MIT)", fmt="png", notes=POOL_NOTES["fashion"],
           items=fashion_items),
]}
GROUPS = {"wallpapers": ["lomiri-16.04", "lomiri-20.04", "mate", "plasma", "ukui"]}
