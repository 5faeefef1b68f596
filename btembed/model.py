"""Encoder: a torchvision ResNet trunk with fc removed (plain torchvision keys), and its inference wrapper."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from .config import ModelConfig


class Encoder(nn.Module):
    """ResNet trunk → global-pooled features [N, D]; state-dict keys are torchvision's, minus fc."""

    def __init__(self, config: ModelConfig, zero_init_residual: bool = False):
        super().__init__()
        self.config = config
        trunk = getattr(torchvision.models, config.architecture)(weights=None, zero_init_residual=zero_init_residual)
        # Identity has no parameters, so the state dict keeps exactly torchvision's keys without fc.*
        trunk.fc = nn.Identity()
        self.trunk = trunk

    @classmethod
    def from_config(cls, config: dict | ModelConfig, **kwargs) -> "Encoder":
        """A randomly initialised encoder for a config (mapping or ModelConfig)."""
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        return cls(config, **kwargs)

    @classmethod
    def from_folder(cls, folder: str | Path, config: ModelConfig | None = None) -> "Encoder":
        """Load a model folder's verified weights into an encoder in eval mode (the one place this is done)."""
        from .modelfiles import read_weights

        config = config or ModelConfig.load(folder)
        encoder = cls(config)
        encoder.trunk.load_state_dict(read_weights(folder, config))
        return encoder.eval()

    @classmethod
    def from_pretrained(cls, name_or_path=None, *, revision: str | None = None) -> "Encoder":
        """Load weights from a ModelFolder, model folder, registry name or hub repo (hashes verified, never unpickled).

        A ModelFolder is used as it is; a name is looked up as ModelFolder.resolve does (btembed.sources.locate).
        """
        if hasattr(name_or_path, "path") and hasattr(name_or_path, "config"):  # a ModelFolder, already resolved
            return cls.from_folder(name_or_path.path, name_or_path.config)
        from .sources import locate

        folder, _, _ = locate(name_or_path, revision=revision)
        return cls.from_folder(folder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized float images [N, 3, H, W] → pooled trunk features [N, D]."""
        return self.trunk(x)

    def state_dict_for_save(self) -> dict:
        """The trunk's state dict with torchvision key names, contiguous, on CPU."""
        return {k: v.detach().to("cpu").contiguous() for k, v in self.trunk.state_dict().items()}

    def save_pretrained(self, folder: str | Path, card: str | None = None, dtype: torch.dtype | None = None) -> Path:
        """Write config.json + model.safetensors (+ README.md card) as a model folder."""
        from .modelfiles import write_folder

        return write_folder(self.state_dict_for_save(), self.config, folder, card=card, dtype=dtype)


class PixelEncoder(nn.Module):
    """uint8 [N, H, W, 3] → L2-normalized float vectors: the whole inference graph (torch and ONNX)."""

    def __init__(self, encoder: Encoder, normalize: bool = True):
        super().__init__()
        self.encoder = encoder
        pre = encoder.config.preprocess
        # Fold /255 into mean and std so the graph does one multiply-add per pixel.
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(pre.std)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-torch.tensor(pre.mean) / torch.tensor(pre.std)).view(1, 3, 1, 1))
        self.normalize = normalize

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels uint8 NHWC → float32 embeddings, unit length when normalize is on."""
        x = pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift
        features = self.encoder(x).float()
        if self.normalize:
            features = nn.functional.normalize(features, dim=1)
        return features
