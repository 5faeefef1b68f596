"""Which precision runs: `precision="auto"` takes int8 on a CPU only where a parity record vouches for that very
int8 file under this onnxruntime and this kind of CPU; fp32 otherwise. Decided without importing torch."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..modelfiles import INT8_FILE, sha256_file
from .parity import PARITY_BAR, Runtime, find_record

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a model runs at, and why (one sentence for `btembed info` and the index report)."""

    precision: str
    reason: str


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible (checked without importing torch)."""
    return os.path.exists("/dev/nvidiactl")


def choose_precision(folder: str | Path, precision: str = "auto", *, device: str = "auto",
                     backend: str = "auto") -> PrecisionChoice:
    """The precision to run a model folder at: a forced one as given, 'auto' decided by the folder's parity record."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return PrecisionChoice(precision, f"asked for ({precision})")
    if backend == "torch":
        return PrecisionChoice("fp32", "the torch backend runs fp32 by default (int8 is an onnxruntime file)")
    if device not in ("auto", "cpu") or (device == "auto" and gpu_present()):
        return PrecisionChoice("fp32", "a GPU runs fp32 (int8 is chosen on CPUs only)")
    if importlib.util.find_spec("onnxruntime") is None:
        return PrecisionChoice("fp32", "onnxruntime is not installed, and int8 needs it")
    return int8_verdict(Path(folder))


def int8_verdict(folder: Path) -> PrecisionChoice:
    """int8 when the folder's model.int8.onnx has a passing parity record for this runtime, else fp32 and why."""
    path = folder / INT8_FILE
    if not path.is_file():
        return PrecisionChoice("fp32", f"the model has no {INT8_FILE} (make one with `btembed export MODEL --onnx "
                                       f"MODEL/{INT8_FILE} --int8 --calibration IMAGES`)")
    here = Runtime.here()
    record = find_record(path, sha256_file(path), here)
    if record is None:
        return PrecisionChoice("fp32", f"no parity record for its {INT8_FILE} under {here.describe()} (export it "
                                       "again with --int8 --calibration IMAGES to measure one)")
    if not record.passes():
        bar = ", ".join(f"{k.replace('_at_', '@')} ≥ {v}" for k, v in PARITY_BAR.items())
        return PrecisionChoice("fp32", f"its {INT8_FILE} measured {record.figures()} under {here.describe()}: "
                                       f"below the bar ({bar})")
    return PrecisionChoice("int8", f"its {INT8_FILE} measured {record.figures()} under {here.describe()}")
