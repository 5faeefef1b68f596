"""btembed: Barlow Twins image embeddings — embed, index, search, dedup, probe, export."""
from .errors import BtembedError, CatalogError, ImageError, ModelError
from .version import __version__

# Heavy modules (torch) load on first use, so `btembed --help` and the ONNX path start fast.
_LAZY = {
    "Encoder": ("model", "Encoder"),
    "PixelEncoder": ("model", "PixelEncoder"),
    "Embedder": ("embedder", "Embedder"),
    "ModelConfig": ("config", "ModelConfig"),
    "ModelFolder": ("modelfolder", "ModelFolder"),
    "PreprocessConfig": ("preprocess", "PreprocessConfig"),
    "ImageIndex": ("search", "ImageIndex"), "find_duplicates": ("search.dedup", "find_duplicates"),
}

__all__ = ["BtembedError", "CatalogError", "ImageError", "ModelError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'btembed' has no attribute {name!r}")
