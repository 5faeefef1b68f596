"""The authors' checkpoint files → btembed model folders, bit for bit; one converter for sources.py and the hub tools.

Loading uses torch.load(weights_only=True) only: tensors and plain containers come back, any other pickled object
is refused before it is built, so a tampered file cannot run code. Weights are copied unchanged into safetensors.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

from .config import ARCHITECTURES, ModelConfig
from .errors import ModelError
from .modelfiles import write_folder

# The layouts the authors' files come in (a registry source's `format`); "auto" tells them apart by their keys.
FORMATS = {
    "torchvision-state-dict": "a torchvision ResNet state dict without fc.* (Barlow Twins and VICReg resnet50.pth)",
    "barlowtwins-checkpoint": "the Barlow Twins training checkpoint: model.module.backbone.* plus projector, bn, "
                              "optimizer",
    "simsiam-checkpoint": "the SimSiam training checkpoint: state_dict.module.encoder.* (fc.* is the projector) "
                          "plus module.predictor.*, optimizer",
}


class ConvertError(ModelError):
    """A checkpoint that cannot be converted: unsafe pickle, unknown layout, or unsupported architecture."""


def _stand_in_filter(p) -> bool:
    """Replaces main.py's exclude_bias_and_norm, which the Barlow Twins checkpoint's optimizer names; never called."""
    return p.ndim == 1


# The Barlow Twins full checkpoint pickles LARS param_groups holding a reference to main.py's filter function.
# These names resolve to the harmless stand-in above instead of importing anything.
_FILTER_NAMES = ("__main__.exclude_bias_and_norm", "main.exclude_bias_and_norm")


def load_checkpoint(path: str | Path):
    """torch.load with weights_only=True; a file holding any other Python object is refused in one sentence."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise ConvertError(f"{path} is a folder; give the checkpoint file (e.g. resnet50.pth or checkpoint.pth)")
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
            raise ConvertError(not_a_checkpoint(path)) from None
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        why = f"it names {named.group(1)}" if named else "it uses pickle instructions outside plain tensors"
        raise ConvertError(f"{path} holds pickled Python objects other than tensors and was refused unread "
                           f"({why}; loading it could run code); use the authors' file or re-save the "
                           "weights as a plain state dict") from None
    except Exception:  # foreign bytes make torch's unpickler fail with any of a dozen exception types
        # The exception says nothing a user can act on (KeyError: 174812789): say what the file must be instead.
        raise ConvertError(not_a_checkpoint(path)) from None


def not_a_checkpoint(path: Path) -> str:
    """The refusal of a file torch.load cannot read, saying what it must be."""
    return (f"{path} is not a readable PyTorch checkpoint; give the complete file torch.save wrote with the model's "
            "weights (such as the authors' resnet50.pth)")


def detect_format(obj) -> str:
    """Which of FORMATS a loaded checkpoint is, told apart by its top-level keys."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return "barlowtwins-checkpoint"
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return "simsiam-checkpoint"
    return "torchvision-state-dict"


def _strip(model: Mapping, prefixes: tuple[str, ...]) -> tuple[dict, str]:
    """The entries under the first prefix that has any, with the prefix removed, and that prefix."""
    for prefix in prefixes:
        state = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
        if state:
            return state, prefix
    return {}, ""


def extract_trunk(obj, path: str | Path = "checkpoint", format: str = "auto") -> tuple[dict, dict]:
    """(trunk state dict with torchvision keys, facts about the layout) from any of FORMATS."""
    import torch

    if not isinstance(obj, Mapping):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a state dict or a training checkpoint")
    found = detect_format(obj)
    if format not in ("auto", found):
        raise ConvertError(f"{path} is a {found} ({FORMATS[found]}), not the {format} its source names; "
                           "the file is not the one the registry describes")
    facts: dict = {"format": found, "layout": FORMATS[found]}
    if found == "barlowtwins-checkpoint":
        model = obj["model"]
        state, prefix = _strip(model, ("module.backbone.", "backbone."))
        if not state:
            raise ConvertError(f"{path} is a training checkpoint but its 'model' has no backbone.* weights")
        facts["dropped"] = sorted({k.split(".")[1] if k.startswith("module.") else k.split(".")[0]
                                   for k in model if not k.startswith(prefix)})
    elif found == "simsiam-checkpoint":
        model = obj["state_dict"]
        state, prefix = _strip(model, ("module.encoder.", "encoder."))
        if not state:
            raise ConvertError(f"{path} is a training checkpoint but its 'state_dict' has no encoder.* weights")
        # SimSiam puts its projector where torchvision has the classifier: encoder.fc.* is not the trunk.
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        facts["dropped"] = sorted({"projector (encoder.fc)"} | {k.split(".")[1] if k.startswith("module.")
                                                                else k.split(".")[0]
                                                                for k in model if not k.startswith(prefix)})
    else:
        state = dict(obj)
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
    if isinstance(obj.get("epoch"), int):
        facts["epoch"] = obj["epoch"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        raise ConvertError(f"{path} is not a weights file: entries such as {bad[:3] or '(none)'} are not tensors")
    if any(k.startswith("fc.") for k in state):
        raise ConvertError(f"{path} has classifier weights (fc.*): it is a supervised classifier, not a "
                           "self-supervised trunk (which has no fc)")
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


def read_trunk(checkpoint: str | Path, format: str = "auto") -> tuple[dict, dict, str]:
    """(trunk state dict, layout facts, architecture) of a checkpoint file, loaded safely."""
    checkpoint = Path(checkpoint)
    state, facts = extract_trunk(load_checkpoint(checkpoint), checkpoint, format)
    return state, facts, detect_architecture(state)


def write_trunk(state: dict, config: ModelConfig, out: str | Path, card: str | None = None) -> Path:
    """A trunk state dict → model folder: tensors copied unchanged into model.safetensors, config.json, card."""
    return write_folder(state, config, out, card=card)
