"""The `btembed export` job: an ONNX export checked against the torch graph, or an int8 one measured against fp32
on held-apart images and recorded (parity.py)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..modelfiles import sha256_file
from .int8 import (CALIBRATION_METHODS, MIN_IMAGES, Quantizer, embed_with, folder_pixels, folder_sample, hold_apart,
                   search, write_int8)
from .onnx import OnnxBackend
from .onnx_export import (DEFAULT_OPSET, INPUT_NAME, OUTPUT_EMBEDDING, OUTPUT_FEATURES, ExportError,
                          check_output_path, export_onnx, load_encoder)
from .parity import agreement, new_record, write_record

# Images read from --calibration for int8: a quarter held apart for parity, the rest to calibrate and search on.
DEFAULT_MAX_IMAGES = 400


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
           revision: str | None = None, opset: int = DEFAULT_OPSET, max_images: int = DEFAULT_MAX_IMAGES,
           methods=CALIBRATION_METHODS, sweep: str = "auto", max_kept: int | None = None, say=None) -> dict:
    """The `btembed export` job: fp32 (or int8) ONNX file + parity report, as a JSON-ready dict."""
    if int8 and calibration is None:
        raise ExportError("int8 export needs --calibration DIR: a folder of real images to calibrate on")
    out = Path(out)
    check_output_path(out)
    encoder, config = load_encoder(model, None, revision)
    size = config.preprocess.input_size
    report = {"model": config.name, "onnx": str(out), "opset": opset, "int8": int8,
              "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", size, size, 3]},
              "outputs": [OUTPUT_EMBEDDING, OUTPUT_FEATURES]}
    if not int8:
        check_pixels = (folder_pixels(calibration, config, 32) if calibration is not None else
                        np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8))
        export_onnx(encoder, out, config=config, opset=opset)
        report["parity_vs_torch"] = parity(out, encoder, check_pixels, config=config)
    else:
        pixels, kinds = folder_sample(calibration, config, max_images, MIN_IMAGES)
        with tempfile.TemporaryDirectory(prefix="btembed-export-") as tmp:
            fp32 = export_onnx(encoder, Path(tmp) / "fp32.onnx", config=config, opset=opset)
            report.update(export_int8(fp32, out, pixels, config, Path(tmp), methods=methods, sweep=sweep,
                                      max_kept=max_kept, kinds=kinds, say=say))
    report["sha256"], report["bytes"] = sha256_file(out), out.stat().st_size
    return report


def export_int8(fp32: Path, out: Path, pixels: np.ndarray, config: ModelConfig, workdir: Path, *,
                methods=CALIBRATION_METHODS, sweep: str = "auto", max_kept: int | None = None,
                kinds: np.ndarray | None = None, say=None) -> dict:
    """Quantize with the search of int8.py on 3/4 of the images (kinds: each image's subfolder), measure parity on
    the quarter held apart, and record it for the written file -> the int8 part of the report."""
    say = say or (lambda _m: None)
    calibrate, held = hold_apart(len(pixels))
    quantizer = Quantizer(fp32, workdir, pixels[calibrate], config)
    choice = search(quantizer, embed_with(fp32, config, pixels[calibrate]), methods=methods, level=sweep,
                    max_kept=max_kept, gallery=len(held), kinds=None if kinds is None else kinds[calibrate], say=say)
    write_int8(quantizer, choice, out, len(calibrate))
    figures = agreement(embed_with(out, config, pixels[held]), embed_with(fp32, config, pixels[held]))
    record = new_record(out, figures, calibration_images=int(len(calibrate)), calibration_method=choice.method,
                        kept_fp32=choice.kept_units)
    where = write_record(record, out)
    return {"calibration_images": int(len(calibrate)), "held_apart_images": int(len(held)),
            "quantization": choice.to_dict(), "parity_vs_fp32": figures, "parity_record": str(where),
            "runtime": record.runtime.describe(), "passes_bar": record.passes()}
