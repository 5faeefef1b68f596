"""Build the unlabeled offline training pool from the allowed Debian packages and bundled PyPI images."""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is in the venv, but progress bars are optional
    def tqdm(it=None, **_kw):  # type: ignore[no-redef]
        """Fallback that just returns the iterable."""
        return it

# Anything above this is refused: the largest real wallpaper is ~18 MP, the known clip-art bombs are > 178 MP.
MAX_PIXELS = 40_000_000
# Training crops are <= 160 px, so 512 px on the short side keeps enough headroom for random-resized crops.
MAX_SHORT_SIDE = 512
JPEG_QUALITY = 95
DEFAULT_SEED = 0
# Caps keep non-photo sources from swamping the ~2k photo-like images (see POOL_NOTES).
DEFAULT_OPENCLIPART_CAP = 1500
DEFAULT_FASHION_CAP = 1000

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
}


class PrepError(RuntimeError):
    """A clear, user-facing failure of the preparation step."""


# --------------------------------------------------------------------------- Debian packages


@dataclass
class Package:
    """One downloaded and unpacked Debian package."""

    name: str
    version: str
    deb: Path
    root: Path

    def copyright_text(self) -> str:
        """The package's copyright file, or '' if it ships none."""
        p = self.root / "usr/share/doc" / self.name / "copyright"
        return p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""


class DebCache:
    """Fetches packages with apt-get into a cache directory and unpacks them with dpkg -x."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.cache.mkdir(parents=True, exist_ok=True)
        self._done: dict[str, Package] = {}

    def _run(self, cmd: list[str], what: str) -> str:
        """Run a tool, turning a missing binary or a failure into one readable sentence."""
        if shutil.which(cmd[0]) is None:
            raise PrepError(f"`{cmd[0]}` is not available: run this on Debian/Ubuntu, or put the .deb files "
                            f"into {self.cache} yourself")
        res = subprocess.run(cmd, cwd=self.cache, capture_output=True, text=True)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise PrepError(f"{what} failed ({' '.join(cmd)}): {' | '.join(tail)}"
                            + (" -- try `apt-get update` first" if cmd[0] == "apt-get" else ""))
        return res.stdout

    def get(self, name: str) -> Package:
        """Download (once) and unpack (once) the package called name."""
        if name in self._done:
            return self._done[name]
        debs = sorted(self.cache.glob(f"{name}_*.deb"))
        if not debs:
            self._run(["apt-get", "download", name], f"downloading {name}")
            debs = sorted(self.cache.glob(f"{name}_*.deb"))
            if not debs:
                raise PrepError(f"apt-get download {name} produced no .deb in {self.cache}")
        deb = debs[-1]
        version = self._run(["dpkg-deb", "-f", str(deb), "Version"], f"reading {deb.name}").strip()
        root = self.cache / "unpacked" / f"{name}_{version.replace(':', '%3a')}"
        # The marker makes an interrupted unpack redo itself instead of leaving a half tree.
        if not (root / ".unpacked").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            self._run(["dpkg", "-x", str(deb), str(root)], f"unpacking {deb.name}")
            (root / ".unpacked").touch()
        pkg = Package(name, version, deb, root)
        self._done[name] = pkg
        return pkg


# --------------------------------------------------------------------------- licences


@dataclass
class LicenceRule:
    """One Files stanza of a machine-readable copyright file."""

    patterns: list[str]
    licence: str
    copyright: str


def parse_dep5(text: str) -> list[LicenceRule]:
    """Parse the Files stanzas of a DEP-5 copyright file (empty list if it is free-form)."""
    rules = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
                continue
            m = re.match(r"([A-Za-z][A-Za-z-]*):\s*(.*)$", line)
            key = m.group(1).lower() if m else None
            if m:
                fields[key] = m.group(2)
        if "files" in fields and "license" in fields:
            rules.append(LicenceRule(
                patterns=fields["files"].split(),
                licence=fields["license"].split("\n")[0].strip(),
                copyright="; ".join(s for s in fields.get("copyright", "").split("\n") if s.strip()),
            ))
    return rules


def lookup_licence(rules: list[LicenceRule], path: str) -> LicenceRule | None:
    """Last matching stanza wins, as DEP-5 specifies; patterns are upstream-relative so allow any prefix."""
    found = by_name = None
    base = path.rsplit("/", 1)[-1]
    for rule in rules:
        if any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, "*/" + p) for p in rule.patterns):
            found = rule
        # Upstream folders are sometimes flattened on install (lomiri's 16.04/x.jpg lands in backgrounds/x.jpg).
        if any(not re.search(r"[*?\[]", p) and p.rsplit("/", 1)[-1] == base for p in rule.patterns):
            by_name = rule
    if by_name is not None and (found is None or all(re.search(r"[*?\[]", p) for p in found.patterns)):
        return by_name
    return found


def parse_gcompris_readme(text: str) -> dict[str, LicenceRule]:
    """Map file name -> licence from a GCompris resource README (blocks of Copyright/License/Files)."""
    out: dict[str, LicenceRule] = {}
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, list[str]] = {}
        key = None
        for line in block.splitlines():
            m = re.match(r"([A-Za-z]+):\s*(.*)$", line)
            if m:
                key = m.group(1).lower()
                fields.setdefault(key, []).append(m.group(2).strip())
            elif key and line.strip():
                fields[key].append(line.strip())
        names = [n for v in fields.get("files", []) for n in v.split() if n]
        rule = LicenceRule(names, " ".join(fields.get("license", [])).strip(),
                           " ".join(fields.get("copyright", [])).strip())
        for n in names:
            out[n] = rule
    return out


# --------------------------------------------------------------------------- images


class Skip(Exception):
    """An input that is refused on purpose (decompression bomb, undecodable, not a picture)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode(data: bytes, max_short_side: int | None = MAX_SHORT_SIDE) -> Image.Image:
    """Decode bytes with a hard pixel limit, letting JPEG decode at reduced scale when it will be shrunk anyway."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x the limit; treat that as a refusal too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            if max_short_side and im.format == "JPEG":
                w, h = im.size
                s = max_short_side / min(w, h)
                if s < 1:
                    im.draft("RGB", (max(1, round(w * s)), max(1, round(h * s))))
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Skip("decompression_bomb") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise Skip("undecodable") from exc
    return im


def flatten(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Return an RGB or L image, compositing any transparency onto background."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "La", "PA", "RGBa") or (im.mode == "L" and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        bg = Image.new("RGB", im.size, background)
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.round().astype(np.uint8), "L")
    if im.mode == "1":
        return im.convert("L")
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    return im


def shrink(im: Image.Image, max_short_side: int = MAX_SHORT_SIDE) -> Image.Image:
    """Downscale so the short side is at most max_short_side; never upscale."""
    w, h = im.size
    s = max_short_side / min(w, h)
    if s >= 1:
        return im
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def pixel_hash(im: Image.Image) -> str:
    """Hash of the decoded pixels, so re-encodes of the same picture are caught."""
    return hashlib.sha256(f"{im.mode}{im.size}".encode() + im.tobytes()).hexdigest()


# Mean abs difference (0-255) of 32x32 thumbnails: one picture at two resolutions measures < 1, the closest
# distinct wallpapers measure > 13 (checked on these packages), and the aspect ratio must match too.
NEAR_DUP_MAD = 3.0


def thumb(im: Image.Image) -> tuple[float, np.ndarray]:
    """Aspect ratio and a 32x32 RGB box-filtered thumbnail, for resolution-independent comparison."""
    return im.width / im.height, np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BOX), np.float32)


def encode(im: Image.Image, fmt: str) -> bytes:
    """Encode as high-quality JPEG (4:4:4) for photos or lossless PNG for drawings."""
    buf = io.BytesIO()
    if fmt == "jpg":
        im.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=True)
    else:
        im.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    """Hex sha256 of data."""
    return hashlib.sha256(data).hexdigest()


def safe_rel(path: str) -> str:
    """A relative output path made of safe characters only, without the extension."""
    parts = [re.sub(r"[^A-Za-z0-9._+-]+", "_", p).strip("._") or "x" for p in Path(path).with_suffix("").parts]
    return "/".join(parts)


# --------------------------------------------------------------------------- sources


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


def gcompris_items(ctx: Context) -> Iterator[Item]:
    """WebP animal photos from three GCompris activities, read out of their .rcc bundles."""
    from training.rcc import iter_rcc

    pkg = ctx.debs.get("gcompris-qt-data")
    _deb_meta(ctx, "gcompris", pkg)
    rules = parse_dep5(pkg.copyright_text())
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
        pkg = ctx.debs.get(package)
        _deb_meta(ctx, source, pkg)
        rules = parse_dep5(pkg.copyright_text())
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
    pkg = ctx.debs.get("stellarium-data")
    _deb_meta(ctx, "stellarium", pkg)
    rules = parse_dep5(pkg.copyright_text())
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
    from training import devset

    pkg, z = ufoai_zip(ctx)
    _deb_meta(ctx, "ufoai", pkg)
    rules = parse_dep5(pkg.copyright_text())
    cands = ufoai_candidates(z.namelist())
    split = devset.ufoai_split(cands, ctx.seed, z.read)
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
    from training import devset

    pkg, root = openclipart_root(ctx)
    _deb_meta(ctx, "openclipart", pkg)
    cands = openclipart_candidates(root)
    split = devset.openclipart_split(cands, ctx.seed, lambda p: (root / p).read_bytes())
    held = split.chosen
    ctx.meta["openclipart"]["dev_held_out"] = len(held)
    ctx.meta["openclipart"]["dev_held_out_sha256"] = split.held_sha()
    rest = [p for p, _ in cands if p not in held]
    # Hash order is a seeded shuffle that does not depend on Python's RNG implementation.
    rest.sort(key=lambda p: devset.rank(ctx.seed, "openclipart-train", p))
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


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("gcompris", "gcompris-qt-data", "CC-BY-SA / CC-BY / public domain (per-file README)",
           items=gcompris_items),
    Source("lomiri-16.04", "lomiri-wallpapers-16.04", "CC-BY-4.0 / CC-BY-SA-3.0 / CC-BY-SA-4.0 / CC0-1.0",
           near_dupes=True,
           items=_wallpaper_items("lomiri-wallpapers-16.04", "lomiri-16.04", "usr/share/backgrounds/*")),
    Source("lomiri-20.04", "lomiri-wallpapers-20.04", "CC-BY-4.0 / CC-BY-SA-3.0 / CC-BY-SA-4.0 / CC0-1.0",
           near_dupes=True,
           items=_wallpaper_items("lomiri-wallpapers-20.04", "lomiri-20.04", "usr/share/backgrounds/*")),
    Source("mate", "mate-backgrounds", "GPL-2+ / CC-BY-SA-4.0", near_dupes=True,
           items=_wallpaper_items("mate-backgrounds", "mate", "usr/share/backgrounds/*")),
    Source("plasma", "plasma-workspace-wallpapers", "GPL-2+", near_dupes=True,
           items=_wallpaper_items("plasma-workspace-wallpapers", "plasma",
                                  "usr/share/wallpapers/*/contents/images/*")),
    Source("ukui", "ukui-wallpapers", "CC-BY-SA-3.0", near_dupes=True,
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
                im = decode(data)
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
        im = shrink(im)
        # Some clip-art is a single flat colour once composited (e.g. white strokes on transparency).
        if float(np.asarray(im.convert("L")).std()) < 1.0:
            return skip("blank")
        blob = encode(im, src.fmt)
        rel = f"{self.subdir}/{src.name}/{item.rel}"
        path = self.out / f"{rel}.{src.fmt}"
        n = 1
        while path.exists():  # two inputs can map to one safe name (e.g. foo.png and foo.jpg)
            path = self.out / f"{rel}-{n}.{src.fmt}"
            n += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        self.rows.append({
            "path": path.relative_to(self.out).as_posix(), "source": src.name, "inner_path": item.inner,
            "sha256": raw_hash, "orig_size": list(orig_size), "size": list(im.size), "mode": im.mode,
            "licence": item.licence or src.licence, **({"copyright": item.copyright} if item.copyright else {}),
        })
        stats["written"] = stats.get("written", 0) + 1
        return True


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


def write_licences(ctx: Context, out: Path) -> None:
    """Keep each package's copyright file next to the data, for attribution."""
    lic = out / "licenses"
    lic.mkdir(exist_ok=True)
    for pkg in ctx.debs._done.values():
        text = pkg.copyright_text()
        if text:
            (lic / f"{pkg.name}.copyright").write_text(text, encoding="utf-8")


def summary_md(title: str, manifest: dict, out: Path) -> str:
    """A human-readable table of what a manifest holds."""
    lines = [f"# {title}", "", f"Built by `{manifest['command']}` in {manifest['seconds']:.0f} s; "
             f"{manifest['total_files']} files, {manifest['total_mb']:.1f} MB.", "",
             "| source | package | version | licence | files | skipped | MB |", "|---|---|---|---|---|---|---|"]
    for name, s in manifest["sources"].items():
        skipped = ", ".join(f"{k} {v}" for k, v in s["stats"].items() if k not in ("written",) and v) or "-"
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


def run(out: Path, cache: Path, names: list[str], seed: int, openclipart_cap: int, fashion_cap: int,
        command: str = "python -m training.offline_photos") -> dict:
    """Build out/train, out/manifest.json and out/MANIFEST.md; return the manifest."""
    t0 = time.time()
    prepare_out(out, ["train"])
    ctx = Context(DebCache(cache), seed, openclipart_cap, fashion_cap)
    pool = Pool(out, "train")
    sources: dict[str, dict] = {}
    caps = {"openclipart": openclipart_cap, "fashion": fashion_cap}
    for name in names:
        src = SOURCES[name]
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
    write_licences(ctx, out)
    manifest = build_manifest("train-pool", command, sources, pool.rows, out, t0, {
        "seed": seed, "max_short_side": MAX_SHORT_SIDE, "max_pixels": MAX_PIXELS,
        "dedupe": "sha256 of original bytes across all sources, then sha256 of decoded pixels (<= 4 MP)",
        "sha256_note": "sha256 is of the original file bytes; for array sources (fashion, skimage) of the array",
    })
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    (out / "MANIFEST.md").write_text(summary_md("Offline training pool", manifest, out), encoding="utf-8")
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


def default_cache(out: Path) -> Path:
    """Default package cache: beside the output folder, so it stays outside any git checkout of the data."""
    return out.resolve().parent / ".debcache"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m training.offline_photos", description=__doc__)
    ap.add_argument("out", type=Path, help="output folder (train/, manifest.json, MANIFEST.md are written here)")
    ap.add_argument("--cache", type=Path,
                    help="where .deb files are downloaded and unpacked (default OUT/../.debcache)")
    ap.add_argument("--sources", nargs="*", help=f"subset of: {', '.join([*SOURCES, *GROUPS])} (default: all)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--openclipart-cap", type=int, default=DEFAULT_OPENCLIPART_CAP)
    ap.add_argument("--fashion-cap", type=int, default=DEFAULT_FASHION_CAP)
    args = ap.parse_args(argv)
    try:
        names = parse_sources(args.sources)
        m = run(args.out, args.cache or default_cache(args.out), names, args.seed, args.openclipart_cap,
                args.fashion_cap, " ".join(["python -m training.offline_photos", *(argv or sys.argv[1:])]))
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
