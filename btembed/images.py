"""Finding and opening image files safely: orientation, modes, bad files and bombs become ImageError."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError

# File name endings we treat as images when walking a folder.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico".split()
)

# An explicit pixel limit: bigger than any camera sensor (~150 MP), smaller than known bombs (> 178 MP).
MAX_PIXELS = 160_000_000

# Truncated files must fail loudly instead of silently embedding grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name ends in a known image extension."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def find_images(folder: str | os.PathLike, skip_hidden: bool = True) -> Iterator[Path]:
    """Yield image files under folder recursively, sorted, skipping hidden entries (such as .btembed/)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(folder, "not a folder")
    seen_dirs: set[tuple[int, int]] = set()
    # os.walk with followlinks would loop forever on a symlink cycle; track (dev, inode) ourselves.
    for root, dirs, files in os.walk(folder, followlinks=True):
        try:
            st = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(key)
        if skip_hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        dirs.sort()
        for name in sorted(files):
            if skip_hidden and name.startswith("."):
                continue
            if is_image_path(name):
                yield Path(root) / name


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        # 16-bit and float images: Pillow's own convert clips at 255, so rescale to 8 bits by hand.
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I") else (1.0 if a.size and a.max() <= 1.0 else 255.0)
        a = np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if (mode == "P" and "transparency" in image.info) or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | os.PathLike, min_size: int | None = None) -> Image.Image:
    """Open a file as an upright RGB image; JPEGs decode at reduced scale when min_size allows it.

    min_size is the shortest side the caller still needs (the preprocessing's resize size).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow's own warning starts at ~89 MP, below MAX_PIXELS: turned into an error it refused 100-150 MP
            # camera photos. MAX_PIXELS is checked just below; Pillow still raises its error above ~179 MP.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size
                if w * h > MAX_PIXELS:
                    raise ImageError(path, f"image of {w}x{h} pixels is over the {MAX_PIXELS:,}-pixel limit "
                                           "(possible decompression bomb)")
                if min_size and image.format == "JPEG" and min(w, h) >= 2 * min_size:
                    # Draft mode lets libjpeg skip DCT coefficients: 1/2..1/8 scale decoding, the
                    # biggest single win on photos. It never goes below the requested size.
                    scale = min_size / min(w, h)
                    image.draft("RGB", (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))
                image.seek(0)  # animated images: first frame
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found (or a broken symbolic link)") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, f"refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        size = path.stat().st_size if path.exists() else -1
        cause = "empty file (0 bytes)" if size == 0 else "not an image Pillow can read"
        raise ImageError(path, cause) from None
    except OSError as e:
        if "truncated" in str(e).lower():
            raise ImageError(path, "truncated or damaged image data") from None
        if getattr(e, "errno", None) == 40:  # ELOOP
            raise ImageError(path, "symbolic link loop") from None
        raise ImageError(path, f"cannot read image ({e})") from None
    except (ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise ImageError(path, f"damaged image data ({type(e).__name__}: {e})") from None


def as_rgb(item, min_size: int | None = None) -> Image.Image:
    """Turn a path, PIL image or uint8 array (HW, HW1, HW3, HW4) into an RGB PIL image."""
    if isinstance(item, (str, os.PathLike)):
        return open_image(item, min_size)
    if isinstance(item, Image.Image):
        return _to_rgb(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ImageError("<array>", f"arrays must be uint8, got {item.dtype}")
        if item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 1):
            return Image.fromarray(item.reshape(item.shape[:2]), "L").convert("RGB")
        if item.ndim == 3 and item.shape[2] in (3, 4):
            return _to_rgb(Image.fromarray(np.ascontiguousarray(item), "RGB" if item.shape[2] == 3 else "RGBA"))
        raise ImageError("<array>", f"arrays must be HxW, HxWx1, HxWx3 or HxWx4, got shape {item.shape}")
    raise ImageError(repr(item)[:80], f"unsupported item type {type(item).__name__}; "
                                      "give a file path, a PIL image or a uint8 array")
