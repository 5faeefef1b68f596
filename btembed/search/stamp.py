"""ModelStamp: which model made a catalog's vectors, and the one test of "same model"."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelStamp:
    """What identifies the model of a catalog's vectors (its meta keys model_id ... dim)."""

    model_id: str
    model_source: str | None
    model_revision: str | None
    model_sha256: str
    dim: int
    precision: str = "fp32"  # vectors of two precisions are never mixed in one catalog (older catalogs: fp32)

    @classmethod
    def from_meta(cls, meta: dict) -> "ModelStamp | None":
        """The stamp a catalog recorded, or None when it has none yet."""
        if not meta.get("dim"):
            return None
        return cls(meta.get("model_id", ""), meta.get("model_source"), meta.get("model_revision"),
                   meta.get("model_sha256", ""), int(meta["dim"]), meta.get("precision") or "fp32")

    def same_model(self, other: "ModelStamp") -> bool:
        """The one test of "same model": equal width, then equal weights (or equal id+revision without hashes)."""
        if self.dim != other.dim:
            return False
        if self.model_sha256 and other.model_sha256:
            return self.model_sha256 == other.model_sha256
        return (self.model_id, self.model_revision) == (other.model_id, other.model_revision)

    def to_meta(self) -> dict:
        """The meta keys that record it."""
        return {"model_id": self.model_id, "model_source": self.model_source, "model_revision": self.model_revision,
                "model_sha256": self.model_sha256, "dim": self.dim, "precision": self.precision}
