"""Convert the official Barlow Twins release (torch.hub resnet50.pth or the full checkpoint.pth) to a model folder.

The converting itself is btembed's own (btembed/convert.py: safe loading, layouts, bit-exact copy), the same one
`Embedder.from_pretrained("btembed/r50")` uses; this module adds what a maintainer's conversion records: the
authors' figures, how they trained, and whether the bytes are a known release.
"""
from __future__ import annotations

from pathlib import Path

from btembed.config import ModelConfig
from btembed.convert import ConvertError, load_checkpoint, read_trunk, write_trunk  # noqa: F401 (re-exported)
from btembed.modelfiles import sha256_file
from btembed.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

# The official evaluate.py validation transform: Resize(256) (torchvision's default bilinear), CenterCrop(224),
# ImageNet mean/std.
OFFICIAL_PREPROCESS = PreprocessConfig(input_size=224, resize_size=256, interpolation="bilinear", crop="center",
                                       mean=IMAGENET_MEAN, std=IMAGENET_STD)
# The authors relicensed the repository (code and weights) from CC-BY-NC 4.0 to MIT in July 2021; their README's
# License section: "This project is released under MIT License, which allows commercial use."
OFFICIAL_LICENSE = "mit"
PAPER = "Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction (ICML)"
RELEASE_README = "facebookresearch/barlowtwins README, 'Pretrained Model' table"
LINEAR = "linear classifier trained on the frozen trunk's features (ImageNet train), single 224 center crop"
SEMI = "trunk and linear classifier fine-tuned with a fraction of the ImageNet train labels"

# sha256 of the authors' released files (torch.hub resnet50.pth, full checkpoint.pth). Only a file whose hash is
# listed here is presented as their release; none could be fetched from this offline machine, so whoever first
# downloads them from the official links records their hashes here (a reviewed change), after which conversions of
# those exact bytes carry the authors' name and figures without a caveat.
OFFICIAL_SHA256: dict[str, str] = {}

# Figures published by the authors for the official ResNet-50 (paper tables and the release README).
REPORTED_METRICS = {
    "imagenet_linear_top1": {"value": 73.2, "unit": "%", "dataset": "ImageNet-1k val", "protocol": LINEAR,
                             "reference": f"{PAPER}, Table 1"},
    "imagenet_linear_top5": {"value": 91.0, "unit": "%", "dataset": "ImageNet-1k val", "protocol": LINEAR,
                             "reference": f"{PAPER}, Table 1"},
    "released_checkpoint_linear_top1": {"value": 73.5, "unit": "%", "dataset": "ImageNet-1k val",
                                        "protocol": LINEAR + " (evaluate.py, --lr-classifier 0.3)",
                                        "reference": RELEASE_README},
    "released_checkpoint_linear_top5": {"value": 91.0, "unit": "%", "dataset": "ImageNet-1k val",
                                        "protocol": LINEAR + " (evaluate.py, --lr-classifier 0.3)",
                                        "reference": RELEASE_README},
    "imagenet_semisup_1pct_top1": {"value": 55.0, "unit": "%", "dataset": "ImageNet-1k val",
                                   "protocol": SEMI + ": 1 %", "reference": f"{PAPER}, Table 2"},
    "imagenet_semisup_1pct_top5": {"value": 79.2, "unit": "%", "dataset": "ImageNet-1k val",
                                   "protocol": SEMI + ": 1 %", "reference": f"{PAPER}, Table 2"},
    "imagenet_semisup_10pct_top1": {"value": 69.7, "unit": "%", "dataset": "ImageNet-1k val",
                                    "protocol": SEMI + ": 10 %", "reference": f"{PAPER}, Table 2"},
    "imagenet_semisup_10pct_top5": {"value": 89.3, "unit": "%", "dataset": "ImageNet-1k val",
                                    "protocol": SEMI + ": 10 %", "reference": f"{PAPER}, Table 2"},
}

# How the official ResNet-50 was trained, as the release README and main.py state it.
OFFICIAL_TRAINING = {
    "recipe": "Barlow Twins, the authors' main.py as their README gives it: --epochs 1000 --batch-size 2048 "
              "--learning-rate 0.2 --lambd 0.0051 --projector 8192-8192-8192 --scale-loss 0.024 (LARS, 10-epoch "
              "warmup, cosine decay)",
    "data": "ImageNet-1k train (labels unused)",
    "datasets": ["imagenet-1k"],
    "epochs": 1000,
    "batch_size": 2048,
    "optimizer": "LARS",
    "hardware": "16 V100 GPUs (reported by the authors)",
    "time": "about 7 days (reported by the authors)",
    "trained_by": "the original authors (Facebook AI Research); converted to safetensors by btembed",
    "limits": [
        "Licensed MIT by the original authors (the repository was relicensed from CC-BY-NC 4.0 in July 2021).",
        "Trained on ImageNet-1k only: object-centric photos; other domains (documents, medical, satellite, "
        "drawings) may embed poorly.",
    ],
}


def official_config(arch: str, name: str, checkpoint: Path, facts: dict) -> ModelConfig:
    """The config of a converted folder: official preprocessing, licence, provenance, authors' figures."""
    digest = sha256_file(checkpoint)
    # The authors released a ResNet-50 only; their figures apply to nothing else, and to that only by its hash.
    verified = arch == "resnet50" and digest in OFFICIAL_SHA256.values()
    if verified:
        origin = "the official Barlow Twins ResNet-50 release"
    elif arch == "resnet50":
        origin = "a ResNet-50 checkpoint in the official Barlow Twins layout, NOT verified as the authors' release"
    else:
        origin = f"a {arch} checkpoint in the official Barlow Twins layout"
    source = {
        "kind": "official-conversion",
        "origin": f"{origin}, converted from {checkpoint.name}",
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": digest,
        "verified_official": verified,
        "layout": facts["layout"],
        "reference": PAPER,
        "repo_id": name,
    }
    if facts.get("dropped"):
        source["dropped"] = facts["dropped"]  # projector / bn are training-only heads
    if "epoch" in facts:
        source["epoch"] = facts["epoch"]
    if arch == "resnet50":
        source["reported_metrics"] = REPORTED_METRICS
        if verified:
            source["reported_for"] = "the official ResNet-50 release (1000 epochs, batch 2048)"
            source["description"] = (
                "The official Barlow Twins ResNet-50 (Zbontar et al. 2021) released by the authors, converted to "
                "btembed's model folder: the torchvision trunk's weights copied bit for bit into safetensors; its "
                "2048-d global-pooled features are the embedding.")
        else:
            source["reported_for"] = (
                f"their official ResNet-50 release; this file (sha256 {digest}) is not a known hash of that release "
                "(hub/convert.py OFFICIAL_SHA256), so these figures may not describe it")
            source["description"] = (
                "A ResNet-50 in the layout of the official Barlow Twins release, converted to btembed's model folder "
                "(weights copied bit for bit). Its bytes are not verified to be the authors' release.")
    return ModelConfig(architecture=arch, name=name, license=OFFICIAL_LICENSE, preprocess=OFFICIAL_PREPROCESS,
                       source=source, training=dict(OFFICIAL_TRAINING) if verified else {})


def convert_official(checkpoint: str | Path, out: str | Path, *, name: str | None = None,
                     onnx: bool = True) -> Path:
    """Checkpoint → model folder (config.json, model.safetensors, README.md, and model.onnx unless onnx=False)."""
    from btembed.card import render_card

    checkpoint, out = Path(checkpoint), Path(out)
    state, facts, arch = read_trunk(checkpoint)
    config = official_config(arch, name or out.name, checkpoint, facts)
    write_trunk(state, config, out)
    if onnx:
        from .publish import add_onnx

        add_onnx(out)
    config = ModelConfig.load(out)
    (out / "README.md").write_text(render_card(config))
    return out
