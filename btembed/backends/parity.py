"""Whether an int8 file keeps the fp32 neighbours: the measure (recall@10, cosine) and the records that carry it.

A record describes one int8 file (its sha256) as measured under one onnxruntime version on one kind of CPU (int8
kernels differ with and without VNNI). It lives beside the file (`model.int8.parity.json`), or in btembed's cache
(`$BTEMBED_CACHE/parity/<sha256>.json`) when the file's folder is shared or read-only.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..modelfiles import cache_dir, sha256_file, shared_location
from ..version import __version__

# What a record must show before `precision="auto"` runs int8 (issue 32).
PARITY_BAR = {"recall_at_10": 0.99, "mean_cosine": 0.99}
NEIGHBOURS = 10
RECORD_FORMAT = 1
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def nearest(vectors: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine (rows are unit vectors)."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    k = min(k, len(vectors) - 1)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)


def recall_at_k(got: np.ndarray, reference: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean over images of |top-k under got ∩ top-k under reference| / k, neighbours taken within the set."""
    ours, theirs = nearest(got, k), nearest(reference, k)
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ours, theirs)]))


def agreement(got: np.ndarray, reference: np.ndarray, k: int = NEIGHBOURS, gallery: int | None = None) -> dict:
    """How well int8 vectors keep their fp32 neighbours and directions: recall@k, mean and min cosine. With gallery,
    neighbours are taken within interleaved subsets of about that many images (recall@k falls as a set grows, so a
    set is compared with another of its size); without, within the whole set."""
    cos = np.sum(got * reference, axis=1) / np.maximum(
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1), 1e-12)
    parts = max(1, round(len(got) / gallery)) if gallery else 1
    recall = sum(recall_at_k(got[i::parts], reference[i::parts], k) * len(got[i::parts])
                 for i in range(parts)) / len(got)
    return {"images": int(len(got)), f"recall_at_{k}": float(recall),
            "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def cpu_has_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU advertises VNNI (avx512_vnni or avx_vnni), i.e. int8 dot products without saturation."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = {word for line in text.splitlines() if line.startswith("flags") for word in line.split()}
    return any(flag in flags for flag in VNNI_FLAGS)


def onnxruntime_version() -> str | None:
    """The installed onnxruntime's version, or None without one."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


@dataclass(frozen=True)
class Runtime:
    """What an int8 measurement depends on besides the file: the onnxruntime version and the kind of CPU."""

    onnxruntime: str | None
    machine: str
    vnni: bool

    @classmethod
    def here(cls) -> "Runtime":
        """This process's onnxruntime and CPU."""
        return cls(onnxruntime_version(), platform.machine(), cpu_has_vnni())

    def describe(self) -> str:
        """e.g. 'onnxruntime 1.32.0 on x86_64 with VNNI'."""
        return f"onnxruntime {self.onnxruntime} on {self.machine} {'with' if self.vnni else 'without'} VNNI"


@dataclass
class ParityRecord:
    """Measured agreement of one int8 file with its fp32 graph, on images held apart from its calibration."""

    int8_sha256: str
    onnxruntime: str
    machine: str
    vnni: bool
    recall_at_10: float
    mean_cosine: float
    min_cosine: float
    images: int  # held-apart images the figures were measured on
    calibration_images: int = 0
    calibration_method: str = ""
    kept_fp32: list = field(default_factory=list)  # node names left unquantized by the sensitivity sweep
    measured: str = ""
    btembed_version: str = __version__

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.onnxruntime, self.machine, self.vnni)

    def passes(self) -> bool:
        """Whether the figures clear PARITY_BAR."""
        return all(getattr(self, key) >= bar for key, bar in PARITY_BAR.items())

    def figures(self) -> str:
        """e.g. 'recall@10 0.995, mean cosine 0.99981 on 100 held-apart images' (5 places: 0.99997 is not 1)."""
        return (f"recall@10 {self.recall_at_10:.3f}, mean cosine {self.mean_cosine:.5f} on {self.images} "
                "held-apart images")

    @classmethod
    def from_dict(cls, data: dict) -> "ParityRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def new_record(int8_path: str | Path, figures: dict, **details) -> ParityRecord:
    """A record of figures (from agreement()) for an int8 file, measured here and now."""
    here = Runtime.here()
    return ParityRecord(int8_sha256=sha256_file(int8_path), onnxruntime=here.onnxruntime or "", machine=here.machine,
                        vnni=here.vnni, recall_at_10=round(figures["recall_at_10"], 4),
                        mean_cosine=round(figures["mean_cosine"], 5), min_cosine=round(figures["min_cosine"], 5),
                        images=figures["images"], measured=datetime.date.today().isoformat(), **details)


def sidecar_path(int8_path: str | Path) -> Path:
    """model.int8.onnx → model.int8.parity.json, beside it."""
    path = Path(int8_path)
    return path.with_name(path.name.removesuffix(".onnx") + ".parity.json")


def cache_path(int8_sha256: str) -> Path:
    """The record file for an int8 file in btembed's cache."""
    return cache_dir() / "parity" / f"{int8_sha256}.json"


def _read(path: Path, int8_sha256: str) -> list[ParityRecord]:
    """The records of a record file that describe the file of that sha256 (none when unreadable)."""
    try:
        data = json.loads(path.read_text())
        return [r for r in map(ParityRecord.from_dict, data.get("records", [])) if r.int8_sha256 == int8_sha256]
    except (OSError, ValueError, TypeError, AttributeError):
        return []  # a damaged or foreign file is no record: the safe outcome is fp32


def find_record(int8_path: str | Path, int8_sha256: str | None = None,
                runtime: Runtime | None = None) -> ParityRecord | None:
    """The record for this very int8 file under this runtime (beside the file first, then the cache), or None."""
    int8_sha256 = int8_sha256 or sha256_file(int8_path)
    runtime = runtime or Runtime.here()
    for path in (sidecar_path(int8_path), cache_path(int8_sha256)):
        for record in _read(path, int8_sha256):
            if record.runtime == runtime:
                return record
    return None


def _writable_folder(folder: Path) -> bool:
    """A folder of the user's own that can be written (shared places are never written into)."""
    return shared_location(folder) is None and folder.is_dir() and os.access(folder, os.W_OK)


def write_record(record: ParityRecord, int8_path: str | Path) -> Path:
    """Add a record beside its int8 file (the cache when that folder is shared or read-only) -> where it went.

    A record for the same file and runtime is replaced; records for other runtimes are kept.
    """
    int8_path = Path(int8_path)
    path = sidecar_path(int8_path) if _writable_folder(int8_path.parent) else cache_path(record.int8_sha256)
    kept = [r for r in _read(path, record.int8_sha256) if r.runtime != record.runtime]
    document = {"format": RECORD_FORMAT, "file": int8_path.name, "int8_sha256": record.int8_sha256,
                "bar": PARITY_BAR, "records": [dataclasses.asdict(r) for r in [*kept, record]]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(document, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
