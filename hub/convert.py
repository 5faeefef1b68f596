"""Convert the official Barlow Twins release (torch.hub resnet50.pth or the full checkpoint.pth) to a model folder.

Loading uses torch.load(weights_only=True) only: tensors and plain containers come back, any other pickled object
is refused before it is built, so a tampered file cannot run code. Weights are copied bit for bit.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

from btembed.config import ARCHITECTURES, ModelConfig
from btembed.errors import BtembedError
from btembed.modelfiles import sha256_file
from btembed.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

# The official evaluate.py validation transform: Resize(256) (torchvision's default bilinear), CenterCrop(224),
# ImageNet mean/std.
OFFICIAL_PREPROCESS = PreprocessConfig(input_size=224, resize_size=256, interpolation="bilinear", crop="center",
                                       mean=IMAGENET_MEAN, std=IMAGENET_STD)
OFFICIAL_LICENSE = "cc-by-nc-4.0"  # the official repository is released under CC-BY-NC 4.0
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
    "released_checkpoint_linear_top1": {"value": 73.3, "unit": "%", "dataset": "ImageNet-1k val",
                                        "protocol": LINEAR + " (evaluate.py, --lr-classifier 0.1)",
                                        "reference": RELEASE_README},
    "released_checkpoint_linear_top5": {"value": 91.0, "unit": "%", "dataset": "ImageNet-1k val",
                                        "protocol": LINEAR + " (evaluate.py, --lr-classifier 0.1)",
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
        "Licensed CC-BY-NC 4.0 by the original authors: non-commercial use only.",
        "Trained on ImageNet-1k only: object-centric photos; other domains (documents, medical, satellite, "
        "drawings) may embed poorly.",
    ],
}


class ConvertError(BtembedError):
    """A checkpoint that cannot be converted: unsafe pickle, unknown layout, or unsupported architecture."""


def _stand_in_filter(p) -> bool:
    """Replaces main.py's exclude_bias_and_norm, which the full checkpoint's optimizer state names; never called."""
    return p.ndim == 1


# The full checkpoint pickles LARS param_groups holding a reference to main.py's filter function. These names
# resolve to the harmless stand-in above instead of importing anything.
_FILTER_NAMES = ("__main__.exclude_bias_and_norm", "main.exclude_bias_and_norm")


def load_checkpoint(path: str | Path):
    """torch.load with weights_only=True; a file holding any other Python object is refused in one sentence."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise ConvertError(f"{path} is a folder; give the checkpoint file (resnet50.pth or checkpoint.pth)")
    if not path.is_file():
        raise ConvertError(f"checkpoint {path} does not exist")
    allowed = [(_stand_in_filter, name) for name in _FILTER_NAMES]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        with open(path, "rb") as f:
            head = f.read(2)
        if head != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a binary pickle
            raise ConvertError(f"{path} is not a readable PyTorch checkpoint (not a torch.save file)") from None
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        why = f"it names {named.group(1)}" if named else "it uses pickle instructions outside plain tensors"
        raise ConvertError(f"{path} holds pickled Python objects other than tensors and was refused unread "
                           f"({why}; loading it could run code); use the official file or re-save the "
                           "weights as a plain state dict") from None
    except Exception as e:  # foreign bytes make torch's unpickler fail with any of a dozen exception types
        raise ConvertError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None


def extract_trunk(obj, path: str | Path = "checkpoint") -> tuple[dict, dict]:
    """(trunk state dict with torchvision keys, facts about the layout) from either official form."""
    import torch

    if not isinstance(obj, Mapping):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a state dict or a training checkpoint")
    facts: dict = {}
    if isinstance(obj.get("model"), Mapping):
        model = obj["model"]
        for prefix in ("module.backbone.", "backbone."):
            state = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
            if state:
                break
        else:
            raise ConvertError(f"{path} is a training checkpoint but its 'model' has no backbone.* weights")
        facts["layout"] = "full checkpoint (checkpoint.pth)"
        facts["dropped"] = sorted({k.split(".")[1] if k.startswith("module.") else k.split(".")[0]
                                   for k in model if not k.startswith(prefix)})
        if isinstance(obj.get("epoch"), int):
            facts["epoch"] = obj["epoch"]
    else:
        state = dict(obj)
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
        facts["layout"] = "backbone state dict (torch.hub resnet50.pth)"
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        raise ConvertError(f"{path} is not a weights file: entries such as {bad[:3] or '(none)'} are not tensors")
    if any(k.startswith("fc.") for k in state):
        raise ConvertError(f"{path} has classifier weights (fc.*): it is a supervised classifier, not the "
                           "Barlow Twins trunk (which has no fc)")
    return state, facts


def detect_architecture(state: dict) -> str:
    """The torchvision architecture whose trunk (without fc) has exactly these keys and shapes."""
    import torch
    import torchvision

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for arch in ARCHITECTURES:
        with torch.device("meta"):  # shapes only, no memory or init cost
            reference = getattr(torchvision.models, arch)().state_dict()
        expected = {k: tuple(v.shape) for k, v in reference.items() if not k.startswith("fc.")}
        if expected == shapes:
            return arch
    sample = sorted(set(shapes))[:3]
    raise ConvertError(f"the weights (keys like {sample}) match no supported torchvision trunk "
                       f"({', '.join(ARCHITECTURES)})")


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
    from btembed.model import Encoder

    checkpoint, out = Path(checkpoint), Path(out)
    state, facts = extract_trunk(load_checkpoint(checkpoint), checkpoint)
    arch = detect_architecture(state)
    config = official_config(arch, name or out.name, checkpoint, facts)
    encoder = Encoder(config)
    # strict: every trunk tensor must be present with its exact shape; load_state_dict copies values unchanged
    encoder.trunk.load_state_dict(state, strict=True)
    encoder.save_pretrained(out)
    if onnx:
        from .publish import add_onnx

        add_onnx(out)
    config = ModelConfig.load(out)
    (out / "README.md").write_text(render_card(config))
    return out
