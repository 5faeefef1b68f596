"""Model cards: README.md of a model folder, with the YAML header the Hugging Face Hub reads."""
from __future__ import annotations

import json

from .config import ModelConfig


def render_card(config: ModelConfig) -> str:
    """A model card for a config: YAML metadata, what it is, preprocessing, training and measured metrics."""
    pre = config.preprocess
    header = [
        "---",
        "library_name: btembed",
        "pipeline_tag: image-feature-extraction",
        f"license: {config.license or 'other'}",
        "tags:",
        "- barlow-twins",
        "- self-supervised",
        f"- {config.architecture}",
        "---",
    ]
    body = [
        f"# {config.name or 'btembed model'}",
        "",
        f"A Barlow Twins image encoder ({config.architecture} trunk, {config.embedding_dim}-d embeddings) "
        "for the btembed toolkit.",
        "",
        "## Preprocessing",
        f"Resize the short side to {pre.resize_size} ({pre.interpolation}), center-crop {pre.input_size}, "
        f"normalize with mean {list(pre.mean)} and std {list(pre.std)}.",
        "",
        "## Training",
        "```json",
        json.dumps(config.training or {"note": "not recorded"}, indent=2),
        "```",
        "",
        "## Metrics",
        "```json",
        json.dumps(config.metrics or {"note": "none measured"}, indent=2),
        "```",
        "",
        "## Use",
        "```python",
        "from btembed import Embedder",
        f"emb = Embedder.from_pretrained({config.name!r})",
        "vectors = emb.embed(['photo.jpg'])",
        "```",
        "",
    ]
    return "\n".join(header + body)
