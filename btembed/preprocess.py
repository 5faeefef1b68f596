"""Preprocessing as data: PreprocessConfig, and image → uint8 HWC array at the model's input size."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image

from .images import as_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
INTERPOLATIONS = tuple(_RESAMPLE)  # the resize filters a model's config.json may name


@dataclass
class PreprocessConfig:
    """How an image becomes model input: resize the short side, center-crop, normalize with mean/std."""

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    crop: str = "center"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")
        if self.crop not in ("center", "none"):
            raise ValueError(f"crop must be 'center' or 'none', got {self.crop!r}")
        if self.resize_size < self.input_size:
            raise ValueError("resize_size must be at least input_size")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need three values (R, G, B)")

    @classmethod
    def from_dict(cls, d: dict | None) -> "PreprocessConfig":
        """Build from a config.json 'preprocess' mapping, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})

    def to_dict(self) -> dict:
        """A JSON-ready mapping (lists for mean/std)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def resize_and_crop(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Resize the short side to resize_size and center-crop input_size, as torchvision's Resize+CenterCrop do."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if cfg.crop == "none":
        new_w = new_h = cfg.input_size
    else:
        new_short, new_long = cfg.resize_size, int(cfg.resize_size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), _RESAMPLE[cfg.interpolation])
    size = cfg.input_size
    if (new_w, new_h) != (size, size):
        # torchvision rounds the offset the same way, so crops match pixel for pixel.
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    return np.array(image, dtype=np.uint8)  # writable, so torch.from_numpy does not warn


def load_pixels(item, cfg: PreprocessConfig) -> np.ndarray:
    """Any supported item (path, PIL image, uint8 array) → uint8 array [input_size, input_size, 3]."""
    return resize_and_crop(as_rgb(item, min_size=cfg.resize_size), cfg)
