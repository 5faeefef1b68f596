"""The onnxruntime backend: runs the exported graph (uint8 NHWC in, vectors out); imports torch only to export."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import ModelError
from ..modelfiles import INT8_FILE, ONNX_FILE, WEIGHTS_FILE, cache_dir, shared_location, verify_file
from ..modelfolder import ModelFolder
from .onnx_export import (DEFAULT_OPSET, EXPORT_FORMAT, INPUT_NAME, OUTPUT_EMBEDDING,  # noqa: F401
                          OUTPUT_FEATURES)
# Fastest first; onnxruntime skips providers it does not have, but we filter so `device` reports the truth.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pick_providers(device: str, available) -> list:
    """Execution providers for a device string: 'auto' takes TensorRT/CUDA when installed, 'cpu' never does."""
    available = list(available)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        gpu = [p for p in GPU_PROVIDERS if p in available]
        return gpu + ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise ModelError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
        gpu = [p for p in GPU_PROVIDERS if p in available]
        if not gpu:
            raise ModelError(f"device {device!r} asked for, but onnxruntime has no CUDA execution provider here "
                             "(install onnxruntime-gpu); use device='cpu'")
        return [(p, {"device_id": int(index)}) for p in gpu] + ["CPUExecutionProvider"]
    raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def make_session(path: str | Path, device: str = "auto", threads: int | None = None):
    """An onnxruntime InferenceSession with all graph optimizations and one intra-op thread per core."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or available_cores()
    providers = pick_providers(device, ort.get_available_providers())
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable or invalid files
        raise ModelError(f"{path} cannot be loaded by onnxruntime ({e}); delete it so it is exported again") from None


def export_key(config: ModelConfig, opset: int = DEFAULT_OPSET) -> str:
    """Cache key of an export: weights hash + everything that shapes the graph."""
    weights = config.files.get(WEIGHTS_FILE)
    if not weights:
        raise ModelError(f"config.json records no sha256 for {WEIGHTS_FILE}; re-save the folder with btembed")
    spec = {"weights": weights, "architecture": config.architecture, "preprocess": config.preprocess.to_dict(),
            "opset": opset, "format": EXPORT_FORMAT}
    return weights[:16] + "-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def user_cache_dir() -> Path:
    """$BTEMBED_CACHE/onnx, else $XDG_CACHE_HOME/btembed/onnx, else ~/.cache/btembed/onnx."""
    return cache_dir() / "onnx"


def _writable(folder: Path) -> bool:
    """Whether a cache folder can be created and written (tried for real: read-only mounts fool os.access)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def cache_candidates(folder: Path, config: ModelConfig) -> list[Path]:
    """Where a cached export may live, preferred first: next to the model, then the user cache."""
    name = f"{export_key(config)}.onnx"
    # Never next to a shared copy (HF cache snapshot, embedded or installed package), even when writable.
    local = [] if shared_location(folder) else [folder / ".onnx-cache" / name]
    return local + [user_cache_dir() / name]


def cached_export(folder: Path, config: ModelConfig) -> Path:
    """The path of this model's fp32 ONNX export, exporting it once (atomically) when no cache has it."""
    # The cache is keyed on the recorded hash, so check the weights really are those (as the torch backend does).
    verify_file(folder, config, WEIGHTS_FILE)
    candidates = cache_candidates(folder, config)
    for path in candidates:
        if path.is_file():
            return path
    for path in candidates:
        if _writable(path.parent):
            from .onnx_export import export_onnx  # imports torch: only on a cache miss

            return export_onnx(ModelFolder.at(folder, config), path)
    raise ModelError(f"no writable place for the ONNX export of {folder}: tried "
                     f"{', '.join(str(p.parent) for p in candidates)}; set BTEMBED_CACHE to a writable folder")


def onnx_file(folder: Path, config: ModelConfig, precision: str = "fp32") -> Path:
    """The ONNX file to run: the folder's own (sha256-checked when recorded) or a cached export."""
    if precision == "int8":
        if not (folder / INT8_FILE).is_file():
            # The package's own folder (the embedded default) or a hub cache snapshot is no place to write into.
            where = (f"make one with `btembed export {folder} --onnx {folder / INT8_FILE} --int8 --calibration "
                     "IMAGES`" if shared_location(folder) is None and os.access(folder, os.W_OK) else
                     f"copy the model folder somewhere of yours (cp -r {folder} MODEL), make one with `btembed "
                     f"export MODEL --onnx MODEL/{INT8_FILE} --int8 --calibration IMAGES` and use --model MODEL")
            raise ModelError(f"{folder} has no {INT8_FILE}; {where}, or use precision='fp32'")
        return verify_file(folder, config, INT8_FILE) if INT8_FILE in config.files else folder / INT8_FILE
    if precision != "fp32":
        raise ModelError(f"the onnx backend runs fp32 or int8, not {precision!r}; use backend='torch' for "
                         "bf16/fp16")
    if (folder / ONNX_FILE).is_file():
        return verify_file(folder, config, ONNX_FILE) if ONNX_FILE in config.files else folder / ONNX_FILE
    return cached_export(folder, config)


def export_mismatch(session, config: ModelConfig, vouched: bool) -> str | None:
    """Why a loaded ONNX file is not known to be an export of config's weights, or None when it is.

    vouched: config.json records (and verify_file checked) the file's own sha256, which stands in for missing
    metadata. The stamp is read from the session so the (large) proto is not parsed twice.
    """
    stamped = session.get_modelmeta().custom_metadata_map.get("weights_sha256")
    weights = config.files.get(WEIGHTS_FILE)
    if stamped and weights:
        return None if stamped == weights else (
            f"was exported from other weights (sha256 {stamped[:12]}…) than the folder's {WEIGHTS_FILE} "
            f"({weights[:12]}…)")
    if vouched:
        return None
    if stamped:
        return f"cannot be checked: config.json records no sha256 for {WEIGHTS_FILE} nor for the file itself"
    return ("does not say which weights it was exported from (no weights_sha256 in its metadata) and config.json "
            "records no sha256 for it")


def checked_session(folder: Path, config: ModelConfig, precision: str = "fp32", device: str = "auto"):
    """(path, session) of the ONNX file to run for a model folder, checked to be an export of its weights."""
    path = onnx_file(folder, config, precision)
    session = make_session(path, device)
    problem = export_mismatch(session, config, vouched=path.parent == folder and path.name in config.files)
    if problem is None:
        return path, session
    if path.parent == folder:
        # The folder's own file was put there by someone: replacing or ignoring it would hide their mistake.
        again = " --int8 --calibration IMAGES" if path.name == INT8_FILE else ""
        raise ModelError(f"{path} {problem}; export it again with `btembed export {folder} --onnx {path}{again}` "
                         "or delete it")
    # A cache entry is ours to rebuild (copied in from elsewhere, or left by an export without metadata).
    del session  # release the file before it is replaced (Windows refuses to replace an open file)
    if not _writable(path.parent):
        raise ModelError(f"the cached ONNX export {path} {problem}, and its folder is not writable; delete it "
                         "or set BTEMBED_CACHE to a writable folder")
    from .onnx_export import export_onnx  # imports torch: only when the cache entry is rebuilt

    path = export_onnx(ModelFolder.at(folder, config), path)
    return path, make_session(path, device)


class OnnxBackend:
    """Runs the exported graph with onnxruntime; the same interface as TorchBackend."""

    name = "onnx"

    def __init__(self, folder: ModelFolder | Path, config: ModelConfig | None = None, *, device: str = "auto",
                 precision: str = "fp32", path: str | Path | None = None):
        if isinstance(folder, ModelFolder):
            folder, config = folder.path, config or folder.config
        config = config or ModelConfig.load(folder)
        self.config, self.precision = config, precision
        if path:  # a file named by the caller (a fresh export, a parity check) runs as given
            self.path, self.session = Path(path), make_session(path, device)
        else:
            self.path, self.session = checked_session(Path(folder), config, precision, device)
        used = self.session.get_providers()[0]
        gpu_id = next((o.get("device_id", "0") for p, o in self.session.get_provider_options().items()
                       if p in GPU_PROVIDERS), "0")
        self.device = f"cuda:{gpu_id}" if used in GPU_PROVIDERS else "cpu"
        self.providers = self.session.get_providers()
        self.input_size = config.preprocess.input_size

    @classmethod
    def from_file(cls, path: str | Path, config: ModelConfig, *, device: str = "auto") -> "OnnxBackend":
        """Run a given .onnx file (e.g. a fresh export) with the same interface."""
        return cls(Path(path).parent, config, device=device, path=path)

    def __call__(self, pixels: np.ndarray, normalize: bool = True) -> np.ndarray:
        """uint8 [N, H, W, 3] → float32 [N, D]."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        size = self.input_size
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 pixels [N, {size}, {size}, 3], got shape {pixels.shape}")
        output = OUTPUT_EMBEDDING if normalize else OUTPUT_FEATURES
        if len(pixels) == 0:
            return np.zeros((0, self.config.embedding_dim), dtype=np.float32)
        return self.session.run([output], {INPUT_NAME: pixels})[0].astype(np.float32, copy=False)
