"""A hostile photo folder: every kind of file and folder a real one may hold, good and bad, cheap to make.

Used by tests/test_faults.py (in CI) and bench/soak_index.py (not in CI).
"""
from __future__ import annotations

import os
import socket
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Hostile:
    """The folder, what in it is good (must be indexed), and what is made unreadable by lock()."""

    root: Path
    good: set = field(default_factory=set)  # relative paths (str, may hold surrogates) that must be indexed
    bad: dict = field(default_factory=dict)  # relative path -> a word its recorded error contains
    special: set = field(default_factory=set)  # named pipes and sockets: skipped, never opened
    locked_files: list = field(default_factory=list)  # chmod 0 by lock(): unreadable without root's override
    locked_dirs: list = field(default_factory=list)  # chmod 0 by lock(): cannot be listed
    _socket: socket.socket | None = None

    def lock(self) -> None:
        """Make the unreadable files and unlistable folders so (they stay readable to root's override)."""
        for p in self.locked_files + self.locked_dirs:
            os.chmod(p, 0)

    def unlock(self) -> None:
        """Give everything its permissions back (so the test can clean up)."""
        for p in self.locked_dirs:
            os.chmod(p, 0o755)
        for p in self.locked_files:
            os.chmod(p, 0o644)
        if self._socket is not None:
            self._socket.close()


def picture(seed: int, size=(48, 40)) -> np.ndarray:
    """A small RGB picture: a colour ramp with noise, different per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.random(3, dtype=np.float32)
    return np.clip(ramp + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def png_bomb(path: Path, width: int = 20_000, height: int = 10_000) -> None:
    """A valid PNG header claiming width x height (200 MP, over Pillow's 178 MP limit) in a few dozen bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def make_hostile(root: Path, per_class: int = 4) -> Hostile:
    """Create the folder: classes cats/ and dogs/ (good pictures in odd formats too), then every bad case."""
    h = Hostile(Path(root))
    raw_root = os.fsencode(h.root)

    def good(rel: str, image: Image.Image, **save) -> None:
        path = h.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **save)
        h.good.add(rel)

    for c, name in enumerate(("cats", "dogs")):
        for i in range(per_class):
            good(f"{name}/{i}.png", Image.fromarray(picture(100 * c + i)))
    good("cats/cmyk.jpg", Image.fromarray(picture(7)).convert("CMYK"), format="JPEG")
    good("dogs/16bit.png", Image.fromarray(picture(8)[..., 0].astype(np.uint16) * 257))
    palette = Image.fromarray(picture(9)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    good("dogs/palette-alpha.png", palette, transparency=0)
    frames = [Image.fromarray(picture(10 + i)) for i in range(3)]
    good("cats/animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=50)
    rotated = Image.fromarray(picture(13, (60, 30)))
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90° on display
    good("dogs/exif-rotated.jpg", rotated, exif=exif)
    good("cats/jpeg-as.png", Image.fromarray(picture(14)), format="JPEG")  # wrong extension, still readable
    good("cats/with space.png", Image.fromarray(picture(15)))
    good("dogs/new\nline.png", Image.fromarray(picture(16)))
    Image.fromarray(picture(17)).save(raw_root + b"/dogs/caf\xe9.png", format="PNG")  # not UTF-8
    h.good.add(os.fsdecode(b"dogs/caf\xe9.png"))

    data = (h.root / "cats/0.png").read_bytes()
    (h.root / "cats/truncated.png").write_bytes(data[: len(data) // 2])
    h.bad["cats/truncated.png"] = "truncated"
    (h.root / "cats/zero.jpg").write_bytes(b"")
    h.bad["cats/zero.jpg"] = "empty"
    (h.root / "dogs/text.jpg").write_text("a text file with an image name")
    h.bad["dogs/text.jpg"] = "not an image"
    png_bomb(h.root / "bomb.png")
    h.bad["bomb.png"] = "bomb"
    (h.root / "loop-a.jpg").symlink_to("loop-b.jpg")
    (h.root / "loop-b.jpg").symlink_to("loop-a.jpg")
    h.bad["loop-a.jpg"] = h.bad["loop-b.jpg"] = "loop"
    (h.root / "dangling.jpg").symlink_to("nowhere.jpg")
    h.bad["dangling.jpg"] = "broken symbolic link"
    (h.root / "dir-loop").mkdir()
    (h.root / "dir-loop" / "up").symlink_to("..")  # a folder loop: walked once
    os.mkfifo(h.root / "dogs/pipe.jpg")
    h.special.add("dogs/pipe.jpg")
    os.symlink("pipe.jpg", h.root / "dogs/link-to-pipe.png")
    h.special.add("dogs/link-to-pipe.png")
    h._socket = socket.socket(socket.AF_UNIX)
    try:
        h._socket.bind(str(h.root / "cats/socket.png"))
        h.special.add("cats/socket.png")
    except OSError:  # a path too long for a unix socket: the pipes still cover special files
        h._socket.close()
        h._socket = None

    good("cats/locked.png", Image.fromarray(picture(18)))  # readable when first indexed, then chmod 0
    h.locked_files.append(h.root / "cats/locked.png")
    for i in range(2):
        good(f"private/{i}.png", Image.fromarray(picture(30 + i)))  # indexed, then its folder is chmod 0
    h.locked_dirs.append(h.root / "private")
    return h
