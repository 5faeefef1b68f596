"""int8 that keeps the neighbours: onnxruntime static quantization (QDQ, per-channel int8 weights, uint8
activations), the calibration method chosen by measurement, and the parts of the trunk that a sensitivity sweep
finds most damaging kept in fp32.

Before quantizing, two rewrites of the fp32 graph make int8 land closer to it (docs/onnx.md has what each gains):
* channel equalization: a tensor between convolutions (through Relu, MaxPool and residual Adds) is quantized with one
  range for all its channels, so channels whose values are small get few of the 256 levels. Each channel is scaled
  up by the convolutions that produce it and down again in the weights of those that read it (or after the global
  pool): the same function in fp32, finer levels in int8.
* bias correction: per-channel int8 weights are rounded once, so their error is the same for every image and its
  mean effect on each output channel (the rounding error times the mean of the input) is a bias; it is taken off the
  convolution's bias (measured on the calibration images, for every convolution that is quantized).

Everything is measured against the fp32 graph on the calibration images (`recall@10` within the set, then mean
cosine); the export then measures the result once more on images held apart from all of this (parity.py).
"""
from __future__ import annotations

import contextlib
import os
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
# A subfolder with at least this many calibration images is one kind of image whose agreement the search checks on
# its own (its neighbours are closer than in the mixed set: clip art among clip art, textures among textures).
MIN_KIND_IMAGES = 100
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
# Channel equalization: each channel's range r is scaled by (R / r) ** EQUALIZE_POWER, R the tensor's widest channel
# (1 = all channels as wide as the widest: finest activations, but the weights that read a small channel shrink and
# round coarser; 0.5 splits the difference). Ops a channel passes through unchanged in scale (positively homogeneous).
EQUALIZE_POWER = 0.5
EQUALIZE_THROUGH = ("Relu", "MaxPool")
TRUNK = re.compile(r"encoder\.trunk\.(layer\d+)(?:\.(\d+))?(?:\.([a-z_]+\d*))?")


@dataclass
class Trial:
    """One quantized variant and how it agreed with fp32 on the calibration images."""

    method: str
    kept_fp32: tuple  # sweep units left in fp32
    recall_at_10: float  # the worst of the mixed set and each kind of image
    mean_cosine: float
    seconds: float
    worst: str = ""  # the kind of image that recall_at_10 is from ("" = the mixed set)

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
    sensitivity: dict = field(default_factory=dict)  # unit -> recall@10 lost by quantizing it alone
    rewrites: list = field(default_factory=list)  # what was done to the fp32 graph before quantizing

    def to_dict(self) -> dict:
        return {"method": self.method, "kept_fp32": self.kept_units, "kept_fp32_nodes": len(self.kept_nodes),
                "sweep_level": self.level, "reduce_range": self.reduce_range, "rewrites": self.rewrites,
                "sensitivity": {k: round(v, 4) for k, v in self.sensitivity.items()},
                "trials": [{"method": t.method, "kept_fp32": list(t.kept_fp32),
                            "recall_at_10": round(t.recall_at_10, 4), "mean_cosine": round(t.mean_cosine, 5),
                            **({"worst_kind": t.worst} if t.worst else {}),
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


def channel_statistics(model, tensors: list[str], pixels: np.ndarray, batch_size: int = 16) -> tuple[dict, dict]:
    """Per-channel max |x| and mean of some NCHW tensors of an fp32 graph over pixels -> (absmax, mean) by name."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    absmax: dict[str, np.ndarray] = {}
    total: dict[str, np.ndarray] = {}
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start:start + batch_size]
        for name, x in zip(tensors, session.run(tensors, {INPUT_NAME: batch})):
            absmax[name] = np.maximum(absmax.get(name, 0), np.abs(x).max(axis=(0, 2, 3)))
            total[name] = total.get(name, 0) + x.mean(axis=(2, 3)).sum(axis=0)
    return absmax, {name: t / len(pixels) for name, t in total.items()}


@dataclass
class EqualizationGroup:
    """Tensors that must share one per-channel scale: convolution outputs joined by Relu, MaxPool and Adds."""

    tensors: list
    producers: list  # Conv nodes whose output channels are scaled up
    readers: list  # Conv nodes whose input channels are scaled down
    pools: list  # ReduceMean / GlobalAveragePool nodes after which the scale is undone


def equalization_groups(model) -> list[EqualizationGroup]:
    """The groups of a graph that can be rescaled per channel without changing what it computes."""
    graph = model.graph
    made_by = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    group_of: dict[str, str] = {}

    def root(t: str) -> str:
        while group_of.setdefault(t, t) != t:
            t = group_of[t]
        return t

    def join(a: str, b: str) -> None:
        group_of[root(a)] = root(b)

    for node in graph.node:  # graph order: a node's inputs are placed before it
        if node.op_type == "Conv" and onnx_attr(node, "group", 1) == 1:
            root(node.output[0])
        elif node.op_type in EQUALIZE_THROUGH and node.input[0] in group_of:
            join(node.output[0], node.input[0])
        elif node.op_type == "Add" and len(node.input) == 2 and all(i in group_of for i in node.input):
            join(node.input[0], node.output[0])
            join(node.input[1], node.output[0])
    members: dict[str, list] = {}
    for t in group_of:
        members.setdefault(root(t), []).append(t)
    graph_outputs = {o.name for o in graph.output}
    groups = []
    for tensors in members.values():
        group, usable = EqualizationGroup(sorted(tensors), [], [], []), True
        for t in tensors:
            if made_by[t].op_type == "Conv":
                group.producers.append(made_by[t])
            for node in readers.get(t, []):
                if node.op_type in (*EQUALIZE_THROUGH, "Add") and node.output[0] in tensors:
                    continue
                if node.op_type == "Conv" and node.input[0] == t and onnx_attr(node, "group", 1) == 1:
                    group.readers.append(node)
                elif _global_pool(node):
                    group.pools.append(node)
                else:
                    usable = False  # read by something a per-channel scale would change
            usable = usable and t not in graph_outputs
        if usable and group.producers and all(initializer_of(model, n.input[1]) is not None
                                               for n in group.producers + group.readers):
            groups.append(group)
    return groups


def onnx_attr(node, name: str, default=None):
    """A node attribute's value, or default."""
    import onnx

    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _global_pool(node) -> bool:
    """A mean over the spatial axes that keeps them (then a [1, C, 1, 1] scale undoes an equalization after it)."""
    if node.op_type == "GlobalAveragePool":
        return True
    return node.op_type == "ReduceMean" and onnx_attr(node, "keepdims", 1) == 1 and len(node.input) == 2


def initializer_of(model, name: str):
    """The initializer of that name, or None."""
    return next((i for i in model.graph.initializer if i.name == name), None)


def _scale_initializer(model, name: str, factor: np.ndarray) -> None:
    from onnx import numpy_helper

    init = initializer_of(model, name)
    array = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((array * factor).astype(array.dtype), name))


def equalize(model, pixels: np.ndarray, power: float = EQUALIZE_POWER, batch_size: int = 16) -> int:
    """Rescale the channels of every equalization group of an fp32 graph in place (its function is unchanged):
    channel c of range r_c is multiplied by (R / r_c) ** power, R the widest -> how many groups were equalized."""
    import onnx
    from onnx import numpy_helper

    groups = equalization_groups(model)
    if not groups:
        return 0
    absmax, _ = channel_statistics(model, [t for g in groups for t in g.tensors], pixels, batch_size)
    added = []
    for index, group in enumerate(groups):
        ranges = np.max([absmax[t] for t in group.tensors], axis=0)
        widest = float(ranges.max())
        if widest <= 0:
            continue
        scale = (widest / np.maximum(ranges, widest * 1e-3)) ** power
        for conv in group.producers:
            _scale_initializer(model, conv.input[1], scale.reshape(-1, 1, 1, 1))
            if len(conv.input) > 2 and conv.input[2]:
                _scale_initializer(model, conv.input[2], scale)
        for conv in group.readers:
            _scale_initializer(model, conv.input[1], 1 / scale.reshape(1, -1, 1, 1))
        for pool in group.pools:
            name, inverse = pool.output[0], f"equalize_{index}_inverse"
            pool.output[0] = f"{name}_equalized"
            model.graph.initializer.append(
                numpy_helper.from_array((1 / scale).astype(np.float32).reshape(1, -1, 1, 1), inverse))
            added.append(onnx.helper.make_node("Mul", [pool.output[0], inverse], [name], name=f"equalize_{index}_mul"))
    # each undoing Mul goes right after its pool, keeping the graph in topological order
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        nodes.extend(m for m in added if m.input[0] in node.output)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(groups)


def dequantized_weights(model) -> dict[str, np.ndarray]:
    """The weights of a QDQ graph as its int8 values mean them (DequantizeLinear applied), by fp32 weight name."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    weights = {}
    for node in model.graph.node:
        quantized = node.input[0] if node.op_type == "DequantizeLinear" else ""
        if not quantized.endswith("_quantized") or quantized not in inits or node.input[1] not in inits:
            continue
        q = numpy_helper.to_array(inits[quantized]).astype(np.float64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
                if len(node.input) > 2 and node.input[2] in inits else np.zeros_like(scale))
        shape = [1] * q.ndim
        if scale.ndim:
            shape[onnx_attr(node, "axis", 1) % q.ndim] = -1
        weights[quantized.removesuffix("_quantized")] = (q - zero.reshape(shape)) * scale.reshape(shape)
    return weights


class Quantizer:
    """One fp32 graph, prepared once and calibrated once per method, then quantized as often as the search asks."""

    def __init__(self, fp32_path: str | Path, workdir: str | Path, pixels: np.ndarray, config: ModelConfig,
                 batch_size: int = 16, reduce_range: bool | None = None, *,
                 equalize_power: float | None = EQUALIZE_POWER, bias_correction: bool = True):
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
        self.equalized = 0
        if equalize_power:
            prepared = onnx.load(str(self.prepared))
            self.equalized = equalize(prepared, pixels, equalize_power, batch_size)
            onnx.save(prepared, str(self.prepared))
        self.equalize_power = equalize_power if self.equalized else None
        self.bias_correction = bias_correction
        self._corrections: dict[str, np.ndarray] | None = None
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

        # onnxruntime's histogram calibrators print a line per batch: hundreds of lines that say nothing
        with tempfile.TemporaryDirectory(prefix="calibrate-", dir=self.workdir) as tmp, \
                open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
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
        excluded = [*self.always_fp32, *kept_nodes]
        source = self.prepared
        if self.bias_correction:
            source = self.workdir / "bias-corrected.onnx"
            self.correct_biases(method, excluded, source)
        return self._quantize(source, method, excluded, out)

    def _quantize(self, source: Path, method: str, excluded: list[str], out: str | Path) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(str(source), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=self.reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=OP_TYPES,
                            nodes_to_exclude=excluded, calibrate_method=CalibrationMethod[method],
                            calibration_cache_path=str(self.calibrate(method)))
        return Path(out)

    def corrections(self, method: str) -> dict[str, np.ndarray]:
        """Conv node -> the mean its int8 weights add to each output channel on the calibration images (their
        rounding error times the mean input). The weights are rounded as onnxruntime rounds them (read back from a
        whole-trunk quantization; per-channel weight scales do not depend on the activation ranges)."""
        if self._corrections is None:
            import onnx
            from onnx import numpy_helper

            with tempfile.TemporaryDirectory(prefix="weights-", dir=self.workdir) as tmp:
                quantized = self._quantize(self.prepared, method, self.always_fp32, Path(tmp) / "int8.onnx")
                rounded = dequantized_weights(onnx.load(str(quantized)))
            model = onnx.load(str(self.prepared))
            convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in rounded
                     and onnx_attr(n, "group", 1) == 1]
            _, means = channel_statistics(model, sorted({n.input[0] for n in convs}), self.pixels, self.batch_size)
            weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
            self._corrections = {}
            for conv in convs:
                error = rounded[conv.input[1]] - weights[conv.input[1]]
                self._corrections[conv.name] = error.reshape(*error.shape[:2], -1).sum(axis=2) @ means[conv.input[0]]
        return self._corrections

    def correct_biases(self, method: str, excluded: list[str], out: Path) -> Path:
        """The prepared graph with the bias of every convolution that will be quantized corrected (see corrections)."""
        import onnx
        from onnx import numpy_helper

        corrections, skip = self.corrections(method), set(excluded)
        model = onnx.load(str(self.prepared))
        for conv in model.graph.node:
            if conv.name not in corrections or conv.name in skip:
                continue
            shift = corrections[conv.name].astype(np.float32)
            if len(conv.input) > 2 and conv.input[2]:
                bias = initializer_of(model, conv.input[2])
                bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) - shift, bias.name))
            else:
                name = f"{conv.name}_corrected_bias"
                model.graph.initializer.append(numpy_helper.from_array(-shift, name))
                conv.input.extend([""] * (2 - len(conv.input)) + [name])
        onnx.save(model, str(out))
        return out


def embed_with(path: str | Path, config: ModelConfig, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Unit vectors of pixels through an ONNX file (CPU)."""
    from .onnx import OnnxBackend

    backend = OnnxBackend.from_file(path, config, device="cpu")
    return np.concatenate([backend(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)])


def rewrites(quantizer) -> list[str]:
    """What the quantizer did to the fp32 graph before quantizing, in words (for the file's metadata)."""
    done = []
    if getattr(quantizer, "equalize_power", None):
        done.append(f"channel equalization (power {quantizer.equalize_power:g}, {quantizer.equalized} groups)")
    if getattr(quantizer, "bias_correction", False):
        done.append("bias correction of weight rounding")
    return done


def sweep_level(quantizer: Quantizer, level: str = "auto") -> str:
    """The sweep level asked for; 'auto' = the finest level with at most MAX_AUTO_UNITS units (cheap enough)."""
    if level == "auto":
        return next((lv for lv in reversed(SWEEP_LEVELS) if len(quantizer.units(lv)) <= MAX_AUTO_UNITS), "stage")
    if level not in SWEEP_LEVELS:
        raise ExportError(f"unknown sweep level {level!r}; choose from auto, {', '.join(SWEEP_LEVELS)}")
    return level


def search(quantizer: Quantizer, reference: np.ndarray, *, methods=CALIBRATION_METHODS, level: str = "auto",
           max_kept: int | None = None, gallery: int | None = None, kinds: np.ndarray | None = None,
           say: Callable[[str], None] = lambda _m: None) -> Int8Choice:
    """Choose the calibration method by measurement (whole trunk in int8), then, starting from a trunk all in fp32,
    quantize one unit at a time: each round tries every unit still in fp32 on top of those already quantized and
    takes the one that keeps the neighbours best (greedy backward elimination), while the agreement still clears
    the bar with a margin, and past that only while more than max_kept units are left in fp32 (default: no cap,
    parity first).
    gallery: the size of the set the result will be measured on (recall within subsets of that size, see agreement).
    kinds: each image's kind (its subfolder); the search holds the worst of the mixed set and of every kind with
    MIN_KIND_IMAGES images or more, so that a folder of one kind keeps its neighbours too."""
    unknown = [m for m in methods if m not in CALIBRATION_METHODS]
    if unknown or not methods:
        raise ExportError(f"unknown calibration method {', '.join(unknown) or '(none)'}; choose from "
                          f"{', '.join(CALIBRATION_METHODS)}")
    level = sweep_level(quantizer, level)
    units = quantizer.units(level)
    max_kept = len(units) if max_kept is None else max_kept
    trials: list[Trial] = []

    def trial(method: str, kept: tuple) -> Trial:
        t0 = time.perf_counter()
        out = quantizer.workdir / "trial.onnx"
        quantizer.quantize(method, [n for u in kept for n in units[u]], out)
        got = embed_with(out, quantizer.config, quantizer.pixels)
        figures = agreement(got, reference, gallery=gallery)
        recall, worst = figures["recall_at_10"], ""
        for kind in groups:
            rows = kinds == kind
            kind_recall = agreement(got[rows], reference[rows], gallery=gallery)["recall_at_10"]
            if kind_recall < recall:
                recall, worst = kind_recall, kind
        done = Trial(method, kept, recall, figures["mean_cosine"], time.perf_counter() - t0, worst)
        trials.append(done)
        say(f"  {method:10} fp32 kept: {', '.join(kept) or '-':40} recall@10 {done.recall_at_10:.4f}"
            + (f" ({worst})" if worst else (" (mixed)" if groups else "")) + f"  mean cosine {done.mean_cosine:.5f}")
        return done

    names, counts = np.unique(kinds, return_counts=True) if kinds is not None else ([], [])
    groups = [str(n) for n, c in zip(names, counts) if c >= MIN_KIND_IMAGES and c < len(quantizer.pixels)]
    say(f"calibration methods on {len(quantizer.pixels)} images"
        + (f" (neighbours within sets of ~{gallery})" if gallery and gallery < len(quantizer.pixels) else "")
        + (f"; recall@10 is the worst of the mixed set and {len(groups)} kinds ({', '.join(groups)})"
           if groups else ""))
    whole = max((trial(m, ()) for m in methods), key=Trial.score)
    method, kept = whole.method, ()
    sensitivity: dict[str, float] = {}
    if not whole.meets() and max_kept > 0:
        say(f"sensitivity sweep ({level} level, {len(units)} units, {method} calibration), from all fp32")
        # Measured near the bar, where the choice matters: with most of the trunk int8, the error of the rest
        # drowns the difference one unit makes (a whole-trunk start keeps the wrong units).
        kept = tuple(units)
        while kept:
            rests = [tuple(u for u in kept if u != q) for q in kept]
            round_ = [whole if not rest else trial(method, rest) for rest in rests]
            if not sensitivity:  # each unit quantized alone, the rest in fp32
                sensitivity = {q: 1.0 - t.recall_at_10 for q, t in zip(kept, round_)}
            step = max(round_, key=Trial.score)
            if not (step.meets() or len(kept) > max_kept):
                break  # quantizing any more would lose the bar
            kept = step.kept_fp32
    if units and len(kept) == len(units):
        say("no part of the trunk stays within the bar in int8: the file is fp32 in all but name "
            "(--max-fp32 N trades neighbours for speed)")
    kept_units = list(kept)
    return Int8Choice(method, kept_units, [n for u in kept_units for n in units[u]], level, quantizer.reduce_range,
                      trials, sensitivity, rewrites(quantizer))


def write_int8(quantizer: Quantizer, choice: Int8Choice, out: str | Path, calibration_images: int) -> Path:
    """The chosen int8 graph, written atomically with the fp32 file's metadata and how it was quantized."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="int8-", dir=quantizer.workdir) as tmp:
        quantized = quantizer.quantize(choice.method, choice.kept_nodes, Path(tmp) / "int8.onnx")
        model = onnx.load(str(quantized))
    meta = read_metadata(quantizer.fp32_path)
    meta.update({"quantization": "int8 static QDQ, uint8 activations, per-channel int8 weights"
                                 + (", 7-bit weights (reduce_range)" if choice.reduce_range else "")
                                 + "".join(f", {r}" for r in choice.rewrites),
                 "calibration_images": str(calibration_images), "calibration_method": choice.method,
                 "kept_fp32": ",".join(choice.kept_units)})
    onnx.helper.set_model_props(model, meta)
    model.producer_name = "btembed"
    return save_atomic(model, Path(out))


def folder_pixels(folder: str | Path, config: ModelConfig, max_images: int, min_images: int = 1) -> np.ndarray:
    """Up to max_images images of a folder, spread over all of it, through btembed's preprocessing -> uint8 NHWC."""
    return folder_sample(folder, config, max_images, min_images)[0]


def folder_sample(folder: str | Path, config: ModelConfig, max_images: int,
                  min_images: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """folder_pixels, and each image's kind: the subfolder of the folder it is in ('' for files at the top)."""
    try:
        paths = list(find_images(folder))
    except ImageError as e:
        raise ExportError(f"calibration folder {folder} cannot be used ({e.cause}); pass a folder of images") from None
    if len(paths) > max_images:
        # Spread the picks over the whole folder, not just its first subfolder.
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, max_images).round().astype(int)]
    rows, kinds = [], []
    for path in paths:
        with contextlib.suppress(ImageError):
            rows.append(load_pixels(path, config.preprocess))
            parts = Path(path).relative_to(folder).parts
            kinds.append(parts[0] if len(parts) > 1 else "")
    if len(rows) < min_images:
        need = (f"int8 needs at least {min_images} real images like those you will embed (a quarter is held apart "
                "to measure parity)" if min_images > 1 else "pass a folder of real images")
        raise ExportError(f"calibration folder {folder} has {len(rows)} readable images; {need}")
    return np.stack(rows), np.array(kinds)


def hold_apart(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-apart) indices of n images: a seeded quarter held apart, the rest to calibrate on."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n // HOLD_APART:]), np.sort(order[:n // HOLD_APART])


def quantize_int8(fp32_path: str | Path, out: str | Path, calibration: str | Path | np.ndarray,
                  config: ModelConfig, *, method: str = "MinMax", max_images: int = 128,
                  batch_size: int = 16, rewrite: bool = False) -> Path:
    """Plain static int8 (one calibration method, no search): every trunk node quantized; with rewrite, after the
    equalization and bias correction the export does."""
    pixels = calibration if isinstance(calibration, np.ndarray) else folder_pixels(calibration, config, max_images)
    with tempfile.TemporaryDirectory(prefix="btembed-int8-") as tmp:
        quantizer = Quantizer(fp32_path, tmp, pixels, config, batch_size,
                              equalize_power=EQUALIZE_POWER if rewrite else None, bias_correction=rewrite)
        choice = Int8Choice(method, [], [], "none", quantizer.reduce_range, rewrites=rewrites(quantizer))
        return write_int8(quantizer, choice, out, len(pixels))
