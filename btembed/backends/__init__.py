"""Inference backends: one interface, uint8 NHWC batch → float32 vectors."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..config import ModelConfig
from ..errors import ModelError
from ..modelfolder import ModelFolder
from .precision import choose_precision, gpu_present

BACKENDS = ("torch", "onnx")


class Backend(Protocol):
    """What every backend offers."""

    name: str
    device: str
    precision: str

    def __call__(self, pixels: np.ndarray, normalize: bool = True) -> np.ndarray:
        """uint8 [N, H, W, 3] → float32 [N, D]."""


def auto_backend(device: str, precision: str) -> str:
    """onnxruntime for fp32/int8 on CPU (ResNet-50 fp32: ~2x torch channels_last fp32 at parity, docs/onnx.md);
    else torch."""
    import importlib.util

    if precision == "int8":
        return "onnx"  # int8 exists only as an ONNX file
    if precision != "fp32" or device not in ("auto", "cpu") or importlib.util.find_spec("onnxruntime") is None:
        return "torch"
    # With an NVIDIA GPU, 'auto' means that GPU, which torch serves (checked without importing torch).
    return "torch" if device == "auto" and gpu_present() else "onnx"


def load_backend(name: str, folder: ModelFolder | Path, config: ModelConfig | None = None, *, device: str = "auto",
                 precision: str = "auto") -> Backend:
    """Instantiate a backend by name ('auto' picks the default for this machine) for a ModelFolder (or a path);
    precision 'auto' is decided by choose_precision, and `backend.precision_choice` says what and why."""
    path = folder.path if isinstance(folder, ModelFolder) else Path(folder)
    choice = choose_precision(path, precision, device=device, backend=name)
    if name == "auto":
        name = auto_backend(device, choice.precision)
    if name == "torch":
        from .torch import TorchBackend

        backend = TorchBackend(folder, config, device=device, precision=choice.precision)
    elif name == "onnx":
        try:
            from .onnx import OnnxBackend
        except ImportError as e:
            raise ModelError(f"the onnx backend is not available ({e})") from None
        backend = OnnxBackend(folder, config, device=device, precision=choice.precision)
    else:
        raise ModelError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    backend.precision_choice = choice
    return backend
