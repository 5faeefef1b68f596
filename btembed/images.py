"""Finding and opening image files safely: orientation, modes, bad files and bombs become ImageError."""
from __future__ import annotations

import errno
import os
import stat
import warnings
from dataclasses import dataclass, field
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


# What a folder entry that is not a regular file is, for the one line that says why it is skipped.
_SPECIAL = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"))


def not_regular(mode: int) -> str | None:
    """Why a file of this st_mode cannot be an image ('a named pipe, not a regular file'), or None."""
    for test, what in _SPECIAL:
        if test(mode):
            return f"{what}, not a regular file (never opened)"
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not a regular file (never opened)"


def os_cause(error: OSError) -> str:
    """A short, human cause of an OS error: 'permission denied', 'symbolic link loop', ..."""
    if isinstance(error, PermissionError):
        return "permission denied"
    if error.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(error, FileNotFoundError):
        return "does not exist (or is a broken symbolic link)"
    return (error.strerror or str(error)).lower()


def check_readable(path: str | os.PathLike, what: str = "an image file") -> None:
    """Raise ImageError with the exact cause unless path is a regular file this process can open."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise ImageError(path, f"no such file; give an image file as {what}") from None
    except OSError as e:
        raise ImageError(path, f"{os_cause(e)} (a folder on its way cannot be entered)") from None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(path, "broken symbolic link (its target does not exist)") from None
    except OSError as e:
        raise ImageError(path, os_cause(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(path, f"is a folder; give an image file as {what}")
    why = not_regular(st.st_mode)
    if why:
        raise ImageError(path, why)
    try:
        os.close(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
    except OSError as e:
        raise ImageError(path, os_cause(e)) from None


@dataclass
class FolderScan:
    """What one walk of a folder saw: image files, folders listed in full, folders it could not list, and
    image-named entries it will not open (named pipes, sockets, devices, links to them)."""

    files: list = field(default_factory=list)  # Path, depth first in name order
    listed: set = field(default_factory=set)  # Path of every folder listed in full
    failed: dict = field(default_factory=dict)  # Path of a folder -> why it could not be listed
    skipped: dict = field(default_factory=dict)  # Path of a file -> why it is not read


def scan_folder(folder: str | os.PathLike, skip_hidden: bool = True, seen: set | None = None) -> FolderScan:
    """Walk folder for image files, depth first in name order, skipping hidden entries (such as .btembed/);
    symlinked folders are followed once (loops cut by device and inode; pass the same `seen` set to scans of
    sibling folders so a link back up is cut too). A folder that cannot be listed is recorded in `failed`, never
    silently taken for empty."""
    out = FolderScan()
    seen_dirs: set[tuple[int, int]] = set() if seen is None else seen
    stack = [Path(folder)]
    while stack:
        path = stack.pop()
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.failed[path] = os_cause(e)
            continue
        out.listed.add(path)
        subdirs = []
        for entry in entries:
            if skip_hidden and entry.name.startswith("."):
                continue
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError:
                is_dir = is_file = False
            if is_dir:
                subdirs.append(Path(entry.path))
            elif is_image_path(entry.name):
                why = None
                if not is_file:  # a special file, or a link that cannot be followed (kept: its error is recorded)
                    try:
                        why = not_regular(os.stat(entry.path).st_mode)
                    except OSError:
                        why = None
                if why:
                    out.skipped[Path(entry.path)] = why
                else:
                    out.files.append(Path(entry.path))
        stack.extend(reversed(subdirs))
    return out


def find_images(folder: str | os.PathLike, skip_hidden: bool = True) -> Iterator[Path]:
    """Yield image files under folder recursively, sorted, skipping hidden entries (such as .btembed/) and
    files that are not regular (named pipes, devices); scan_folder also says what could not be listed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(folder, "not a folder")
    yield from scan_folder(folder, skip_hidden).files


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
        why = not_regular(os.stat(path).st_mode)
        if why:
            raise ImageError(path, why)
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
