"""ONNX export: uint8 NHWC → normalize → trunk → pool → L2 inside one graph; metadata; parity; int8 (QDQ)."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .backends.onnx import (DEFAULT_OPSET, EXPORT_FORMAT, INPUT_NAME, OUTPUT_EMBEDDING, OUTPUT_FEATURES,
                            OnnxBackend)
from .config import ModelConfig
from .errors import BtembedError
from .hub import WEIGHTS_FILE, __version__, resolve_model
from .images import find_images
from .preprocess import load_pixels

# What a client must do before sending bytes; stored in the file so any language can reproduce it.
PIXEL_CONTRACT = ("RGB uint8 [N, input_size, input_size, 3] (NHWC): resize the shorter side to resize_size with "
                  "the given interpolation, then center-crop input_size x input_size (crop 'none': resize straight "
                  "to input_size x input_size); mean/std normalization happens inside the graph")


class ExportError(BtembedError):
    """An export that cannot be made as asked (bad calibration folder, failed check)."""


def onnx_metadata(config: ModelConfig, **extra) -> dict[str, str]:
    """metadata_props of an export: the model id, preprocessing (flat keys, JSON values) and provenance."""
    pre = config.preprocess
    meta = {
        "model_id": config.name, "architecture": config.architecture, "embedding_dim": config.embedding_dim,
        "input_name": INPUT_NAME, "input_layout": "NHWC", "input_dtype": "uint8", "color": "RGB",
        "input_size": pre.input_size, "resize_size": pre.resize_size, "interpolation": pre.interpolation,
        "crop": pre.crop, "mean": list(pre.mean), "std": list(pre.std), "preprocessing": PIXEL_CONTRACT,
        "outputs": f"{OUTPUT_EMBEDDING}: L2-normalized float32 [N, D]; {OUTPUT_FEATURES}: pooled trunk output",
        "weights_sha256": config.files.get(WEIGHTS_FILE, ""), "btembed_version": __version__,
        "export_format": EXPORT_FORMAT, "license": config.license,
    }
    meta.update(extra)
    # Strings stay bare; numbers and lists are JSON, so `json.loads` works on every non-string value.
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file, as a plain dict of strings."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _graph_module(encoder):
    """PixelEncoder with two outputs: the L2-normalized embedding and the raw pooled features."""
    import torch

    from .model import PixelEncoder

    class ExportGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pixel_encoder = PixelEncoder(encoder, normalize=False)

        def forward(self, pixels):
            features = self.pixel_encoder(pixels)
            return torch.nn.functional.normalize(features, dim=1), features

    return ExportGraph().eval()


def _save_atomic(model_proto, out: Path) -> Path:
    """Write an ONNX model to a temp file in out's folder, check it, then rename it into place."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        onnx.save_model(model_proto, tmp)
        onnx.checker.check_model(tmp, full_check=True)
        os.chmod(tmp, 0o644)  # mkstemp made it private; an ONNX file is meant to be served by other users too
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def check_output_path(out: Path) -> None:
    """Refuse an ONNX destination that cannot be written, before minutes of exporting."""
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give the ONNX file's path, e.g. {out / 'model.onnx'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the folder {out.parent} for {out.name} ({e.strerror or e})") from None
    if not os.access(out.parent, os.W_OK):
        raise ExportError(f"cannot write into {out.parent} (permission denied); choose another --onnx path")


def _load_encoder(model, config: ModelConfig | None, revision: str | None):
    """(Encoder in eval mode, its config) from a folder/registry name/hub id, or an in-memory Encoder."""
    from .model import Encoder

    if isinstance(model, Encoder):
        return model.eval(), model.config
    from .hub import load_state_dict

    folder = resolve_model(model, revision=revision)
    config = config or ModelConfig.load(folder)
    if not config.name:
        config.name = folder.name
    encoder = Encoder(config)
    encoder.trunk.load_state_dict(load_state_dict(folder, config))
    return encoder.eval(), config


def export_onnx(model, out: str | Path, *, config: ModelConfig | None = None, revision: str | None = None,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export a model (folder, registry name, hub id or Encoder) to one self-contained fp32 ONNX file."""
    import onnx
    import torch

    if opset < 17:
        raise ExportError(f"opset {opset} is too old; use 17 or newer")
    encoder, config = _load_encoder(model, config, revision)
    size = config.preprocess.input_size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    # The exporter prints progress on stdout; keep stdout clean for --json.
    with contextlib.redirect_stdout(sys.stderr), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            _graph_module(encoder), (example,), input_names=[INPUT_NAME],
            output_names=[OUTPUT_EMBEDDING, OUTPUT_FEATURES], opset_version=opset, dynamo=True,
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}}, external_data=False, verbose=False)
    proto = program.model_proto
    proto.producer_name, proto.producer_version = "btembed", __version__
    proto.doc_string = f"btembed image embeddings ({config.name}): {PIXEL_CONTRACT}"
    onnx.helper.set_model_props(proto, onnx_metadata(config, opset=opset))
    return _save_atomic(proto, Path(out))


def parity(onnx_path: str | Path, model, pixels: np.ndarray, *, config: ModelConfig | None = None) -> dict:
    """Compare an ONNX file with the fp32 torch graph on the same uint8 pixels: worst relative row difference."""
    import torch

    from .model import PixelEncoder

    encoder, config = _load_encoder(model, config, None)
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


def calibration_pixels(folder: str | Path, config: ModelConfig, max_images: int = 128) -> np.ndarray:
    """Up to max_images real images of a folder through btembed's preprocessing → uint8 [N, H, W, 3]."""
    from .errors import ImageError

    try:
        paths = list(find_images(folder))
    except ImageError as e:
        raise ExportError(f"calibration folder {folder} cannot be used ({e.cause}); pass a folder of images") from None
    if len(paths) > max_images:
        # Spread the picks over the whole folder, not just its first subfolder.
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, max_images).round().astype(int)]
    rows = []
    for path in paths:
        with contextlib.suppress(ImageError):
            rows.append(load_pixels(path, config.preprocess))
    if not rows:
        raise ExportError(f"calibration folder {folder} has no readable images; int8 needs real images "
                          "(a few dozen to a few hundred) like those you will embed")
    return np.stack(rows)


def _reader(pixels: np.ndarray, batch_size: int):
    """An onnxruntime CalibrationDataReader that feeds pixels batch by batch."""
    from onnxruntime.quantization import CalibrationDataReader

    class PixelReader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([pixels[i:i + batch_size] for i in range(0, len(pixels), batch_size)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return PixelReader()


def quantize_int8(fp32_path: str | Path, out: str | Path, calibration: str | Path | np.ndarray,
                  config: ModelConfig, *, max_images: int = 128, batch_size: int = 16) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on real images; metadata is carried over."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pixels = calibration if isinstance(calibration, np.ndarray) else calibration_pixels(
        calibration, config, max_images)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="btembed-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # Folds and infers shapes first, as onnxruntime recommends, so more nodes get quantized cleanly.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(prepared), str(quantized), _reader(pixels, batch_size), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                # Only the trunk: input normalization and the final L2 norm stay exact in fp32.
                op_types_to_quantize=["Conv", "Add", "MaxPool", "Relu", "Gemm", "MatMul"],
                calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(quantized))
        meta = read_metadata(fp32_path)
        meta.update({"quantization": "int8 static QDQ, uint8 activations, per-channel int8 weights",
                     "calibration_images": str(len(pixels))})
        onnx.helper.set_model_props(model, meta)
        model.producer_name = "btembed"
        return _save_atomic(model, out)


def export(model, out: str | Path, *, int8: bool = False, calibration: str | Path | None = None,
           revision: str | None = None, opset: int = DEFAULT_OPSET, max_images: int = 128) -> dict:
    """The `btembed export` job: fp32 (or int8) ONNX file + parity report, as a JSON-ready dict."""
    from .hub import sha256_file

    if int8 and calibration is None:
        raise ExportError("int8 export needs --calibration DIR: a folder of real images to calibrate on")
    out = Path(out)
    check_output_path(out)
    encoder, config = _load_encoder(model, None, revision)
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

