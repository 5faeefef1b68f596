"""ModelFolder: a model resolved once from any name, then passed down to backends, export, index, probe, training.

It owns what a model folder is: its path, its config, its files (names and sha256 checks in btembed.modelfiles),
what identifies it in a catalog, loading its weights and saving one. Resolution (package default, folder,
registry, Hugging Face Hub, the authors' URLs) is done by btembed.sources, called from `ModelFolder.resolve` only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import DUPLICATE_THRESHOLD_KEYS, ModelConfig
from .modelfiles import (CARD_FILE, CONFIG_FILE, INT8_FILE, MODEL_FILES, ONNX_FILE, WEIGHTS_FILE,  # noqa: F401
                         read_weights, shared_location, verify_file, write_folder)

__all__ = ["ModelFolder", "CONFIG_FILE", "WEIGHTS_FILE", "ONNX_FILE", "INT8_FILE", "CARD_FILE", "MODEL_FILES"]


@dataclass
class ModelFolder:
    """A local model folder with its config, and the name it was asked by."""

    path: Path
    config: ModelConfig
    name: str = ""  # what it was resolved from: a registry name, a repo id or the folder as given
    revision: str | None = None
    origin: str = "folder"  # folder | embedded | hub | cache (converted from the authors' file)

    @classmethod
    def resolve(cls, name_or_path=None, *, revision: str | None = None) -> "ModelFolder":
        """Any name → ModelFolder: None (embedded default), a folder, a registry name, or an org/name repo id.

        The one place a name is resolved; everything downstream takes the ModelFolder. A ModelFolder passes through.
        """
        if isinstance(name_or_path, ModelFolder):
            return name_or_path
        from .sources import locate

        path, name, origin = locate(name_or_path, revision=revision)
        config = ModelConfig.load(path)
        if origin != "folder" and any(getattr(config, k) is None for k in DUPLICATE_THRESHOLD_KEYS):
            # Calibrated after these files were made (a Hub upload, an earlier conversion): the registry carries it.
            from .sources import registry_entry

            entry = registry_entry(name) or {}
            for key in DUPLICATE_THRESHOLD_KEYS:
                if getattr(config, key) is None:
                    setattr(config, key, entry.get(key))
        return cls(Path(path), config, name=name, revision=revision, origin=origin)

    @classmethod
    def at(cls, path: str | Path, config: ModelConfig | None = None) -> "ModelFolder":
        """A folder on disk taken as it is (no registry, no download), with its config read unless given."""
        path = Path(path)
        return cls(path, config or ModelConfig.load(path), name=str(path))

    @property
    def weights_sha256(self) -> str:
        """The sha256 config.json records for the weights ('' when none)."""
        return self.config.files.get(WEIGHTS_FILE, "")

    @property
    def shared(self) -> str | None:
        """Which shared place the folder lies in (never written into), or None for a folder of one's own."""
        return shared_location(self.path)

    @property
    def display_name(self) -> str:
        """The model's name as its config records it, else the name it was asked by, else the folder's."""
        return self.config.name or self.name or self.path.name

    def file(self, name: str) -> Path:
        """The path of one of the folder's files (it may not exist)."""
        return self.path / name

    def verify(self, name: str, expected: str | None = None) -> Path:
        """Check one file against the sha256 config.json records (and an expected one); its path when it matches."""
        return verify_file(self.path, self.config, name, expected=expected)

    def load_state_dict(self) -> dict:
        """The verified trunk state dict (torchvision keys, float32 tensors)."""
        return read_weights(self.path, self.config)

    def load_encoder(self):
        """The weights loaded into an Encoder in eval mode."""
        from .model import Encoder

        return Encoder.from_folder(self.path, self.config)

    def identity(self) -> dict:
        """What identifies this model in a catalog (model id, source, revision, weights sha256, dim)."""
        local = self.origin == "folder"
        source = str(self.path.resolve()) if local else self.name
        return {"model_id": self.config.name or self.path.name, "model_source": source,
                "model_revision": self.revision, "model_sha256": self.weights_sha256,
                "dim": self.config.embedding_dim}

    @classmethod
    def save(cls, encoder, folder: str | Path, card: str | None = None, dtype=None) -> "ModelFolder":
        """Write an Encoder as a model folder (config.json with hashes, model.safetensors, README.md card)."""
        path = write_folder(encoder.state_dict_for_save(), encoder.config, folder, card=card, dtype=dtype)
        return cls.at(path, encoder.config)

    def __fspath__(self) -> str:
        return os.fspath(self.path)
