"""int8 that keeps the neighbours: onnxruntime static quantization (QDQ, per-channel int8 weights, uint8
activations), the calibration method chosen by measurement, and the parts of the trunk that a sensitivity sweep
finds most damaging kept in fp32.

Everything is measured against the fp32 graph on the calibration images (`recall@10` within the set, then mean
cosine); the export then measures the result once more on images held apart from all of this (parity.py).
"""
from __future__ import annotations

import contextlib
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import ModelConfig
from ..errors import ImageError
from ..images import find_images
from ..preprocess import load_pixels
from .onnx_export import INPUT_NAME, ExportError, read_metadata, save_atomic
from .parity import PARITY_BAR, agreement, cpu_has_vnni

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
# Parity needs enough images for neighbours to mean something: at least 200, one in four held apart.
MIN_IMAGES = 200
HOLD_APART = 4
# Only the trunk's float ops; input normalization and the L2 norm stay exact in fp32.
OP_TYPES = ["Conv", "Add", "MaxPool", "Relu", "Gemm", "MatMul"]
# Granularities of the sensitivity sweep, coarse to fine (a ResNet-50 has 5 stages, 17 blocks, 53 convolutions).
SWEEP_LEVELS = ("stage", "block", "layer")
# Per calibration method: onnxruntime calibrator options. Activations after ReLU are never negative, so symmetric
# ranges (Percentile's default) would waste half of the uint8 levels.
CALIBRATOR_OPTIONS = {"MinMax": {}, "Entropy": {"symmetric": False},
                      "Percentile": {"symmetric": False, "percentile": 99.999, "num_bins": 2048}}
# What the search aims for on the calibration images: above the bar, so held-apart images clear it too.
SEARCH_MARGIN = 0.002
# sweep level "auto" takes the finest level with at most this many units (ResNet-18: blocks; ResNet-50: stages).
MAX_AUTO_UNITS = 10
TRUNK = re.compile(r"encoder\.trunk\.(layer\d+)(?:\.(\d+))?(?:\.([a-z_]+\d*))?")


@dataclass
class Trial:
    """One quantized variant and how it agreed with fp32 on the calibration images."""

    method: str
    kept_fp32: tuple  # sweep units left in fp32
    recall_at_10: float
    mean_cosine: float
    seconds: float

    def score(self) -> tuple:
        return self.recall_at_10, self.mean_cosine

    def meets(self, margin: float = SEARCH_MARGIN) -> bool:
        return (self.recall_at_10 >= PARITY_BAR["recall_at_10"] + margin
                and self.mean_cosine >= PARITY_BAR["mean_cosine"] + margin)


@dataclass
class Int8Choice:
    """What the search settled on, and every trial that led there."""

    method: str
    kept_units: list
    kept_nodes: list
    level: str
    reduce_range: bool
    trials: list = field(default_factory=list)
    sensitivity: dict = field(default_factory=dict)  # unit -> recall@10 gained by keeping it alone in fp32

    def to_dict(self) -> dict:
        return {"method": self.method, "kept_fp32": self.kept_units, "kept_fp32_nodes": len(self.kept_nodes),
                "sweep_level": self.level, "reduce_range": self.reduce_range,
                "sensitivity": {k: round(v, 4) for k, v in self.sensitivity.items()},
                "trials": [{"method": t.method, "kept_fp32": list(t.kept_fp32),
                            "recall_at_10": round(t.recall_at_10, 4), "mean_cosine": round(t.mean_cosine, 5),
                            "seconds": round(t.seconds, 1)} for t in self.trials]}


def unit_of(namespace: str, level: str) -> str | None:
    """The sweep unit (stem, layer2, layer2.1, layer2.1.conv1 ...) of a node's torch module path, None outside the
    trunk."""
    if "encoder.trunk" not in namespace:
        return None
    found = TRUNK.findall(namespace)
    if not found:
        return "stem"
    stage, block, part = found[-1]
    if level == "stage" or not block:
        return stage
    return f"{stage}.{block}" if level == "block" or not part else f"{stage}.{block}.{part}"


def sweep_units(model, level: str) -> dict[str, list[str]]:
    """unit -> names of its quantizable nodes, in graph order (from the exporter's module-path metadata)."""
    units: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in OP_TYPES:
            continue
        namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        unit = unit_of(namespace, level) if namespace else f"{node.op_type}:{node.name}"
        if unit is not None:
            units.setdefault(unit, []).append(node.name)
    return units


def outside_trunk(model) -> list[str]:
    """Quantizable nodes outside the trunk (the input normalization): always left in fp32."""
    names = []
    for node in model.graph.node:
        namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), None)
        if node.op_type in OP_TYPES and namespace is not None and "encoder.trunk" not in namespace:
            names.append(node.name)
    return names


def _reader(pixels: np.ndarray):
    """An onnxruntime CalibrationDataReader over one batch of pixels."""
    from onnxruntime.quantization import CalibrationDataReader

    class PixelReader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([pixels])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return PixelReader()


class Quantizer:
    """One fp32 graph, prepared once and calibrated once per method, then quantized as often as the search asks."""

    def __init__(self, fp32_path: str | Path, workdir: str | Path, pixels: np.ndarray, config: ModelConfig,
                 batch_size: int = 16, reduce_range: bool | None = None):
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.fp32_path, self.workdir, self.pixels = Path(fp32_path), Path(workdir), pixels
        self.config, self.batch_size = config, batch_size
        # onnxruntime's advice: 7-bit weights where u8 x s8 products can saturate (CPUs without VNNI).
        self.reduce_range = (not cpu_has_vnni()) if reduce_range is None else reduce_range
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepared = self.workdir / "prepared.onnx"
        # Folds and infers shapes first, as onnxruntime recommends, so more nodes get quantized cleanly.
        with contextlib.redirect_stdout(sys.stderr):
            quant_pre_process(str(self.fp32_path), str(self.prepared), skip_symbolic_shape=True)
        self.model = onnx.load(str(self.fp32_path))  # the prepared file loses the exporter's node metadata
        prepared_names = {n.name for n in onnx.load(str(self.prepared)).graph.node}
        self.always_fp32 = [n for n in outside_trunk(self.model) if n in prepared_names]
        self.prepared_names = prepared_names
        self.ranges: dict[str, Path] = {}

    def units(self, level: str) -> dict[str, list[str]]:
        """Sweep units of the graph at a level (only nodes the prepared graph still has)."""
        units = {u: [n for n in nodes if n in self.prepared_names]
                 for u, nodes in sweep_units(self.model, level).items()}
        return {u: nodes for u, nodes in units.items() if nodes}

    def calibrate(self, method: str) -> Path:
        """Activation ranges by one calibration method, collected batch by batch (bounded memory), cached."""
        if method in self.ranges:
            return self.ranges[method]
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

        with tempfile.TemporaryDirectory(prefix="calibrate-", dir=self.workdir) as tmp, \
                contextlib.redirect_stdout(sys.stderr):
            calibrator = create_calibrator(self.prepared, OP_TYPES, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                           calibrate_method=CalibrationMethod[method],
                                           extra_options=CALIBRATOR_OPTIONS[method])
            for start in range(0, len(self.pixels), self.batch_size):
                calibrator.collect_data(_reader(self.pixels[start:start + self.batch_size]))
            ranges = calibrator.compute_data()
            del calibrator
        path = self.workdir / f"ranges-{method}.json"
        save_tensors_data(ranges, path)
        self.ranges[method] = path
        return path

    def quantize(self, method: str, kept_nodes: list[str], out: str | Path) -> Path:
        """Write the int8 graph for a calibration method with the given nodes left in fp32."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(str(self.prepared), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=self.reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=OP_TYPES,
                            nodes_to_exclude=[*self.always_fp32, *kept_nodes],
                            calibrate_method=CalibrationMethod[method],
                            calibration_cache_path=str(self.calibrate(method)))
        return Path(out)


def embed_with(path: str | Path, config: ModelConfig, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Unit vectors of pixels through an ONNX file (CPU)."""
    from .onnx import OnnxBackend

    backend = OnnxBackend.from_file(path, config, device="cpu")
    return np.concatenate([backend(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)])


def sweep_level(quantizer: Quantizer, level: str = "auto") -> str:
    """The sweep level asked for; 'auto' = the finest level with at most MAX_AUTO_UNITS units (cheap enough)."""
    if level == "auto":
        return next((lv for lv in reversed(SWEEP_LEVELS) if len(quantizer.units(lv)) <= MAX_AUTO_UNITS), "stage")
    if level not in SWEEP_LEVELS:
        raise ExportError(f"unknown sweep level {level!r}; choose from auto, {', '.join(SWEEP_LEVELS)}")
    return level


def search(quantizer: Quantizer, reference: np.ndarray, *, methods=CALIBRATION_METHODS, level: str = "auto",
           max_kept: int | None = None, say: Callable[[str], None] = lambda _m: None) -> Int8Choice:
    """Choose the calibration method by measurement, then keep in fp32, one unit at a time, the unit whose int8
    hurts the neighbours most given those already kept (greedy forward selection), until the agreement clears the
    bar with a margin or max_kept units (default: half of them) are kept."""
    unknown = [m for m in methods if m not in CALIBRATION_METHODS]
    if unknown or not methods:
        raise ExportError(f"unknown calibration method {', '.join(unknown) or '(none)'}; choose from "
                          f"{', '.join(CALIBRATION_METHODS)}")
    level = sweep_level(quantizer, level)
    units = quantizer.units(level)
    max_kept = len(units) // 2 if max_kept is None else max_kept
    trials: list[Trial] = []

    def trial(method: str, kept: tuple) -> Trial:
        t0 = time.perf_counter()
        out = quantizer.workdir / "trial.onnx"
        quantizer.quantize(method, [n for u in kept for n in units[u]], out)
        figures = agreement(embed_with(out, quantizer.config, quantizer.pixels), reference)
        done = Trial(method, kept, figures["recall_at_10"], figures["mean_cosine"], time.perf_counter() - t0)
        trials.append(done)
        say(f"  {method:10} fp32 kept: {', '.join(kept) or '-':40} recall@10 {done.recall_at_10:.4f}  "
            f"mean cosine {done.mean_cosine:.5f}")
        return done

    say(f"calibration methods on {len(quantizer.pixels)} images")
    best = max((trial(m, ()) for m in methods), key=Trial.score)
    method, step_best = best.method, best
    sensitivity: dict[str, float] = {}
    if not best.meets() and max_kept > 0:
        say(f"sensitivity sweep ({level} level, {len(units)} units, {method} calibration)")
    # Errors made early are carried through every later layer, so a unit's worth depends on what is already kept:
    # each round measures every remaining unit on top of the kept ones.
    while not step_best.meets() and len(step_best.kept_fp32) < max_kept:
        kept = step_best.kept_fp32
        round_ = [trial(method, (*kept, u)) for u in units if u not in kept]
        if not sensitivity:
            sensitivity = {t.kept_fp32[-1]: t.recall_at_10 - best.recall_at_10 for t in round_}
        step_best = max(round_, key=Trial.score)
        if step_best.score() <= best.score():
            break  # no unit helps any more: keeping more in fp32 would only cost speed
        best = step_best
    kept_units = list(best.kept_fp32)
    return Int8Choice(method, kept_units, [n for u in kept_units for n in units[u]], level, quantizer.reduce_range,
                      trials, sensitivity)


def write_int8(quantizer: Quantizer, choice: Int8Choice, out: str | Path, calibration_images: int) -> Path:
    """The chosen int8 graph, written atomically with the fp32 file's metadata and how it was quantized."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="int8-", dir=quantizer.workdir) as tmp:
        quantized = quantizer.quantize(choice.method, choice.kept_nodes, Path(tmp) / "int8.onnx")
        model = onnx.load(str(quantized))
    meta = read_metadata(quantizer.fp32_path)
    meta.update({"quantization": "int8 static QDQ, uint8 activations, per-channel int8 weights"
                                 + (", 7-bit weights (reduce_range)" if choice.reduce_range else ""),
                 "calibration_images": str(calibration_images), "calibration_method": choice.method,
                 "kept_fp32": ",".join(choice.kept_units)})
    onnx.helper.set_model_props(model, meta)
    model.producer_name = "btembed"
    return save_atomic(model, Path(out))


def folder_pixels(folder: str | Path, config: ModelConfig, max_images: int, min_images: int = 1) -> np.ndarray:
    """Up to max_images images of a folder, spread over all of it, through btembed's preprocessing -> uint8 NHWC."""
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
    if len(rows) < min_images:
        raise ExportError(f"calibration folder {folder} has {len(rows)} readable images; int8 needs at least "
                          f"{min_images} real images like those you will embed (a quarter is held apart to "
                          "measure parity)")
    return np.stack(rows)


def hold_apart(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-apart) indices of n images: a seeded quarter held apart, the rest to calibrate on."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n // HOLD_APART:]), np.sort(order[:n // HOLD_APART])


def quantize_int8(fp32_path: str | Path, out: str | Path, calibration: str | Path | np.ndarray,
                  config: ModelConfig, *, method: str = "MinMax", max_images: int = 128,
                  batch_size: int = 16) -> Path:
    """Plain static int8 (one calibration method, no search): every trunk node quantized."""
    pixels = calibration if isinstance(calibration, np.ndarray) else folder_pixels(calibration, config, max_images)
    with tempfile.TemporaryDirectory(prefix="btembed-int8-") as tmp:
        quantizer = Quantizer(fp32_path, tmp, pixels, config, batch_size)
        choice = Int8Choice(method, [], [], "none", quantizer.reduce_range)
        return write_int8(quantizer, choice, out, len(pixels))
