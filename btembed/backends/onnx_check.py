"""The `btembed export` job: an ONNX export checked against the torch graph (parity) or fp32 (int8 agreement)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..modelfiles import sha256_file
from .onnx import OnnxBackend
from .onnx_export import (DEFAULT_OPSET, INPUT_NAME, OUTPUT_EMBEDDING, OUTPUT_FEATURES, ExportError,
                          calibration_pixels, check_output_path, export_onnx, load_encoder, quantize_int8)


def parity(onnx_path: str | Path, model, pixels: np.ndarray, *, config: ModelConfig | None = None) -> dict:
    """Compare an ONNX file with the fp32 torch graph on the same uint8 pixels: worst relative row difference."""
    import torch

    from ..model import PixelEncoder

    encoder, config = load_encoder(model, config)
    with torch.inference_mode():
        reference = PixelEncoder(encoder, normalize=True).eval()(torch.from_numpy(pixels)).numpy()
    got = OnnxBackend.from_file(onnx_path, config, device="cpu")(pixels)
    return compare(got, reference)


def compare(got: np.ndarray, reference: np.ndarray) -> dict:
    """Row-wise agreement of two embedding matrices: max relative L2 difference, max abs difference, min cosine."""
    rel = np.linalg.norm(got - reference, axis=1) / np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
    cos = np.sum(got * reference, axis=1) / np.maximum(
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1), 1e-12)
    return {"images": int(len(got)), "max_relative_diff": float(rel.max()),
            "max_abs_diff": float(np.abs(got - reference).max()), "min_cosine": float(cos.min())}


def export(model, out: str | Path, *, int8: bool = False, calibration: str | Path | None = None,
           revision: str | None = None, opset: int = DEFAULT_OPSET, max_images: int = 128) -> dict:
    """The `btembed export` job: fp32 (or int8) ONNX file + parity report, as a JSON-ready dict."""
    if int8 and calibration is None:
        raise ExportError("int8 export needs --calibration DIR: a folder of real images to calibrate on")
    out = Path(out)
    check_output_path(out)
    encoder, config = load_encoder(model, None, revision)
    size = config.preprocess.input_size
    check_pixels = (calibration_pixels(calibration, config, max_images) if calibration is not None else
                    np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8))
    report = {"model": config.name, "onnx": str(out), "opset": opset, "int8": int8,
              "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", size, size, 3]},
              "outputs": [OUTPUT_EMBEDDING, OUTPUT_FEATURES]}
    if not int8:
        export_onnx(encoder, out, config=config, opset=opset)
        report["parity_vs_torch"] = parity(out, encoder, check_pixels[:32], config=config)
    else:
        with tempfile.TemporaryDirectory(prefix="btembed-export-") as tmp:
            fp32 = export_onnx(encoder, Path(tmp) / "fp32.onnx", config=config, opset=opset)
            quantize_int8(fp32, out, check_pixels, config)
            report["calibration_images"] = int(len(check_pixels))
            got = OnnxBackend.from_file(out, config, device="cpu")(check_pixels)
            ref = OnnxBackend.from_file(fp32, config, device="cpu")(check_pixels)
            # Measured on the calibration images themselves: a sanity check, not a held-out score.
            report["agreement_vs_fp32"] = compare(got, ref)
    report["sha256"], report["bytes"] = sha256_file(out), out.stat().st_size
    return report

