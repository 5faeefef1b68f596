"""Safe image loading: odd modes become RGB, bad files raise ImageError naming the file and the cause."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from btembed import images
from btembed.errors import ImageError
from btembed.images import as_rgb, find_images, open_image
from btembed.preprocess import PreprocessConfig, load_pixels

from conftest import skimage_photos


@pytest.fixture(scope="module")
def astronaut():
    return skimage_photos()["astronaut"]


def test_cmyk_16bit_palette_gif_and_alpha_become_rgb(tmp_path, astronaut):
    Image.fromarray(astronaut).convert("CMYK").save(tmp_path / "cmyk.jpg")
    grey16 = (astronaut[..., 0].astype(np.uint16) * 257)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.gif")
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 0, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "transparent.png")
    frames = [Image.fromarray(astronaut), Image.fromarray(255 - astronaut)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    for name in ("cmyk.jpg", "grey16.png", "palette.gif", "transparent.png", "anim.gif"):
        image = open_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (512, 512), name
    # 16-bit is rescaled, not clipped at 255: it must match the 8-bit source closely.
    grey = np.asarray(open_image(tmp_path / "grey16.png"))[..., 0].astype(int)
    assert np.abs(grey - astronaut[..., 0]).max() <= 1
    # Fully transparent pixels are composited on white.
    assert np.asarray(open_image(tmp_path / "transparent.png")).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = open_image(tmp_path / "rotated.jpg")
    assert image.size == (20, 40)
    top = np.asarray(image)[:20].mean()
    assert top > 200  # the white half ends up on top after the rotation


@pytest.mark.parametrize("name, content, cause", [
    ("empty.jpg", b"", "empty file"),
    ("text.jpg", b"this is not a picture, just some text\n" * 10, "not an image"),
])
def test_bad_bytes_raise_image_error_naming_the_file(tmp_path, name, content, cause):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / name)
    assert name in str(info.value) and cause in str(info.value)


def test_truncated_jpeg_raises(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg.*truncated"):
        open_image(tmp_path / "cut.jpg")


def test_missing_file_and_broken_symlink(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "nope.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    with pytest.raises(ImageError, match="link.jpg"):
        open_image(tmp_path / "link.jpg")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(tmp_path / "big.png")


def test_pixel_limit_is_max_pixels_not_pillows_lower_default(tmp_path):
    # A 100 MP photo (medium-format cameras make them) is under MAX_PIXELS but over Pillow's ~89 MP warning level.
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header_only = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0))
    (tmp_path / "100mp.png").write_bytes(header_only + chunk(b"IEND", b""))
    assert 10_000 * 10_000 < images.MAX_PIXELS
    with pytest.raises(ImageError) as caught:  # the pixel data is missing, so it still fails, but not as a bomb
        open_image(tmp_path / "100mp.png")
    assert "bomb" not in caught.value.cause


def test_draft_mode_decodes_large_jpeg_at_reduced_scale_but_not_below_target(tmp_path, astronaut):
    big = Image.fromarray(astronaut).resize((2048, 1536))
    big.save(tmp_path / "big.jpg", quality=90)
    small = open_image(tmp_path / "big.jpg", min_size=256)
    assert min(small.size) >= 256 and small.size[0] < 2048
    full = open_image(tmp_path / "big.jpg")
    assert full.size == (2048, 1536)


def test_preprocess_matches_torchvision_resize_and_center_crop(astronaut):
    pytest.importorskip("torch")
    from torchvision.transforms import v2

    cfg = PreprocessConfig(input_size=96, resize_size=110, interpolation="bicubic")
    image = Image.fromarray(astronaut).crop((0, 0, 512, 300))
    ours = load_pixels(image, cfg)
    theirs = v2.Compose([v2.Resize(110, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(96)])(image)
    assert ours.shape == (96, 96, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, np.asarray(theirs))


def test_arrays_and_find_images(tmp_path, astronaut):
    assert as_rgb(astronaut[..., 0]).mode == "RGB"
    with pytest.raises(ImageError, match="uint8"):
        as_rgb(astronaut.astype(np.float32))
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "a" / "x.png")
    Image.fromarray(astronaut).save(tmp_path / ".hidden" / "y.png")
    (tmp_path / "notes.txt").write_text("hi")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a symlink loop must not hang the walk
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a/x.png"]
