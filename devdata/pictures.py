"""Image handling of the offline data builders: bomb-safe decode, flatten to RGB/L, shrink, hash, encode."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

# Anything above this is refused: the largest real wallpaper is ~18 MP, the known clip-art bombs are > 178 MP.
MAX_PIXELS = 40_000_000
# Training crops are <= 160 px, so 512 px on the short side keeps enough headroom for random-resized crops.
MAX_SHORT_SIDE = 512
JPEG_QUALITY = 95


class Skip(Exception):
    """An input that is refused on purpose (decompression bomb, undecodable, not a picture)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@contextmanager
def pixel_limit() -> Iterator[None]:
    """Within it Pillow refuses images over MAX_PIXELS, by error or, between 1x and 2x the limit, by warning."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x the limit; treat that as a refusal too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def fits_limit(data: bytes) -> bool:
    """True if the image header opens and is within the pixel limit (no full decode)."""
    with pixel_limit():
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001 - anything that will not open is simply not eligible
            return False
    return w * h <= MAX_PIXELS


def decode(data: bytes, max_short_side: int | None = MAX_SHORT_SIDE) -> Image.Image:
    """Decode bytes with a hard pixel limit, letting JPEG decode at reduced scale when it will be shrunk anyway."""
    with pixel_limit():
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
