"""ModelConfig: everything config.json of a model folder says, as a dataclass that round-trips JSON."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ModelError
from .preprocess import PreprocessConfig

# Trunk output width per supported torchvision architecture.
ARCHITECTURES = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "wide_resnet50_2": 2048,
}


# ModelConfig's calibrated dedup thresholds: with the pixel check (`btembed dedup`'s default) and without it.
DUPLICATE_THRESHOLD_KEYS = ("duplicate_threshold", "duplicate_threshold_embedding_only")


@dataclass
class ModelConfig:
    """Architecture, preprocessing, provenance and file hashes of one model folder."""

    architecture: str = "resnet50"
    embedding_dim: int = 0  # derived from the architecture when 0
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    name: str = ""  # model id, e.g. "btembed/r50" or a folder name
    license: str = ""
    source: dict = field(default_factory=dict)  # where the weights came from (run, conversion, ...)
    training: dict = field(default_factory=dict)  # recipe, data, epochs, hardware, time
    metrics: dict = field(default_factory=dict)  # measured numbers, with their protocol
    btembed_version: str = ""
    files: dict = field(default_factory=dict)  # file name → sha256
    duplicate_threshold: float | None = None  # calibrated cosine for `btembed dedup` (btembed/search/calibrate.py)
    duplicate_threshold_embedding_only: float | None = None  # the same, for `btembed dedup --no-pixel-check`

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ModelError(f"unknown architecture {self.architecture!r}; "
                             f"supported: {', '.join(sorted(ARCHITECTURES))}")
        if not self.embedding_dim:
            self.embedding_dim = ARCHITECTURES[self.architecture]
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessConfig.from_dict(self.preprocess)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a mapping; unknown keys are kept out (forward compatible)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        """A JSON-ready mapping."""
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def load(cls, folder: str | Path) -> "ModelConfig":
        """Read folder/config.json, with a clear error when it is missing or not JSON."""
        path = Path(folder) / "config.json"
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ModelError(f"{folder} is not a btembed model folder: it has no config.json") from None
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ModelError(f"{path} is not a valid btembed config ({e})") from None

    def save(self, folder: str | Path) -> None:
        """Write folder/config.json (temp file + rename: a crash never leaves half a config)."""
        path = Path(folder) / "config.json"
        tmp = path.with_name(f".config.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        # Also replaces a symlink (a Hugging Face cache snapshot) instead of writing through it into the shared blob.
        os.replace(tmp, path)
