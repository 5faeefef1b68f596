"""JPEG decode + resize + crop as tensors on a torch device (nvjpeg on CUDA, libjpeg-turbo on CPU): the GPU input path.

The same code runs on CPU in tests. Files that are not plain upright JPEGs (PNG, CMYK, damaged, over the pixel
limit, EXIF-rotated) go through the Pillow path of btembed.preprocess instead, so errors and orientation read
exactly as elsewhere. The decoder is TorchCodec's (`pip install btembed[gpu]`) when installed, else torchvision's,
which torchvision deprecated in 0.29 in favour of TorchCodec.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .errors import ImageError
from .images import MAX_PIXELS
from .preprocess import PreprocessConfig, load_pixels

# TorchCodec is optional; when it is missing, or its native library fails to load, torchvision's decoder is used.
try:
    from torchcodec.decoders import decode_jpeg as _torchcodec_decode_jpeg
except (ImportError, OSError, RuntimeError):
    _torchcodec_decode_jpeg = None

_EXIF_ORIENTATION = 0x0112

_MODES = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
          "bicubic": InterpolationMode.BICUBIC}


def _plain_jpeg_bytes(path) -> bytes | None:
    """The file's bytes if it is a readable, upright JPEG within the pixel limit (header parsed, no decode), else None.

    The file is read once: Pillow parses the header from these bytes and the decoder gets the same bytes.
    """
    try:
        if not Path(path).is_file():  # a named pipe or device would block the read: Pillow's path refuses it
            return None
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            # TorchCodec does not apply EXIF orientation: rotated files go the Pillow path, which does.
            plain = image.format == "JPEG" and image.mode in ("RGB", "L") and \
                image.size[0] * image.size[1] <= MAX_PIXELS and image.getexif().get(_EXIF_ORIENTATION, 1) == 1
    except Exception:  # any unreadable file takes the Pillow path, which names the problem
        return None
    return data if plain else None


def decode_jpegs(blobs: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """JPEG file contents → uint8 [3, H, W] RGB tensors on the device, in one batch (nvjpeg batches on CUDA)."""
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    if _torchcodec_decode_jpeg is not None:
        return _torchcodec_decode_jpeg(data, mode="RGB", device=device)
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


class DeviceDecoder:
    """Items (paths, PIL images, arrays) → per-item uint8 [S, S, 3] tensors on the device, or an ImageError."""

    def __init__(self, cfg: PreprocessConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        # Filters a tensor resize cannot do exactly (lanczos, box, hamming) stay on the Pillow path.
        self.mode = _MODES.get(cfg.interpolation)

    def _resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] on the device → uint8 [S, S, 3], as btembed.preprocess.resize_and_crop does."""
        cfg = self.cfg
        if cfg.crop == "none":
            image = F.resize(image, [cfg.input_size, cfg.input_size], interpolation=self.mode, antialias=True)
        else:
            h, w = image.shape[-2:]
            # Pillow's rounding of the long side (int()), so crops line up with the Pillow path.
            size = [cfg.resize_size, int(cfg.resize_size * w / h)] if h <= w else \
                [int(cfg.resize_size * h / w), cfg.resize_size]
            if size != [h, w]:
                image = F.resize(image, size, interpolation=self.mode, antialias=True)
            image = F.center_crop(image, [cfg.input_size, cfg.input_size])
        return image.permute(1, 2, 0).contiguous()

    def __call__(self, items) -> list:
        """One entry per item, in order: a uint8 [S, S, 3] tensor on the device, or the ImageError."""
        out: list = [None] * len(items)
        blobs = {i: _plain_jpeg_bytes(it) for i, it in enumerate(items)
                 if self.mode is not None and isinstance(it, (str, os.PathLike))}
        jpeg = [i for i, data in blobs.items() if data is not None]
        if jpeg:
            try:
                images = decode_jpegs([blobs[i] for i in jpeg], self.device)
            except (RuntimeError, OSError):
                images = [None] * len(jpeg)  # one bad file fails the batch: fall back to Pillow for all of them
            for i, image in zip(jpeg, images):
                if image is not None:
                    out[i] = self._resize_crop(image)
        for i, item in enumerate(items):
            if out[i] is None:
                try:
                    out[i] = torch.from_numpy(load_pixels(item, self.cfg)).to(self.device)
                except ImageError as e:
                    out[i] = e
        return out

