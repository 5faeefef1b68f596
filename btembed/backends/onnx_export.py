"""ONNX export: uint8 NHWC → normalize → trunk → pool → L2 inside one graph, and its metadata (int8: int8.py).

This module defines the graph contract (input/output names, opset, export format) the onnx backend runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from ..config import ModelConfig
from ..errors import BtembedError
from ..modelfiles import WEIGHTS_FILE, read_onnx_metadata
from ..modelfolder import ModelFolder
from ..version import __version__

INPUT_NAME = "pixels"
OUTPUT_EMBEDDING, OUTPUT_FEATURES = "embedding", "features"
DEFAULT_OPSET = 18
# Bump when the exported graph changes shape or meaning, so cached exports are rebuilt rather than reused.
EXPORT_FORMAT = 1

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


read_metadata = read_onnx_metadata  # the metadata_props of an ONNX file, as a plain dict of strings


def _graph_module(encoder):
    """PixelEncoder with two outputs: the L2-normalized embedding and the raw pooled features."""
    import torch

    from ..model import PixelEncoder

    class ExportGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pixel_encoder = PixelEncoder(encoder, normalize=False)

        def forward(self, pixels):
            features = self.pixel_encoder(pixels)
            return torch.nn.functional.normalize(features, dim=1), features

    return ExportGraph().eval()


def save_atomic(model_proto, out: Path) -> Path:
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


def load_encoder(model, config: ModelConfig | None = None, revision: str | None = None):
    """(Encoder in eval mode, its config) from a ModelFolder, a name (resolved once here) or an in-memory Encoder."""
    from ..model import Encoder

    if isinstance(model, Encoder):
        return model.eval(), model.config
    # A ModelFolder is used as it is: the name was resolved once, upstream.
    folder = model if isinstance(model, ModelFolder) else ModelFolder.resolve(model, revision=revision)
    config = config or folder.config
    if not config.name:
        config.name = folder.path.name
    return Encoder.from_folder(folder.path, config), config


def export_onnx(model, out: str | Path, *, config: ModelConfig | None = None, revision: str | None = None,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export a model (ModelFolder, folder, registry name, hub id or Encoder) to one self-contained fp32 ONNX file."""
    import onnx
    import torch

    if opset < 17:
        raise ExportError(f"opset {opset} is too old; use 17 or newer")
    encoder, config = load_encoder(model, config, revision)
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
    return save_atomic(proto, Path(out))
