"""Inference backends: one interface, uint8 NHWC batch → float32 vectors."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..config import ModelConfig
from ..errors import ModelError
from ..modelfolder import ModelFolder

BACKENDS = ("torch", "onnx")


class Backend(Protocol):
    """What every backend offers."""

    name: str
    device: str

    def __call__(self, pixels: np.ndarray, normalize: bool = True) -> np.ndarray:
        """uint8 [N, H, W, 3] → float32 [N, D]."""


def auto_backend(device: str, precision: str) -> str:
    """onnxruntime for fp32 on CPU (ResNet-50: ~2x torch channels_last fp32 at parity, docs/onnx.md); else torch."""
    import importlib.util
    import os

    if precision == "int8":
        return "onnx"  # int8 exists only as an ONNX file
    if precision != "fp32" or device not in ("auto", "cpu") or importlib.util.find_spec("onnxruntime") is None:
        return "torch"
    # With an NVIDIA GPU, 'auto' means that GPU, which torch serves (checked without importing torch).
    return "torch" if device == "auto" and os.path.exists("/dev/nvidiactl") else "onnx"


def load_backend(name: str, folder: ModelFolder | Path, config: ModelConfig | None = None, *, device: str = "auto",
                 precision: str = "fp32") -> Backend:
    """Instantiate a backend by name ('auto' picks the default for this machine) for a ModelFolder (or a path)."""
    if name == "auto":
        name = auto_backend(device, precision)
    if name == "torch":
        from .torch import TorchBackend

        return TorchBackend(folder, config, device=device, precision=precision)
    if name == "onnx":
        try:
            from .onnx import OnnxBackend
        except ImportError as e:
            raise ModelError(f"the onnx backend is not available ({e})") from None
        return OnnxBackend(folder, config, device=device, precision=precision)
    raise ModelError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
