"""The torch backend: channels_last, inference_mode, optional bf16 autocast, CUDA when present."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import ModelError
from ..model import Encoder, PixelEncoder
from ..modelfolder import ModelFolder

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ModelError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use device='cpu'")
    return dev


def autocast_context(device: torch.device, precision: str):
    """Autocast for bf16/fp16 on the device, or a no-op for fp32."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type == "cpu":
        raise ModelError("fp16 runs on GPUs only; use precision='bf16' on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


class TorchBackend:
    """Runs PixelEncoder in eval mode; pixels stay uint8 until they are on the device."""

    name = "torch"

    def __init__(self, folder: ModelFolder | Path, config: ModelConfig | None = None, *, device: str = "auto",
                 precision: str = "fp32"):
        if not isinstance(folder, ModelFolder):
            folder = ModelFolder.at(folder, config)
        self._wrap(folder.load_encoder() if config is None else Encoder.from_folder(folder.path, config),
                   device, precision)

    @classmethod
    def from_encoder(cls, encoder: Encoder, *, device: str = "auto", precision: str = "fp32") -> "TorchBackend":
        """Wrap an in-memory Encoder (e.g. during training) without a model folder."""
        self = cls.__new__(cls)
        self._wrap(encoder, device, precision)
        return self

    def _wrap(self, encoder: Encoder, device: str, precision: str) -> None:
        """One setup for both constructors: device, validated precision, eval-mode channels_last graph."""
        self.torch_device = pick_device(device)
        self.device = str(self.torch_device)
        self.precision = precision
        autocast_context(self.torch_device, precision)  # validate early
        model = PixelEncoder(encoder, normalize=False).eval().to(self.torch_device)
        self.model = model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray, normalize: bool = True) -> np.ndarray:
        """uint8 [N, H, W, 3] → float32 [N, D]."""
        # Tensors come already on the device from btembed.device_decode; arrays from the Pillow path.
        x = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(pixels))
        # The decode DataLoader pins batches when the device is CUDA, so this copy can overlap; on CPU a no-op.
        x = x.to(self.torch_device, non_blocking=True)
        with autocast_context(self.torch_device, self.precision):
            out = self.model(x).float()
        if normalize:
            out = torch.nn.functional.normalize(out, dim=1)
        return out.cpu().numpy()
